-- The personalization engine's checkpoint (lanyard_core::personalize::Checkpoint as JSON, no
-- secrets): what a resumed or rolled-back issuance starts from.
ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
