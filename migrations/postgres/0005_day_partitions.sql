-- results and host_metrics partitioned by day on measured_at_ms (control-plane/src/store/
-- partitions.rs makes the day partitions ahead and retention drops them). Rows stored so far
-- go to the default partition; the first day partitions made take their days' rows out of it.
-- The primary key holds the partition key, so a replayed row (same agent, seq and
-- measurement time) still conflicts and is ignored.
ALTER TABLE results RENAME TO results_unpartitioned;
ALTER INDEX results_pkey RENAME TO results_unpartitioned_pkey;
ALTER INDEX results_check_time RENAME TO results_unpartitioned_check_time;
CREATE TABLE results (
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    check_id TEXT NOT NULL,
    region TEXT NOT NULL,
    measured_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    ok BOOLEAN NOT NULL,
    total_ms DOUBLE PRECISION NOT NULL,
    status_code BIGINT,
    reason TEXT NOT NULL,
    timings TEXT NOT NULL,
    result_values TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (agent_id, seq, measured_at_ms)
) PARTITION BY RANGE (measured_at_ms);
CREATE INDEX results_check_time ON results(check_id, measured_at_ms);
CREATE TABLE results_default PARTITION OF results DEFAULT;
-- Only the default partition is expired row by row; it needs the time index.
CREATE INDEX results_default_time ON results_default(measured_at_ms);
INSERT INTO results SELECT * FROM results_unpartitioned;
DROP TABLE results_unpartitioned;

ALTER TABLE host_metrics RENAME TO host_metrics_unpartitioned;
ALTER INDEX host_metrics_pkey RENAME TO host_metrics_unpartitioned_pkey;
ALTER INDEX host_metrics_time RENAME TO host_metrics_unpartitioned_time;
CREATE TABLE host_metrics (
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    region TEXT NOT NULL,
    measured_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    cpu_pct DOUBLE PRECISION NOT NULL,
    mem_total_bytes BIGINT NOT NULL,
    mem_used_bytes BIGINT NOT NULL,
    swap_total_bytes BIGINT NOT NULL,
    swap_used_bytes BIGINT NOT NULL,
    load1 DOUBLE PRECISION NOT NULL,
    load5 DOUBLE PRECISION NOT NULL,
    load15 DOUBLE PRECISION NOT NULL,
    uptime_s BIGINT NOT NULL,
    net_rx_bytes_per_s DOUBLE PRECISION NOT NULL,
    net_tx_bytes_per_s DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (agent_id, seq, measured_at_ms)
) PARTITION BY RANGE (measured_at_ms);
CREATE INDEX host_metrics_time ON host_metrics(agent_id, measured_at_ms);
CREATE TABLE host_metrics_default PARTITION OF host_metrics DEFAULT;
CREATE INDEX host_metrics_default_time ON host_metrics_default(measured_at_ms);
INSERT INTO host_metrics SELECT * FROM host_metrics_unpartitioned;
DROP TABLE host_metrics_unpartitioned;
