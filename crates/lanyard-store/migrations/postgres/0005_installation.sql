-- The installation record (lanyard_core::installation::Installation): at most one row (id 1),
-- written once by `lanyard init`. `lanyard serve` refuses to start with a root CA or
-- key-encryption key other than the ones recorded here.
CREATE TABLE installation (
    id                BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    -- SHA-256 of the root CA certificate's DER, 64 lowercase hex digits.
    root_fingerprint  TEXT NOT NULL,
    -- The key-encryption key's id (lanyard_core::secrets::KekId), 32 lowercase hex digits.
    kek_id            TEXT NOT NULL,
    initialized_at    BIGINT NOT NULL
);
