-- Workstation agents paired with a user (lanyard_core::model::Agent) and the one-time codes that
-- pair them (lanyard_core::model::PairingCode). Only hashes of codes and credentials are stored.
CREATE TABLE pairing_codes (
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    code_hash   BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    CONSTRAINT pairing_codes_code_hash_key UNIQUE (code_hash)
);
CREATE INDEX pairing_codes_expires ON pairing_codes (expires_at);

CREATE TABLE agents (
    id               TEXT NOT NULL PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users (id),
    host_name        TEXT NOT NULL,
    credential_hash  BLOB NOT NULL,
    created_at       BIGINT NOT NULL,
    last_seen_at     BIGINT,
    revoked_at       BIGINT,
    CONSTRAINT agents_credential_hash_key UNIQUE (credential_hash)
);
CREATE INDEX agents_user ON agents (user_id, created_at);
