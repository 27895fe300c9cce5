//! Texts chosen by a target never cost a row: the agent bounds them, the control plane repairs
//! what it can and refuses, per row and counted, only what it can never store; one bad row
//! never takes its batch with it, and every row is acknowledged (stored or refused).

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vantage_mqtt::text::{CUT_MARK, MAX_REASON_BYTES};
use vantage_tests::{Agent, Backend, ControlPlane, MqttIdentity, TestStore, wait_for};

crate::both_backends!(
    a_down_result_with_a_huge_reason_is_stored_cut,
    a_down_result_with_a_huge_reason_is_stored_cut
);

/// An HTTP check whose JSON pointer lands on a 6,000-character value: the DOWN result is
/// stored with its reason cut to the bound, and nothing is refused.
async fn a_down_result_with_a_huge_reason_is_stored_cut(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = target.local_addr()?.port();
    let body = json!({ "status": "é".repeat(3000) }).to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = target.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    let (status, reply) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "long", "name": "long", "interval_s": 1, "timeout_ms": 900,
                "regions": ["europe"],
                "kind": {"type": "http", "url": format!("http://127.0.0.1:{port}/"),
                    "assertions": [{"json_pointer": {"pointer": "/status", "equals": "ok"}}]}}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {reply}");
    let token = cp.enrollment_token("europe", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    let rows = wait_for(
        "three stored DOWN results",
        Duration::from_secs(30),
        || async {
            let (_, rows) = cp
                .get(&format!("/api/v1/results?agent={id}&check=long"))
                .await
                .ok()?;
            let rows = rows.as_array()?.clone();
            (rows.len() >= 3).then_some(rows)
        },
    )
    .await
    .with_context(|| agent.log())?;
    for row in &rows {
        assert_eq!(row["ok"], false, "{row}");
        let reason = row["reason"].as_str().context("reason")?;
        assert!(reason.len() <= MAX_REASON_BYTES, "{} bytes", reason.len());
        assert!(reason.ends_with(CUT_MARK), "{reason:?} has no cut mark");
        assert!(reason.contains("éé"), "{reason:?} lost the target's text");
    }
    let refused =
        |reason: &str| format!("vantage_ingest_rows_refused_total{{reason=\"{reason}\"}}");
    assert_eq!(cp.counter(&refused("undecodable")).await?, 0);
    assert_eq!(cp.counter(&refused("invalid_id")).await?, 0);
    assert_eq!(
        cp.counter("vantage_ingest_rejected_total{reason=\"malformed\"}")
            .await?,
        0
    );
    Ok(())
}

crate::both_backends!(
    one_bad_row_never_takes_its_batch,
    one_bad_row_never_takes_its_batch
);

/// A hand-driven agent publishes one batch mixing good rows, rows the control plane can
/// repair (too long, NUL) and rows it can never store (invalid check id, undecodable): every
/// storable row is stored, each refusal is counted under its reason, and every seq is
/// acknowledged.
async fn one_bad_row_never_takes_its_batch(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let agent = identity.agent_id.clone();
    let (client, mut acks) = identity.listen("results/ack").await?;
    let row = |seq: u64, check: &str, reason: &str| {
        json!({"seq": seq, "measured_at_ms": 1_700_000_000_000_i64 + seq as i64,
            "check_id": check, "ok": false, "reason": reason, "timings": {"total_ms": 1.0}})
    };
    let long = "x".repeat(6000);
    let batch = json!({"v": 1, "items": [
        row(1, "web", "status 500"),
        row(2, "web", &long),
        row(3, "web", "nul\u{0}inside"),
        row(4, "../../etc", "bad id"),
        {"seq": 5, "check_id": "web", "unexpected": true},
        row(6, "web", "status 503"),
    ]});
    client
        .publish(
            format!("vantage/v1/agents/{agent}/results"),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&batch)?,
        )
        .await?;
    let rows = wait_for("four stored rows", Duration::from_secs(15), || async {
        let (_, rows) = cp
            .get(&format!("/api/v1/results?agent={agent}&from_ms=0"))
            .await
            .ok()?;
        let rows = rows.as_array()?.clone();
        (rows.len() >= 4).then_some(rows)
    })
    .await?;
    let mut by_seq: Vec<(i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["seq"].as_i64().unwrap_or(-1),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    by_seq.sort();
    let seqs: Vec<i64> = by_seq.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 2, 3, 6], "stored rows");
    assert!(by_seq[1].1.len() <= MAX_REASON_BYTES && by_seq[1].1.ends_with(CUT_MARK));
    assert_eq!(by_seq[2].1, "nul\u{FFFD}inside");

    // Every seq is acknowledged: 1, 2, 3, 6 as stored, 4 and 5 as refused for good.
    let acked = MqttIdentity::acked_seqs(&mut acks, 6, Duration::from_secs(10)).await?;
    assert_eq!(acked, (1..=6).collect());

    let count = |line: &'static str| {
        let cp = &cp;
        async move { cp.counter(line).await }
    };
    assert_eq!(
        count("vantage_ingest_rows_refused_total{reason=\"invalid_id\"}").await?,
        1
    );
    assert_eq!(
        count("vantage_ingest_rows_refused_total{reason=\"undecodable\"}").await?,
        1
    );
    assert_eq!(
        count("vantage_ingest_rows_repaired_total{repair=\"cut\"}").await?,
        1
    );
    assert_eq!(
        count("vantage_ingest_rows_repaired_total{repair=\"nul\"}").await?,
        1
    );
    assert_eq!(
        count("vantage_ingest_rejected_total{reason=\"malformed\"}").await?,
        0
    );
    Ok(())
}

crate::both_backends!(
    a_batch_the_store_refuses_is_counted_and_never_acknowledged,
    a_batch_the_store_refuses_is_counted_and_never_acknowledged
);

/// The store refuses every insert into `result_rows` (a trigger injects the fault): ingest retries,
/// gives the batch up, counts it, and acknowledges nothing, so the agent keeps the rows; once
/// the fault is gone the same rows, sent again, are stored and acknowledged.
async fn a_batch_the_store_refuses_is_counted_and_never_acknowledged(
    backend: Backend,
) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let agent = identity.agent_id.clone();
    let (client, mut acks) = identity.listen("results/ack").await?;
    cp.inject_insert_fault("result_rows").await?;
    let batch = serde_json::to_vec(&json!({"v": 1, "items": [
        {"seq": 1, "measured_at_ms": 1_700_000_000_001_i64, "check_id": "web", "ok": true,
         "reason": "status 200", "timings": {"total_ms": 1.0}},
        {"seq": 2, "measured_at_ms": 1_700_000_000_002_i64, "check_id": "web", "ok": false,
         "reason": "status 500", "timings": {"total_ms": 1.0}},
    ]}))?;
    let topic = format!("vantage/v1/agents/{agent}/results");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, batch.clone())
        .await?;
    wait_for("the batch given up", Duration::from_secs(20), || async {
        let n = cp
            .counter("vantage_ingest_batches_given_up_total")
            .await
            .ok()?;
        (n >= 1).then_some(())
    })
    .await?;
    assert!(
        cp.counter("vantage_ingest_commit_errors_total").await? >= 5,
        "every attempt is counted"
    );
    assert!(
        acks.try_recv().is_err(),
        "rows the store refused were acknowledged"
    );

    cp.clear_insert_fault("result_rows").await?;
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, batch)
        .await?;
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.recv())
        .await
        .context("no ack after the fault was removed")?
        .context("ack stream ended")?;
    assert_eq!(ack["ranges"], json!([[1, 2]]));
    let (_, rows) = cp
        .get(&format!("/api/v1/results?agent={agent}&from_ms=0"))
        .await?;
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    Ok(())
}
