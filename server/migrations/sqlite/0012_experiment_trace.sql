-- Issue 17 (observability): the W3C trace context of the request or engine step that queued an
-- experiment, so its dispatch, the agent call and the agent's execution join that trace.
ALTER TABLE experiments ADD COLUMN trace_parent TEXT;
