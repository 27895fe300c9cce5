//! Hostile payloads on an agent's own topics: dropped (whole messages, or single rows of a
//! valid batch), counted, nothing stored changes, the control plane stays up and keeps
//! ingesting.

use std::time::Duration;

use serde_json::json;
use vantage_tests::{Backend, ControlPlane, MqttIdentity, TestStore, connect, wait_for};

crate::both_backends!(
    malformed_oversize_and_wrong_version_payloads_are_dropped,
    malformed_oversize_and_wrong_version_payloads_are_dropped
);

async fn malformed_oversize_and_wrong_version_payloads_are_dropped(
    backend: Backend,
) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(identity.options(&identity.agent_id)?, 64);
    connect(&mut eventloop).await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let results = format!("vantage/v1/agents/{}/results", identity.agent_id);
    let metrics = format!("vantage/v1/agents/{}/metrics", identity.agent_id);
    let hello = format!("vantage/v1/agents/{}/hello", identity.agent_id);

    // One good row first, so there is stored data that must stay untouched.
    let good = |seq: u64| {
        json!({"v": 1, "items": [{"seq": seq, "measured_at_ms": 1_700_000_000_000_i64 + seq as i64,
            "check_id": "web", "ok": true, "reason": "status 200", "timings": {"total_ms": 1.5}}]})
    };
    // Publishes good row `seq` and waits until `seq` rows are stored.
    let store_good = |seq: u64| {
        let (client, cp, results, agent) = (&client, &cp, &results, &identity.agent_id);
        async move {
            client
                .publish(
                    results,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&good(seq))?,
                )
                .await?;
            wait_for("the good row", Duration::from_secs(10), || async {
                let (_, rows) = cp
                    .get(&format!("/api/v1/results?agent={agent}&from_ms=0"))
                    .await
                    .ok()?;
                (rows.as_array()?.len() as u64 == seq).then_some(rows)
            })
            .await
        }
    };
    let stored = store_good(1).await?;

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (&results, b"{not json".to_vec()),
        (&results, b"".to_vec()),
        (&results, vec![0xff, 0xfe, 0x00]),
        (&results, br#"{"v":1,"items":[{"seq":"two"}]}"#.to_vec()),
        (&results, br#"{"v":1,"items":[],"extra":true}"#.to_vec()),
        (&results, br#"{"v":1,"items":[{"seq":3,"measured_at_ms":1,"check_id":"../../etc","ok":true,"reason":"","timings":{"total_ms":1}}]}"#.to_vec()),
        (&metrics, br#"{"v":1,"items":[{"seq":4}]}"#.to_vec()),
        (&hello, br#"{"v":1}"#.to_vec()),
        (&results, serde_json::to_vec(&json!({"v": 2, "items": []}))?),
        (&results, br#"{"items":[]}"#.to_vec()),
        (&results, vec![b' '; 300 * 1024]),
    ];
    let n_hostile = hostile.len() as u64;
    for (topic, payload) in hostile {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let line = |reason: &str| format!("vantage_ingest_rejected_total{{reason=\"{reason}\"}}");
    let row = |reason: &str| format!("vantage_ingest_rows_refused_total{{reason=\"{reason}\"}}");
    let counted =
        wait_for(
            "every hostile payload counted",
            Duration::from_secs(10),
            || async {
                let malformed = cp.counter(&line("malformed")).await.ok()?;
                let version = cp.counter(&line("version")).await.ok()?;
                let oversize = cp.counter(&line("oversize")).await.ok()?;
                let undecodable = cp.counter(&row("undecodable")).await.ok()?;
                let invalid_id = cp.counter(&row("invalid_id")).await.ok()?;
                (malformed + version + oversize + undecodable + invalid_id == n_hostile)
                    .then_some((malformed, version, oversize, undecodable, invalid_id))
            },
        )
        .await?;
    // Whole messages are refused when their envelope is (not JSON, wrong version, too big,
    // unknown envelope field, bad hello); rows inside a valid batch are refused one by one.
    assert_eq!(
        counted,
        (5, 2, 1, 2, 1),
        "(malformed, version, oversize, undecodable rows, invalid-id rows)"
    );

    // Still alive, still ingesting, and the stored row is exactly as before.
    let rows = store_good(2).await?;
    assert_eq!(rows[1], stored[0], "the stored row changed");
    assert!(cp.is_running());
    let (status, _) = cp.get("/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}
