-- The revocation epoch moves once per transaction, not once per changed row.
--
-- Readers only ask whether the epoch moved (OCSP and the CRL compare it with the epoch their
-- caches were built at), so one bump per transaction that changed revocation data says all
-- there is to say. Bumping once per row made a bulk revocation quadratic: every bump in one
-- transaction updates the same shard row (the session keeps its shard, 0016), each update
-- adds a row version, and each next update walks the chain of versions this transaction
-- left behind — revoking 50,000 certificates in one statement ran for minutes.
--
-- The transaction-local setting `lanyard.epoch_bumped` remembers the bump. It follows the
-- transaction and its savepoints: if the savepoint that bumped rolls back, the setting rolls
-- back with the update, and the next changed row bumps again.
CREATE OR REPLACE FUNCTION lanyard_bump_revocation_epoch() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    -- NULL in a new session; '' once a transaction that set it rolled back.
    shard integer := NULLIF(current_setting('lanyard.epoch_shard', true), '')::integer;
BEGIN
    IF current_setting('lanyard.epoch_bumped', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    IF shard IS NULL THEN
        shard := (nextval('revocation_epoch_shard_seq') % 64)::integer;
        -- For the rest of the session (undone with the transaction if that rolls back, which
        -- only means the next bump draws again).
        PERFORM set_config('lanyard.epoch_shard', shard::text, false);
    END IF;
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = shard;
    PERFORM pg_notify('lanyard_revocation', '');
    PERFORM set_config('lanyard.epoch_bumped', 'yes', true);
    RETURN NULL;
END;
$$;
