-- PostgreSQL partitions results and host_metrics by day here; SQLite keeps one table each,
-- expired in small batches: results check by check through results_check_time,
-- host_metrics through host_metrics_time.
SELECT 1;
