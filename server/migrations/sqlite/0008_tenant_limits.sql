-- Tenant limits and hardening (issue 15); see the PostgreSQL migration 0009 for the reasons.
-- SQLite has no row-level security: the resolvers' checks are the fence.
ALTER TABLE lab_shares ADD COLUMN rights TEXT NOT NULL DEFAULT 'run'
    CHECK (rights IN ('view', 'run', 'instruct'));

CREATE TABLE lab_instructions (
    id              TEXT PRIMARY KEY,
    lab_id          TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_by      TEXT NOT NULL,
    method          TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX lab_instructions_org ON lab_instructions(lab_id, organization_id, created_at);
CREATE INDEX lab_commands_org ON lab_commands(lab_id, organization_id, created_at);

CREATE TABLE lab_ingest_usage (
    lab_id   TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    day      INTEGER NOT NULL,
    bytes    INTEGER NOT NULL DEFAULT 0,
    records  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lab_id, day)
);
