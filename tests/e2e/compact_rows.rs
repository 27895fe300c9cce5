//! The compact-rows migration on both stores: rows stored in the earlier schema (text names,
//! timings as JSON) read back the same through the store after `0006_compact_rows`, and rows
//! committed after it reuse the keys the migration made.

use std::collections::BTreeMap;
use vantage_control_plane::store::keys::KeyCache;

use vantage_control_plane::rollup::Resolution;
use vantage_control_plane::store::ingest::IngestBatch;
use vantage_control_plane::store::{SeriesFilter, Store};
use vantage_mqtt::{CheckResult, Timings};
use vantage_tests::{Backend, TestStore};

/// The migrations before compact rows, then compact rows itself and those after it, per
/// dialect.
fn migrations(backend: Backend) -> (Vec<&'static str>, [&'static str; 2]) {
    match backend {
        Backend::Sqlite => (
            vec![
                include_str!("../../migrations/sqlite/0001_init.sql"),
                include_str!("../../migrations/sqlite/0002_spool_counters.sql"),
                include_str!("../../migrations/sqlite/0003_verdicts_incidents.sql"),
                include_str!("../../migrations/sqlite/0004_rollups.sql"),
                include_str!("../../migrations/sqlite/0005_day_partitions.sql"),
            ],
            [
                include_str!("../../migrations/sqlite/0006_compact_rows.sql"),
                include_str!("../../migrations/sqlite/0007_day_packs.sql"),
            ],
        ),
        Backend::Postgres => (
            vec![
                include_str!("../../migrations/postgres/0001_init.sql"),
                include_str!("../../migrations/postgres/0002_spool_counters.sql"),
                include_str!("../../migrations/postgres/0003_verdicts_incidents.sql"),
                include_str!("../../migrations/postgres/0004_rollups.sql"),
                include_str!("../../migrations/postgres/0005_day_partitions.sql"),
            ],
            [
                include_str!("../../migrations/postgres/0006_compact_rows.sql"),
                include_str!("../../migrations/postgres/0007_day_packs.sql"),
            ],
        ),
    }
}

/// Rows as the earlier schema held them.
const OLD_ROWS: &str = "
INSERT INTO results (agent_id, seq, check_id, region, measured_at_ms, received_at_ms, ok, total_ms,
    status_code, reason, timings, result_values) VALUES
  ('ag-1', 1, 'web', 'eu', 1000, 1500, TRUE, 10.5, 200, 'status 200',
   '{\"dns_ms\":1.5,\"connect_ms\":2.25,\"total_ms\":10.5}', '{\"cert_days_left\":61.0}'),
  ('ag-1', 2, 'web', 'eu', 61000, 61500, FALSE, 3000.0, NULL, 'connect: refused',
   '{\"total_ms\":3000.0}', '{}'),
  ('ag-2', 1, 'api', 'us', 2000, 2500, TRUE, 7.25, 204, 'status 200',
   '{\"ttfb_ms\":6.0,\"total_ms\":7.25}', '{}');
INSERT INTO host_metrics (agent_id, seq, region, measured_at_ms, received_at_ms, cpu_pct,
    mem_total_bytes, mem_used_bytes, swap_total_bytes, swap_used_bytes, load1, load5, load15,
    uptime_s, net_rx_bytes_per_s, net_tx_bytes_per_s, detail) VALUES
  ('ag-1', 3, 'eu', 5000, 5500, 12.5, 2048, 1024, 0, 0, 0.1, 0.25, 0.125, 99, 1000.7, 500.0,
   '{\"disks\":[]}');
INSERT INTO rollup_checks_hour (check_id, region, bucket_ms, n, failures, sum_ms, min_ms, max_ms,
    sketch) VALUES ('web', 'eu', 0, 2, 1, 10.5, 10.5, 10.5, X'00');
INSERT INTO rollup_checks_day (check_id, region, bucket_ms, n, failures) VALUES ('web', 'eu', 0, 2, 1);
INSERT INTO rollup_metrics_minute (agent_id, metric, bucket_ms, n, sum, min, max) VALUES
  ('ag-1', 0, 0, 1, 12.5, 12.5, 12.5);
";

async fn count(store: &Store, sql: &'static str) -> anyhow::Result<i64> {
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

crate::both_backends!(
    rows_stored_before_compact_rows_read_the_same_after_it,
    rows_stored_before_compact_rows_read_the_same_after_it
);

async fn rows_stored_before_compact_rows_read_the_same_after_it(
    backend: Backend,
) -> anyhow::Result<()> {
    // Keys of names and texts the commits share, as ingest's committers share them.
    let keys = KeyCache::default();
    let test_store = TestStore::create(backend).await?;
    let dir = tempfile::tempdir()?;
    let store = Store::connect(test_store.url.as_deref(), dir.path()).await?;
    let (before, compact) = migrations(backend);
    let old_rows = match backend {
        Backend::Sqlite => OLD_ROWS.to_owned(),
        Backend::Postgres => OLD_ROWS.replace("X'00'", "'\\x00'::bytea"),
    };
    // On one connection, as the migrator does: a pooled SQLite connection that has not read
    // the schema since a view replaced a table would refuse `DROP VIEW` on it.
    match &store {
        Store::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            for sql in before.into_iter().chain([old_rows.as_str()]).chain(compact) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Store::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            for sql in before.into_iter().chain([old_rows.as_str()]).chain(compact) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }

    let all = |agent: Option<&str>| SeriesFilter {
        agent: agent.map(str::to_owned),
        check: None,
        region: None,
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 100,
    };
    let rows = store.query_results(&all(None)).await?;
    assert_eq!(rows.len(), 3);
    let first = rows
        .iter()
        .find(|r| r.agent_id == "ag-1" && r.seq == 1)
        .expect("ag-1 seq 1");
    assert_eq!(
        (
            first.check_id.as_str(),
            first.region.as_str(),
            first.measured_at_ms,
            first.received_at_ms
        ),
        ("web", "eu", 1000, 1500)
    );
    assert!(first.ok);
    assert_eq!(first.status_code, Some(200));
    assert_eq!(first.reason, "status 200");
    assert_eq!(first.total_ms, 10.5);
    assert_eq!(first.timings.dns_ms, Some(1.5));
    assert_eq!(first.timings.connect_ms, Some(2.25));
    assert_eq!(first.timings.tls_ms, None);
    assert_eq!(first.timings.total_ms, 10.5);
    let values: BTreeMap<String, f64> = serde_json::from_str(&first.result_values)?;
    assert_eq!(
        values,
        BTreeMap::from([("cert_days_left".to_owned(), 61.0)])
    );
    let failed = rows
        .iter()
        .find(|r| r.agent_id == "ag-1" && r.seq == 2)
        .expect("ag-1 seq 2");
    assert!(!failed.ok);
    assert_eq!(failed.status_code, None);
    assert_eq!(failed.reason, "connect: refused");
    assert_eq!(failed.total_ms, 3000.0);
    assert_eq!(failed.result_values, "{}");
    let other = rows.iter().find(|r| r.agent_id == "ag-2").expect("ag-2");
    assert_eq!(
        (other.check_id.as_str(), other.region.as_str()),
        ("api", "us")
    );
    assert_eq!(other.timings.ttfb_ms, Some(6.0));
    assert_eq!(other.status_code, Some(204));

    let metrics = store.query_metrics(&all(Some("ag-1"))).await?;
    assert_eq!(metrics.len(), 1);
    let m = &metrics[0];
    assert_eq!((m.seq, m.measured_at_ms, m.received_at_ms), (3, 5000, 5500));
    assert_eq!(
        (m.cpu_pct, m.load1, m.net_rx_bytes_per_s),
        (12.5, 0.1, 1000.7)
    );
    assert_eq!((m.mem_used_bytes, m.uptime_s), (1024, 99));

    let hours = store
        .check_rollups(Resolution::Hour, &["web".to_owned()], 0, 3_600_000)
        .await?;
    assert_eq!(hours.len(), 1);
    assert_eq!((hours[0].1.count, hours[0].1.failures), (2, 1));
    let minutes = store
        .metric_rollups(Resolution::Minute, "ag-1", 0, 60_000)
        .await?;
    assert_eq!(minutes.len(), 1);
    assert_eq!(minutes[0].1.sum, 12.5);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM rollup_checks_day").await?,
        1
    );

    // Two agents, two checks, two regions, two reason texts and one values text: each once.
    assert_eq!(count(&store, "SELECT COUNT(*) FROM agent_keys").await?, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM check_keys").await?, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM region_keys").await?, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM texts").await?, 3);

    // A row committed now reuses the migrated keys; its texts, seen once by this process,
    // stay inline in the row (a text goes into `texts` once it repeats). The texts seen are
    // remembered per process, so each store's variant uses its own values text (`cargo test`
    // runs both in one process).
    let rtt_avg_ms = if store.is_postgres() { 1.25 } else { 1.5 };
    let batch = IngestBatch {
        results: vec![(
            "ag-1".to_owned(),
            "eu".to_owned(),
            CheckResult {
                seq: 4,
                measured_at_ms: 120_000,
                check_id: "web".into(),
                ok: true,
                reason: "status 200".into(),
                timings: Timings {
                    tls_ms: Some(3.125),
                    total_ms: 9.0,
                    ..Timings::default()
                },
                status_code: Some(200),
                values: BTreeMap::from([("rtt_avg_ms".to_owned(), rtt_avg_ms)]),
            },
        )],
        received_at_ms: 121_000,
        ..IngestBatch::default()
    };
    store.commit_batch(&batch, &keys).await?;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM texts").await?, 3);
    // Sent again: stored once; its values text now repeats and gets its dictionary row (which
    // retention deletes when no row uses it).
    store.commit_batch(&batch, &keys).await?;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM results").await?, 4);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM agent_keys").await?, 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM texts").await?, 4);
    let web = store
        .query_results(&SeriesFilter {
            check: Some("web".into()),
            ..all(None)
        })
        .await?;
    assert_eq!(web.len(), 3);
    assert_eq!(web[0].seq, 4, "newest first");
    assert_eq!(web[0].timings.tls_ms, Some(3.125));
    assert_eq!(web[0].reason, "status 200");
    let values: BTreeMap<String, f64> = serde_json::from_str(&web[0].result_values)?;
    assert_eq!(
        values,
        BTreeMap::from([("rtt_avg_ms".to_owned(), rtt_avg_ms)])
    );
    store.close().await;
    Ok(())
}
