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
    seed             BIGINT NOT NULL,
    budget           BIGINT NOT NULL CHECK (budget > 0),
    batch_size       BIGINT NOT NULL CHECK (batch_size > 0),
    target           DOUBLE PRECISION,
    priority         BIGINT NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN ('draft', 'running', 'paused', 'completed', 'canceled', 'failed')),
    state_detail     TEXT,
    optimizer_state  TEXT,
    version          BIGINT NOT NULL DEFAULT 0,
    proposals        BIGINT NOT NULL DEFAULT 0,
    results          BIGINT NOT NULL DEFAULT 0,
    best_value       DOUBLE PRECISION,
    best_params_json TEXT,
    best_experiment_id TEXT,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX campaigns_org ON campaigns(organization_id, created_at);
CREATE INDEX campaigns_state ON campaigns(state);

CREATE TABLE experiments (
    id               TEXT PRIMARY KEY,
    campaign_id      TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    organization_id  TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    lab_id           TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    seq              BIGINT NOT NULL,
    name             TEXT NOT NULL,
    source           TEXT NOT NULL CHECK (source IN ('optimizer', 'manual')),
    params_json      TEXT NOT NULL,
    proposal_json    TEXT,
    program_json     TEXT NOT NULL,
    priority         BIGINT NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'running', 'completed', 'failed', 'interrupted', 'canceled')),
    lease_owner      TEXT,
    lease_until      BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    created_by       TEXT NOT NULL,
    queued_at        BIGINT NOT NULL,
    dispatched_at    BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    outcome          TEXT,
    error            TEXT,
    features_json    TEXT,
    peaks_json       TEXT,
    objective_value  DOUBLE PRECISION,
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

-- Row-level security (second fence): a campaign and its experiments belong to the organisation
-- that runs them; only its members see or change them. The engine's work is platform work.
GRANT SELECT, INSERT, UPDATE, DELETE ON campaigns, experiments TO maosic_app;
ALTER TABLE campaigns ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaigns FORCE ROW LEVEL SECURITY;
CREATE POLICY campaigns_all ON campaigns FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids')))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids')));
ALTER TABLE experiments ENABLE ROW LEVEL SECURITY;
ALTER TABLE experiments FORCE ROW LEVEL SECURITY;
CREATE POLICY experiments_all ON experiments FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids')))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids')));
