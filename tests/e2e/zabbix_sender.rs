//! The agent's `[zabbix_sender]`: a real agent sends its host metrics to the real Zabbix 6.0
//! that `scripts/lib/zabbix.sh` starts, into a host linked to the template
//! `provision/zabbix/vantage_agent_template.yaml` imported as shipped, and Zabbix's history
//! holds the very samples the control plane stored; an agent whose Zabbix never answers keeps
//! reporting to the control plane at its interval. The store plays no part in either, so both
//! run once, on SQLite.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use vantage_agent::zabbix_sender::{ITEMS, ValueType};
use vantage_tests::zabbix::Zabbix;
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, now_ms, proc_sample, wait_for};

/// The template's technical name, as shipped.
const TEMPLATE: &str = "Vantage agent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_reach_a_real_zabbix_through_the_template() {
    host_metrics_reach_zabbix().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zabbix_that_never_answers_does_not_hold_up_metrics() {
    unanswering_zabbix().await.unwrap();
}

/// Zabbix's history table of a value type.
fn history_table(value_type: ValueType) -> u8 {
    match value_type {
        ValueType::Float => 0,
        ValueType::Unsigned => 3,
    }
}

/// Imports the template as shipped and checks it holds one trapper item per key the agent
/// sends, of the agent's value type, in the group `Templates/Vantage`; its id.
async fn import_template(zabbix: &Zabbix) -> anyhow::Result<String> {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../provision/zabbix/vantage_agent_template.yaml"),
    )?;
    zabbix
        .call(
            "configuration.import",
            json!({"format": "yaml", "source": yaml, "rules": {
                "groups": {"createMissing": true},
                "templates": {"createMissing": true, "updateExisting": true},
                "items": {"createMissing": true, "updateExisting": true}}}),
        )
        .await
        .context("importing the template")?;
    let found = zabbix
        .call(
            "template.get",
            json!({"output": ["templateid", "host"], "filter": {"host": TEMPLATE},
                "selectItems": ["key_", "type", "value_type"], "selectGroups": ["name"]}),
        )
        .await?;
    let template = found.get(0).context("the imported template")?;
    let groups: Vec<&str> = template["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    anyhow::ensure!(groups == ["Templates/Vantage"], "groups {groups:?}");
    let items = template["items"].as_array().context("items")?;
    anyhow::ensure!(items.len() == ITEMS.len(), "items {items:?}");
    for (name, value_type) in ITEMS {
        let key = format!("vantage.{name}");
        let item = items
            .iter()
            .find(|item| item["key_"] == key.as_str())
            .with_context(|| format!("the template has no item {key}: {items:?}"))?;
        // Type 2 is a Zabbix trapper; value types 0 float, 3 unsigned.
        anyhow::ensure!(
            item["type"] == "2"
                && item["value_type"] == history_table(value_type).to_string().as_str(),
            "{key}: {item}"
        );
    }
    template["templateid"]
        .as_str()
        .context("templateid")
        .map(str::to_owned)
}

/// The values (clock in ms, value) Zabbix holds for an item, oldest first.
async fn history(
    zabbix: &Zabbix,
    itemid: &str,
    value_type: ValueType,
) -> anyhow::Result<Vec<(i64, f64)>> {
    let rows = zabbix
        .call(
            "history.get",
            json!({"output": "extend", "history": history_table(value_type), "itemids": [itemid],
                "sortfield": "clock", "sortorder": "ASC"}),
        )
        .await?;
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    rows.as_array()
        .context("history")?
        .iter()
        .map(|row| {
            let clock = number(&row["clock"]).context("clock")? as i64;
            let ns = number(&row["ns"]).context("ns")? as i64;
            let value = number(&row["value"]).context("value")?;
            Ok((clock * 1000 + ns / 1_000_000, value))
        })
        .collect()
}

/// A `name=value` field of a log line.
fn field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Every send the agent logged (at debug level), in order: processed, failed, elapsed ms.
fn sends(log: &str) -> Vec<(u64, u64, f64)> {
    log.lines()
        .filter(|line| line.contains("Sent host metrics to Zabbix"))
        .filter_map(|line| {
            Some((
                field(line, "processed")?,
                field(line, "failed")?,
                field(line, "elapsed_ms")?,
            ))
        })
        .collect()
}

async fn host_metrics_reach_zabbix() -> anyhow::Result<()> {
    let zabbix = Zabbix::connect().await?;
    let templateid = import_template(&zabbix).await?;

    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    // Tests share one Zabbix: a host (and group) of this test's own.
    let host = format!("vantage-sender-{}-{}", std::process::id(), now_ms());
    let group = zabbix
        .call("hostgroup.create", json!({"name": host}))
        .await?;
    let groupid = group["groupids"][0].as_str().context("groupid")?;
    let created = zabbix
        .call(
            "host.create",
            json!({"host": host, "groups": [{"groupid": groupid}],
                "templates": [{"templateid": templateid}]}),
        )
        .await?;
    let hostid = created["hostids"][0].as_str().context("hostid")?;
    let found = zabbix
        .call(
            "item.get",
            json!({"output": ["itemid", "key_"], "hostids": [hostid]}),
        )
        .await?;
    let itemids: HashMap<String, String> = found
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|item| {
            Some((
                item["key_"].as_str()?.to_owned(),
                item["itemid"].as_str()?.to_owned(),
            ))
        })
        .collect();
    anyhow::ensure!(itemids.len() == ITEMS.len(), "host items {itemids:?}");

    // A new item is refused until Zabbix's config cache (refreshed every second here) has it:
    // the agent simply sends every sample, and the later ones are stored.
    let token = cp.enrollment_token("r1", 1).await?;
    let agent = Agent::start(
        &cp,
        &token,
        &format!(
            "metrics_interval_s = 1\n[zabbix_sender]\nserver = \"{}\"\nhost = \"{host}\"\n",
            zabbix.trapper
        ),
    )?;
    let id = agent.wait_enrolled().await?;

    let value_type = |name: &str| {
        ITEMS
            .iter()
            .find(|(item, _)| *item == name)
            .map(|(_, value_type)| *value_type)
            .unwrap_or(ValueType::Float)
    };
    let item = |name: &str| itemids.get(&format!("vantage.{name}")).cloned();
    // Present on every node: CPU, memory, load, network (loopback at least), uptime.
    let required = [
        "cpu_pct",
        "mem_used_pct",
        "load1",
        "load15",
        "net_rx_bytes_per_s",
        "uptime_s",
    ];
    let started = std::time::Instant::now();
    let values: HashMap<&str, Vec<(i64, f64)>> = wait_for(
        "cpu_pct and the other items in Zabbix's history",
        Duration::from_secs(30),
        || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut values = HashMap::new();
            for name in required {
                let rows = history(&zabbix, &item(name)?, value_type(name))
                    .await
                    .ok()?;
                if rows.is_empty() {
                    return None;
                }
                values.insert(name, rows);
            }
            Some(values)
        },
    )
    .await
    .with_context(|| agent.log())?;
    let first_value_after = started.elapsed();

    let now = now_ms();
    for (name, rows) in &values {
        for (clock_ms, value) in rows {
            anyhow::ensure!(
                (now - 120_000..=now + 5_000).contains(clock_ms),
                "{name}: clock {clock_ms} is not about now ({now})"
            );
            let plausible = match *name {
                "cpu_pct" | "mem_used_pct" => (0.0..=100.0).contains(value),
                "uptime_s" => *value >= 1.0,
                _ => *value >= 0.0,
            };
            anyhow::ensure!(plausible, "{name}: implausible value {value}");
        }
    }
    for name in ["swap_used_pct", "disk_used_pct"] {
        let rows = history(&zabbix, &item(name).context(name)?, ValueType::Float).await?;
        anyhow::ensure!(
            rows.iter().all(|(_, v)| (0.0..=100.0).contains(v)),
            "{name}: {rows:?}"
        );
    }

    // Zabbix holds the very samples the control plane stored: same measurement time, same
    // numbers.
    let stored = wait_for(
        "metrics in the control plane",
        Duration::from_secs(20),
        || async {
            let (_, body) = cp.get(&format!("/api/v1/metrics?agent={id}")).await.ok()?;
            (body.as_array()?.len() >= 2).then_some(body)
        },
    )
    .await?;
    let stored: HashMap<i64, &Value> = stored
        .as_array()
        .context("metrics")?
        .iter()
        .filter_map(|row| Some((row["measured_at_ms"].as_i64()?, row)))
        .collect();
    let mut n_matched = 0;
    for (clock_ms, cpu) in &values["cpu_pct"] {
        if let Some(row) = stored.get(clock_ms) {
            let cp_cpu = row["cpu_pct"].as_f64().context("cpu_pct")?;
            anyhow::ensure!((cp_cpu - cpu).abs() < 0.001, "cpu {cp_cpu} vs Zabbix {cpu}");
            n_matched += 1;
        }
    }
    for (clock_ms, uptime) in &values["uptime_s"] {
        if let Some(row) = stored.get(clock_ms) {
            let cp_uptime = row["uptime_s"].as_f64().context("uptime_s")?;
            anyhow::ensure!(
                cp_uptime == *uptime,
                "uptime {cp_uptime} vs Zabbix {uptime}"
            );
        }
    }
    anyhow::ensure!(
        n_matched >= 1,
        "no Zabbix cpu_pct value at a stored sample's time: {:?} vs {:?}",
        values["cpu_pct"],
        stored.keys().collect::<Vec<_>>()
    );

    // Figures for the record (shown with --no-capture).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = sends(&agent.log());
    anyhow::ensure!(!sent.is_empty(), "no send logged: {}", agent.log());
    // The counts Zabbix answered, send by send: the first may be refused (new items).
    let counts: Vec<(u64, u64)> = sent.iter().map(|(p, f, _)| (*p, *f)).collect();
    anyhow::ensure!(
        counts
            .last()
            .is_some_and(|(processed, failed)| *processed >= 8 && *failed == 0),
        "the last send was not all processed: {counts:?}"
    );
    let mut latencies: Vec<f64> = sent.iter().map(|(_, _, ms)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    let rss_kib = agent
        .pid()
        .and_then(|pid| proc_sample(pid).ok())
        .map(|s| s.rss_kib);
    eprintln!(
        "zabbix_sender: first values in Zabbix after {first_value_after:?}; sends (processed, \
         failed) {counts:?}, latency ms min {:.2} median {:.2} max {:.2}; agent RSS {rss_kib:?} \
         KiB",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    // Nothing of Zabbix's went wrong beyond the first refusals of the new items.
    let log = agent.log();
    anyhow::ensure!(
        !log.contains("Cannot send host metrics to Zabbix;"),
        "a send failed: {log}"
    );
    Ok(())
}

async fn unanswering_zabbix() -> anyhow::Result<()> {
    // A "Zabbix" that accepts connections and never answers: every send waits out its timeout.
    let trapper = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = trapper.local_addr()?.port();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = trapper.accept().await {
            held.push(stream);
            let _ = accepted_tx.send(());
        }
    });

    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    let token = cp.enrollment_token("r1", 1).await?;
    let agent = Agent::start(
        &cp,
        &token,
        &format!(
            "metrics_interval_s = 1\n[zabbix_sender]\nserver = \"127.0.0.1:{port}\"\nhost = \"stuck\"\ntimeout_ms = 4000\n"
        ),
    )?;
    let id = agent.wait_enrolled().await?;

    // Samples reach the control plane every second all the same.
    let rows = wait_for(
        "10 samples in the control plane",
        Duration::from_secs(40),
        || async {
            let (_, body) = cp.get(&format!("/api/v1/metrics?agent={id}")).await.ok()?;
            let rows = body.as_array()?.clone();
            (rows.len() >= 10).then_some(rows)
        },
    )
    .await
    .with_context(|| agent.log())?;
    let mut times: Vec<i64> = rows
        .iter()
        .filter_map(|row| row["measured_at_ms"].as_i64())
        .collect();
    times.sort_unstable();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    anyhow::ensure!(
        gaps.iter().all(|gap| *gap <= 1_500),
        "samples were held up: gaps {gaps:?} ms"
    );

    // The agent kept trying, one connection at a time, and said so once (not every sample).
    let mut n_accepted: i64 = 0;
    while accepted.try_recv().is_ok() {
        n_accepted += 1;
    }
    // One connection per timeout at most (4 s), since the first sample.
    let most = (now_ms() - times[0]) / 4_000 + 2;
    anyhow::ensure!(
        (2..=most).contains(&n_accepted),
        "{n_accepted} connections, expected 2..={most} with a 4 s timeout"
    );
    let log = agent.log();
    let n_warnings = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("Cannot send host metrics to Zabbix"))
        .count();
    anyhow::ensure!(n_warnings == 1, "{n_warnings} warnings: {log}");
    anyhow::ensure!(
        log.contains("n_dropped_samples="),
        "no drop count logged: {log}"
    );
    let rss_kib = agent
        .pid()
        .and_then(|pid| proc_sample(pid).ok())
        .map(|s| s.rss_kib);
    eprintln!(
        "zabbix_sender (never answering): agent RSS {rss_kib:?} KiB, {n_accepted} connections"
    );
    holder.abort();
    Ok(())
}
