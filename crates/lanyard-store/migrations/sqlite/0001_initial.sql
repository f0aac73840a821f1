-- Lanyard schema v1 (SQLite). Keep in step with ../postgres/0001_initial.sql: the same tables,
-- columns, constraint names and indexes; only the dialect differs (BLOB vs BYTEA, the PostgreSQL
-- "C" collation on ordered text, trigger syntax). docs/storage.md describes the schema.
--
-- Ids are hyphenated lowercase UUID text. Times are BIGINT Unix nanoseconds (UTC), which both
-- databases keep exactly (the audit chain hashes them). Enum values are the domain's stable text
-- forms; the store checks them when it reads a row, not here, so a new state needs no migration.
-- Binary values (hashes, DER, sealed secrets, GUIDs) are BLOBs.

CREATE TABLE groups (
    id      TEXT NOT NULL PRIMARY KEY,
    name    TEXT NOT NULL,
    -- The Policy as JSON.
    policy  TEXT NOT NULL,
    CONSTRAINT groups_name_key UNIQUE (name)
);

CREATE TABLE users (
    id            TEXT NOT NULL PRIMARY KEY,
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    email         TEXT,
    group_id      TEXT NOT NULL REFERENCES groups (id),
    -- The set of roles as a sorted JSON array of role names, e.g. ["operator","user"].
    roles         TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    -- Derived, for the case-insensitive text search: username, display name and e-mail,
    -- lowercased (Unicode) by the store and joined with U+001F, which none of them may contain.
    search_key    TEXT NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);
CREATE INDEX users_group ON users (group_id);

CREATE TABLE devices (
    id                 TEXT NOT NULL PRIMARY KEY,
    -- NULL for stock cards that nobody holds.
    owner_id           TEXT REFERENCES users (id),
    kind               TEXT NOT NULL,
    model              TEXT NOT NULL,
    serial             TEXT,
    card_guid          BLOB,
    state              TEXT NOT NULL,
    suspended_from     TEXT,
    revocation_reason  TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX devices_owner ON devices (owner_id);
CREATE UNIQUE INDEX devices_model_serial_key ON devices (model, serial) WHERE serial IS NOT NULL;

-- Device.links, in order.
CREATE TABLE device_links (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    position   INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    target_id  TEXT NOT NULL REFERENCES devices (id),
    PRIMARY KEY (device_id, position)
);
CREATE INDEX device_links_target ON device_links (target_id);

CREATE TABLE credentials (
    id                 TEXT NOT NULL PRIMARY KEY,
    device_id          TEXT NOT NULL REFERENCES devices (id),
    -- 'certificate' is the only kind so far; later kinds leave the certificate columns NULL.
    kind               TEXT NOT NULL,
    slot               TEXT,
    profile            TEXT,
    serial_hex         TEXT,
    not_before         BIGINT,
    not_after          BIGINT,
    certificate_der    BLOB,
    attestation_der    BLOB,
    state              TEXT NOT NULL,
    held_from          TEXT,
    revocation_reason  TEXT,
    revoked_at         BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    CONSTRAINT credentials_serial_hex_key UNIQUE (serial_hex),
    CONSTRAINT credentials_certificate_fields CHECK (kind <> 'certificate' OR (
        slot IS NOT NULL AND profile IS NOT NULL AND serial_hex IS NOT NULL
        AND not_before IS NOT NULL AND not_after IS NOT NULL AND certificate_der IS NOT NULL))
);
CREATE INDEX credentials_device ON credentials (device_id);
CREATE INDEX credentials_not_after ON credentials (not_after);

-- Card secrets sealed under the KEK (the store never sees them in clear).
CREATE TABLE card_secrets (
    device_id  TEXT NOT NULL PRIMARY KEY REFERENCES devices (id),
    sealed     BLOB NOT NULL
);

CREATE TABLE audit_events (
    seq             BIGINT NOT NULL PRIMARY KEY,
    at              BIGINT NOT NULL,
    -- 'system', 'user' (actor_id and actor_username set) or 'api_token' (actor_id set).
    actor           TEXT NOT NULL,
    actor_id        TEXT,
    actor_username  TEXT,
    action          TEXT NOT NULL,
    target          TEXT,
    operation_id    TEXT NOT NULL,
    -- Canonical JSON text (see lanyard_core::audit), exactly as hashed; never a JSON type.
    before_json     TEXT,
    after_json      TEXT,
    prev_hash       BLOB NOT NULL,
    hash            BLOB NOT NULL,
    CONSTRAINT audit_events_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_events_hash_lengths CHECK (length(prev_hash) = 32 AND length(hash) = 32)
);
CREATE INDEX audit_events_target ON audit_events (target, seq);
-- The log is append-only; the hash chain detects whatever gets past these.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;

CREATE TABLE enrollment_codes (
    id          TEXT NOT NULL PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    -- 'mobile_profile' or 'derived_piv'.
    purpose     TEXT NOT NULL,
    -- For derived_piv: the sponsoring card, if any. No foreign key: the code only names it.
    sponsor_id  TEXT,
    code_hash   BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    CONSTRAINT enrollment_codes_code_hash_key UNIQUE (code_hash)
);
CREATE INDEX enrollment_codes_expires ON enrollment_codes (expires_at);

CREATE TABLE jobs (
    id                 TEXT NOT NULL PRIMARY KEY,
    kind               TEXT NOT NULL,
    device_id          TEXT NOT NULL REFERENCES devices (id),
    created_by         TEXT REFERENCES users (id),
    state              TEXT NOT NULL,
    -- The step log: a JSON array of lanyard_core::model::JobStep.
    steps              TEXT NOT NULL,
    agent_ticket       BLOB,
    ticket_expires_at  BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX jobs_device ON jobs (device_id, created_at);
CREATE INDEX jobs_state ON jobs (state, created_at);

CREATE TABLE api_tokens (
    id            TEXT NOT NULL PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    name          TEXT NOT NULL,
    token_hash    BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);

CREATE TABLE sessions (
    token_hash    BLOB NOT NULL PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
