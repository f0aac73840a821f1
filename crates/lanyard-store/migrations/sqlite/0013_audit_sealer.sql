-- The audit chain leaves the writers' path. An event is appended with the next row id (its
-- append order) and no place in the chain; the sealer later gives it `seq` (its position in the
-- chain), `prev_hash` and `hash`, in one UPDATE that the triggers below allow exactly once.
-- On SQLite the sealer is the group commit: it chains a batch's events just before the batch's
-- COMMIT, so no unsealed event is ever visible. Existing events keep their seq and hashes and
-- take their seq as id.
CREATE TABLE audit_events_v13 (
    id              INTEGER NOT NULL PRIMARY KEY,
    seq             BIGINT UNIQUE,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    actor_id        TEXT,
    actor_username  TEXT,
    action          TEXT NOT NULL,
    target          TEXT,
    operation_id    TEXT NOT NULL,
    before_json     TEXT,
    after_json      TEXT,
    prev_hash       BLOB,
    hash            BLOB,
    CONSTRAINT audit_events_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_events_sealed_whole CHECK (
        (seq IS NULL AND prev_hash IS NULL AND hash IS NULL)
        OR (seq IS NOT NULL AND length(prev_hash) = 32 AND length(hash) = 32))
);
INSERT INTO audit_events_v13 (id, seq, at, actor, actor_id, actor_username, action, target, operation_id,
                              before_json, after_json, prev_hash, hash)
SELECT seq, seq, at, actor, actor_id, actor_username, action, target, operation_id,
       before_json, after_json, prev_hash, hash
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_v13 RENAME TO audit_events;
CREATE INDEX audit_events_target ON audit_events (target, seq);
-- Sealer's work list: the events without a place in the chain.
CREATE INDEX audit_events_unsealed ON audit_events (id) WHERE seq IS NULL;
-- Append-only, except for sealing: an unsealed event may be given its place once, and nothing
-- else about it may change. The hash chain detects whatever gets past these.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN OLD.seq IS NOT NULL OR NEW.seq IS NULL
  OR NEW.id IS NOT OLD.id OR NEW.at IS NOT OLD.at OR NEW.actor IS NOT OLD.actor
  OR NEW.actor_id IS NOT OLD.actor_id OR NEW.actor_username IS NOT OLD.actor_username
  OR NEW.action IS NOT OLD.action OR NEW.target IS NOT OLD.target
  OR NEW.operation_id IS NOT OLD.operation_id OR NEW.before_json IS NOT OLD.before_json
  OR NEW.after_json IS NOT OLD.after_json
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only (an event can only be sealed, once)'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
