-- SSH public keys registered for labs: the only keys the SSH endpoint accepts (issue #10).
-- A key identifies one lab; it is refused once revoked. The fingerprint is OpenSSH's
-- "SHA256:<base64>" of the key blob, unique among the keys in force.
CREATE TABLE lab_ssh_keys (
    id          TEXT PRIMARY KEY,
    lab_id      TEXT NOT NULL REFERENCES labs(id) ON DELETE CASCADE,
    algorithm   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE UNIQUE INDEX lab_ssh_keys_active_fingerprint ON lab_ssh_keys(fingerprint)
    WHERE revoked_at IS NULL;
CREATE INDEX lab_ssh_keys_lab ON lab_ssh_keys(lab_id);

-- Row-level security (second fence), as for agent credentials: the lab's managers only; the
-- SSH endpoint's key look-up and the admin CLI are platform work (maosic.bypass).
GRANT SELECT, INSERT, UPDATE, DELETE ON lab_ssh_keys TO maosic_app;
ALTER TABLE lab_ssh_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE lab_ssh_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY lab_ssh_keys_all ON lab_ssh_keys FOR ALL
    USING (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))))
    WITH CHECK (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))));
