-- Issue 17 (replicas): the replica holding a lab's agent connection, so a call made on another
-- replica is relayed to it.
ALTER TABLE labs ADD COLUMN connected_replica TEXT;
