-- Several servers on one database (issue 12): what they coordinate through it. Keep in step
-- with ../postgres/0015_cluster.sql. docs/storage.md and docs/deployment.md describe them.
--
-- Failed logins (per username) and refused enrolment codes (per source address), counted here
-- so that a throttle holds across every server. Only a SHA-256 of the key is kept: a username
-- typed wrongly may be someone's password. Rows older than the throttle's window are deleted.
CREATE TABLE throttle_failures (
    scope           TEXT NOT NULL,
    key_hash        BLOB NOT NULL,
    at              BIGINT NOT NULL
);
CREATE INDEX throttle_failures_key ON throttle_failures (scope, key_hash, at);
CREATE INDEX throttle_failures_at ON throttle_failures (at);

-- Short-lived notes one server leaves the others: which server holds an agent's link and what
-- the agent last reported, frames for that link, a card session's question to the portal and
-- the holder's answer (sealed under the key-encryption key, never in clear). Expired notes are
-- deleted by the sweeper.
CREATE TABLE cluster_notes (
    topic           TEXT NOT NULL,
    owner           TEXT NOT NULL,
    note_key        TEXT NOT NULL,
    value           BLOB NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    CONSTRAINT cluster_notes_pkey PRIMARY KEY (topic, owner, note_key)
);
CREATE INDEX cluster_notes_expires ON cluster_notes (expires_at);
