-- Optimistic concurrency for jobs: every update is conditional on the version the writer read
-- and increments it, so a session's step write never undoes a concurrent change.
ALTER TABLE jobs ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- The lease of a running job: which server instance runs its card session, and until when
-- (Unix nanoseconds). Only jobs whose lease has run out are failed by another server.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT COLLATE "C";
ALTER TABLE jobs ADD COLUMN lease_expires_at BIGINT;
