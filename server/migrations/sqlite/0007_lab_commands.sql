-- Instructions queued for a lab's agent with a deadline (RELIABILITY rule 5): sent when the
-- agent is connected, as a one-step program whose program id is the command id (the agent
-- remembers accepted ids durably, so a re-send never runs twice). States move forward only:
-- queued → sent → succeeded | failed, queued | sent → timed_out (deadline passed before the
-- agent accepted it), queued → canceled. Terminal states never change.
CREATE TABLE lab_commands (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    lab_id           TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    method           TEXT NOT NULL,
    params_json      TEXT NOT NULL,
    program_json     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'succeeded', 'failed', 'timed_out', 'canceled')),
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    deadline_at      INTEGER NOT NULL,
    sent_at          INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    finished_at      INTEGER,
    result_json      TEXT,
    error            TEXT
);
CREATE INDEX lab_commands_lab ON lab_commands(lab_id, created_at);
CREATE INDEX lab_commands_open ON lab_commands(state, deadline_at) WHERE state IN ('queued', 'sent');
