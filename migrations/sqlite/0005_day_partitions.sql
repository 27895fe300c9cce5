-- PostgreSQL partitions results and host_metrics by day here; SQLite keeps one table each,
-- expired in small batches through results_time and host_metrics_time.
SELECT 1;
