-- Accounts and access: login sessions (refresh-token families), refresh tokens, API tokens,
-- invitations, lab sharing with quotas, agent enrollment tokens. Secrets are stored as SHA-256.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);

CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    scope           TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    token_hash      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

CREATE TABLE invitations (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email           TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'researcher', 'viewer')),
    token_hash      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    accepted_at     INTEGER
);
CREATE INDEX invitations_org ON invitations(organization_id);

CREATE TABLE lab_shares (
    lab_id          TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    daily_quota     INTEGER NOT NULL CHECK (daily_quota >= 0),
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (lab_id, organization_id)
);
CREATE INDEX lab_shares_org ON lab_shares(organization_id);

CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    lab_id      TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX enrollment_tokens_lab ON enrollment_tokens(lab_id);
