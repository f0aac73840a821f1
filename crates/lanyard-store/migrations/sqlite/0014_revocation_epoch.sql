-- The revocation epoch: one counter that grows in the same transaction as every change to what
-- OCSP or a CRL says about any certificate. Servers key their OCSP and CRL caches on it, so a
-- change committed through any server (or by hand) makes every cache stale at once. Triggers
-- bump it, so no code path can forget to. The epoch is the sum of the table's rows; SQLite runs
-- one writer at a time, so one row does (PostgreSQL spreads the bumps over 64 rows).
CREATE TABLE revocation_epoch (
    id     INTEGER NOT NULL PRIMARY KEY CHECK (id >= 0 AND id < 64),
    epoch  INTEGER NOT NULL
);
INSERT INTO revocation_epoch (id, epoch) VALUES (0, 1);

-- A credential inserted active is simply not known before: OCSP never caches "unknown" answers,
-- so only other states (pending is on hold, revoked) move the epoch.
CREATE TRIGGER credentials_epoch_insert AFTER INSERT ON credentials
WHEN NEW.state NOT IN ('active', 'expired')
BEGIN
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 0;
END;

CREATE TRIGGER credentials_epoch_update AFTER UPDATE ON credentials
WHEN OLD.state IS NOT NEW.state
  OR OLD.held_from IS NOT NEW.held_from
  OR OLD.revocation_reason IS NOT NEW.revocation_reason
  OR OLD.revoked_at IS NOT NEW.revoked_at
  OR OLD.serial_hex IS NOT NEW.serial_hex
  OR OLD.created_at IS NOT NEW.created_at
BEGIN
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 0;
END;

CREATE TRIGGER credentials_epoch_delete AFTER DELETE ON credentials
BEGIN
    UPDATE revocation_epoch SET epoch = epoch + 1 WHERE id = 0;
END;

-- cRLNumber per CRL scope ('issuing', 'issuing/<shard>', 'root'): taken from here when a CRL is
-- signed, so it grows strictly across every server sharing the database.
CREATE TABLE crl_numbers (
    scope   TEXT NOT NULL PRIMARY KEY,
    number  INTEGER NOT NULL
);

-- The CRL lists exactly these states; this index lets it read them without visiting the other
-- rows (or their certificates).
CREATE INDEX credentials_revocation ON credentials (state, serial_hex, held_from, revocation_reason, revoked_at, created_at, updated_at)
    WHERE state IN ('pending', 'revoked', 'on_hold', 'superseded');
