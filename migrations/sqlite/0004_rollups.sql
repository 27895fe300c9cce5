-- Rollups: per-minute and per-hour aggregates, merged in as ingest batches commit.
-- bucket_ms is the start of the minute or hour. Latency figures cover successful results;
-- sketch is the fixed log-bucket histogram of their total_ms (control-plane/src/sketch.rs).
CREATE TABLE rollup_checks_minute (
    check_id TEXT NOT NULL,
    region TEXT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    sum_ms DOUBLE PRECISION NOT NULL,
    min_ms DOUBLE PRECISION,
    max_ms DOUBLE PRECISION,
    sketch BLOB NOT NULL,
    PRIMARY KEY (check_id, region, bucket_ms)
);
CREATE INDEX rollup_checks_minute_time ON rollup_checks_minute(bucket_ms);

CREATE TABLE rollup_checks_hour (
    check_id TEXT NOT NULL,
    region TEXT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    sum_ms DOUBLE PRECISION NOT NULL,
    min_ms DOUBLE PRECISION,
    max_ms DOUBLE PRECISION,
    sketch BLOB NOT NULL,
    PRIMARY KEY (check_id, region, bucket_ms)
);
CREATE INDEX rollup_checks_hour_time ON rollup_checks_hour(bucket_ms);

-- Per day: result and failure counts only, what uptime over weeks and months reads.
CREATE TABLE rollup_checks_day (
    check_id TEXT NOT NULL,
    region TEXT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    PRIMARY KEY (check_id, region, bucket_ms)
);
CREATE INDEX rollup_checks_day_time ON rollup_checks_day(bucket_ms);

-- metric: 0 cpu_pct, 1 mem_used_pct, 2 load1, 3 net_rx_bytes_per_s, 4 net_tx_bytes_per_s.
CREATE TABLE rollup_metrics_minute (
    agent_id TEXT NOT NULL,
    metric SMALLINT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (agent_id, metric, bucket_ms)
);
CREATE INDEX rollup_metrics_minute_time ON rollup_metrics_minute(bucket_ms);

CREATE TABLE rollup_metrics_hour (
    agent_id TEXT NOT NULL,
    metric SMALLINT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (agent_id, metric, bucket_ms)
);
CREATE INDEX rollup_metrics_hour_time ON rollup_metrics_hour(bucket_ms);
