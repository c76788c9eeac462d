-- Issue 17 (replicas): which replica's campaign engine advances a lab's campaigns. One row per
-- lab; a replica renews its lease every second or so and may take a lease that expired, or
-- one whose holder does not hold the lab's agent while it does. `fence` grows with every change
-- of owner. A platform table: reached only from the engine's system-scoped calls.
CREATE TABLE engine_leases (
    lab_id      TEXT PRIMARY KEY REFERENCES labs(id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,
    holds_agent BIGINT NOT NULL,
    until_ms    BIGINT NOT NULL,
    fence       BIGINT NOT NULL
);

REVOKE ALL ON engine_leases FROM maosic_app;
ALTER TABLE engine_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE engine_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY engine_leases_platform ON engine_leases FOR ALL
    USING (maosic_bypass()) WITH CHECK (maosic_bypass());
