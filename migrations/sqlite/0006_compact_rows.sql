-- Compact rows: raw results, host metrics and rollups keyed by small integers for agents,
-- checks and regions, phase timings and rollup latencies as integer microseconds, each
-- distinct reason text and probe-values text stored once. Every keyed table has one b-tree (WITHOUT ROWID, primary key first by check or agent
-- then time): the key serves replays (a row sent again is the same row and conflicts),
-- per-check and per-agent ranges, and retention, which walks it key by key.
-- The old tables' names become views that present the rows as before (texts, milliseconds)
-- for readers; writers (control-plane/src/store/ingest.rs, rollups.rs) use the keyed tables.
CREATE TABLE agent_keys (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE check_keys (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE region_keys (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
-- Reason texts and probe-values texts (JSON) that repeat, each stored once (a text seen only
-- once stays inline in its row: result_rows.reason, result_rows.result_values; see
-- control-plane/src/store/keys.rs). last_seen_ms: the newest
-- measurement or arrival of a row that used the text (refreshed at most hourly); retention
-- deletes texts no kept row can use.
CREATE TABLE texts (
    key INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE,
    last_seen_ms BIGINT NOT NULL
);
CREATE INDEX texts_last_seen ON texts(last_seen_ms);

INSERT INTO agent_keys (id)
    SELECT agent_id FROM results UNION SELECT agent_id FROM host_metrics
    UNION SELECT agent_id FROM rollup_metrics_minute UNION SELECT agent_id FROM rollup_metrics_hour;
INSERT INTO check_keys (id)
    SELECT check_id FROM results UNION SELECT check_id FROM rollup_checks_minute
    UNION SELECT check_id FROM rollup_checks_hour UNION SELECT check_id FROM rollup_checks_day;
INSERT INTO region_keys (id)
    SELECT region FROM results UNION SELECT region FROM host_metrics
    UNION SELECT region FROM rollup_checks_minute UNION SELECT region FROM rollup_checks_hour
    UNION SELECT region FROM rollup_checks_day;
INSERT INTO texts (text, last_seen_ms)
    SELECT t, MAX(seen) FROM (
        SELECT reason AS t, MAX(MAX(measured_at_ms), MAX(received_at_ms)) AS seen FROM results GROUP BY reason
        UNION ALL
        SELECT result_values, MAX(MAX(measured_at_ms), MAX(received_at_ms)) FROM results
        WHERE result_values <> '{}' GROUP BY result_values
    ) GROUP BY t;

CREATE TABLE result_rows (
    check_key INTEGER NOT NULL,
    measured_at_ms INTEGER NOT NULL,
    agent_key INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ok BOOLEAN NOT NULL,
    status_code INTEGER,
    reason_key INTEGER,
    total_us INTEGER NOT NULL,
    dns_us INTEGER,
    connect_us INTEGER,
    tls_us INTEGER,
    ttfb_us INTEGER,
    transfer_us INTEGER,
    values_key INTEGER,
    reason TEXT,
    result_values TEXT,
    PRIMARY KEY (check_key, measured_at_ms, agent_key, seq)
) WITHOUT ROWID;
INSERT INTO result_rows
    SELECT c.key, r.measured_at_ms, a.key, r.seq, g.key, r.received_at_ms, r.ok, r.status_code, s.key,
        CAST(ROUND(r.total_ms * 1000) AS INTEGER),
        CAST(ROUND(json_extract(r.timings, '$.dns_ms') * 1000) AS INTEGER),
        CAST(ROUND(json_extract(r.timings, '$.connect_ms') * 1000) AS INTEGER),
        CAST(ROUND(json_extract(r.timings, '$.tls_ms') * 1000) AS INTEGER),
        CAST(ROUND(json_extract(r.timings, '$.ttfb_ms') * 1000) AS INTEGER),
        CAST(ROUND(json_extract(r.timings, '$.transfer_ms') * 1000) AS INTEGER),
        v.key, NULL, NULL
    FROM results r
    JOIN check_keys c ON c.id = r.check_id
    JOIN agent_keys a ON a.id = r.agent_id
    JOIN region_keys g ON g.id = r.region
    JOIN texts s ON s.text = r.reason
    LEFT JOIN texts v ON v.text = r.result_values AND r.result_values <> '{}'
    WHERE true
    ON CONFLICT DO NOTHING;
DROP TABLE results;
CREATE VIEW results AS
    SELECT a.id AS agent_id, r.seq, c.id AS check_id, g.id AS region, r.measured_at_ms,
        r.received_at_ms, r.ok, r.total_us / 1000.0 AS total_ms, r.status_code,
        COALESCE(s.text, r.reason, '') AS reason, r.dns_us / 1000.0 AS dns_ms,
        r.connect_us / 1000.0 AS connect_ms, r.tls_us / 1000.0 AS tls_ms,
        r.ttfb_us / 1000.0 AS ttfb_ms, r.transfer_us / 1000.0 AS transfer_ms,
        COALESCE(v.text, r.result_values, '{}') AS result_values
    FROM result_rows r
    JOIN check_keys c ON c.key = r.check_key
    JOIN agent_keys a ON a.key = r.agent_key
    JOIN region_keys g ON g.key = r.region_key
    LEFT JOIN texts s ON s.key = r.reason_key
    LEFT JOIN texts v ON v.key = r.values_key;

CREATE TABLE metric_rows (
    agent_key INTEGER NOT NULL,
    measured_at_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    cpu_pct REAL NOT NULL,
    mem_total_bytes INTEGER NOT NULL,
    mem_used_bytes INTEGER NOT NULL,
    swap_total_bytes INTEGER NOT NULL,
    swap_used_bytes INTEGER NOT NULL,
    load1 REAL NOT NULL,
    load5 REAL NOT NULL,
    load15 REAL NOT NULL,
    uptime_s INTEGER NOT NULL,
    net_rx_bytes_per_s REAL NOT NULL,
    net_tx_bytes_per_s REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (agent_key, measured_at_ms, seq)
) WITHOUT ROWID;
INSERT INTO metric_rows
    SELECT a.key, m.measured_at_ms, m.seq, g.key, m.received_at_ms, m.cpu_pct, m.mem_total_bytes,
        m.mem_used_bytes, m.swap_total_bytes, m.swap_used_bytes, m.load1, m.load5, m.load15,
        m.uptime_s, m.net_rx_bytes_per_s, m.net_tx_bytes_per_s, m.detail
    FROM host_metrics m
    JOIN agent_keys a ON a.id = m.agent_id
    JOIN region_keys g ON g.id = m.region
    WHERE true
    ON CONFLICT DO NOTHING;
DROP TABLE host_metrics;
CREATE VIEW host_metrics AS
    SELECT a.id AS agent_id, m.seq, g.id AS region, m.measured_at_ms, m.received_at_ms, m.cpu_pct,
        m.mem_total_bytes, m.mem_used_bytes, m.swap_total_bytes, m.swap_used_bytes, m.load1,
        m.load5, m.load15, m.uptime_s, m.net_rx_bytes_per_s, m.net_tx_bytes_per_s, m.detail
    FROM metric_rows m
    JOIN agent_keys a ON a.key = m.agent_key
    JOIN region_keys g ON g.key = m.region_key;

CREATE TABLE check_minutes (
    check_key INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    sum_us INTEGER NOT NULL,
    min_us INTEGER,
    max_us INTEGER,
    sketch BLOB NOT NULL,
    PRIMARY KEY (check_key, bucket_ms, region_key)
) WITHOUT ROWID;
CREATE TABLE check_hours (
    check_key INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    sum_us INTEGER NOT NULL,
    min_us INTEGER,
    max_us INTEGER,
    sketch BLOB NOT NULL,
    PRIMARY KEY (check_key, bucket_ms, region_key)
) WITHOUT ROWID;
CREATE TABLE check_days (
    check_key INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (check_key, bucket_ms, region_key)
) WITHOUT ROWID;
INSERT INTO check_minutes
    SELECT c.key, g.key, t.bucket_ms, t.n, t.failures, CAST(ROUND(t.sum_ms * 1000) AS INTEGER),
        CAST(ROUND(t.min_ms * 1000) AS INTEGER), CAST(ROUND(t.max_ms * 1000) AS INTEGER), t.sketch
    FROM rollup_checks_minute t JOIN check_keys c ON c.id = t.check_id JOIN region_keys g ON g.id = t.region;
INSERT INTO check_hours
    SELECT c.key, g.key, t.bucket_ms, t.n, t.failures, CAST(ROUND(t.sum_ms * 1000) AS INTEGER),
        CAST(ROUND(t.min_ms * 1000) AS INTEGER), CAST(ROUND(t.max_ms * 1000) AS INTEGER), t.sketch
    FROM rollup_checks_hour t JOIN check_keys c ON c.id = t.check_id JOIN region_keys g ON g.id = t.region;
INSERT INTO check_days
    SELECT c.key, g.key, t.bucket_ms, t.n, t.failures
    FROM rollup_checks_day t JOIN check_keys c ON c.id = t.check_id JOIN region_keys g ON g.id = t.region;
DROP TABLE rollup_checks_minute;
DROP TABLE rollup_checks_hour;
DROP TABLE rollup_checks_day;
CREATE VIEW rollup_checks_minute AS
    SELECT c.id AS check_id, g.id AS region, t.bucket_ms, t.n, t.failures, t.sum_us / 1000.0 AS sum_ms,
        t.min_us / 1000.0 AS min_ms, t.max_us / 1000.0 AS max_ms, t.sketch
    FROM check_minutes t JOIN check_keys c ON c.key = t.check_key JOIN region_keys g ON g.key = t.region_key;
CREATE VIEW rollup_checks_hour AS
    SELECT c.id AS check_id, g.id AS region, t.bucket_ms, t.n, t.failures, t.sum_us / 1000.0 AS sum_ms,
        t.min_us / 1000.0 AS min_ms, t.max_us / 1000.0 AS max_ms, t.sketch
    FROM check_hours t JOIN check_keys c ON c.key = t.check_key JOIN region_keys g ON g.key = t.region_key;
CREATE VIEW rollup_checks_day AS
    SELECT c.id AS check_id, g.id AS region, t.bucket_ms, t.n, t.failures
    FROM check_days t JOIN check_keys c ON c.key = t.check_key JOIN region_keys g ON g.key = t.region_key;

CREATE TABLE metric_minutes (
    agent_key INTEGER NOT NULL,
    metric SMALLINT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (agent_key, bucket_ms, metric)
) WITHOUT ROWID;
CREATE TABLE metric_hours (
    agent_key INTEGER NOT NULL,
    metric SMALLINT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (agent_key, bucket_ms, metric)
) WITHOUT ROWID;
INSERT INTO metric_minutes
    SELECT a.key, t.metric, t.bucket_ms, t.n, t.sum, t.min, t.max
    FROM rollup_metrics_minute t JOIN agent_keys a ON a.id = t.agent_id;
INSERT INTO metric_hours
    SELECT a.key, t.metric, t.bucket_ms, t.n, t.sum, t.min, t.max
    FROM rollup_metrics_hour t JOIN agent_keys a ON a.id = t.agent_id;
DROP TABLE rollup_metrics_minute;
DROP TABLE rollup_metrics_hour;
CREATE VIEW rollup_metrics_minute AS
    SELECT a.id AS agent_id, t.metric, t.bucket_ms, t.n, t.sum, t.min, t.max
    FROM metric_minutes t JOIN agent_keys a ON a.key = t.agent_key;
CREATE VIEW rollup_metrics_hour AS
    SELECT a.id AS agent_id, t.metric, t.bucket_ms, t.n, t.sum, t.min, t.max
    FROM metric_hours t JOIN agent_keys a ON a.key = t.agent_key;
