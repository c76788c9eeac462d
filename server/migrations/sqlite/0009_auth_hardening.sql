-- Issue 15 (one tenant cannot hurt another): the attempt throttle shared by every server on
-- this database (log-in, sign-up, password change), sign-up requests awaiting e-mail
-- verification, and the mail outbox. See the PostgreSQL migration 0010 for the details.
CREATE TABLE auth_throttle (
    key          TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    attempts     INTEGER NOT NULL
);
CREATE INDEX auth_throttle_window ON auth_throttle(window_start);

CREATE TABLE signup_requests (
    id                TEXT PRIMARY KEY,
    email             TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    organization_name TEXT NOT NULL,
    password_hash     TEXT NOT NULL,
    token_hash        TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    used_at           INTEGER
);
CREATE INDEX signup_requests_email ON signup_requests(email);
CREATE INDEX signup_requests_expires ON signup_requests(expires_at);

CREATE TABLE mail_outbox (
    id          TEXT PRIMARY KEY,
    recipient   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    lease_until INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    sent_at     INTEGER
);
CREATE INDEX mail_outbox_pending ON mail_outbox(created_at) WHERE sent_at IS NULL;
