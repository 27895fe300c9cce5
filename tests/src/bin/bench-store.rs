//! Benchmark of the store over time: its size on disk after 30 days of a small fleet, with
//! and without retention, and the time of the questions the dashboard asks (uptime of every
//! check, a check's latency series).
//!
//! Usage: `bench-store --backend sqlite|postgres [--checks 200] [--days 30] [--agents 3]
//! [--query-checks 10000] [--skip-size] [--skip-query]`. PostgreSQL comes from
//! `VANTAGE_TEST_PG_URL` (`scripts/bench` starts one).
//!
//! Size: `--checks` checks every 60 s from one region and `--agents` agents' host metrics every
//! 10 s, for `--days` days up to now, generated and committed through the ingest path's own
//! transaction (`Store::commit_batch`: raw rows, rollups, day partitions) at full speed, in
//! batches of about 5,000 rows. It prints the store's size with every raw row kept, then
//! runs retention with the defaults (raw 7 d, minutes 7 d, hours 400 d) and prints the size
//! after it. On PostgreSQL the expired minute rollups are deleted row by row, whose space
//! autovacuum hands to new rows rather than to the file system; the size after retention is
//! taken after `VACUUM FULL`, i.e. the size the store keeps in steady state.
//!
//! Queries: a second store is seeded by SQL with `--query-checks` checks' hour rollups for 31
//! days and day counts for 90 days (one region); then uptime of every
//! check over 30 days, over all four windows, and one check's 30-day latency series are
//! timed through the same functions the API calls (7 runs each, median and slowest).

use std::collections::BTreeMap;
use std::time::Instant;
use vantage_control_plane::store::keys::KeyCache;

use anyhow::Context;
use serde_json::json;
use vantage_control_plane::rollup::{self, Retention};
use vantage_control_plane::sketch::Sketch;
use vantage_control_plane::store::ingest::IngestBatch;
use vantage_control_plane::store::{Store, now_ms};
use vantage_mqtt::{CheckResult, DiskUsage, HostMetrics, NetUsage, Timings};
use vantage_tests::{Backend, TestStore};

const DAY_MS: i64 = 86_400_000;

struct Args {
    backend: Backend,
    checks: usize,
    days: i64,
    agents: usize,
    query_checks: usize,
    size: bool,
    query: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        backend: Backend::Sqlite,
        checks: 200,
        days: 30,
        agents: 3,
        query_checks: 10_000,
        size: true,
        query: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--skip-size" => args.size = false,
            "--skip-query" => args.query = false,
            _ => {
                let value = it.next().with_context(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--backend" => args.backend = Backend::parse(&value)?,
                    "--checks" => args.checks = value.parse()?,
                    "--days" => args.days = value.parse()?,
                    "--agents" => args.agents = value.parse()?,
                    "--query-checks" => args.query_checks = value.parse()?,
                    other => anyhow::bail!("unknown flag {other}"),
                }
            }
        }
    }
    Ok(args)
}

async fn open(backend: Backend, dir: &std::path::Path) -> anyhow::Result<(TestStore, Store)> {
    let test_store = TestStore::create(backend).await?;
    let store = Store::connect(test_store.url.as_deref(), dir).await?;
    store.migrate().await?;
    Ok((test_store, store))
}

async fn create_checks(store: &Store, ids: &[String], region: &str) -> anyhow::Result<()> {
    for id in ids {
        let definition: vantage_control_plane::checks::CheckDefinition =
            serde_json::from_value(json!({
                "name": id, "interval_s": 60, "timeout_ms": 5000, "regions": [region],
                "kind": {"type": "http", "url": format!("https://{id}.example.net/health")}
            }))?;
        store
            .insert_check(&vantage_control_plane::checks::to_row(
                id.clone(),
                &definition,
                now_ms(),
            ))
            .await?;
    }
    Ok(())
}

/// Bytes the store takes on disk now.
async fn size_on_disk(store: &Store, dir: &std::path::Path) -> anyhow::Result<u64> {
    Ok(match store {
        Store::Postgres(pool) => {
            let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(pool)
                .await?;
            size as u64
        }
        Store::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
            let mut total = 0;
            for name in ["vantage.db", "vantage.db-wal"] {
                total += std::fs::metadata(dir.join(name))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            total
        }
    })
}

/// Sizes of the largest tables with their indexes (PostgreSQL: partitions summed into their
/// table; SQLite: b-trees by name from `dbstat`, when the library has it).
async fn table_sizes(store: &Store) -> anyhow::Result<Vec<(String, i64)>> {
    let pool = match store {
        Store::Postgres(pool) => pool,
        Store::Sqlite(pool) => {
            return Ok(sqlx::query_as(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_default());
        }
    };
    Ok(sqlx::query_as(
        "SELECT COALESCE(p.relname, c.relname)::text AS t, SUM(pg_total_relation_size(c.oid))::bigint \
         FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid \
         LEFT JOIN pg_class p ON p.oid = i.inhparent \
         WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await?)
}

/// The control plane's default retention (raw 7 d, minutes 7 d, hours 400 d).
fn default_retention() -> Retention {
    vantage_control_plane::settings::Settings::ephemeral(std::path::PathBuf::new()).retention()
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

fn result(check: &str, seq: u64, t: i64, i: u64) -> CheckResult {
    let x = i.wrapping_mul(2_654_435_761) % 1000;
    let ok = x >= 5;
    let total = 40.0 + (x as f64).powf(1.2) / 10.0;
    CheckResult {
        seq,
        measured_at_ms: t,
        check_id: check.to_owned(),
        ok,
        reason: if ok {
            "status 200 (HTTP/1.1)".into()
        } else {
            "connect: connection refused".into()
        },
        timings: Timings {
            dns_ms: Some(1.2),
            connect_ms: Some(total * 0.2),
            tls_ms: Some(total * 0.3),
            ttfb_ms: Some(total * 0.4),
            transfer_ms: Some(total * 0.1),
            total_ms: total,
        },
        status_code: ok.then_some(200),
        values: BTreeMap::from([("cert_days_left".to_owned(), 61.0)]),
    }
}

fn metrics(seq: u64, t: i64, i: u64) -> HostMetrics {
    HostMetrics {
        seq,
        measured_at_ms: t,
        cpu_pct: (i % 97) as f32,
        cores_pct: None,
        mem_total_bytes: 2 << 30,
        mem_used_bytes: (1 << 30) + (i % 1000) * 4096,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        load1: 0.4,
        load5: 0.3,
        load15: 0.2,
        uptime_s: 86_400 + i,
        disks: vec![
            DiskUsage {
                mount: "/".into(),
                total_bytes: 40 << 30,
                used_bytes: (12 << 30) + i * 512,
            },
            DiskUsage {
                mount: "/var".into(),
                total_bytes: 100 << 30,
                used_bytes: (30 << 30) + i * 4096,
            },
        ],
        nets: vec![NetUsage {
            iface: "eth0".into(),
            rx_bytes: i * 1000,
            tx_bytes: i * 800,
            rx_bytes_per_s: 1000.0,
            tx_bytes_per_s: 800.0,
        }],
    }
}

async fn bench_size(args: &Args) -> anyhow::Result<()> {
    // Keys of names and texts the commits share, as ingest's committers share them.
    let keys = KeyCache::default();
    let dir = tempfile::tempdir()?;
    let (_test_store, store) = open(args.backend, dir.path()).await?;
    let now = now_ms();
    let start = now - args.days * DAY_MS;
    // A control plane that ran for these days made each day's partition as it came.
    let all_days = Retention {
        raw_ms: (args.days + 1) * DAY_MS,
        minute_ms: (args.days + 1) * DAY_MS,
        hour_ms: 0,
    };
    store.prepare_partitions(&all_days, now).await?;
    let ids: Vec<String> = (0..args.checks).map(|i| format!("site-{i:04}")).collect();
    create_checks(&store, &ids, "eu").await?;
    let agents: Vec<String> = (0..args.agents).map(|i| format!("ag-eu-{i}")).collect();
    let mut seqs = vec![0u64; agents.len()];
    let started = Instant::now();
    let (mut n_results, mut n_metrics) = (0u64, 0u64);
    let mut batch = IngestBatch::default();
    let mut minute = 0u64;
    let mut t = start;
    while t < now {
        for (c, id) in ids.iter().enumerate() {
            let a = c % agents.len();
            seqs[a] += 1;
            batch.results.push((
                agents[a].clone(),
                "eu".to_owned(),
                result(id, seqs[a], t + c as i64 * 7, minute * 1000 + c as u64),
            ));
        }
        n_results += ids.len() as u64;
        for second in (0..60).step_by(10) {
            for (a, agent) in agents.iter().enumerate() {
                seqs[a] += 1;
                batch.metrics.push((
                    agent.clone(),
                    "eu".to_owned(),
                    metrics(seqs[a], t + second * 1000, minute),
                ));
                n_metrics += 1;
            }
        }
        if batch.len() >= 5000 {
            batch.received_at_ms = t;
            store.commit_batch(&batch, &keys).await?;
            batch = IngestBatch::default();
        }
        t += 60_000;
        minute += 1;
    }
    if !batch.is_empty() {
        batch.received_at_ms = now;
        store.commit_batch(&batch, &keys).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let kept_raw = size_on_disk(&store, dir.path()).await?;
    let tables_raw = table_sizes(&store).await?;
    let keep = default_retention();
    let expire_started = Instant::now();
    let expired = store.expire(&keep, now).await?;
    let expire_s = expire_started.elapsed().as_secs_f64();
    if let Store::Postgres(pool) = &store {
        sqlx::query("VACUUM FULL").execute(pool).await?;
    }
    let kept = size_on_disk(&store, dir.path()).await?;
    let tables = table_sizes(&store).await?;
    println!(
        "size backend={} checks={} days={} agents={} results={n_results} metric_samples={n_metrics} \
         ingest_rows_per_s={:.0} all_raw_mb={} with_retention_mb={} goal_mb=300 expire_s={expire_s:.1} \
         expired_results={} expired_metrics={} expired_minute_rollups={} packed_rows={}",
        args.backend.name(),
        args.checks,
        args.days,
        args.agents,
        (n_results + n_metrics) as f64 / elapsed,
        mb(kept_raw),
        mb(kept),
        expired.results,
        expired.host_metrics,
        expired.rollup_minute,
        expired.packed,
    );
    for (label, sizes) in [("all raw", tables_raw), ("with retention", tables)] {
        let listed: Vec<String> = sizes
            .iter()
            .map(|(t, b)| format!("{t}={}", mb(*b as u64)))
            .collect();
        if !listed.is_empty() {
            println!("  tables ({label}, MB): {}", listed.join(" "));
        }
    }
    store.close().await;
    Ok(())
}

/// Seeds by SQL `n` checks' hour rollups (counts and a small sketch) for 31 days and day
/// counts for 90 days up to now, in one region.
async fn seed_counts(store: &Store, n: usize, now: i64) -> anyhow::Result<()> {
    let hour_from = (now - 31 * DAY_MS).div_euclid(3_600_000) * 3_600_000;
    let day_from = (now - 90 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    let mut sketch = Sketch::default();
    for ms in [40.0, 41.0, 45.0, 52.0, 60.0, 75.0, 120.0] {
        sketch.add(ms);
    }
    let blob = sketch.encode();
    match store {
        Store::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO check_keys (key, id) SELECT c + 1, 'q' || lpad(c::text, 5, '0') \
                 FROM generate_series(0, $1 - 1) c",
            )
            .bind(n as i64)
            .execute(pool)
            .await?;
            sqlx::query("INSERT INTO region_keys (key, id) VALUES (1, 'eu')")
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO check_hours (check_key, region_key, bucket_ms, n, failures, sum_us, min_us, max_us, sketch) \
                 SELECT c + 1, 1, h, 60, (c + h / 3600000) % 3, 3000000, 40000, 120000, $4 \
                 FROM generate_series(0, $1 - 1) c, generate_series($2::bigint, $3::bigint, 3600000) h",
            )
            .bind(n as i64)
            .bind(hour_from)
            .bind(now)
            .bind(&blob)
            .execute(pool)
            .await?;
            sqlx::query(
                "INSERT INTO check_days (check_key, region_key, bucket_ms, n, failures) \
                 SELECT c + 1, 1, d, 1440, (c + d / 86400000) % 7 \
                 FROM generate_series(0, $1 - 1) c, generate_series($2::bigint, $3::bigint, 86400000) d",
            )
            .bind(n as i64)
            .bind(day_from)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query("VACUUM ANALYZE").execute(pool).await?;
        }
        Store::Sqlite(pool) => {
            sqlx::query(
                "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < $1) \
                 INSERT INTO check_keys (key, id) SELECT i + 1, printf('q%05d', i) FROM c",
            )
            .bind(n as i64)
            .execute(pool)
            .await?;
            sqlx::query("INSERT INTO region_keys (key, id) VALUES (1, 'eu')")
                .execute(pool)
                .await?;
            sqlx::query(
                "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < $1), \
                 h(t) AS (SELECT $2 UNION ALL SELECT t + 3600000 FROM h WHERE t + 3600000 <= $3) \
                 INSERT INTO check_hours (check_key, region_key, bucket_ms, n, failures, sum_us, min_us, max_us, sketch) \
                 SELECT i + 1, 1, t, 60, (i + t / 3600000) % 3, 3000000, 40000, 120000, $4 FROM c, h",
            )
            .bind(n as i64)
            .bind(hour_from)
            .bind(now)
            .bind(&blob)
            .execute(pool)
            .await?;
            sqlx::query(
                "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < $1), \
                 d(t) AS (SELECT $2 UNION ALL SELECT t + 86400000 FROM d WHERE t + 86400000 <= $3) \
                 INSERT INTO check_days (check_key, region_key, bucket_ms, n, failures) \
                 SELECT i + 1, 1, t, 1440, (i + t / 86400000) % 7 FROM c, d",
            )
            .bind(n as i64)
            .bind(day_from)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query("ANALYZE").execute(pool).await?;
        }
    }
    Ok(())
}

/// Median and slowest of `runs` timings of `f`, in milliseconds.
async fn time<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(f64, f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((
        times[times.len() / 2],
        times[times.len() - 1],
        last.context("no run")?,
    ))
}

async fn bench_query(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_test_store, store) = open(args.backend, dir.path()).await?;
    let ids: Vec<String> = (0..args.query_checks).map(|i| format!("q{i:05}")).collect();
    create_checks(&store, &ids, "eu").await?;
    let now = now_ms();
    let seeding = Instant::now();
    seed_counts(&store, args.query_checks, now).await?;
    let seed_s = seeding.elapsed().as_secs_f64();
    let keep = default_retention();
    let (u30_med, u30_max, u30) = time(7, || async {
        Ok(rollup::uptime(&store, None, Some(vec!["30d".into()]), now).await?)
    })
    .await?;
    anyhow::ensure!(
        u30.len() == args.query_checks,
        "uptime of {} checks",
        u30.len()
    );
    anyhow::ensure!(
        u30.iter()
            .all(|c| c.windows["30d"].overall.results == 30 * 1440),
        "30 days of counts expected"
    );
    let (uall_med, uall_max, _) = time(7, || async {
        Ok(rollup::uptime(&store, None, None, now).await?)
    })
    .await?;
    let json_started = Instant::now();
    let body = serde_json::to_vec(&u30)?;
    let json_ms = json_started.elapsed().as_secs_f64() * 1000.0;
    let check = &ids[ids.len() / 2];
    let (series_med, series_max, series) = time(7, || async {
        Ok(rollup::series(&store, &keep, check, now - 30 * DAY_MS, now, None, now).await?)
    })
    .await?;
    let points: usize = series.regions.values().map(Vec::len).sum();
    anyhow::ensure!(
        series.source == "hour" && points > 150,
        "{} points from {}",
        points,
        series.source
    );
    println!(
        "query backend={} checks={} seed_s={seed_s:.1} uptime_30d_all_checks_ms={u30_med:.1} (slowest {u30_max:.1}, \
         goal 200; JSON of the answer {json_ms:.1} ms, {} KB) uptime_4_windows_all_checks_ms={uall_med:.1} \
         (slowest {uall_max:.1}) series_30d_one_check_ms={series_med:.2} (slowest {series_max:.2}, goal 50; {points} points)",
        args.backend.name(),
        args.query_checks,
        body.len() / 1024,
    );
    store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.size {
        bench_size(&args).await?;
    }
    if args.query {
        bench_query(&args).await?;
    }
    Ok(())
}
