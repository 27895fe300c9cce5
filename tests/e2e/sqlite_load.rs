//! SQLite under load from every side at once: 1,000 checks every 10 s from four real agents,
//! API readers and CLI commands (some writing through the store, some through the API) for
//! five minutes (`VANTAGE_TEST_LOAD_S` shortens it): never "database is locked", no failed
//! request or command, no commit error, and every row the agents measured stored once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

const CHECKS: usize = 1000;
const AGENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_takes_ingest_api_reads_and_cli_calls_without_locking() -> anyhow::Result<()> {
    let load_s: u64 = std::env::var("VANTAGE_TEST_LOAD_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = Arc::new(
        ControlPlane::start_with(
            &store,
            &[
                ("VANTAGE_API_RATE_PER_S", "100000"),
                ("VANTAGE_API_RATE_BURST", "100000"),
            ],
        )
        .await?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..CHECKS {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("c{i:04}"), "name": "load", "interval_s": 10, "timeout_ms": 2000,
                       "regions": ["load"], "kind": {"type": "tcp", "host": "127.0.0.1", "port": port}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("load", AGENTS as u32).await?;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..AGENTS {
        let agent = Agent::start(&cp, &token, "")?;
        ids.push(agent.wait_enrolled().await?);
        agents.push(agent);
    }
    let pool = cp.store_pool().await?;
    wait_for("every check reporting", Duration::from_secs(60), || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM check_status")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n as usize == CHECKS).then_some(())
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..2 {
        let (cp, stop, reads) = (cp.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let paths = [
                "/api/v1/results?limit=500".to_owned(),
                "/api/v1/uptime".to_owned(),
                format!("/api/v1/checks/c{:04}/series?step_ms=60000", r * 7),
                "/api/v1/verdicts".to_owned(),
                "/api/v1/agents".to_owned(),
                "/api/v1/metrics?limit=500".to_owned(),
            ];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[i % paths.len()];
                let (status, body) = cp.get(path).await?;
                anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        }));
    }
    let cli_calls = {
        let (cp, stop) = (cp.clone(), stop.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let commands: [&[&str]; 6] = [
                &["token", "create", "--region", "load", "--ttl", "1h"],
                &["agent", "list"],
                &["regions"],
                &["incidents"],
                &["checks", "uptime", "c0001", "c0002"],
                &["api-token", "list"],
            ];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let args = commands[n as usize % commands.len()];
                let (ok, out, err) = cp.cli(args)?;
                anyhow::ensure!(ok && !err.contains("locked"), "{args:?}: {out}{err}");
                n += 1;
            }
            Ok(n)
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(load_s)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await??;
    }
    let n_cli = cli_calls.await??;
    let elapsed = started.elapsed();

    let log = std::fs::read_to_string(cp.data_dir.join("control-plane.log"))?;
    assert!(!log.contains("locked"), "{}", cp.log_tail());
    for counter in [
        "vantage_ingest_commit_errors_total",
        "vantage_ingest_batches_given_up_total",
    ] {
        assert_eq!(cp.counter(counter).await?, 0, "{counter}");
    }
    // Every agent's rows are stored once, with no gap up to the highest stored seq, and
    // no agent dropped a row from its spool.
    let mut n_rows = 0;
    for id in &ids {
        let seqs = crate::resilience::stored_seqs(&pool, id).await?;
        let max = *seqs.iter().next_back().unwrap_or(&0);
        let missing = (1..=max).filter(|s| !seqs.contains(s)).count();
        assert_eq!(missing, 0, "agent {id} lost {missing} rows");
        n_rows += seqs.len();
        let agent = cp.agent(id).await?;
        assert_eq!(agent["spool_dropped_total"], 0, "{agent}");
    }
    let expected = CHECKS as f64 * elapsed.as_secs_f64() / 10.0;
    assert!(
        n_rows as f64 > expected * 0.9,
        "{n_rows} rows stored, {expected:.0} expected"
    );
    eprintln!(
        "load: {load_s} s, {n_rows} rows stored, {} API reads, {n_cli} CLI calls",
        reads.load(Ordering::Relaxed)
    );
    drop(agents);
    Ok(())
}
