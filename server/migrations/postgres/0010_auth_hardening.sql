-- Issue 15 (one tenant cannot hurt another): the attempt throttle shared by every replica
-- (log-in, sign-up, password change), sign-up requests awaiting e-mail verification, and the
-- mail outbox. All three are platform tables: reached only from system-scoped calls
-- (maosic.bypass = 'on'); the tenant role maosic_app gets no privilege on them, and FORCE'd
-- row-level security refuses everything without the bypass as a second fence.

-- One row per throttle key (a SHA-256 of e.g. "login:account:<email>"): attempts counted in a
-- fixed window starting at window_start. A reservation is one atomic upsert.
CREATE TABLE auth_throttle (
    key          TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    attempts     BIGINT NOT NULL
);
CREATE INDEX auth_throttle_window ON auth_throttle(window_start);

-- A sign-up becomes an account only when its e-mail is verified (verifyEmail); until then it
-- is a request, so nobody can squat an address they cannot read.
CREATE TABLE signup_requests (
    id                TEXT PRIMARY KEY,
    email             TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    organization_name TEXT NOT NULL,
    password_hash     TEXT NOT NULL,
    token_hash        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    used_at           BIGINT
);
CREATE INDEX signup_requests_email ON signup_requests(email);
CREATE INDEX signup_requests_expires ON signup_requests(expires_at);

-- Mail waiting for the mailer; a claim is a lease, the body is blanked once sent.
CREATE TABLE mail_outbox (
    id          TEXT PRIMARY KEY,
    recipient   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    lease_until BIGINT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    sent_at     BIGINT
);
CREATE INDEX mail_outbox_pending ON mail_outbox(created_at) WHERE sent_at IS NULL;

REVOKE ALL ON auth_throttle, signup_requests, mail_outbox FROM maosic_app;
ALTER TABLE auth_throttle ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth_throttle FORCE ROW LEVEL SECURITY;
CREATE POLICY auth_throttle_platform ON auth_throttle FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());
ALTER TABLE signup_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE signup_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY signup_requests_platform ON signup_requests FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());
ALTER TABLE mail_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE mail_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY mail_outbox_platform ON mail_outbox FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());
