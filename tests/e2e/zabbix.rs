//! A real Zabbix 6.0 (Debian's packages, started by `scripts/lib/zabbix.sh`) sending to a
//! real control plane through the media type in `provision/zabbix/`: a trigger fired with
//! `zabbix_sender` arrives once as a problem (opening an incident, on the node of the agent
//! its host is), an acknowledgement once as an update, and the resolution once (resolving the
//! incident); Zabbix records Vantage's answer as the event's tags. The API poller finds a
//! problem that began before it existed, and after the control plane was down, catches up
//! from its stored cursor: each problem and resolution stored once. A Zabbix whose only way
//! out is an agent's relay in a network namespace delivers through the agent, while the
//! agent's link to the control plane is cut too: each problem and resolution arrives once.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use vantage_tests::regions::Region;
use vantage_tests::zabbix::Zabbix;
use vantage_tests::{Agent, Backend, ControlPlane, MqttIdentity, TestStore, bin, wait_for};

use crate::both_backends;

/// Events of the source `zabbix`, oldest first.
async fn events(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    let (status, body) = cp.get("/api/v1/events?source=zabbix&limit=1000").await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    let mut rows = body.as_array().context("events")?.clone();
    rows.reverse();
    Ok(rows)
}

async fn wait_for_status(cp: &ControlPlane, status: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    wait_for(
        &format!("{n} {status} event(s) from Zabbix"),
        Duration::from_secs(60),
        || async {
            let rows = events(cp).await.ok()?;
            (rows.iter().filter(|e| e["status"] == status).count() >= n).then_some(rows)
        },
    )
    .await
}

async fn webhook(backend: Backend) -> anyhow::Result<()> {
    let zabbix = Zabbix::connect().await?;
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let secret = &cp
        .create_source(json!({"id": "zabbix", "kind": "zabbix", "incident_severity": "high"}))
        .await?;
    // The Zabbix host is an enrolled agent: its events land on that node.
    let agent = MqttIdentity::enroll(&cp, "r1").await?;
    let name = format!("vantage-e2e-{}-{}", backend.name(), agent.agent_id);
    let setup = zabbix
        .setup(
            &name,
            &agent.agent_id,
            &cp.url("/api/v1/integrations/zabbix"),
            secret,
        )
        .await?;

    // The trigger fires: one problem, High, on the agent's node, with an incident.
    zabbix.raise(&setup.host, &setup.hostid, 10).await?;
    let rows = wait_for_status(&cp, "problem", 1).await?;
    let problem = rows
        .iter()
        .find(|e| e["status"] == "problem")
        .context("problem")?
        .clone();
    anyhow::ensure!(
        problem["severity"] == "high"
            && problem["host"] == setup.host.as_str()
            && problem["node"] == agent.agent_id.as_str()
            && problem["title"]
                .as_str()
                .unwrap_or("")
                .contains("value is high"),
        "{problem}"
    );
    let incident_id = problem["incident_id"]
        .as_str()
        .context("an incident")?
        .to_owned();
    let zabbix_event = problem["external_id"]
        .as_str()
        .context("event id")?
        .to_owned();

    // Zabbix kept Vantage's answer as the event's tags (the media type's process_tags).
    let tags = wait_for(
        "Vantage's tags on the Zabbix event",
        Duration::from_secs(30),
        || async {
            let found = zabbix
                .call(
                    "event.get",
                    json!({"eventids": [zabbix_event], "selectTags": "extend"}),
                )
                .await
                .ok()?;
            let tags = found[0]["tags"].as_array()?.clone();
            tags.iter()
                .any(|t| t["tag"] == "__vantage_incident_id")
                .then_some(tags)
        },
    )
    .await?;
    anyhow::ensure!(
        tags.iter()
            .any(|t| t["tag"] == "__vantage_incident_id" && t["value"] == incident_id.as_str()),
        "{tags:?}"
    );

    // An acknowledgement in Zabbix arrives as an update on the incident's timeline.
    zabbix
        .call(
            "event.acknowledge",
            json!({"eventids": [zabbix_event], "action": 6, "message": "looking at it"}),
        )
        .await?;
    let rows = wait_for_status(&cp, "update", 1).await?;
    let update = rows
        .iter()
        .find(|e| e["status"] == "update")
        .context("update")?;
    anyhow::ensure!(
        update["problem_id"] == problem["id"]
            && update["title"]
                .as_str()
                .unwrap_or("")
                .contains("looking at it"),
        "{update}"
    );

    // The value drops: the resolution pairs with the problem and resolves the incident.
    zabbix.send(&setup.host, 1).await?;
    let rows = wait_for_status(&cp, "resolved", 1).await?;
    let resolved = rows
        .iter()
        .find(|e| e["status"] == "resolved")
        .context("resolved")?;
    anyhow::ensure!(
        resolved["external_id"] == zabbix_event.as_str() && resolved["problem_id"] == problem["id"],
        "{resolved}"
    );
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{incident_id}")).await?;
    anyhow::ensure!(incident["incident"]["open"] == false, "{incident}");

    // Exactly once each: nothing more arrives, and Zabbix never had to retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = events(&cp).await?;
    let count = |status: &str| rows.iter().filter(|e| e["status"] == status).count();
    anyhow::ensure!(
        (count("problem"), count("update"), count("resolved")) == (1, 1, 1),
        "events: {rows:?}"
    );
    anyhow::ensure!(
        cp.counter("vantage_events_total{outcome=\"duplicate\"}")
            .await?
            == 0
    );
    let alerts = zabbix
        .call(
            "alert.get",
            json!({"output": ["status", "error", "retries"], "mediatypeids": [setup.mediatypeid]}),
        )
        .await?;
    let alerts = alerts.as_array().context("alerts")?;
    anyhow::ensure!(
        alerts.len() == 3
            && alerts
                .iter()
                .all(|a| a["status"] == "1" && a["retries"] == "0"),
        "Zabbix's deliveries: {alerts:?}"
    );
    Ok(())
}

both_backends!(zabbix_events_arrive_once_through_the_media_type, webhook);

/// Events of the source `zabbix` with `external_id`, by status.
async fn statuses(cp: &ControlPlane, external_id: &str) -> anyhow::Result<Vec<String>> {
    Ok(events(cp)
        .await?
        .iter()
        .filter(|e| e["external_id"] == external_id)
        .filter_map(|e| e["status"].as_str().map(str::to_owned))
        .collect())
}

async fn poller(backend: Backend) -> anyhow::Result<()> {
    let zabbix = Zabbix::connect().await?;
    let store = TestStore::create(backend).await?;
    let mut cp = ControlPlane::start(&store).await?;
    let agent = MqttIdentity::enroll(&cp, "r1").await?;
    let name = format!("vantage-poll-{}-{}", backend.name(), agent.agent_id);
    let (groupid, hostid) = zabbix.create_host(&name, &agent.agent_id).await?;
    zabbix
        .create_item_and_trigger(&hostid, &agent.agent_id)
        .await?;
    let host = agent.agent_id.as_str();
    // A problem that began before Vantage polled: the first poll reads the current problems.
    let first = zabbix.raise(host, &hostid, 10).await?;
    let api_url = std::env::var("VANTAGE_TEST_ZABBIX_API_URL")?;
    let (status, source) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "zabbix", "kind": "zabbix", "incident_severity": "high",
                // Tests share one Zabbix: this poller reads its own host group only.
                "poll": {"api_url": api_url, "api_token": zabbix.session(), "interval_s": 1, "groupids": [groupid]}}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {source}");
    let (_, listed) = cp.get("/api/v1/sources").await?;
    anyhow::ensure!(
        listed[0]["poll"]["interval_s"] == 1 && !listed.to_string().contains(zabbix.session()),
        "the poller's token is shown: {listed}"
    );
    let (status, body) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "chain", "kind": "helius", "poll": {"api_url": api_url, "api_token": "t", "interval_s": 1}}),
        )
        .await?;
    anyhow::ensure!(
        status == 422 && body.to_string().contains("only a Zabbix source"),
        "{status} {body}"
    );
    wait_for(
        "the poller's first problem",
        Duration::from_secs(30),
        || async { (statuses(&cp, &first).await.ok()? == ["problem"]).then_some(()) },
    )
    .await?;
    let problem = events(&cp)
        .await?
        .into_iter()
        .find(|e| e["external_id"] == first.as_str())
        .context("problem")?;
    anyhow::ensure!(
        problem["node"] == host
            && problem["severity"] == "high"
            && problem["incident_id"].is_string(),
        "{problem}"
    );

    // Down while Zabbix resolves it and raises another: on restart the poller catches up
    // from its stored cursor.
    let cursor_before = cp.get("/api/v1/sources").await?.1[0]["poll_cursor"].as_i64();
    anyhow::ensure!(cursor_before.is_some(), "no stored cursor");
    cp.kill();
    zabbix.send(host, 1).await?;
    zabbix.send(host, 20).await?;
    let second = wait_for(
        "Zabbix's second problem",
        Duration::from_secs(30),
        || async {
            let found = zabbix
                .call(
                    "problem.get",
                    json!({"output": ["eventid"], "hostids": [hostid]}),
                )
                .await
                .ok()?;
            found[0]["eventid"]
                .as_str()
                .filter(|id| *id != first)
                .map(str::to_owned)
        },
    )
    .await?;
    cp.spawn().await?;
    wait_for("the caught-up events", Duration::from_secs(30), || async {
        let done = statuses(&cp, &first).await.ok()? == ["problem", "resolved"]
            && statuses(&cp, &second).await.ok()? == ["problem"];
        done.then_some(())
    })
    .await?;
    let incident = problem["incident_id"].as_str().context("incident")?;
    let (_, body) = cp.get(&format!("/api/v1/incidents/{incident}")).await?;
    anyhow::ensure!(body["incident"]["open"] == false, "{body}");

    // Live again: the second problem's resolution, once.
    zabbix.send(host, 2).await?;
    wait_for("the second resolution", Duration::from_secs(30), || async {
        (statuses(&cp, &second).await.ok()? == ["problem", "resolved"]).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    anyhow::ensure!(statuses(&cp, &first).await? == ["problem", "resolved"]);
    anyhow::ensure!(statuses(&cp, &second).await? == ["problem", "resolved"]);
    anyhow::ensure!(events(&cp).await?.len() == 4, "{:?}", events(&cp).await?);
    anyhow::ensure!(cp.counter("vantage_zabbix_poll_errors_total").await? == 0);
    Ok(())
}

both_backends!(the_zabbix_poller_catches_up_from_its_cursor, poller);

/// The Zabbix media type posts to an agent's `[relay]`, which listens inside a network
/// namespace: Zabbix reaches it only through a door into the namespace, and the agent reaches
/// the control plane only through forwards out of it. While the agent's MQTT link is cut,
/// Zabbix's delivery of a problem is still answered (spooled on the agent), and the agent is
/// killed -9 and started again; once the link is back the problem arrives, then its
/// resolution: once each, through the relay only.
async fn relay(backend: Backend) -> anyhow::Result<()> {
    let zabbix = Zabbix::connect().await?;
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let secret = cp
        .create_source(json!({"id": "zabbix", "kind": "zabbix", "incident_severity": "high"}))
        .await?;
    let region = Region::new()?;
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _api = region.forward(cp.http_port, local(cp.http_port))?;
    let mqtt = region.forward(cp.mqtt_port, local(cp.mqtt_port))?;
    let relay_port = vantage_tests::free_port();
    let token = cp.enrollment_token("r1", 1).await?;
    let mut agent = Agent::start_command(
        &cp,
        &token,
        &format!("[relay]\nlisten = \"127.0.0.1:{relay_port}\"\nsecret = \"{secret}\"\n"),
        region.command(&bin("vantage-agent")),
    )?;
    let agent_id = agent.wait_enrolled().await?;
    let door = region.expose(relay_port).await?;
    let endpoint = format!("http://{}/api/v1/integrations/zabbix", door.addr);

    // The relay answers bad requests itself, and spools none of them.
    let client = reqwest::Client::new();
    let problem_body = json!({"v": 1, "event": {"id": "1", "status": "problem"}});
    let wait_listening = || async {
        client
            .post(&endpoint)
            .json(&problem_body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    let first = wait_for("the relay listening", Duration::from_secs(30), || async {
        wait_listening().await
    })
    .await
    .with_context(|| agent.log())?;
    anyhow::ensure!(first == 401, "no secret: {first}");
    for (bearer, body, want) in [
        (
            Some("wrong-secret-0123456789"),
            problem_body.to_string(),
            401,
        ),
        (Some(secret.as_str()), "{not json".to_owned(), 400),
        (Some(secret.as_str()), "[1, 2]".to_owned(), 400),
        (
            Some(secret.as_str()),
            json!({"pad": "x".repeat(70 * 1024)}).to_string(),
            413,
        ),
    ] {
        let mut request = client.post(&endpoint).body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        anyhow::ensure!(status == want, "{status} (wanted {want}): {text}");
        anyhow::ensure!(text.contains("\"message\""), "{text}");
    }
    let get = client.get(&endpoint).bearer_auth(&secret).send().await?;
    anyhow::ensure!(get.status().as_u16() == 405, "{}", get.status());

    let name = format!("vantage-relay-{}-{agent_id}", backend.name());
    let setup = zabbix.setup(&name, &agent_id, &endpoint, &secret).await?;
    let alerts = || async {
        let found = zabbix
            .call(
                "alert.get",
                json!({"output": ["status", "error", "retries"], "mediatypeids": [setup.mediatypeid]}),
            )
            .await?;
        Ok::<_, anyhow::Error>(found.as_array().cloned().unwrap_or_default())
    };

    // The agent's link to the control plane is cut; Zabbix still delivers, to the agent.
    mqtt.cut();
    zabbix.raise(&setup.host, &setup.hostid, 10).await?;
    wait_for(
        "Zabbix's delivery to the relay",
        Duration::from_secs(60),
        || async {
            let alerts = alerts().await.ok()?;
            alerts.iter().any(|a| a["status"] == "1").then_some(())
        },
    )
    .await?;
    anyhow::ensure!(
        events(&cp).await?.is_empty(),
        "an event arrived with the link cut"
    );
    // Answered means spooled and synced: the agent killed -9 now still sends it later.
    agent.kill();
    agent.spawn()?;
    mqtt.restore()?;
    let rows = wait_for_status(&cp, "problem", 1)
        .await
        .with_context(|| agent.log())?;
    let problem = rows
        .iter()
        .find(|e| e["status"] == "problem")
        .context("problem")?
        .clone();
    anyhow::ensure!(
        problem["severity"] == "high"
            && problem["node"] == agent_id.as_str()
            && problem["incident_id"].is_string(),
        "{problem}"
    );

    // The value drops: the resolution comes the same way and resolves the incident.
    zabbix.send(&setup.host, 1).await?;
    let rows = wait_for_status(&cp, "resolved", 1).await?;
    let resolved = rows
        .iter()
        .find(|e| e["status"] == "resolved")
        .context("resolved")?;
    anyhow::ensure!(resolved["problem_id"] == problem["id"], "{resolved}");
    let incident_id = problem["incident_id"].as_str().context("incident")?;
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{incident_id}")).await?;
    anyhow::ensure!(incident["incident"]["open"] == false, "{incident}");

    // Exactly once each, all through the relay, and Zabbix never had to retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = events(&cp).await?;
    let count = |status: &str| rows.iter().filter(|e| e["status"] == status).count();
    anyhow::ensure!(
        (count("problem"), count("resolved"), rows.len()) == (1, 1, 2),
        "events: {rows:?}"
    );
    let relayed = |outcome: &str| format!("vantage_events_relayed_total{{outcome=\"{outcome}\"}}");
    anyhow::ensure!(cp.counter(&relayed("taken")).await? == 2);
    anyhow::ensure!(cp.counter(&relayed("refused")).await? == 0);
    anyhow::ensure!(
        cp.counter("vantage_events_total{outcome=\"duplicate\"}")
            .await?
            == 0
    );
    let alerts = alerts().await?;
    anyhow::ensure!(
        alerts.len() == 2
            && alerts
                .iter()
                .all(|a| a["status"] == "1" && a["retries"] == "0"),
        "Zabbix's deliveries: {alerts:?}"
    );
    drop(agent);
    Ok(())
}

both_backends!(zabbix_events_arrive_once_through_an_agents_relay, relay);
