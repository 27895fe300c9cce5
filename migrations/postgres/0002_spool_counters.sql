-- Agent spool counters reported in heartbeats: rows dropped because they could never be sent,
-- and rows lost because the agent could not write its spool.
ALTER TABLE agents ADD COLUMN spool_unsendable_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN spool_write_errors_total BIGINT NOT NULL DEFAULT 0;
