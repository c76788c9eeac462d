-- Tenant limits and hardening (issue 15).
--
-- 1. Share rights: what an organisation a lab is shared with may do on it. `view` sees the lab,
--    `run` also runs campaigns and queues experiments (the behaviour of every share before this
--    migration, hence the default), `instruct` also sends instructions and stops the lab.
ALTER TABLE lab_shares ADD COLUMN rights TEXT NOT NULL DEFAULT 'run'
    CHECK (rights IN ('view', 'run', 'instruct'));

-- 2. Direct instructions (sendInstruction, stopLab), kept so a sharee's count against its daily
--    quota, and so the owning organisation sees everything that targeted its lab.
CREATE TABLE lab_instructions (
    id              TEXT PRIMARY KEY,
    lab_id          TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_by      TEXT NOT NULL,
    method          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX lab_instructions_org ON lab_instructions(lab_id, organization_id, created_at);
CREATE INDEX lab_commands_org ON lab_commands(lab_id, organization_id, created_at);

-- 3. Per-lab ingestion accounting (bytes and records per UTC day), written in the same
--    transaction as each stored record: platform work only.
CREATE TABLE lab_ingest_usage (
    lab_id   TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    day      BIGINT NOT NULL,
    bytes    BIGINT NOT NULL DEFAULT 0,
    records  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (lab_id, day)
);

-- Row-level security for every table a tenant's calls may touch; platform-only tables are not
-- granted to the application role at all.
ALTER TABLE lab_instructions ENABLE ROW LEVEL SECURITY;
ALTER TABLE lab_instructions FORCE ROW LEVEL SECURITY;
CREATE POLICY lab_instructions_all ON lab_instructions FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids'))
           OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids'))))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids')));

-- The owning organisation sees and cancels every command that targets its labs.
CREATE POLICY lab_commands_lab_owner ON lab_commands FOR ALL
    USING (lab_id IN (SELECT id FROM labs
                      WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids'))))
    WITH CHECK (lab_id IN (SELECT id FROM labs
                      WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids'))));

REVOKE ALL ON lab_ingest_usage FROM maosic_app;
ALTER TABLE lab_ingest_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE lab_ingest_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY lab_ingest_usage_platform ON lab_ingest_usage FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());

-- agent_records: readable by the lab's organisation and by the organisation whose experiment
-- or queued instruction a record belongs to; written by platform work only (the gateway).
ALTER TABLE agent_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_records FORCE ROW LEVEL SECURITY;
CREATE POLICY agent_records_read ON agent_records FOR SELECT
    USING (maosic_bypass()
           OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids')))
           OR program_id IN (SELECT id FROM experiments
                             WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids')))
           OR program_id IN (SELECT id FROM lab_commands
                             WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids'))));
CREATE POLICY agent_records_platform ON agent_records FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());

-- users: a principal reads itself and the members of its organisations, and changes only itself.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_read ON users FOR SELECT
    USING (maosic_bypass() OR id = maosic_user()
           OR id IN (SELECT user_id FROM memberships
                     WHERE organization_id = ANY (maosic_setting_list('maosic.org_ids'))));
CREATE POLICY users_write ON users FOR ALL
    USING (maosic_bypass() OR id = maosic_user())
    WITH CHECK (maosic_bypass() OR id = maosic_user());

-- sessions and refresh tokens: their own user only.
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_own ON sessions FOR ALL
    USING (maosic_bypass() OR user_id = maosic_user())
    WITH CHECK (maosic_bypass() OR user_id = maosic_user());
ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY refresh_tokens_own ON refresh_tokens FOR ALL
    USING (maosic_bypass() OR session_id IN (SELECT id FROM sessions WHERE user_id = maosic_user()))
    WITH CHECK (maosic_bypass() OR session_id IN (SELECT id FROM sessions WHERE user_id = maosic_user()));
