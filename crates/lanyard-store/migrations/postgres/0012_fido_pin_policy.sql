-- Keep in step with ../sqlite/0012_fido_pin_policy.sql. Group policies gain fido_min_pin_length,
-- and fido_pin_mode gains "none" and "temporary". Until now issuance never touched a key's FIDO
-- application whatever fido_pin_mode said, so every stored policy becomes "none": an upgrade does
-- not start setting FIDO PINs on its own. The minimum is written out (six, the default).
UPDATE groups
   SET policy = (policy::jsonb
                 || jsonb_build_object('fido_pin_mode', 'none', 'fido_min_pin_length', 6))::text;
