-- Records streamed by agents (measurements, step results, safety events), stored idempotently
-- on their delivery key (lab, epoch, seq) (RELIABILITY rule 1).
CREATE TABLE agent_records (
    lab_id      TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    epoch       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    program_id  TEXT,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (lab_id, epoch, seq)
);
CREATE INDEX agent_records_program ON agent_records(lab_id, program_id, epoch, seq);
