-- Foundation tables: tenants, people, labs, agent credentials, audit log.
-- Times are integer milliseconds since the Unix epoch (identical on both backends).
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'researcher', 'viewer')),
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE labs (
    id                    TEXT PRIMARY KEY,
    organization_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    -- presence: generation increases with every accepted agent connection (RELIABILITY rule 4)
    connection_generation BIGINT NOT NULL DEFAULT 0,
    online                BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_at          BIGINT,
    agent_version         TEXT,
    devices               TEXT NOT NULL DEFAULT '[]',
    descriptor            TEXT,
    UNIQUE (organization_id, name)
);

CREATE TABLE agent_credentials (
    id          TEXT PRIMARY KEY,
    lab_id      TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX agent_credentials_lab ON agent_credentials(lab_id);

CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    organization_id TEXT REFERENCES organizations(id) ON DELETE CASCADE,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT NOT NULL,
    detail          TEXT NOT NULL DEFAULT '{}',
    source          TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX audit_log_org_time ON audit_log(organization_id, created_at);
