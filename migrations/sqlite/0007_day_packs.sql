-- The views that readers use get a `day_ms` column: the UTC day a row's time falls in. On
-- PostgreSQL the same views also read the day packs (migrations/postgres/0007_day_packs.sql),
-- where `day_ms` bounds which packs are opened; readers give it with every time range so one
-- query serves both stores. SQLite keeps raw rows as rows (its records are already small).
DROP VIEW results;
CREATE VIEW results AS
    SELECT a.id AS agent_id, r.seq, c.id AS check_id, g.id AS region, r.measured_at_ms,
        r.received_at_ms, r.ok, r.total_us / 1000.0 AS total_ms, r.status_code,
        COALESCE(s.text, r.reason, '') AS reason, r.dns_us / 1000.0 AS dns_ms,
        r.connect_us / 1000.0 AS connect_ms, r.tls_us / 1000.0 AS tls_ms,
        r.ttfb_us / 1000.0 AS ttfb_ms, r.transfer_us / 1000.0 AS transfer_ms,
        COALESCE(v.text, r.result_values, '{}') AS result_values,
        r.measured_at_ms - (((r.measured_at_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM result_rows r
    JOIN check_keys c ON c.key = r.check_key
    JOIN agent_keys a ON a.key = r.agent_key
    JOIN region_keys g ON g.key = r.region_key
    LEFT JOIN texts s ON s.key = r.reason_key
    LEFT JOIN texts v ON v.key = r.values_key;

DROP VIEW host_metrics;
CREATE VIEW host_metrics AS
    SELECT a.id AS agent_id, m.seq, g.id AS region, m.measured_at_ms, m.received_at_ms, m.cpu_pct,
        m.mem_total_bytes, m.mem_used_bytes, m.swap_total_bytes, m.swap_used_bytes, m.load1,
        m.load5, m.load15, m.uptime_s, m.net_rx_bytes_per_s, m.net_tx_bytes_per_s, m.detail,
        m.measured_at_ms - (((m.measured_at_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM metric_rows m
    JOIN agent_keys a ON a.key = m.agent_key
    JOIN region_keys g ON g.key = m.region_key;

DROP VIEW rollup_checks_minute;
CREATE VIEW rollup_checks_minute AS
    SELECT c.id AS check_id, g.id AS region, t.bucket_ms, t.n, t.failures, t.sum_us / 1000.0 AS sum_ms,
        t.min_us / 1000.0 AS min_ms, t.max_us / 1000.0 AS max_ms, t.sketch,
        t.bucket_ms - (((t.bucket_ms % 86400000) + 86400000) % 86400000) AS day_ms
    FROM check_minutes t JOIN check_keys c ON c.key = t.check_key JOIN region_keys g ON g.key = t.region_key;
