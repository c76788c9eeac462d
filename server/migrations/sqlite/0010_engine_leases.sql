-- Issue 17 (replicas): which replica's campaign engine advances a lab's campaigns. One row per
-- lab; a replica renews its lease every second or so and may take a lease that expired, or
-- one whose holder does not hold the lab's agent while it does. `fence` grows with every change
-- of owner. (One process on SQLite: the table is there so both backends run the same engine.)
CREATE TABLE engine_leases (
    lab_id      TEXT PRIMARY KEY REFERENCES labs(id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,
    holds_agent INTEGER NOT NULL,
    until_ms    INTEGER NOT NULL,
    fence       INTEGER NOT NULL
);
