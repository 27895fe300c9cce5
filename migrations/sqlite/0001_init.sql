-- Vantage schema, SQLite flavour. Times are milliseconds since the Unix epoch.
CREATE TABLE regions (
    id TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL REFERENCES regions(id),
    labels TEXT NOT NULL DEFAULT '{}',
    hostname TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    os TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    cert_serial TEXT NOT NULL,
    cert_not_after_ms BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'offline',
    last_seen_ms BIGINT,
    enrolled_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    config_revision BIGINT NOT NULL DEFAULT 0,
    desired_config TEXT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    next_seq BIGINT NOT NULL DEFAULT 0,
    spool_dropped_total BIGINT NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX agents_region ON agents(region);

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL REFERENCES regions(id),
    labels TEXT NOT NULL DEFAULT '{}',
    uses_left BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE checks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    interval_s BIGINT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    regions TEXT NOT NULL,
    quorum BIGINT NOT NULL DEFAULT 1,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE assignments (
    check_id TEXT NOT NULL REFERENCES checks(id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    region TEXT NOT NULL,
    PRIMARY KEY (check_id, agent_id)
);

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
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX results_check_time ON results(check_id, measured_at_ms);

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
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX host_metrics_time ON host_metrics(measured_at_ms);

CREATE TABLE events (
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    measured_at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (agent_id, seq)
);

-- The latest result per (check, region): what the retained status topics are rebuilt from.
CREATE TABLE check_status (
    check_id TEXT NOT NULL,
    region TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    ok BOOLEAN NOT NULL,
    reason TEXT NOT NULL,
    total_ms DOUBLE PRECISION NOT NULL,
    measured_at_ms BIGINT NOT NULL,
    PRIMARY KEY (check_id, region)
);
