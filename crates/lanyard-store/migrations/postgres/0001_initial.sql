-- Lanyard schema v1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql: same tables,
-- columns and constraints; only the dialect differs (BLOB vs BYTEA, trigger syntax).
-- Ids are UUID text; times are Unix nanoseconds (BIGINT) so both databases round-trip them
-- exactly (the audit chain hashes them).

CREATE TABLE groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    policy      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL,
    email          TEXT,
    group_id       TEXT NOT NULL REFERENCES groups(id),
    roles          TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash  TEXT,
    created_at     BIGINT NOT NULL
);

CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    owner_id           TEXT NOT NULL REFERENCES users(id),
    kind               TEXT NOT NULL,
    model              TEXT NOT NULL,
    serial             TEXT,
    card_guid          TEXT,
    state              TEXT NOT NULL,
    suspended_from     TEXT,
    revocation_reason  TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX devices_owner ON devices (owner_id);
CREATE UNIQUE INDEX devices_card_guid ON devices (card_guid) WHERE card_guid IS NOT NULL;

CREATE TABLE device_links (
    device_id  TEXT NOT NULL REFERENCES devices(id),
    kind       TEXT NOT NULL,
    other_id   TEXT NOT NULL REFERENCES devices(id),
    PRIMARY KEY (device_id, kind, other_id)
);

CREATE TABLE credentials (
    id                 TEXT PRIMARY KEY,
    device_id          TEXT NOT NULL REFERENCES devices(id),
    kind               TEXT NOT NULL,
    slot               TEXT,
    profile            TEXT,
    serial_hex         TEXT UNIQUE,
    not_before         BIGINT,
    not_after          BIGINT,
    certificate        BYTEA,
    state              TEXT NOT NULL,
    held_from          TEXT,
    revocation_reason  TEXT,
    revoked_at         BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX credentials_device ON credentials (device_id);

CREATE TABLE card_secrets (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id),
    ciphertext  BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE audit_events (
    seq           BIGINT PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT,
    operation_id  TEXT NOT NULL,
    before_state  TEXT,
    after_state   TEXT,
    prev_hash     BYTEA NOT NULL,
    hash          BYTEA NOT NULL
);
-- The log is append-only; the hash chain detects what gets past this.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_events is append-only'; END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE enrollment_codes (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    purpose     TEXT NOT NULL,
    code_hash   TEXT NOT NULL UNIQUE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id),
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    log         TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id),
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE login_failures (
    username  TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (username, at);
