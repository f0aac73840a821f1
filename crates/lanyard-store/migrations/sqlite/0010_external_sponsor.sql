-- A derived PIV enrolment may be sponsored by a card Lanyard did not issue, whose certificate
-- chains to an imported PIV root (lanyard_core::model::ExternalSponsor). Lanyard has no device
-- for such a card, so the code names its certificate: the issuer DN and the serial number
-- (lowercase hex). Both are set or neither, and never together with sponsor_id.
ALTER TABLE enrollment_codes ADD COLUMN external_sponsor_issuer TEXT;
ALTER TABLE enrollment_codes ADD COLUMN external_sponsor_serial TEXT;
