-- The revocation epoch's shards, so that concurrent serializable transactions that bump it do not
-- abort one another (0014 spread it over 64 rows, but that alone did not help):
--
-- 1. Once the table had statistics, the planner read it with a sequential scan, and a sequential
--    scan in a SERIALIZABLE transaction takes a predicate lock on the whole relation: every bump
--    then conflicted with every concurrent bump whatever its shard, and PostgreSQL aborted one
--    of each pair ("could not serialize access due to read/write dependencies"). The function
--    now plans with sequential scans off, so the row is found through the primary key: a
--    predicate lock on the index page, which only an index insertion conflicts with, and the
--    update is a heap-only (HOT) update that inserts nothing into the index.
-- 2. A shard drawn at random per bump collides with a concurrent bump's shard often (the
--    birthday problem: 16 transactions in flight over 64 rows nearly always share one), and the
--    second writer of a row aborts ("could not serialize access due to concurrent update"). Each
--    database session now takes the next shard in turn, once, and keeps it: sessions open at the
--    same time (a few pools of 16) use different rows, and one session's transactions run one
--    after another.
-- 3. The rows are rewritten with fillfactor 10, so they spread over several pages that keep most
--    of their room for the new row versions: an update stays HOT unless a long snapshot keeps old
--    versions alive until a page is full.
CREATE SEQUENCE revocation_epoch_shard_seq;

CREATE OR REPLACE FUNCTION lanyard_bump_revocation_epoch() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    -- NULL in a new session; '' once a transaction that set it rolled back.
    shard integer := NULLIF(current_setting('lanyard.epoch_shard', true), '')::integer;
BEGIN
    IF shard IS NULL THEN
        shard := (nextval('revocation_epoch_shard_seq') % 64)::integer;
        -- For the rest of the session (undone with the transaction if that rolls back, which
        -- only means the next bump draws again).
        PERFORM set_config('lanyard.epoch_shard', shard::text, false);
    END IF;
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = shard;
    PERFORM pg_notify('lanyard_revocation', '');
    RETURN NULL;
END;
$$;

ALTER TABLE revocation_epoch SET (fillfactor = 10);
CREATE TEMPORARY TABLE revocation_epoch_before ON COMMIT DROP AS SELECT id, epoch FROM revocation_epoch;
DELETE FROM revocation_epoch;
INSERT INTO revocation_epoch (id, epoch) SELECT id, epoch FROM revocation_epoch_before;
