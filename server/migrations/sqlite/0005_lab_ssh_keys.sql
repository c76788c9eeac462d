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
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX lab_ssh_keys_active_fingerprint ON lab_ssh_keys(fingerprint)
    WHERE revoked_at IS NULL;
CREATE INDEX lab_ssh_keys_lab ON lab_ssh_keys(lab_id);
