-- The newest records of a kind per lab (the live readings' fallback to the latest stored
-- temperature): walked backwards from the newest without reading older bodies.
CREATE INDEX agent_records_recent ON agent_records(lab_id, kind, received_at);
