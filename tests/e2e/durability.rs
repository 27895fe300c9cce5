//! The agent's spool across stops and rewinds: SIGTERM syncs and exits 0, appends are made
//! durable by one fsync per group (seen with strace), compaction syncs its directory, and a
//! state dir that went back in time loses no new row to the seqs the store already holds,
//! and rows wait until the control plane has recorded the agent's hello.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, bin, wait_for};

use crate::faults::checks_every_second;

/// Stored result rows of `agent` measured at or after `from_ms`.
async fn n_results_since(cp: &ControlPlane, agent: &str, from_ms: i64) -> Option<usize> {
    let (_, rows) = cp
        .get(&format!(
            "/api/v1/results?agent={agent}&from_ms={from_ms}&limit=10000"
        ))
        .await
        .ok()?;
    Some(rows.as_array()?.len())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    anyhow::ensure!(status.success(), "cp -a failed");
    Ok(())
}

/// Starts the stopped agent again and waits until the store holds new seqs from it: the
/// next start goes on where the synced spool left off.
async fn restart_and_see_new_seqs(
    cp: &ControlPlane,
    agent: &mut Agent,
    id: &str,
) -> anyhow::Result<()> {
    let before = cp.agent(id).await?["last_seq"].as_i64().unwrap_or(0);
    agent.spawn()?;
    wait_for(
        "rows after the restart",
        Duration::from_secs(20),
        || async {
            let last_seq = cp.agent(id).await.ok()?["last_seq"].as_i64()?;
            (last_seq > before + 4).then_some(())
        },
    )
    .await
    .with_context(|| agent.log())?;
    Ok(())
}

/// A control plane on `backend` with 3 checks a second in `europe`, and an agent there
/// whose first rows are stored.
async fn an_agent_measuring(
    backend: Backend,
) -> anyhow::Result<(TestStore, ControlPlane, Agent, String)> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    checks_every_second(&cp, "europe", 3).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    wait_for("first rows stored", Duration::from_secs(30), || async {
        (n_results_since(&cp, &id, 0).await? >= 3).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    Ok((store, cp, agent, id))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

crate::both_backends!(
    a_rewound_state_loses_no_new_row,
    a_rewound_state_loses_no_new_row
);

/// The state dir is put back to a copy taken earlier (a restored backup, a re-flashed image,
/// writes lost in a power cut): the agent would number new rows with seqs the store already
/// holds. The control plane notices at hello, counts and logs it, holds those rows back, and
/// tells the agent to renumber: rows measured after the rewind are stored at once, not
/// dropped as duplicates of old seqs.
async fn a_rewound_state_loses_no_new_row(backend: Backend) -> anyhow::Result<()> {
    let (_store, cp, mut agent, id) = an_agent_measuring(backend).await?;
    let status = agent.terminate(Duration::from_secs(10))?;
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let backup = tempfile::tempdir()?;
    copy_dir(&agent.state_dir(), &backup.path().join("state"))?;
    let backup_seq = cp.agent(&id).await?["last_seq"].as_i64().unwrap_or(0);

    // Run on until the store holds 45 more seqs than the copy knows of, then rewind.
    agent.spawn()?;
    wait_for("45 more seqs stored", Duration::from_secs(60), || async {
        let last_seq = cp.agent(&id).await.ok()?["last_seq"].as_i64()?;
        (last_seq >= backup_seq + 45).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    agent.kill();
    std::fs::remove_dir_all(agent.state_dir())?;
    copy_dir(&backup.path().join("state"), &agent.state_dir())?;
    let rewound_at = now_ms();
    agent.spawn()?;

    // At three rows a second the reused seqs would swallow the next 15 s of rows; they must
    // show up within 10 s instead.
    wait_for(
        "rows measured after the rewind",
        Duration::from_secs(10),
        || async { (n_results_since(&cp, &id, rewound_at).await? >= 6).then_some(()) },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(cp.counter("vantage_ingest_seq_rewound_total").await? >= 1);
    assert!(
        agent.log().contains("renumbered"),
        "the agent did not renumber: {}",
        agent.log()
    );
    assert!(
        std::fs::read_to_string(cp.data_dir.join("control-plane.log"))?
            .contains("seq went backwards"),
        "the control plane did not log the rewind"
    );
    Ok(())
}

/// The agent sends rows on a connection only once the control plane has recorded that
/// connection's hello and answered it: on a broker cluster its hello and its rows may reach
/// different replicas, and a row ingested before a rewound agent's hello is recorded would
/// be taken for a duplicate of the stored row with its seq. Here PostgreSQL refuses the
/// hello's update (a trigger on that statement only; heartbeats and row commits go on):
/// no row measured since the reconnect is stored while the hello stays unrecorded, and
/// once the store takes hellos again, the agent's next hello is answered and its rows
/// flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_wait_until_the_hello_is_recorded() -> anyhow::Result<()> {
    let (store, cp, mut agent, id) = an_agent_measuring(Backend::Postgres).await?;

    let pool = sqlx::PgPool::connect(store.url.as_deref().context("a PostgreSQL store")?).await?;
    sqlx::query(
        "CREATE FUNCTION refuse_hello() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF current_query() LIKE 'UPDATE agents SET hostname%' THEN \
         RAISE EXCEPTION 'the test refuses hellos'; END IF; RETURN NEW; END $$",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "CREATE TRIGGER refuse_hello BEFORE UPDATE ON agents \
         FOR EACH ROW EXECUTE FUNCTION refuse_hello()",
    )
    .execute(&pool)
    .await?;
    let status = agent.terminate(Duration::from_secs(10))?;
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let reconnected_at = now_ms();
    agent.spawn()?;
    wait_for(
        "the control plane refusing the hello",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(cp.data_dir.join("control-plane.log"))
                .ok()?
                .contains("the test refuses hellos")
                .then_some(())
        },
    )
    .await
    .with_context(|| agent.log())?;
    // Three checks a second: without the wait, ~15 rows measured since the reconnect
    // would be stored by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        n_results_since(&cp, &id, reconnected_at).await,
        Some(0),
        "rows were ingested before their agent's hello was recorded:\n{}",
        agent.log()
    );
    let heartbeat_seen = cp.agent(&id).await?["last_seen_ms"].as_i64().unwrap_or(0);

    sqlx::query("DROP TRIGGER refuse_hello ON agents")
        .execute(&pool)
        .await?;
    // The hello is said again within 15 s (every 10 s, looked at every 5 s), answered, and
    // everything spooled meanwhile goes.
    wait_for(
        "rows measured since the reconnect",
        Duration::from_secs(30),
        || async { (n_results_since(&cp, &id, reconnected_at).await? >= 15).then_some(()) },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(
        agent.log().contains("saying it again"),
        "the agent did not say its hello again: {}",
        agent.log()
    );
    assert!(
        heartbeat_seen >= reconnected_at,
        "heartbeats went on while rows waited"
    );
    assert_eq!(cp.counter("vantage_ingest_seq_rewound_total").await?, 0);
    Ok(())
}

/// SIGTERM: the agent stops its checks, syncs its spool and exits 0; appends are made durable
/// by fdatasync in groups (fewer syncs than rows), and compaction fsyncs the state directory
/// after its rename. Seen from outside with strace. The store plays no part beyond taking the
/// rows, so this runs on SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_syncs_and_appends_are_fsynced_in_groups() -> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    // 100 rows a second: far more rows than the at most 20 group commits a second.
    checks_every_second(&cp, "europe", 100).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let trace_dir = tempfile::tempdir()?;
    let trace = trace_dir.path().join("strace.txt");
    let strace = vantage_tests::find_program(&["strace"])
        .context("strace is missing: scripts/test installs it")?;
    let mut agent = Agent::start_command(
        &cp,
        &token,
        "",
        vec![
            strace.into(),
            "-f".into(),
            "-qq".into(),
            "-y".into(),
            "-e".into(),
            "trace=fdatasync,fsync,rename".into(),
            "-o".into(),
            trace.clone(),
            bin("vantage-agent"),
        ],
    )?;
    let id = agent.wait_enrolled().await?;
    wait_for("500 rows stored", Duration::from_secs(60), || async {
        (n_results_since(&cp, &id, 0).await? >= 500).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    let status = agent.terminate(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(agent.log().contains("Spool synced"), "{}", agent.log());

    let text = std::fs::read_to_string(&trace)?;
    let spool = agent.state_dir().join("spool.jsonl");
    let n_syncs = text
        .lines()
        .filter(|l| l.contains("fdatasync(") && l.contains(&*spool.to_string_lossy()))
        .count();
    let n_rows = n_results_since(&cp, &id, 0).await.context("rows")?;
    assert!(n_syncs >= 1, "the spool was never fdatasynced:\n{text}");
    assert!(
        n_syncs * 2 < n_rows,
        "{n_syncs} syncs for {n_rows} rows is not a group commit"
    );
    // Compaction at start renames the new journal into place, then syncs the directory.
    let state = agent.state_dir().to_string_lossy().into_owned();
    let rename = text
        .lines()
        .position(|l| l.contains("rename(") && l.contains("spool.tmp"))
        .with_context(|| format!("no compaction rename:\n{text}"))?;
    let dir_sync = format!("<{state}>)");
    assert!(
        text.lines()
            .skip(rename)
            .any(|l| l.contains("fsync(") && l.contains(&dir_sync)),
        "no fsync of {state} after the rename:\n{text}"
    );

    // The next start goes on where the synced spool left off.
    restart_and_see_new_seqs(&cp, &mut agent, &id).await?;
    assert_eq!(cp.counter("vantage_ingest_seq_rewound_total").await?, 0);
    Ok(())
}

/// A tmpfs mounted over a directory for the life of the guard (the test runs as root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .context("mount")?;
        anyhow::ensure!(
            status.success(),
            "mount -t tmpfs failed (the tests run as root)"
        );
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `path` with a file there until a write fails.
fn fill(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    // Whatever a short write left room for goes too.
    while file.write_all(&block[..64]).is_ok() {}
    Ok(())
}

crate::both_backends!(
    a_full_state_dir_is_counted_and_recovered,
    a_full_state_dir_is_counted_and_recovered
);

/// The agent's state dir fills up: rows that cannot be spooled are counted as write errors
/// and reported in heartbeats (the agent view shows them), the agent stays up, the journal
/// keeps only whole lines with distinct seqs (no half-written line that a later write could
/// complete under a reused seq), and once there is room again new rows are spooled and
/// stored, and a restart replays the journal cleanly.
async fn a_full_state_dir_is_counted_and_recovered(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start_with(&store, &[("VANTAGE_HEARTBEAT_INTERVAL_S", "1")]).await?;
    checks_every_second(&cp, "europe", 3).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let mut agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    wait_for("first rows stored", Duration::from_secs(30), || async {
        (n_results_since(&cp, &id, 0).await? >= 3).then_some(())
    })
    .await
    .with_context(|| agent.log())?;

    // Move the state onto a small file system of its own.
    let status = agent.terminate(Duration::from_secs(10))?;
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let saved = tempfile::tempdir()?;
    copy_dir(&agent.state_dir(), &saved.path().join("state"))?;
    std::fs::remove_dir_all(agent.state_dir())?;
    let _tmpfs = Tmpfs::mount(&agent.state_dir(), "4m")?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -a {}/. {}/",
            saved.path().join("state").display(),
            agent.state_dir().display()
        ))
        .status()?;
    anyhow::ensure!(status.success(), "cp into the tmpfs failed");
    agent.spawn()?;
    let restarted_at = now_ms();
    wait_for("rows after the move", Duration::from_secs(30), || async {
        (n_results_since(&cp, &id, restarted_at).await? >= 3).then_some(())
    })
    .await
    .with_context(|| agent.log())?;

    let filler = agent.state_dir().join("filler");
    fill(&filler)?;
    let view = wait_for("write errors reported", Duration::from_secs(30), || async {
        let view = cp.agent(&id).await.ok()?;
        (view["spool_write_errors_total"].as_i64()? >= 3).then_some(view)
    })
    .await
    .with_context(|| agent.log())?;
    assert_eq!(view["state"], "online", "{view}");
    assert!(
        agent.log().contains("Cannot spool a result"),
        "{}",
        agent.log()
    );

    std::fs::remove_file(&filler)?;
    let freed_at = now_ms();
    wait_for(
        "rows after room came back",
        Duration::from_secs(30),
        || async { (n_results_since(&cp, &id, freed_at).await? >= 6).then_some(()) },
    )
    .await
    .with_context(|| agent.log())?;

    // Every journal line is whole, and no seq appears twice.
    let status = agent.terminate(Duration::from_secs(10))?;
    anyhow::ensure!(status.success(), "agent exited with {status}");
    let journal = std::fs::read_to_string(agent.state_dir().join("spool.jsonl"))?;
    let mut seqs = std::collections::HashSet::new();
    for line in journal.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("a torn journal line: {line:?}"))?;
        if let Some(seq) = value["e"]["seq"].as_u64() {
            assert!(
                seqs.insert(seq),
                "seq {seq} twice in the journal:\n{journal}"
            );
        }
    }
    restart_and_see_new_seqs(&cp, &mut agent, &id).await?;
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}
