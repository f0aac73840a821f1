-- The revocation epoch: a counter that grows in the same transaction as every change to what
-- OCSP or a CRL says about any certificate. It is the sum of 64 rows, and each change adds one to
-- a row picked at random: concurrent serializable transactions that each insert a pending
-- certificate would otherwise all update one row and abort one another. Servers key their OCSP
-- and CRL caches on it, so a change committed through any server (or by hand) makes every cache
-- stale at once. Triggers bump it, so no code path can forget to. Each bump also notifies channel lanyard_revocation
-- (delivered at commit), which only wakes caches early: correctness never depends on it.
CREATE TABLE revocation_epoch (
    id     INTEGER NOT NULL PRIMARY KEY CHECK (id >= 0 AND id < 64),
    epoch  BIGINT NOT NULL
);
INSERT INTO revocation_epoch (id, epoch) SELECT g, CASE WHEN g = 0 THEN 1 ELSE 0 END FROM generate_series(0, 63) AS g;

CREATE FUNCTION lanyard_bump_revocation_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- Drawn once: random() in the WHERE clause would be drawn again for every row.
    shard integer := floor(random() * 64)::integer;
BEGIN
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = shard;
    PERFORM pg_notify('lanyard_revocation', '');
    RETURN NULL;
END;
$$;

-- A credential inserted active is simply not known before: OCSP never caches "unknown" answers,
-- so only other states (pending is on hold, revoked) move the epoch.
CREATE TRIGGER credentials_epoch_insert AFTER INSERT ON credentials
FOR EACH ROW WHEN (NEW.state NOT IN ('active', 'expired'))
EXECUTE FUNCTION lanyard_bump_revocation_epoch();

CREATE TRIGGER credentials_epoch_update AFTER UPDATE ON credentials
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
  OR OLD.held_from IS DISTINCT FROM NEW.held_from
  OR OLD.revocation_reason IS DISTINCT FROM NEW.revocation_reason
  OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
  OR OLD.serial_hex IS DISTINCT FROM NEW.serial_hex
  OR OLD.created_at IS DISTINCT FROM NEW.created_at)
EXECUTE FUNCTION lanyard_bump_revocation_epoch();

CREATE TRIGGER credentials_epoch_delete AFTER DELETE ON credentials
FOR EACH ROW EXECUTE FUNCTION lanyard_bump_revocation_epoch();

-- cRLNumber per CRL scope ('issuing', 'issuing/<shard>', 'root'): taken from here when a CRL is
-- signed, so it grows strictly across every server sharing the database.
CREATE TABLE crl_numbers (
    scope   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    number  BIGINT NOT NULL
);

-- The CRL lists exactly these states; this index lets it read them without visiting the other
-- rows (or their certificates).
CREATE INDEX credentials_revocation ON credentials (state, serial_hex, held_from, revocation_reason, revoked_at, created_at, updated_at)
    WHERE state IN ('pending', 'revoked', 'on_hold', 'superseded');
