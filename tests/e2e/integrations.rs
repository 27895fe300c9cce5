//! Integration sources and their webhooks against a real control plane: the Zabbix media
//! type's body (bearer secret), Helius, Alchemy and generic signed webhooks (bodies in the
//! shapes Helius and Alchemy document: fakes of their senders, which cannot run here), each
//! accepted event stored once, on the live feed and on MQTT `events/{source}` (read by a real
//! `mosquitto_sub`), a High problem opening an incident that its resolution resolves, and
//! every bad input (wrong secret or signature, malformed, oversize, replay) answered clearly
//! with nothing stored.

use std::process::Child;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use vantage_tests::{
    Backend, ControlPlane, LiveSocket, MqttIdentity, TestStore, mosquitto_sub, wait_for,
};

use crate::both_backends;

const ALCHEMY_KEY: &str = "whsec_alchemy_signing_key_0123";

/// The media type's body for Zabbix event `id` (see provision/README.md, "Payload").
fn zabbix_body(id: &str, status: &str, nseverity: u8, host: &str) -> Value {
    let value = u8::from(status == "problem");
    json!({
        "v": 1, "source": "zabbix",
        "event": {
            "id": id, "name": format!("Load too high on {host}"), "source": 0, "value": value,
            "status": status, "zabbix_status": if value == 1 { "PROBLEM" } else { "RESOLVED" },
            "severity": "High", "nseverity": nseverity, "opdata": "", "acknowledged": false,
            "tags": [{"tag": "service", "value": "edge"}],
            "timestamp": 1_735_812_672, "date": "2025.01.02", "time": "10:11:12"
        },
        "trigger": {"id": "17001", "value": value, "description": "Load above 8"},
        "recovery": if status == "resolved" {
            json!({"id": "99", "value": 0, "timestamp": 1_735_813_000, "date": "", "time": ""})
        } else { Value::Null },
        "update": null,
        "host": {"host": host, "name": format!("{host} (visible)"), "ip": "192.0.2.10"},
        "alert": {"sendto": "ops", "subject": "s", "message": "m"}
    })
}

/// Two enhanced transactions in Helius's documented shape, and one without a signature.
fn helius_body() -> Value {
    json!([
        {"accountData": [{"account": "CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX", "nativeBalanceChange": -5000, "tokenBalanceChanges": []}],
         "description": "CKs1E69a transferred 1.5 SOL to NTYeYJ1w.", "events": {}, "fee": 5000,
         "feePayer": "CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX", "instructions": [], "nativeTransfers": [],
         "signature": "5nNtjezQMYBHvgSQmoRmJPiXGsPAWmJPoGSa64xanqrauogiVzFyGQhKeFataHGXq51jR2hjbzNTkPUpP787HAmL",
         "slot": 171_942_732, "source": "SYSTEM_PROGRAM", "timestamp": 1_673_445_241, "tokenTransfers": [], "type": "TRANSFER"},
        {"accountData": [], "description": "", "fee": 5000, "feePayer": "NTYeYJ1wr4bpM5xo6zx5En44SvJFAd35zTxxNoERYqd",
         "signature": "3Sy5X9ZrWDaVkUBNnw4Yb2hDu7fPQaFxY2tdTByWgdTXyVVwgKSAZiGz7ZqTGuYHX3tWkVUgSMoyYYgHMG9Tx3G4",
         "slot": 171_942_733, "source": "JUPITER", "timestamp": 1_673_445_242, "type": "SWAP"},
        {"slot": 171_942_734, "type": "TRANSFER"}
    ])
}

/// An `ADDRESS_ACTIVITY` notification in Alchemy's documented shape.
fn alchemy_body() -> String {
    json!({
        "webhookId": "wh_k63lg72rxda78gce", "id": "whevt_vq499kv7elmlbp2v",
        "createdAt": "2024-01-23T07:42:26.411977228Z", "type": "ADDRESS_ACTIVITY",
        "event": {"network": "ETH_MAINNET", "activity": [{
            "blockNum": "0xdf34a3",
            "hash": "0x7a4a39da2a3fa1fc2ef88fd1eaea070286ed2aba21e0419dcfb6d5c5d9f02a72",
            "fromAddress": "0x503828976d22510aad0201ac7ec88293211d23da",
            "toAddress": "0xbe3f4b43db5eb49d1f48f53443b9abce45da3b79",
            "value": 293.092129, "asset": "USDC", "category": "token",
            "rawContract": {"rawValue": "0x0", "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "decimals": 6},
            "log": {"logIndex": "0x6e"}
        }]}
    })
    .to_string()
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

/// POSTs raw bytes with headers; returns status and JSON.
async fn post_raw(
    cp: &ControlPlane,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_bytes())?)
        .build()?;
    let mut request = client
        .post(cp.url(path))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn event_count(cp: &ControlPlane, source: &str) -> anyhow::Result<usize> {
    let (status, body) = cp
        .get(&format!("/api/v1/events?source={source}&limit=1000"))
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body.as_array().context("events")?.len())
}

/// The next live message of `kind` within 10 s.
async fn next_of(socket: &mut LiveSocket, kind: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .with_context(|| format!("no live {kind} within 10 s"))?
            .context("live feed closed")??;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text)?;
            let items = match value.get("events") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![value],
            };
            if let Some(found) = items.into_iter().find(|v| v["kind"] == kind) {
                return Ok(found);
            }
        }
    }
}

/// `mosquitto_sub` on `events/#` as a viewer, printing topic and payload into `events.out`.
fn mosquitto_events(
    cp: &ControlPlane,
    token: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    let child = mosquitto_sub(
        cp,
        token,
        &dir.join("xdg"),
        "event-watcher",
        "vantage/v1/events/#",
    )?
    .arg("-v")
    .stdout(std::fs::File::create(dir.join("events.out"))?)
    .stderr(std::fs::File::create(dir.join("events.err"))?)
    .spawn()
    .context("mosquitto_sub (Debian's mosquitto-clients) must be installed")?;
    Ok(child)
}

async fn webhooks(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let dir = tempfile::tempdir()?;

    // Sources: their secrets are shown once, at creation.
    let (status, zabbix) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "zabbix", "kind": "zabbix", "incident_severity": "high"}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {zabbix}");
    let zabbix_secret = zabbix["secret"].as_str().context("secret")?.to_owned();
    anyhow::ensure!(zabbix["webhook_path"] == "/api/v1/integrations/zabbix");
    let (_, helius) = cp
        .post("/api/v1/sources", json!({"id": "helius", "kind": "helius"}))
        .await?;
    let helius_secret = helius["secret"].as_str().context("secret")?.to_owned();
    let (status, body) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "alchemy", "kind": "alchemy"}),
        )
        .await?;
    anyhow::ensure!(
        status == 422
            && body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("signing key"),
        "an Alchemy source without its signing key: {status} {body}"
    );
    let (status, _) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "alchemy", "kind": "alchemy", "secret": ALCHEMY_KEY}),
        )
        .await?;
    anyhow::ensure!(status == 201);
    let (_, hooks) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "jobs", "kind": "hmac", "incident_severity": "average"}),
        )
        .await?;
    let hooks_secret = hooks["secret"].as_str().context("secret")?.to_owned();
    for (bad, why) in [
        (json!({"id": "Bad/Id", "kind": "hmac"}), "id must be"),
        (
            json!({"id": "zabbix", "kind": "hmac"}),
            "kept for a Zabbix source",
        ),
        (
            json!({"id": "short", "kind": "hmac", "secret": "abc"}),
            "16-256",
        ),
    ] {
        let (status, body) = cp.post("/api/v1/sources", bad.clone()).await?;
        anyhow::ensure!(
            status == 422
                && body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(why),
            "{bad}: {status} {body}"
        );
    }
    let (status, body) = cp
        .post("/api/v1/sources", json!({"id": "jobs", "kind": "hmac"}))
        .await?;
    anyhow::ensure!(status == 409, "a taken id: {status} {body}");

    // A viewer sees sources without secrets and cannot add one.
    let (_, viewer) = cp
        .post(
            "/api/v1/api-tokens",
            json!({"role": "viewer", "name": "watcher"}),
        )
        .await?;
    let viewer = viewer["token"].as_str().context("viewer token")?.to_owned();
    let (status, listed) = cp
        .request(reqwest::Method::GET, "/api/v1/sources", Some(&viewer), None)
        .await?;
    anyhow::ensure!(
        status == 200 && listed.as_array().map(Vec::len) == Some(4),
        "{listed}"
    );
    let text = listed.to_string();
    for secret in [&zabbix_secret, &helius_secret, &hooks_secret] {
        anyhow::ensure!(
            !text.contains(secret.as_str()),
            "a secret in the list: {text}"
        );
    }
    anyhow::ensure!(!text.contains(ALCHEMY_KEY) && !text.contains("\"secret\""));
    let (status, _) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/sources",
            Some(&viewer),
            Some(json!({"id": "x", "kind": "hmac"})),
        )
        .await?;
    anyhow::ensure!(status == 403, "a viewer created a source: {status}");

    let mut mosquitto = mosquitto_events(&cp, &viewer, dir.path())?;
    let mut live = cp
        .live_socket("kind=event&source=zabbix&latest=false")
        .await?;
    // A mapped host: the agent's id is one of the names it is known by.
    let agent = MqttIdentity::enroll(&cp, "r1").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Zabbix: a High problem opens an incident; the answer says which (the media type turns
    // it into event tags and a menu link).
    let bearer = format!("Bearer {zabbix_secret}");
    let problem = serde_json::to_vec(&zabbix_body("4242", "problem", 4, &agent.agent_id))?;
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/zabbix",
        &[("authorization", &bearer)],
        problem.clone(),
    )
    .await?;
    anyhow::ensure!(
        status == 200 && answer["duplicate"] == false,
        "{status} {answer}"
    );
    let problem_id = answer["event_id"].as_i64().context("event_id")?;
    let incident_id = answer["incident_id"]
        .as_str()
        .context("incident_id")?
        .to_owned();
    anyhow::ensure!(
        answer["incident_url"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!("#/incidents/{incident_id}")),
        "{answer}"
    );
    let seen = next_of(&mut live, "event").await?;
    anyhow::ensure!(
        seen["source"] == "zabbix"
            && seen["data"]["id"] == problem_id
            && seen["data"]["status"] == "problem"
            && seen["data"]["severity"] == "high"
            && seen["data"]["node"] == agent.agent_id.as_str(),
        "live event: {seen}"
    );
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{incident_id}")).await?;
    anyhow::ensure!(
        incident["incident"]["subject"] == "event"
            && incident["incident"]["subject_id"] == "zabbix/4242"
            && incident["incident"]["title"] == format!("Load too high on {}", agent.agent_id)
            && incident["incident"]["open"] == true,
        "{incident}"
    );

    // A replay (Zabbix retries a delivery whose answer it lost): accepted once, counted.
    let (status, again) = post_raw(
        &cp,
        "/api/v1/integrations/zabbix",
        &[("authorization", &bearer)],
        problem.clone(),
    )
    .await?;
    anyhow::ensure!(
        status == 200 && again["duplicate"] == true && again["event_id"] == problem_id,
        "replay: {status} {again}"
    );
    anyhow::ensure!(
        cp.counter("vantage_events_total{outcome=\"duplicate\"}")
            .await?
            == 1
    );

    // Bad input changes nothing.
    let before = event_count(&cp, "zabbix").await?;
    for (headers, body, expect, why) in [
        (
            vec![("authorization", "Bearer wrong-secret-0123456789")],
            problem.clone(),
            401,
            "wrong secret",
        ),
        (vec![], problem.clone(), 401, "no secret"),
        (
            vec![("authorization", bearer.as_str())],
            b"{not json".to_vec(),
            400,
            "not JSON",
        ),
        (
            vec![("authorization", bearer.as_str())],
            br#"{"v":1,"event":{"id":"x","status":"problem"}}"#.to_vec(),
            400,
            "numeric event id",
        ),
        (
            vec![("authorization", bearer.as_str())],
            vec![b' '; 70 * 1024],
            413,
            "over",
        ),
    ] {
        let (status, answer) = post_raw(&cp, "/api/v1/integrations/zabbix", &headers, body).await?;
        anyhow::ensure!(
            status == expect
                && answer["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(why)
                || (expect == 401 && status == 401),
            "{why}: {status} {answer}"
        );
    }
    // A Helius secret is not a Zabbix one.
    let (status, _) = post_raw(
        &cp,
        "/api/v1/integrations/zabbix",
        &[("authorization", &format!("Bearer {helius_secret}"))],
        problem.clone(),
    )
    .await?;
    anyhow::ensure!(status == 401);
    anyhow::ensure!(
        event_count(&cp, "zabbix").await? == before,
        "bad input stored an event"
    );
    anyhow::ensure!(
        cp.counter("vantage_webhooks_refused_total{reason=\"unauthorized\"}")
            .await?
            == 3
    );
    anyhow::ensure!(
        cp.counter("vantage_webhooks_refused_total{reason=\"oversize\"}")
            .await?
            == 1
    );

    // A Warning problem on a host no agent is: no incident; the host is kept as a node.
    let (status, warn) = post_raw(
        &cp,
        "/api/v1/integrations/zabbix",
        &[("authorization", &bearer)],
        serde_json::to_vec(&zabbix_body("5000", "problem", 2, "db-7"))?,
    )
    .await?;
    anyhow::ensure!(status == 200 && warn["incident_id"].is_null(), "{warn}");
    let (_, nodes) = cp.get("/api/v1/external-nodes").await?;
    anyhow::ensure!(
        nodes.as_array().is_some_and(|n| n.len() == 1
            && n[0]["host"] == "db-7"
            && n[0]["source"] == "zabbix"
            && n[0]["name"] == "db-7 (visible)"
            && n[0]["address"] == "192.0.2.10"),
        "external nodes: {nodes}"
    );

    // The resolution pairs with the problem and resolves the incident.
    let (status, resolved) = post_raw(
        &cp,
        "/api/v1/integrations/zabbix",
        &[("authorization", &bearer)],
        serde_json::to_vec(&zabbix_body("4242", "resolved", 4, &agent.agent_id))?,
    )
    .await?;
    anyhow::ensure!(
        status == 200 && resolved["incident_id"] == incident_id.as_str(),
        "{resolved}"
    );
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{incident_id}")).await?;
    anyhow::ensure!(incident["incident"]["open"] == false, "{incident}");
    let resolution_id = resolved["event_id"].as_i64().context("event_id")?;
    let (_, event) = cp.get(&format!("/api/v1/events/{resolution_id}")).await?;
    anyhow::ensure!(
        event["problem_id"] == problem_id
            && event["occurred_at_ms"] == 1_735_813_000_000_i64
            && event["payload"]["event"]["id"] == "4242",
        "{event}"
    );
    let (_, event) = cp.get(&format!("/api/v1/events/{problem_id}")).await?;
    anyhow::ensure!(
        event["resolved_at_ms"].is_i64(),
        "the problem is not marked resolved: {event}"
    );
    let (status, _) = cp.get("/api/v1/events/abc").await?;
    anyhow::ensure!(status == 400);

    // Helius: its auth header as configured; one transaction without a signature is refused
    // on its own, the others are stored; a replay stores nothing.
    let body = serde_json::to_vec(&helius_body())?;
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/helius",
        &[("authorization", &helius_secret)],
        body.clone(),
    )
    .await?;
    anyhow::ensure!(
        status == 200 && answer["stored"] == 2 && answer["refused"] == 1,
        "helius: {status} {answer}"
    );
    anyhow::ensure!(
        answer["rows"][2]["error"]
            .as_str()
            .unwrap_or("")
            .contains("signature"),
        "{answer}"
    );
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/helius",
        &[("authorization", &helius_secret)],
        body.clone(),
    )
    .await?;
    anyhow::ensure!(
        status == 200 && answer["stored"] == 0 && answer["duplicates"] == 2,
        "{answer}"
    );
    let (status, _) = post_raw(
        &cp,
        "/api/v1/integrations/helius",
        &[("authorization", "not-the-header")],
        body,
    )
    .await?;
    anyhow::ensure!(status == 401);
    let (_, events) = cp.get("/api/v1/events?source=helius").await?;
    let swap = events
        .as_array()
        .and_then(|e| e.iter().find(|e| e["block"] == 171_942_733))
        .context("the swap")?;
    anyhow::ensure!(
        swap["kind"] == "helius"
            && swap["status"] == "info"
            && swap["external_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("3Sy5X9")
            && swap["accounts"][0] == "NTYeYJ1wr4bpM5xo6zx5En44SvJFAd35zTxxNoERYqd",
        "{swap}"
    );

    // Alchemy: signed with its signing key.
    let body = alchemy_body();
    let signature = hmac_hex(ALCHEMY_KEY, body.as_bytes());
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/alchemy",
        &[("x-alchemy-signature", &signature)],
        body.clone().into_bytes(),
    )
    .await?;
    anyhow::ensure!(
        status == 200 && answer["stored"] == 1,
        "alchemy: {status} {answer}"
    );
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/alchemy",
        &[("x-alchemy-signature", &signature)],
        body.clone().into_bytes(),
    )
    .await?;
    anyhow::ensure!(status == 200 && answer["duplicates"] == 1, "{answer}");
    let tampered = body.replace("293.092129", "9293.092129");
    let (status, _) = post_raw(
        &cp,
        "/api/v1/integrations/alchemy",
        &[("x-alchemy-signature", &signature)],
        tampered.into_bytes(),
    )
    .await?;
    anyhow::ensure!(status == 401, "a tampered body was accepted: {status}");
    anyhow::ensure!(event_count(&cp, "alchemy").await? == 1);

    // Generic signed webhook: problem and resolution by id, Average and above opens.
    let batch = serde_json::to_vec(&json!([
        {"id": "backup-1", "status": "problem", "severity": "average", "title": "nightly backup failed", "host": "db-7"},
        {"id": "backup-1", "status": "resolved", "title": "nightly backup ran"}
    ]))?;
    let signature = format!("sha256={}", hmac_hex(&hooks_secret, &batch));
    let (status, answer) = post_raw(
        &cp,
        "/api/v1/integrations/jobs",
        &[("x-vantage-signature", &signature)],
        batch,
    )
    .await?;
    anyhow::ensure!(status == 200 && answer["stored"] == 2, "{answer}");
    let opened = answer["rows"][0]["incident_id"]
        .as_str()
        .context("incident")?;
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{opened}")).await?;
    anyhow::ensure!(
        incident["incident"]["open"] == false
            && incident["incident"]["subject_id"] == "jobs/backup-1"
            && incident["incident"]["title"] == "nightly backup failed on db-7",
        "{incident}"
    );
    let (status, _) = post_raw(
        &cp,
        "/api/v1/integrations/nobody",
        &[("x-vantage-signature", &signature)],
        b"{}".to_vec(),
    )
    .await?;
    anyhow::ensure!(status == 401, "an unknown source: {status}");

    // MQTT viewers got every stored event on events/{source}.
    let out = dir.path().join("events.out");
    let text = wait_for("events on MQTT", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (text
            .lines()
            .filter(|l| l.starts_with("vantage/v1/events/"))
            .count()
            >= 8)
            .then_some(text)
    })
    .await
    .with_context(|| {
        format!(
            "out: {} err: {}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("events.err")).unwrap_or_default()
        )
    })?;
    for (topic, n) in [("zabbix", 3), ("helius", 2), ("alchemy", 1), ("jobs", 2)] {
        let seen = text
            .lines()
            .filter(|l| l.starts_with(&format!("vantage/v1/events/{topic} ")))
            .count();
        anyhow::ensure!(
            seen == n,
            "{seen} events on events/{topic}, not {n}: {text}"
        );
    }
    anyhow::ensure!(
        cp.counter("vantage_events_total{outcome=\"stored\"}")
            .await?
            == 8
    );
    anyhow::ensure!(
        cp.counter("vantage_events_total{outcome=\"refused\"}")
            .await?
            >= 1
    );
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    Ok(())
}

both_backends!(webhooks_store_each_event_once_and_publish_it, webhooks);

/// Bodies an agent relays (events with `relayed`, as the agent's `[relay]` spools them) are
/// taken only with the source's signature: a signed Zabbix body is stored once (its replay
/// found as a duplicate), a wrong signature, an unknown source or a malformed body refused;
/// each is acknowledged, so the agent stops sending it.
async fn relayed_bodies(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let secret = cp
        .create_source(json!({"id": "zabbix", "kind": "zabbix"}))
        .await?;
    let identity = MqttIdentity::enroll(&cp, "europe").await?;
    let (client, mut acks) = identity.listen("results/ack").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = zabbix_body("5501", "problem", 4, "lan-db-1").to_string();
    let signed = format!("sha256={}", hmac_hex(&secret, body.as_bytes()));
    let malformed = json!({"v": 1, "nothing": "of Zabbix"}).to_string();
    let relayed = |seq: u64, source: &str, body: &str, signature: &str| {
        json!({"seq": seq, "measured_at_ms": 1_735_812_672_000_i64, "source": source,
            "severity": "", "message": "", "relayed": {"body": body, "signature": signature}})
    };
    let batch = json!({"v": 1, "items": [
        relayed(1, "zabbix", &body, &signed),
        relayed(2, "zabbix", &body, &signed),
        relayed(3, "zabbix", &body, &format!("sha256={}", hmac_hex("not-the-secret-0123", body.as_bytes()))),
        relayed(4, "nope", &body, &signed),
        relayed(5, "zabbix", &malformed, &format!("sha256={}", hmac_hex(&secret, malformed.as_bytes()))),
    ]});
    client
        .publish(
            format!("vantage/v1/agents/{}/events", identity.agent_id),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&batch)?,
        )
        .await?;
    // Every seq is acknowledged: taken or refused for good.
    let acked = MqttIdentity::acked_seqs(&mut acks, 5, Duration::from_secs(20)).await?;
    assert_eq!(acked, (1..=5).collect());
    assert_eq!(event_count(&cp, "zabbix").await?, 1);
    let (_, events) = cp.get("/api/v1/events?source=zabbix").await?;
    assert_eq!(events[0]["external_id"], "5501", "{events}");
    assert_eq!(events[0]["host"], "lan-db-1", "{events}");
    let relayed_total =
        |outcome: &str| format!("vantage_events_relayed_total{{outcome=\"{outcome}\"}}");
    assert_eq!(cp.counter(&relayed_total("taken")).await?, 2);
    assert_eq!(cp.counter(&relayed_total("refused")).await?, 3);
    assert_eq!(cp.counter(&relayed_total("retry")).await?, 0);
    assert_eq!(
        cp.counter("vantage_events_total{outcome=\"duplicate\"}")
            .await?,
        1
    );
    assert_eq!(
        cp.counter("vantage_webhooks_refused_total{reason=\"unauthorized\"}")
            .await?,
        2
    );
    Ok(())
}

both_backends!(relayed_bodies_need_the_sources_signature, relayed_bodies);

/// Webhooks in parallel share group commits: 40 events, each sent twice by 80 concurrent
/// requests (a problem and its resolution among them), are stored once each, every request
/// answered, the resolution paired with its problem whichever commit each landed in.
async fn parallel_webhooks(backend: Backend) -> anyhow::Result<()> {
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let bearer = format!(
        "Bearer {}",
        cp.create_source(json!({"id": "zabbix", "kind": "zabbix"}))
            .await?
    );
    let mut bodies = Vec::new();
    for n in 0..39 {
        bodies.push(zabbix_body(
            &format!("7{n:03}"),
            "problem",
            3,
            &format!("edge-{}", n % 7),
        ));
    }
    bodies.push(zabbix_body("7000", "resolved", 3, "edge-0"));
    let requests = bodies.iter().chain(bodies.iter()).map(|body| {
        let (cp, bearer) = (&cp, &bearer);
        async move {
            post_raw(
                cp,
                "/api/v1/integrations/zabbix",
                &[("authorization", bearer.as_str())],
                serde_json::to_vec(body)?,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut duplicates = 0;
    for answer in answers {
        let (status, body) = answer?;
        anyhow::ensure!(status == 200, "{status} {body}");
        if body["duplicate"] == true {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 40);
    assert_eq!(event_count(&cp, "zabbix").await?, 40);
    let (_, events) = cp.get("/api/v1/events?source=zabbix&limit=100").await?;
    let rows = events.as_array().context("events")?;
    let of = |status: &str| {
        rows.iter()
            .find(|e| e["external_id"] == "7000" && e["status"] == status)
            .cloned()
            .unwrap_or_default()
    };
    let (problem, resolved) = (of("problem"), of("resolved"));
    assert!(problem["id"].is_i64(), "{events}");
    assert_eq!(resolved["problem_id"], problem["id"], "{resolved}");
    assert!(problem["resolved_at_ms"].is_i64(), "{problem}");
    let (_, nodes) = cp.get("/api/v1/external-nodes").await?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(7), "{nodes}");
    assert_eq!(
        cp.counter("vantage_events_total{outcome=\"duplicate\"}")
            .await?,
        40
    );
    let per_source = |outcome: &str| {
        format!("vantage_source_events_total{{source=\"zabbix\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(cp.counter(&per_source("stored")).await?, 40);
    assert_eq!(cp.counter(&per_source("duplicate")).await?, 40);
    assert_eq!(cp.counter(&per_source("refused")).await?, 0);
    Ok(())
}

both_backends!(parallel_webhooks_share_group_commits, parallel_webhooks);

/// One group commit holds events that belong together: a problem, its resolution, a replay of
/// the problem and a resolution whose problem comes later in the same group. Stored, paired,
/// found as a duplicate, and the late problem adopts its resolution: as if sent one by one.
async fn one_group(backend: Backend) -> anyhow::Result<()> {
    use vantage_control_plane::store::{EventWrite, NewEvent, Recorded, SourceRow, Store};
    use vantage_mqtt::{EventSeverity, EventStatus, SourceKind};
    let test_store = TestStore::create(backend).await?;
    let dir = tempfile::tempdir()?;
    let store = Store::connect(test_store.url.as_deref(), dir.path()).await?;
    store.migrate().await?;
    let source = SourceRow {
        id: "zabbix".into(),
        kind: SourceKind::Zabbix,
        secret: "vsrc_0123456789abcdef".into(),
        incident_severity: None,
        poll: None,
        poll_cursor: None,
        created_at_ms: 0,
    };
    let event = |id: &str, status: EventStatus| NewEvent {
        dedup_key: format!("{id}:{}", u8::from(status == EventStatus::Problem)),
        external_id: id.into(),
        status,
        severity: EventSeverity::High,
        title: format!("event {id}"),
        host: Some("lan-db-1".into()),
        host_name: String::new(),
        host_address: String::new(),
        occurred_at_ms: 1,
        block: None,
        accounts: vec![],
        tags: vec![],
        payload: "{}".into(),
        payload_truncated: false,
    };
    let group = [
        event("1", EventStatus::Problem),
        event("1", EventStatus::Resolved),
        event("1", EventStatus::Problem),
        event("2", EventStatus::Resolved),
        event("2", EventStatus::Problem),
    ];
    let no_incident = |_: &vantage_control_plane::store::Pairing| None;
    let writes: Vec<EventWrite<'_>> = group
        .iter()
        .enumerate()
        .map(|(i, event)| EventWrite {
            source: &source,
            event,
            node: None,
            external: (i == 0).then_some(("db one", "192.0.2.7")),
            received_at_ms: 1_000 + i as i64,
            incident: &no_incident,
        })
        .collect();
    let recorded = store.record_events(&writes).await?;
    let stored = |r: &Recorded| match r {
        Recorded::Stored { event, .. } => Some((**event).clone()),
        Recorded::Duplicate { .. } => None,
    };
    assert_eq!(recorded.len(), 5);
    let problem = stored(&recorded[0]).context("the problem")?;
    let resolution = stored(&recorded[1]).context("its resolution")?;
    assert_eq!(resolution.problem_id, Some(problem.id));
    assert!(
        matches!(recorded[2], Recorded::Duplicate { id } if id == problem.id),
        "{:?}",
        recorded[2]
    );
    let early = stored(&recorded[3]).context("a resolution before its problem")?;
    let late = stored(&recorded[4]).context("the late problem")?;
    assert_eq!(early.problem_id, None, "nothing to pair with yet");
    assert_eq!(late.resolved_at_ms, Some(early.received_at_ms));
    let rows = store.list_events(Some("zabbix"), None, None, 100).await?;
    assert_eq!(rows.len(), 4);
    let adopted = rows.iter().find(|e| e.id == early.id).context("stored")?;
    assert_eq!(
        adopted.problem_id,
        Some(late.id),
        "the late problem adopts it"
    );
    let first = rows.iter().find(|e| e.id == problem.id).context("stored")?;
    assert_eq!(first.resolved_at_ms, Some(resolution.received_at_ms));
    let nodes = store.list_external_nodes().await?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].name.as_str(), nodes[0].address.as_str()),
        ("db one", "192.0.2.7")
    );
    store.close().await;
    Ok(())
}

both_backends!(
    a_group_commit_pairs_and_deduplicates_within_itself,
    one_group
);
