//! Backup while ingest runs, restore into a fresh data dir: the copy is consistent (every
//! agent's rows a gapless prefix, rollups equal to the raw rows), bad restores change
//! nothing, and the same agents come back online on the restored control plane without
//! enrolling again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use serde_json::json;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, bin, wait_for};

fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<(bool, String)> {
    let output = Command::new(bin("vantage"))
        .args(["restore", "--from"])
        .arg(from)
        .env("VANTAGE_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((output.status.success(), vantage_tests::output_text(&output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_ingest_restores_and_agents_return_without_enrolling()
-> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    for i in 0..20 {
        let (status, body) = cp
            .post(
                "/api/v1/checks",
                json!({"id": format!("b{i}"), "name": "b", "interval_s": 1, "timeout_ms": 500,
                       "regions": ["bk"], "kind": {"type": "tcp", "host": "127.0.0.1", "port": port}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let token = cp.enrollment_token("bk", 2).await?;
    let agents = [
        Agent::start(&cp, &token, "metrics_interval_s = 1")?,
        Agent::start(&cp, &token, "metrics_interval_s = 1")?,
    ];
    let mut ids = Vec::new();
    for agent in &agents {
        ids.push(agent.wait_enrolled().await?);
    }
    let pool = cp.store_pool().await?;
    wait_for("rows flowing", Duration::from_secs(30), || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM results")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n >= 100).then_some(())
    })
    .await?;

    // The backup, while both agents keep sending.
    let parent = tempfile::tempdir()?;
    let out = parent.path().join("b1");
    let (ok, text, err) = cp.cli(&["backup", "--out", out.to_str().unwrap_or_default()])?;
    assert!(ok, "{text}{err}");
    assert!(
        text.contains("pki/ca.key") && text.contains("vantage.db"),
        "{text}"
    );
    // A second backup to the same place is refused and leaves the first alone.
    let (ok, text, err) = cp.cli(&["backup", "--out", out.to_str().unwrap_or_default()])?;
    assert!(!ok && err.contains("already exists"), "{text}{err}");
    assert!(out.join("manifest.json").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("admin-token"))?.permissions(),
    );
    assert_eq!(mode & 0o077, 0, "admin-token mode {mode:o}");
    // Ingest goes on after the backup: rows the copy does not have.
    let (before,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM results")
        .fetch_one(&pool)
        .await?;
    wait_for("rows after the backup", Duration::from_secs(30), || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM results")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n > before + 40).then_some(())
    })
    .await?;
    pool.close().await;
    cp.kill();

    // Bad restores change nothing: into the old data dir (it holds a store), from a
    // directory that is no backup.
    let old_db = cp.data_dir.join("vantage.db");
    let stamp = std::fs::metadata(&old_db)?.modified()?;
    let (ok, text) = restore(&out, &cp.data_dir)?;
    assert!(!ok && text.contains("already holds a store"), "{text}");
    assert_eq!(std::fs::metadata(&old_db)?.modified()?, stamp);
    let fresh = parent.path().join("restored");
    let (ok, text) = restore(parent.path(), &fresh)?;
    assert!(!ok && text.contains("not a Vantage backup"), "{text}");
    assert!(!fresh.exists());

    let (ok, text) = restore(&out, &fresh)?;
    assert!(ok, "{text}");

    // The restored store is one consistent moment: each agent's rows are 1..=max with no
    // gap, and the rollups merged in the same transactions hold exactly the raw counts.
    let copy =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", fresh.join("vantage.db").display()))
            .await?;
    for id in &ids {
        let mut seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM results WHERE agent_id = $1 UNION ALL SELECT seq FROM host_metrics WHERE agent_id = $1 \
             UNION ALL SELECT seq FROM events WHERE agent_id = $1",
        )
        .bind(id)
        .fetch_all(&copy)
        .await?;
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert!(n > 10, "agent {id}: {n} rows in the backup");
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "agent {id}");
    }
    let (raw, hour): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM results), (SELECT CAST(SUM(n) AS BIGINT) FROM rollup_checks_hour)",
    )
    .fetch_one(&copy)
    .await?;
    assert_eq!(raw, hour);
    assert!(
        raw <= before,
        "the copy holds {raw} results, more than the {before} seen before it ended"
    );
    copy.close().await;

    // The restored control plane on the same ports: the same agents come back online with
    // their certificates, and no enrollment happens.
    let enrollments_before: Vec<usize> = agents
        .iter()
        .map(|a| a.log().matches("Enrolled").count())
        .collect();
    assert_eq!(enrollments_before, [1, 1]);
    cp.data_dir = fresh;
    cp.spawn().await?;
    for id in &ids {
        cp.wait_agent_state(id, "online", Duration::from_secs(40))
            .await?;
    }
    let (_, listed) = cp.get("/api/v1/agents").await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let enrollments_after: Vec<usize> = agents
        .iter()
        .map(|a| a.log().matches("Enrolled").count())
        .collect();
    assert_eq!(enrollments_after, enrollments_before);
    // The restored history answers: uptime and a latency series through the CLI.
    let (ok, text, err) = cp.cli(&["checks", "uptime", "b1"])?;
    assert!(ok, "{text}{err}");
    let overall = text
        .lines()
        .find(|l| l.starts_with("b1\t*\t"))
        .with_context(|| text.clone())?;
    assert!(overall.matches('%').count() == 4, "{text}");
    assert!(text.lines().any(|l| l.starts_with("b1\tbk\t")), "{text}");
    let (ok, text, err) = cp.cli(&["series", "b1", "--range", "10m", "--step", "1m"])?;
    assert!(ok, "{text}{err}");
    assert!(
        text.starts_with("# b1 from minute data, step 60000 ms"),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.starts_with("bk\t")).count() >= 1,
        "{text}"
    );
    let (ok, _, err) = cp.cli(&["series", "nope"])?;
    assert!(!ok && err.contains("404"), "{err}");
    // And their new rows arrive.
    let pool = cp.store_pool().await?;
    wait_for(
        "rows after the restore",
        Duration::from_secs(30),
        || async {
            let (n,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM results WHERE received_at_ms > $1")
                    .bind(vantage_tests::now_ms() - 5_000)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n > 10).then_some(())
        },
    )
    .await?;
    Ok(())
}
