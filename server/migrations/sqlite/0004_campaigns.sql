-- Campaigns and the experiment queue. A campaign's optimizer state and its experiments are
-- written in the same transaction as each ask or tell, so a restarted server resumes exactly
-- where it was. `version` guards every optimizer-state write (optimistic concurrency).
CREATE TABLE campaigns (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    lab_id           TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    recipe           TEXT NOT NULL,
    space_json       TEXT NOT NULL,
    objective        TEXT NOT NULL,
    optimizer        TEXT NOT NULL,
    settings_json    TEXT NOT NULL,
    seed             INTEGER NOT NULL,
    budget           INTEGER NOT NULL CHECK (budget > 0),
    batch_size       INTEGER NOT NULL CHECK (batch_size > 0),
    target           REAL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN ('draft', 'running', 'paused', 'completed', 'canceled', 'failed')),
    state_detail     TEXT,
    optimizer_state  TEXT,
    version          INTEGER NOT NULL DEFAULT 0,
    proposals        INTEGER NOT NULL DEFAULT 0,
    results          INTEGER NOT NULL DEFAULT 0,
    best_value       REAL,
    best_params_json TEXT,
    best_experiment_id TEXT,
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX campaigns_org ON campaigns(organization_id, created_at);
CREATE INDEX campaigns_state ON campaigns(state);

CREATE TABLE experiments (
    id               TEXT PRIMARY KEY,
    campaign_id      TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    organization_id  TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    lab_id           TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    name             TEXT NOT NULL,
    source           TEXT NOT NULL CHECK (source IN ('optimizer', 'manual')),
    params_json      TEXT NOT NULL,
    proposal_json    TEXT,
    program_json     TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'running', 'completed', 'failed', 'interrupted', 'canceled')),
    lease_owner      TEXT,
    lease_until      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_by       TEXT NOT NULL,
    queued_at        INTEGER NOT NULL,
    dispatched_at    INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    outcome          TEXT,
    error            TEXT,
    features_json    TEXT,
    peaks_json       TEXT,
    objective_value  REAL,
    told             BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (campaign_id, seq)
);
-- Claimable experiments only (queued, or leased and maybe expired): claims stay O(queue depth)
-- however many experiments a lab has run.
CREATE INDEX experiments_claimable ON experiments(lab_id, priority, queued_at)
    WHERE state IN ('queued', 'leased');
CREATE INDEX experiments_state ON experiments(state);
CREATE INDEX experiments_org_lab ON experiments(lab_id, organization_id, queued_at);
CREATE INDEX experiments_dispatch ON experiments(lab_id, organization_id, dispatched_at);
CREATE INDEX agent_records_kind ON agent_records(lab_id, program_id, kind);
