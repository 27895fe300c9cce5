//! A healthy start logs no ERROR: the control plane at its default log level, with an agent
//! online, prints its own lines and nothing from the embedded broker.

use std::time::Duration;

use vantage_tests::{Agent, Backend, ControlPlane, TestStore};

/// Starts a control plane with `rust_log` (empty: the default level), brings an agent
/// online and returns the control plane's log.
async fn log_of_a_healthy_start(backend: Backend, rust_log: &str) -> anyhow::Result<String> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start_with(&store, &[("RUST_LOG", rust_log)]).await?;
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    cp.wait_agent_state(&id, "online", Duration::from_secs(20))
        .await?;
    Ok(std::fs::read_to_string(
        cp.data_dir.join("control-plane.log"),
    )?)
}

crate::both_backends!(a_healthy_start_logs_no_error, a_healthy_start_logs_no_error);

async fn a_healthy_start_logs_no_error(backend: Backend) -> anyhow::Result<()> {
    // The default level: the banner, no ERROR, nothing from rumqttd.
    let log = log_of_a_healthy_start(backend, "").await?;
    assert!(log.contains("Control plane ready"), "{log}");
    assert_no_error(&log);
    let foreign: Vec<&str> = log.lines().filter(|l| l.contains("rumqttd")).collect();
    assert!(foreign.is_empty(), "rumqttd lines: {foreign:#?}");

    // rumqttd's own logs, asked for: the readiness probe and the agent's login leave no
    // ERROR there either.
    let log = log_of_a_healthy_start(backend, "info,rumqttd=info").await?;
    assert!(log.contains("rumqttd::"), "{log}");
    assert!(log.contains("vantage-cp-readiness"), "{log}");
    assert_no_error(&log);
    Ok(())
}

/// Fails naming the ERROR lines and the lines just before each, not the whole log.
fn assert_no_error(log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    let errors: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("ERROR"))
        .map(|(i, _)| lines[i.saturating_sub(3)..=i].join("\n"))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines (with the three lines before):\n{}",
        errors.join("\n---\n")
    );
}
