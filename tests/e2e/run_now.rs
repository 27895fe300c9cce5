//! Run-now and ad-hoc probes through the agents' MQTT sessions: one answer per region,
//! correlated by request id, with a timeout per region.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

/// An HTTP target: 500 on `/fail`, 200 elsewhere.
async fn http_target() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 2048];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let status = if buffer[..n].starts_with(b"GET /fail") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

fn region<'a>(body: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    body["regions"]
        .as_array()
        .context("regions")?
        .iter()
        .find(|r| r["region"] == name)
        .with_context(|| format!("no entry for {name} in {body}"))
}

crate::both_backends!(run_now_answers_per_region, run_now_answers_per_region);

async fn run_now_answers_per_region(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let port = http_target().await?;
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "web", "name": "web", "interval_s": 3600, "timeout_ms": 2000,
                   "kind": {"type": "http", "url": format!("http://127.0.0.1:{port}/")},
                   "regions": ["europe", "asia", "us-west"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let mut agents = Vec::new();
    for name in ["europe", "asia"] {
        let token = cp.enrollment_token(name, 1).await?;
        agents.push(Agent::start(&cp, &token, "")?);
    }
    for agent in &agents {
        let id = agent.wait_enrolled().await?;
        cp.wait_agent_state(&id, "online", Duration::from_secs(20))
            .await?;
    }

    // Every region of the check answers, or says why it cannot.
    let (status, body) = cp.post("/api/v1/checks/web/run", json!({})).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("rq-"))
    );
    for name in ["europe", "asia"] {
        let entry = region(&body, name)?;
        assert_eq!(entry["result"]["ok"], true, "{entry}");
        assert_eq!(entry["result"]["status_code"], 200, "{entry}");
        assert_eq!(entry["result"]["check_id"], "web");
    }
    assert_eq!(
        region(&body, "us-west")?["error"],
        "no online agent in this region"
    );

    // An ad-hoc probe, never stored.
    let (status, body) = cp
        .post(
            "/api/v1/probe",
            json!({"kind": {"type": "http", "url": format!("http://127.0.0.1:{port}/fail")},
                   "timeout_ms": 2000, "regions": ["europe"]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let entry = region(&body, "europe")?;
    assert_eq!(entry["result"]["ok"], false);
    assert_eq!(entry["result"]["reason"], "unexpected status 500");
    let (_, stored) = cp.get("/api/v1/results?check=adhoc").await?;
    assert_eq!(
        stored.as_array().map(Vec::len),
        Some(0),
        "an ad-hoc probe was stored"
    );

    // A frozen agent does not answer: its region times out, the other answers.
    let asia_pid = agents[1].pid().context("asia pid")?;
    Command::new("kill")
        .arg("-STOP")
        .arg(asia_pid.to_string())
        .status()?;
    let started = std::time::Instant::now();
    let (status, body) = cp
        .post(
            "/api/v1/checks/web/run",
            json!({"regions": ["europe", "asia"], "wait_ms": 1500}),
        )
        .await?;
    Command::new("kill")
        .arg("-CONT")
        .arg(asia_pid.to_string())
        .status()?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(region(&body, "europe")?["result"]["ok"], true);
    assert_eq!(region(&body, "asia")?["error"], "no answer within 1500 ms");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(3000),
        "waited {waited:?} for a 1500 ms timeout"
    );

    // Refusals.
    let (status, _) = cp.post("/api/v1/checks/nope/run", json!({})).await?;
    assert_eq!(status, 404);
    let (status, _) = cp
        .post(
            "/api/v1/probe",
            json!({"kind": {"type": "tcp", "host": "h", "port": 0}, "regions": ["europe"]}),
        )
        .await?;
    assert_eq!(status, 422);
    let (status, _) = cp
        .post("/api/v1/checks/web/run", json!({"regions": ["Bad!"]}))
        .await?;
    assert_eq!(status, 422);
    let response = cp
        .client
        .post(cp.url("/api/v1/checks/web/run"))
        .bearer_auth(&cp.admin_token)
        .body("{nope")
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let (_, viewer) = cp
        .post("/api/v1/api-tokens", json!({"role": "viewer"}))
        .await?;
    let (status, _) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/checks/web/run",
            viewer["token"].as_str(),
            Some(json!({})),
        )
        .await?;
    assert_eq!(status, 403);
    Ok(())
}

/// An HTTP target that accepts connections and never answers; returns its port and how
/// many connections it has accepted.
async fn silent_target() -> anyhow::Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(stream);
        }
    });
    Ok((port, accepted))
}

crate::both_backends!(
    run_now_waiters_leave_when_clients_go_away,
    run_now_waiters_leave_when_clients_go_away
);

async fn run_now_waiters_leave_when_clients_go_away(backend: Backend) -> anyhow::Result<()> {
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 100;
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let (port, accepted) = silent_target().await?;
    // The agent's probe waits up to 2 minutes for a target that never answers.
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "slow", "name": "slow", "interval_s": 3600, "timeout_ms": 120000,
                   "kind": {"type": "http", "url": format!("http://127.0.0.1:{port}/")},
                   "regions": ["europe"]}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    cp.wait_agent_state(&id, "online", Duration::from_secs(20))
        .await?;
    let pending = || async { cp.counter("vantage_run_now_pending").await.ok() };
    assert_eq!(pending().await, Some(0));

    // A region named twice is refused and leaves nothing waiting.
    let (status, body) = cp
        .post(
            "/api/v1/checks/slow/run",
            json!({"regions": ["europe", "europe"]}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("europe")),
        "{body}"
    );
    assert_eq!(pending().await, Some(0));

    for batch in 0..BATCHES {
        let requests: Vec<_> = (0..PER_BATCH)
            .map(|_| {
                let request = cp
                    .client
                    .post(cp.url("/api/v1/checks/slow/run"))
                    .bearer_auth(&cp.admin_token)
                    .json(&json!({"wait_ms": 120000}));
                tokio::spawn(async move { request.send().await })
            })
            .collect();
        // Every request is waiting for the agent...
        wait_for(
            &format!("batch {batch}: {PER_BATCH} run-now requests waiting"),
            Duration::from_secs(30),
            || async { (pending().await? == PER_BATCH as u64).then_some(()) },
        )
        .await
        .with_context(|| cp.log_tail())?;
        // ...when its client goes away.
        for request in &requests {
            request.abort();
        }
        wait_for(
            &format!("batch {batch}: the run-now waiters to leave"),
            Duration::from_secs(10),
            || async { (pending().await? == 0).then_some(()) },
        )
        .await?;
        for request in requests {
            assert!(
                request.await.is_err_and(|e| e.is_cancelled()),
                "a run-now request answered"
            );
        }
        // Stay under the API's per-address rate limit (200/s).
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // The agent was really probing (and had not answered) while the clients went away.
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) > 0);
    Ok(())
}
