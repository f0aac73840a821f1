-- Group policies gain fido_min_pin_length, and fido_pin_mode gains "none" and "temporary".
-- Until now issuance never touched a key's FIDO application whatever fido_pin_mode said, so every
-- stored policy becomes "none": an upgrade does not start setting FIDO PINs on its own; an
-- administrator chooses a mode on the group's policy page. The minimum is written out (six, the
-- default) so the stored JSON says what the server applies.
UPDATE groups SET policy = json_set(policy, '$.fido_pin_mode', 'none', '$.fido_min_pin_length', 6);
