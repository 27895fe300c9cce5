//! Retention and rollups on both stores, with 40 days of generated rows committed through the
//! ingest path's own transaction: raw rows past the window are deleted, rollups stay and
//! equal the raw aggregates they replace, uptime, latency and host metric series read them, a replayed batch
//! counts once, and the SQLite file shrinks.

use std::collections::BTreeMap;
use vantage_control_plane::store::keys::KeyCache;

use serde_json::json;
use vantage_control_plane::rollup::{self, Resolution, Retention};
use vantage_control_plane::sketch::{CheckAggregate, RELATIVE_ERROR};
use vantage_control_plane::store::ingest::IngestBatch;
use vantage_control_plane::store::packs::PACK_AFTER_MS;
use vantage_control_plane::store::{Store, now_ms};
use vantage_mqtt::{CheckResult, HostMetrics, NetUsage, Timings};
use vantage_tests::{Backend, TestStore};

const DAY_MS: i64 = 86_400_000;
const STEP_MS: i64 = 600_000;
const CHECKS: [&str; 3] = ["web", "api", "db"];
const REGIONS: [&str; 2] = ["eu", "us"];

/// A generated result: (check, region, measured_at_ms, ok, total_ms).
type RawRow = (String, String, i64, bool, f64);

/// A deterministic latency and outcome for the i-th result of a (check, region).
fn outcome(check: usize, region: usize, i: i64) -> (bool, f64) {
    let x = (i as u64).wrapping_mul(2_654_435_761) % 1000;
    let ok = x >= 30 + 20 * check as u64;
    let ms = 5.0 + (check * 40 + region * 7) as f64 + (x as f64).powf(1.3) / 3.0;
    (ok, ms)
}

/// Forty days of results every 10 minutes for 3 checks × 2 regions, plus two agents' metrics,
/// in batches of about 2,000 rows: (batches, the raw rows as (check, region, t, ok, ms)).
fn generated(now: i64) -> (Vec<IngestBatch>, Vec<RawRow>) {
    let start = now - 40 * DAY_MS;
    let mut raw = Vec::new();
    let mut batches = Vec::new();
    let mut batch = IngestBatch::default();
    let mut seq = [0u64; 2];
    let mut t = start;
    let mut i = 0;
    while t < now {
        for (c, check) in CHECKS.iter().enumerate() {
            for (r, region) in REGIONS.iter().enumerate() {
                let (ok, ms) = outcome(c, r, i);
                seq[r] += 1;
                batch.results.push((
                    format!("ag-{region}"),
                    (*region).to_owned(),
                    CheckResult {
                        seq: seq[r],
                        measured_at_ms: t,
                        check_id: (*check).to_owned(),
                        ok,
                        reason: if ok { "ok".into() } else { "refused".into() },
                        timings: Timings {
                            total_ms: ms,
                            ..Timings::default()
                        },
                        status_code: None,
                        values: BTreeMap::new(),
                    },
                ));
                raw.push(((*check).to_owned(), (*region).to_owned(), t, ok, ms));
            }
        }
        for (r, region) in REGIONS.iter().enumerate() {
            seq[r] += 1;
            batch.metrics.push((
                format!("ag-{region}"),
                (*region).to_owned(),
                HostMetrics {
                    seq: seq[r],
                    measured_at_ms: t,
                    cpu_pct: (i % 100) as f32,
                    cores_pct: None,
                    mem_total_bytes: 1000,
                    mem_used_bytes: 500,
                    swap_total_bytes: 0,
                    swap_used_bytes: 0,
                    load1: 0.5,
                    load5: 0.5,
                    load15: 0.5,
                    uptime_s: 1,
                    disks: vec![],
                    nets: vec![NetUsage {
                        iface: "eth0".into(),
                        rx_bytes: 0,
                        tx_bytes: 0,
                        rx_bytes_per_s: 10.0,
                        tx_bytes_per_s: 20.0,
                    }],
                },
            ));
        }
        if batch.len() >= 2000 {
            batch.received_at_ms = now;
            batches.push(std::mem::take(&mut batch));
        }
        t += STEP_MS;
        i += 1;
    }
    batch.received_at_ms = now;
    batches.push(batch);
    (batches, raw)
}

async fn open(test_store: &TestStore, dir: &std::path::Path) -> anyhow::Result<Store> {
    let store = Store::connect(test_store.url.as_deref(), dir).await?;
    store.migrate().await?;
    Ok(store)
}

async fn count(store: &Store, sql: &str) -> anyhow::Result<i64> {
    Ok(match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?
        }
    })
}

/// The exact nearest-rank quantile of sorted values.
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

crate::both_backends!(
    forty_days_expire_to_rollups_that_equal_the_raw_rows,
    forty_days_expire_to_rollups_that_equal_the_raw_rows
);

async fn forty_days_expire_to_rollups_that_equal_the_raw_rows(
    backend: Backend,
) -> anyhow::Result<()> {
    // Keys of names and texts the commits share, as ingest's committers share them.
    let keys = KeyCache::default();
    let test_store = TestStore::create(backend).await?;
    let dir = tempfile::tempdir()?;
    let store = open(&test_store, dir.path()).await?;
    let now = now_ms();
    for check in CHECKS {
        let definition: vantage_control_plane::checks::CheckDefinition =
            serde_json::from_value(json!({
                "name": check, "interval_s": 600, "timeout_ms": 1000, "regions": REGIONS,
                "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}
            }))?;
        store
            .insert_check(&vantage_control_plane::checks::to_row(
                check.to_owned(),
                &definition,
                now,
            ))
            .await?;
    }
    let keep = Retention {
        raw_ms: 7 * DAY_MS,
        minute_ms: 14 * DAY_MS,
        hour_ms: 365 * DAY_MS,
    };
    let (batches, raw) = generated(now);
    // The newest batch before any day partition exists: on PostgreSQL its rows wait in the
    // default partition and move into their days when those are made.
    store
        .commit_batch(batches.last().expect("batches"), &keys)
        .await?;
    // PostgreSQL: day partitions from the oldest kept day to 3 days ahead: 11 for each raw
    // table, 18 for the minute rollups (kept 14 days); older rows go to the default partition.
    let made = store.prepare_partitions(&keep, now).await?;
    assert_eq!(
        made.len(),
        if backend == Backend::Postgres { 40 } else { 0 }
    );
    assert!(store.prepare_partitions(&keep, now).await?.is_empty());
    // Where retention cuts at `at`: SQLite to the millisecond, PostgreSQL at the start of
    // the day partition holding the cut (a day is dropped whole once it is all past).
    let cut = |at: i64| match backend {
        Backend::Sqlite => at - keep.raw_ms,
        Backend::Postgres => (at - keep.raw_ms).div_euclid(DAY_MS) * DAY_MS,
    };
    if backend == Backend::Postgres {
        let left = count(
            &store,
            &format!(
                "SELECT COUNT(*) FROM result_rows_default WHERE measured_at_ms >= {}",
                cut(now)
            ),
        )
        .await?;
        assert_eq!(
            left, 0,
            "rows of partitioned days left in the default partition"
        );
    }
    // Part of a batch before the whole of it: the whole is then part replay, part new.
    let second = &batches[1];
    store
        .commit_batch(
            &IngestBatch {
                results: second.results[..second.results.len() / 2].to_vec(),
                metrics: second.metrics[..second.metrics.len() / 3].to_vec(),
                events: vec![],
                received_at_ms: now,
            },
            &keys,
        )
        .await?;
    for batch in &batches {
        store.commit_batch(batch, &keys).await?;
    }
    // A replay of batches already stored (an agent resending after a crash before its ack)
    // changes no rollup.
    for batch in batches.iter().step_by(7) {
        store.commit_batch(batch, &keys).await?;
    }
    let n_raw = raw.len() as i64;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM results").await?, n_raw);
    for table in [
        "rollup_checks_minute",
        "rollup_checks_hour",
        "rollup_checks_day",
    ] {
        let sum = count(
            &store,
            &format!("SELECT CAST(SUM(n) AS BIGINT) FROM {table}"),
        )
        .await?;
        assert_eq!(sum, n_raw, "{table}");
    }
    let n_samples = count(&store, "SELECT COUNT(*) FROM host_metrics").await?;
    let cpu_hours = count(
        &store,
        "SELECT CAST(SUM(n) AS BIGINT) FROM rollup_metrics_hour WHERE metric = 0",
    )
    .await?;
    assert_eq!(cpu_hours, n_samples);

    // Hourly rollups equal the raw aggregates of their hour: counts, failures, min and max
    // exactly, the mean to rounding, percentiles within the sketch's stated error. The store
    // keeps latencies to the microsecond, raw rows and rollups alike.
    let ids: Vec<String> = CHECKS.iter().map(|c| (*c).to_owned()).collect();
    let hours = store
        .check_rollups(Resolution::Hour, &ids, 0, now + DAY_MS)
        .await?;
    let mut expected: BTreeMap<(String, String, i64), (CheckAggregate, Vec<f64>)> = BTreeMap::new();
    for (check, region, t, ok, ms) in &raw {
        let ms = &(vantage_control_plane::store::micros(*ms) as f64 / 1000.0);
        let entry = expected
            .entry((
                check.clone(),
                region.clone(),
                Resolution::Hour.bucket_of(*t),
            ))
            .or_default();
        entry.0.add(*ok, *ms);
        if *ok {
            entry.1.push(*ms);
        }
    }
    assert_eq!(hours.len(), expected.len());
    for (bucket, got) in &hours {
        let (want, mut values) = expected
            .remove(&(
                bucket.check_id.clone(),
                bucket.region.clone(),
                bucket.bucket_ms,
            ))
            .expect("an hour that has raw rows");
        assert_eq!((got.count, got.failures), (want.count, want.failures));
        assert_eq!((got.min_ms, got.max_ms), (want.min_ms, want.max_ms));
        assert!((got.sum_ms - want.sum_ms).abs() <= want.sum_ms * 1e-12);
        values.sort_by(f64::total_cmp);
        for q in [0.5, 0.95, 0.99] {
            if let Some(got_q) = got.quantile_ms(q) {
                let want_q = exact_quantile(&values, q);
                assert!(
                    (got_q - want_q).abs() <= want_q * RELATIVE_ERROR + 1e-9,
                    "{bucket:?} q{q}: {got_q} vs {want_q}"
                );
            }
        }
    }

    // Retention: raw 7 days, minutes 14 days, hours a year.
    let pages_before = sqlite_pages(&store).await?;
    let expired = store.expire(&keep, now).await?;
    let raw_kept = raw.iter().filter(|r| r.2 >= cut(now)).count() as i64;
    assert_eq!(expired.results as i64, n_raw - raw_kept);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM results").await?,
        raw_kept
    );
    let oldest = count(&store, "SELECT MIN(measured_at_ms) FROM results").await?;
    assert!(oldest >= cut(now), "a raw row of {oldest} is left");
    // Minute rollups: SQLite to the minute, PostgreSQL by whole day partitions.
    let oldest_minute = count(&store, "SELECT MIN(bucket_ms) FROM rollup_checks_minute").await?;
    let minute_cut = match backend {
        Backend::Sqlite => now - keep.minute_ms - 60_000,
        Backend::Postgres => (now - keep.minute_ms).div_euclid(DAY_MS) * DAY_MS,
    };
    assert!(
        oldest_minute >= minute_cut,
        "a minute rollup of {oldest_minute} is left"
    );
    if backend == Backend::Postgres {
        // The kept days that are over were packed: the partitions hold only the rest.
        let unpacked_from = (now - PACK_AFTER_MS).div_euclid(DAY_MS) * DAY_MS;
        let unpacked = raw.iter().filter(|r| r.2 >= unpacked_from).count() as i64;
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM result_rows").await?,
            unpacked
        );
        assert_eq!(expired.packed > 0, raw_kept > unpacked);
    }
    assert!(expired.host_metrics > 0 && expired.rollup_minute > 0);
    assert_eq!(expired.rollup_hour, 0);
    // The hours are all still there and unchanged by the expiry.
    let after = store
        .check_rollups(Resolution::Hour, &ids, 0, now + DAY_MS)
        .await?;
    assert_eq!(after, hours);
    if let Some(before) = pages_before {
        let after = sqlite_pages(&store).await?.unwrap_or(before);
        assert!(
            after * 4 < before * 3,
            "the SQLite file kept {after} of {before} pages"
        );
    }
    // A second pass finds nothing more.
    assert_eq!(store.expire(&keep, now).await?, Default::default());
    // Three days later the next days go (on PostgreSQL as whole partitions).
    let later = now + 3 * DAY_MS;
    let expired = store.expire(&keep, later).await?;
    let gone = raw
        .iter()
        .filter(|r| r.2 >= cut(now) && r.2 < cut(later))
        .count() as u64;
    assert_eq!(expired.results, gone);
    let oldest = count(&store, "SELECT MIN(measured_at_ms) FROM results").await?;
    assert!(oldest >= cut(later), "a raw row of {oldest} is left");
    if backend == Backend::Postgres {
        let (n,): (i64,) = match &store {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT COUNT(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = 'result_rows'",
                )
                .fetch_one(pool)
                .await?
            }
            Store::Sqlite(_) => unreachable!(),
        };
        // 11 day partitions made, 3 dropped, and the default.
        assert_eq!(n, 11 - 3 + 1);
    }

    // Uptime from the hour and day counts equals the raw rows' share of successes over the
    // same hours and days.
    let uptime = rollup::uptime(&store, None, None, now).await?;
    assert_eq!(uptime.len(), CHECKS.len());
    for check in &uptime {
        for w in rollup::UPTIME_WINDOWS {
            let (window, from) = (w.name, w.from_ms(now));
            let rows: Vec<_> = raw
                .iter()
                .filter(|r| r.0 == check.check_id && r.2 >= from)
                .collect();
            let failures = rows.iter().filter(|r| !r.3).count() as u64;
            let got = &check.windows[window].overall;
            assert_eq!(
                (got.results, got.failures),
                (rows.len() as u64, failures),
                "{window}"
            );
            assert_eq!(check.windows[window].regions.len(), REGIONS.len());
        }
    }
    assert!(matches!(
        rollup::uptime(&store, Some(vec!["nope".into()]), None, now).await,
        Err(rollup::RollupError::NotFound(_))
    ));
    assert!(matches!(
        rollup::uptime(&store, None, Some(vec!["1y".into()]), now).await,
        Err(rollup::RollupError::Invalid(_))
    ));
    let thirty = rollup::uptime(
        &store,
        Some(vec!["web".into()]),
        Some(vec!["30d".into()]),
        now,
    )
    .await?;
    assert_eq!(thirty.len(), 1);
    assert_eq!(thirty[0].windows.keys().collect::<Vec<_>>(), ["30d"]);
    assert_eq!(thirty[0].windows["30d"], uptime[2].windows["30d"]);

    // A 30-day series comes from the hours, a 2-hour one from raw rows; both hold every
    // result of their range.
    for (range, source) in [
        (30 * DAY_MS, "hour"),
        (2 * 3_600_000, "raw"),
        (3 * DAY_MS, "minute"),
    ] {
        let series = rollup::series(&store, &keep, "web", now - range, now, None, now).await?;
        assert_eq!(series.source, source, "{range}");
        let from = match source {
            "hour" => Resolution::Hour.bucket_of(now - range),
            "minute" => Resolution::Minute.bucket_of(now - range),
            _ => now - range,
        };
        let want = raw.iter().filter(|r| r.0 == "web" && r.2 >= from).count() as u64;
        let got: u64 = series.regions.values().flatten().map(|p| p.results).sum();
        assert_eq!(got, want, "{source}");
    }
    // An agent's host metrics over the same three ranges come from the same sources and hold
    // every sample of their range: its count, min, max and mean.
    store.ensure_region("eu").await?;
    count(
        &store,
        "INSERT INTO agents (id, region, labels, hostname, arch, os, version, cert_serial, \
         cert_not_after_ms, state, enrolled_at_ms) VALUES ('ag-eu', 'eu', '{}', 'h', 'x86_64', \
         'linux', '1', 's1', 0, 'offline', 0) RETURNING CAST(1 AS BIGINT)",
    )
    .await?;
    let start = now - 40 * DAY_MS;
    let cpu: Vec<(i64, f64)> = (0..)
        .map(|i: i64| (start + i * STEP_MS, (i % 100) as f64))
        .take_while(|(t, _)| *t < now)
        .collect();
    for (range, source) in [
        (30 * DAY_MS, "hour"),
        (2 * 3_600_000, "raw"),
        (3 * DAY_MS, "minute"),
    ] {
        let series =
            rollup::metric_series(&store, &keep, "ag-eu", now - range, now, None, now).await?;
        assert_eq!(series.source, source, "{range}");
        let from = match source {
            "hour" => Resolution::Hour.bucket_of(now - range),
            "minute" => Resolution::Minute.bucket_of(now - range),
            _ => now - range,
        };
        let want: Vec<f64> = cpu
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|c| c.1)
            .collect();
        let points = &series.metrics[&rollup::HostMetric::CpuPct];
        let samples: u64 = points.iter().map(|p| p.samples).sum();
        assert_eq!(samples, want.len() as u64, "{source}");
        let max = points.iter().map(|p| p.max).fold(f64::MIN, f64::max);
        let min = points.iter().map(|p| p.min).fold(f64::MAX, f64::min);
        let mean = points.iter().map(|p| p.avg * p.samples as f64).sum::<f64>() / samples as f64;
        let want_mean = want.iter().sum::<f64>() / want.len() as f64;
        assert_eq!(
            max,
            want.iter().copied().fold(f64::MIN, f64::max),
            "{source}"
        );
        assert_eq!(
            min,
            want.iter().copied().fold(f64::MAX, f64::min),
            "{source}"
        );
        assert!(
            (mean - want_mean).abs() < 1e-6,
            "{source}: {mean} vs {want_mean}"
        );
        for (metric, value) in [
            (rollup::HostMetric::MemUsedPct, 50.0),
            (rollup::HostMetric::NetRxBytesPerS, 10.0),
            (rollup::HostMetric::NetTxBytesPerS, 20.0),
        ] {
            assert!(
                series.metrics[&metric]
                    .iter()
                    .all(|p| p.avg == value && p.min == value),
                "{source} {metric:?}"
            );
        }
        assert!(
            !series
                .metrics
                .contains_key(&rollup::HostMetric::DiskUsedPct)
        );
    }
    assert!(matches!(
        rollup::metric_series(&store, &keep, "ag-nope", now - DAY_MS, now, None, now).await,
        Err(rollup::RollupError::AgentNotFound(_))
    ));
    assert!(matches!(
        rollup::metric_series(&store, &keep, "ag-eu", now, now - 1, None, now).await,
        Err(rollup::RollupError::Invalid(_))
    ));

    let refused = rollup::series(&store, &keep, "web", now, now - 1, None, now).await;
    assert!(matches!(refused, Err(rollup::RollupError::Invalid(_))));
    let too_many = rollup::series(&store, &keep, "web", now - DAY_MS, now, Some(1000), now).await;
    assert!(matches!(too_many, Err(rollup::RollupError::Invalid(_))));
    store.close().await;
    Ok(())
}

/// The SQLite file's page count (`None` on PostgreSQL).
async fn sqlite_pages(store: &Store) -> anyhow::Result<Option<i64>> {
    Ok(match store {
        Store::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
            Some(
                sqlx::query_scalar("PRAGMA page_count")
                    .fetch_one(pool)
                    .await?,
            )
        }
        Store::Postgres(_) => None,
    })
}
