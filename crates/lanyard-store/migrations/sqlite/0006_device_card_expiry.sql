-- When the card's CHUID says it expires (nanoseconds since the epoch), recorded with the card UUID
-- before the first command reaches the card: every certificate for the card, from a card session or
-- the CSR route, is capped at it.
ALTER TABLE devices ADD COLUMN card_expires_at BIGINT;
