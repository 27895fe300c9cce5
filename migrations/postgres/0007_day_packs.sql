-- Day packs. A heap tuple costs a raw result ~175 bytes with its index entry; packed, ~30.
-- Once a UTC day is over (two hours after its end, control-plane/src/store/packs.rs), its
-- raw results, host metrics and minute rollups move out of their day partition into one row
-- per (check, agent), (agent) or (check, region) whose columns are arrays: element i of every
-- array is the day's i-th row. PostgreSQL compresses such wide rows (TOAST). The emptied
-- partition is truncated and stays until retention drops the day; a row that arrives late
-- for a packed day goes into it and joins the pack on the next pass. Packs expire with their
-- day. The views under the old names read partitions and packs alike; `day_ms` (the UTC day
-- of a row) lets readers say which days' packs to open.

-- Minute rollups get day partitions too, so packing and expiring them never deletes row by row.
DROP VIEW rollup_checks_minute;
ALTER TABLE check_minutes RENAME TO check_minutes_unpartitioned;
ALTER INDEX check_minutes_pkey RENAME TO check_minutes_unpartitioned_pkey;
CREATE TABLE check_minutes (
    check_key INTEGER NOT NULL,
    region_key INTEGER NOT NULL,
    bucket_ms BIGINT NOT NULL,
    n BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    sum_us BIGINT NOT NULL,
    min_us BIGINT,
    max_us BIGINT,
    sketch BYTEA NOT NULL,
    PRIMARY KEY (check_key, bucket_ms, region_key)
) PARTITION BY RANGE (bucket_ms);
CREATE TABLE check_minutes_default PARTITION OF check_minutes DEFAULT;
CREATE INDEX check_minutes_default_time ON check_minutes_default(bucket_ms);
-- Into the default partition; the control plane moves them into their days as it makes them.
INSERT INTO check_minutes SELECT * FROM check_minutes_unpartitioned;
DROP TABLE check_minutes_unpartitioned;

CREATE TABLE result_packs (
    check_key INTEGER NOT NULL,
    day_ms BIGINT NOT NULL,
    agent_key INTEGER NOT NULL,
    -- How many rows the arrays hold.
    n_rows INTEGER NOT NULL,
    -- measured_at_ms - day_ms
    at_ms INTEGER[] NOT NULL,
    seq BIGINT[] NOT NULL,
    -- received_at_ms - measured_at_ms
    received_ms BIGINT[] NOT NULL,
    region_key INTEGER[] NOT NULL,
    ok BOOLEAN[] NOT NULL,
    status_code INTEGER[] NOT NULL,
    total_us INTEGER[] NOT NULL,
    dns_us INTEGER[] NOT NULL,
    connect_us INTEGER[] NOT NULL,
    tls_us INTEGER[] NOT NULL,
    ttfb_us INTEGER[] NOT NULL,
    transfer_us INTEGER[] NOT NULL,
    reason_key BIGINT[] NOT NULL,
    values_key BIGINT[] NOT NULL,
    reason TEXT[] NOT NULL,
    result_values TEXT[] NOT NULL,
    PRIMARY KEY (check_key, day_ms, agent_key)
);

CREATE TABLE metric_packs (
    agent_key INTEGER NOT NULL,
    day_ms BIGINT NOT NULL,
    n_rows INTEGER NOT NULL,
    at_ms INTEGER[] NOT NULL,
    seq BIGINT[] NOT NULL,
    received_ms BIGINT[] NOT NULL,
    region_key INTEGER[] NOT NULL,
    mem_total_bytes BIGINT[] NOT NULL,
    mem_used_bytes BIGINT[] NOT NULL,
    swap_total_bytes BIGINT[] NOT NULL,
    swap_used_bytes BIGINT[] NOT NULL,
    uptime_s BIGINT[] NOT NULL,
    load1 DOUBLE PRECISION[] NOT NULL,
    load5 DOUBLE PRECISION[] NOT NULL,
    load15 DOUBLE PRECISION[] NOT NULL,
    net_rx_bytes_per_s DOUBLE PRECISION[] NOT NULL,
    net_tx_bytes_per_s DOUBLE PRECISION[] NOT NULL,
    cpu_pct REAL[] NOT NULL,
    detail TEXT[] NOT NULL,
    PRIMARY KEY (agent_key, day_ms)
);

CREATE TABLE check_minute_packs (
    check_key INTEGER NOT NULL,
    day_ms BIGINT NOT NULL,
    region_key INTEGER NOT NULL,
    n_rows INTEGER NOT NULL,
    -- bucket_ms - day_ms
    at_ms INTEGER[] NOT NULL,
    n BIGINT[] NOT NULL,
    failures BIGINT[] NOT NULL,
    sum_us BIGINT[] NOT NULL,
    min_us BIGINT[] NOT NULL,
    max_us BIGINT[] NOT NULL,
    sketch BYTEA[] NOT NULL,
    PRIMARY KEY (check_key, day_ms, region_key)
);

DROP VIEW results;
CREATE VIEW results AS
    SELECT a.id AS agent_id, r.seq, c.id AS check_id, g.id AS region, r.measured_at_ms,
        r.received_at_ms, r.ok, r.total_us::float8 / 1000 AS total_ms,
        r.status_code::bigint AS status_code, COALESCE(s.text, r.reason, '') AS reason,
        r.dns_us::float8 / 1000 AS dns_ms, r.connect_us::float8 / 1000 AS connect_ms,
        r.tls_us::float8 / 1000 AS tls_ms, r.ttfb_us::float8 / 1000 AS ttfb_ms,
        r.transfer_us::float8 / 1000 AS transfer_ms,
        COALESCE(v.text, r.result_values, '{}') AS result_values,
        r.measured_at_ms - (((r.measured_at_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM result_rows r
    JOIN check_keys c ON c.key = r.check_key
    JOIN agent_keys a ON a.key = r.agent_key
    JOIN region_keys g ON g.key = r.region_key
    LEFT JOIN texts s ON s.key = r.reason_key
    LEFT JOIN texts v ON v.key = r.values_key
    UNION ALL
    SELECT a.id, u.seq, c.id, g.id, p.day_ms + u.at_ms, p.day_ms + u.at_ms + u.received_ms, u.ok,
        u.total_us::float8 / 1000, u.status_code::bigint, COALESCE(s.text, u.reason, ''),
        u.dns_us::float8 / 1000, u.connect_us::float8 / 1000, u.tls_us::float8 / 1000,
        u.ttfb_us::float8 / 1000, u.transfer_us::float8 / 1000,
        COALESCE(v.text, u.result_values, '{}'), p.day_ms
    FROM result_packs p
    CROSS JOIN LATERAL unnest(p.at_ms, p.seq, p.received_ms, p.region_key, p.ok, p.status_code,
        p.total_us, p.dns_us, p.connect_us, p.tls_us, p.ttfb_us, p.transfer_us, p.reason_key,
        p.values_key, p.reason, p.result_values)
        AS u(at_ms, seq, received_ms, region_key, ok, status_code, total_us, dns_us, connect_us,
            tls_us, ttfb_us, transfer_us, reason_key, values_key, reason, result_values)
    JOIN check_keys c ON c.key = p.check_key
    JOIN agent_keys a ON a.key = p.agent_key
    JOIN region_keys g ON g.key = u.region_key
    LEFT JOIN texts s ON s.key = u.reason_key
    LEFT JOIN texts v ON v.key = u.values_key;

DROP VIEW host_metrics;
CREATE VIEW host_metrics AS
    SELECT a.id AS agent_id, m.seq, g.id AS region, m.measured_at_ms, m.received_at_ms,
        m.cpu_pct::float8 AS cpu_pct, m.mem_total_bytes, m.mem_used_bytes, m.swap_total_bytes,
        m.swap_used_bytes, m.load1, m.load5, m.load15, m.uptime_s, m.net_rx_bytes_per_s,
        m.net_tx_bytes_per_s, m.detail,
        m.measured_at_ms - (((m.measured_at_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM metric_rows m
    JOIN agent_keys a ON a.key = m.agent_key
    JOIN region_keys g ON g.key = m.region_key
    UNION ALL
    SELECT a.id, u.seq, g.id, p.day_ms + u.at_ms, p.day_ms + u.at_ms + u.received_ms,
        u.cpu_pct::float8, u.mem_total_bytes, u.mem_used_bytes, u.swap_total_bytes,
        u.swap_used_bytes, u.load1, u.load5, u.load15, u.uptime_s, u.net_rx_bytes_per_s,
        u.net_tx_bytes_per_s, u.detail, p.day_ms
    FROM metric_packs p
    CROSS JOIN LATERAL unnest(p.at_ms, p.seq, p.received_ms, p.region_key, p.mem_total_bytes,
        p.mem_used_bytes, p.swap_total_bytes, p.swap_used_bytes, p.uptime_s, p.load1, p.load5,
        p.load15, p.net_rx_bytes_per_s, p.net_tx_bytes_per_s, p.cpu_pct, p.detail)
        AS u(at_ms, seq, received_ms, region_key, mem_total_bytes, mem_used_bytes,
            swap_total_bytes, swap_used_bytes, uptime_s, load1, load5, load15, net_rx_bytes_per_s,
            net_tx_bytes_per_s, cpu_pct, detail)
    JOIN agent_keys a ON a.key = p.agent_key
    JOIN region_keys g ON g.key = u.region_key;

CREATE VIEW rollup_checks_minute AS
    SELECT c.id AS check_id, g.id AS region, t.bucket_ms, t.n, t.failures, t.sum_us::float8 / 1000 AS sum_ms,
        t.min_us::float8 / 1000 AS min_ms, t.max_us::float8 / 1000 AS max_ms, t.sketch,
        t.bucket_ms - (((t.bucket_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM check_minutes t JOIN check_keys c ON c.key = t.check_key JOIN region_keys g ON g.key = t.region_key
    UNION ALL
    SELECT c.id, g.id, p.day_ms + u.at_ms, u.n, u.failures, u.sum_us::float8 / 1000,
        u.min_us::float8 / 1000, u.max_us::float8 / 1000, u.sketch, p.day_ms
    FROM check_minute_packs p
    CROSS JOIN LATERAL unnest(p.at_ms, p.n, p.failures, p.sum_us, p.min_us, p.max_us, p.sketch)
        AS u(at_ms, n, failures, sum_us, min_us, max_us, sketch)
    JOIN check_keys c ON c.key = p.check_key JOIN region_keys g ON g.key = p.region_key;
