-- Enrolment codes follow a phone through its enrolment (lanyard_core::model::EnrollmentCode):
-- the portal session that created the code (the code dies with it), the mobile device created when
-- the code was redeemed, and when the enrolment completed (a certificate was issued).
ALTER TABLE enrollment_codes ADD COLUMN session_hash BLOB;
ALTER TABLE enrollment_codes ADD COLUMN device_id TEXT REFERENCES devices (id);
ALTER TABLE enrollment_codes ADD COLUMN completed_at BIGINT;
