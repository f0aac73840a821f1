-- The paired agent a job's outstanding ticket is bound to (lanyard_core::model::Job::agent): the
-- session socket must present that agent's credential too. NULL for tickets handed out as text.
ALTER TABLE jobs ADD COLUMN agent_id TEXT REFERENCES agents (id);
