//! Day packs on PostgreSQL: the days that are over move from their partitions into packs and
//! read back the same through the store's queries; a replay of packed rows stores nothing and
//! changes no rollup; a row that arrives late for a packed day is stored once and joins the
//! pack on the next pass; packs expire with their day.

use std::collections::BTreeMap;
use vantage_control_plane::store::keys::KeyCache;

use serde_json::json;
use vantage_control_plane::rollup::{Resolution, Retention};
use vantage_control_plane::store::ingest::IngestBatch;
use vantage_control_plane::store::models::SeriesFilter;
use vantage_control_plane::store::packs::PACK_AFTER_MS;
use vantage_control_plane::store::{Store, now_ms};
use vantage_mqtt::{CheckResult, DiskUsage, HostMetrics, NetUsage, Timings};
use vantage_tests::{Backend, TestStore};

const DAY_MS: i64 = 86_400_000;
const STEP_MS: i64 = 300_000;
const AGENTS: [(&str, &str); 2] = [("ag-eu", "eu"), ("ag-us", "us")];

fn result(seq: u64, t: i64, i: i64, agent: usize) -> CheckResult {
    let ok = i % 17 != 0;
    CheckResult {
        seq,
        measured_at_ms: t,
        check_id: "web".into(),
        ok,
        // A repeated reason (into the dictionary) and, for failures, one seen once (inline).
        reason: if ok {
            "status 200".into()
        } else {
            format!("timeout after {i} ms")
        },
        timings: Timings {
            dns_ms: (i % 3 != 0).then_some(1.25),
            connect_ms: Some(2.5 + agent as f64),
            tls_ms: None,
            ttfb_ms: Some(10.0 + (i % 50) as f64 / 8.0),
            transfer_ms: Some(0.125),
            total_ms: 14.0 + (i % 50) as f64 / 4.0,
        },
        status_code: ok.then_some(200),
        values: if i % 5 == 0 {
            BTreeMap::from([("cert_days_left".to_owned(), 61.0)])
        } else {
            BTreeMap::new()
        },
    }
}

fn metrics(seq: u64, t: i64, i: i64) -> HostMetrics {
    HostMetrics {
        seq,
        measured_at_ms: t,
        cpu_pct: (i % 100) as f32 / 2.0,
        cores_pct: None,
        mem_total_bytes: 1 << 30,
        mem_used_bytes: (1 << 29) + i as u64,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        load1: 0.25,
        load5: 0.5,
        load15: 0.75,
        uptime_s: 1000 + i as u64,
        disks: vec![DiskUsage {
            mount: "/".into(),
            total_bytes: 10 << 30,
            used_bytes: 5 << 30,
        }],
        nets: vec![NetUsage {
            iface: "eth0".into(),
            rx_bytes: 0,
            tx_bytes: 0,
            rx_bytes_per_s: 10.0,
            tx_bytes_per_s: 20.0,
        }],
    }
}

/// Three days of results and metrics every 5 minutes from two agents, in batches.
fn generated(now: i64) -> (Vec<IngestBatch>, u64) {
    let mut batches = Vec::new();
    let mut batch = IngestBatch::default();
    let mut seq = 0u64;
    let mut t = now - 3 * DAY_MS;
    let mut i = 0;
    while t < now {
        for (a, (agent, region)) in AGENTS.iter().enumerate() {
            seq += 1;
            batch
                .results
                .push(((*agent).into(), (*region).into(), result(seq, t, i, a)));
            seq += 1;
            batch
                .metrics
                .push(((*agent).into(), (*region).into(), metrics(seq, t, i)));
        }
        if batch.len() >= 500 {
            batch.received_at_ms = t + 1500;
            batches.push(std::mem::take(&mut batch));
        }
        t += STEP_MS;
        i += 1;
    }
    batch.received_at_ms = now;
    batches.push(batch);
    (batches, seq)
}

async fn count(store: &Store, sql: &str) -> anyhow::Result<i64> {
    let Store::Postgres(pool) = store else {
        anyhow::bail!("PostgreSQL only")
    };
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Every result, metric sample and minute rollup the store's queries give for the range, in
/// a fixed order, as JSON.
async fn everything(store: &Store, from: i64, to: i64) -> anyhow::Result<serde_json::Value> {
    let filter = SeriesFilter {
        agent: None,
        check: Some("web".into()),
        region: None,
        from_ms: from,
        to_ms: to,
        limit: 1_000_000,
    };
    let mut results: Vec<serde_json::Value> = store
        .query_results(&filter)
        .await?
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    results.sort_by_key(|r| {
        (
            r["measured_at_ms"].as_i64(),
            r["agent_id"].to_string(),
            r["seq"].as_i64(),
        )
    });
    let mut metrics: Vec<serde_json::Value> = store
        .query_metrics(&filter)
        .await?
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    metrics.sort_by_key(|r| {
        (
            r["measured_at_ms"].as_i64(),
            r["agent_id"].to_string(),
            r["seq"].as_i64(),
        )
    });
    let minutes = store
        .check_rollups(Resolution::Minute, &["web".to_owned()], from, to)
        .await?;
    // A minute can be in its pack and, after a late row, in its partition too: readers merge.
    let mut minutes: Vec<String> = minutes
        .into_iter()
        .map(|(b, a)| format!("{b:?} {a:?}"))
        .collect();
    minutes.sort();
    Ok(json!({"results": results, "metrics": metrics, "minutes": minutes}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_days_read_the_same_and_replays_of_packed_rows_count_once() -> anyhow::Result<()> {
    // Keys of names and texts the commits share, as ingest's committers share them.
    let keys = KeyCache::default();
    let test_store = TestStore::create(Backend::Postgres).await?;
    let dir = tempfile::tempdir()?;
    let store = Store::connect(test_store.url.as_deref(), dir.path()).await?;
    store.migrate().await?;
    let now = now_ms();
    let definition: vantage_control_plane::checks::CheckDefinition =
        serde_json::from_value(json!({
            "name": "web", "interval_s": 300, "timeout_ms": 1000, "regions": ["eu", "us"],
            "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9}
        }))?;
    store
        .insert_check(&vantage_control_plane::checks::to_row(
            "web".into(),
            &definition,
            now,
        ))
        .await?;
    let keep = Retention {
        raw_ms: 7 * DAY_MS,
        minute_ms: 7 * DAY_MS,
        hour_ms: 400 * DAY_MS,
    };
    store.prepare_partitions(&keep, now).await?;
    let (batches, last_seq) = generated(now);
    for batch in &batches {
        store.commit_batch(batch, &keys).await?;
    }
    let from = now - 4 * DAY_MS;
    let before = everything(&store, from, now + 1).await?;
    let n_results = before["results"].as_array().map_or(0, Vec::len) as i64;
    assert_eq!(n_results, 2 * (3 * DAY_MS / STEP_MS));

    // The days that are over are packed; nothing else changes.
    let expired = store.expire(&keep, now).await?;
    let unpacked_from = (now - PACK_AFTER_MS).div_euclid(DAY_MS) * DAY_MS;
    let in_rows = count(&store, "SELECT COUNT(*) FROM result_rows").await?;
    let in_packs = count(
        &store,
        "SELECT COALESCE(SUM(n_rows), 0)::bigint FROM result_packs",
    )
    .await?;
    let want_unpacked = before["results"].as_array().map_or(0, |r| {
        r.iter()
            .filter(|r| r["measured_at_ms"].as_i64() >= Some(unpacked_from))
            .count()
    }) as i64;
    assert_eq!(
        (in_rows, in_packs),
        (want_unpacked, n_results - want_unpacked)
    );
    assert!(in_packs > 0, "three days back, two days are over");
    let minutes_packed = count(
        &store,
        "SELECT COALESCE(SUM(n_rows), 0)::bigint FROM check_minute_packs",
    )
    .await?;
    let metrics_packed = count(
        &store,
        "SELECT COALESCE(SUM(n_rows), 0)::bigint FROM metric_packs",
    )
    .await?;
    assert_eq!(
        expired.packed as i64,
        in_packs + minutes_packed + metrics_packed
    );
    assert_eq!(
        metrics_packed, in_packs,
        "one sample per result in this fleet"
    );
    assert_eq!(everything(&store, from, now + 1).await?, before);
    // A second pass has nothing to pack.
    assert_eq!(store.expire(&keep, now).await?.packed, 0);

    // A replay of every batch (an agent resending its spool) stores nothing and changes no
    // rollup: rows in packs are found there.
    let hours_before = store
        .check_rollups(Resolution::Hour, &["web".to_owned()], 0, now + 1)
        .await?;
    for batch in &batches {
        store.commit_batch(batch, &keys).await?;
    }
    assert_eq!(everything(&store, from, now + 1).await?, before);
    let hours_after = store
        .check_rollups(Resolution::Hour, &["web".to_owned()], 0, now + 1)
        .await?;
    assert_eq!(hours_after, hours_before);

    // A row that arrives late for a packed day is stored once, read at once, and joins the
    // pack on the next pass.
    // 7 ms after a generated row of the same agent: the same minute, almost always.
    let late_t = now - 2 * DAY_MS + 7;
    let minute = Resolution::Minute.bucket_of(late_t);
    let generated_in_minute = before["results"].as_array().map_or(0, |r| {
        r.iter()
            .filter(|r| {
                r["agent_id"] == "ag-eu"
                    && r["measured_at_ms"]
                        .as_i64()
                        .is_some_and(|t| Resolution::Minute.bucket_of(t) == minute)
            })
            .count()
    }) as u64;
    let late = IngestBatch {
        results: vec![(
            "ag-eu".into(),
            "eu".into(),
            result(last_seq + 1, late_t, 3, 0),
        )],
        metrics: vec![],
        events: vec![],
        received_at_ms: now,
    };
    store.commit_batch(&late, &keys).await?;
    store.commit_batch(&late, &keys).await?;
    let filter = SeriesFilter {
        agent: Some("ag-eu".into()),
        check: Some("web".into()),
        region: None,
        from_ms: late_t,
        to_ms: late_t,
        limit: 10,
    };
    assert_eq!(store.query_results(&filter).await?.len(), 1);
    let after_late = everything(&store, from, now + 1).await?;
    assert_eq!(
        after_late["results"].as_array().map_or(0, Vec::len) as i64,
        n_results + 1
    );
    let expired = store.expire(&keep, now).await?;
    // The result and its new minute rollup row.
    assert_eq!(expired.packed, 2);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM result_rows").await?,
        want_unpacked
    );
    assert_eq!(everything(&store, from, now + 1).await?, after_late);
    store.commit_batch(&late, &keys).await?;
    assert_eq!(store.query_results(&filter).await?.len(), 1);
    let minute_rows = store
        .check_rollups(
            Resolution::Minute,
            &["web".to_owned()],
            minute,
            minute + 60_000,
        )
        .await?;
    let counted: u64 = minute_rows
        .iter()
        .filter(|(b, _)| b.region == "eu")
        .map(|(_, a)| a.count)
        .sum();
    assert_eq!(
        counted,
        generated_in_minute + 1,
        "the packed results of that minute and the late one"
    );

    // Packs go with their day: ten days on, all of them.
    let expired = store.expire(&keep, now + 10 * DAY_MS).await?;
    assert_eq!(expired.results as i64, n_results + 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM result_packs").await?
            + count(&store, "SELECT COUNT(*) FROM metric_packs").await?
            + count(&store, "SELECT COUNT(*) FROM check_minute_packs").await?,
        0
    );
    Ok(())
}
