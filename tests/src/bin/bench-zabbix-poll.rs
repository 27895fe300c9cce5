//! The Zabbix API poller's lag behind a real Zabbix 6.0 under a burst of problems: a trigger
//! that makes a problem event for every value above 5 (multiple problem events) gets `--burst`
//! values from one `zabbix_sender` batch; each problem's lag is the time from the event's
//! clock in Zabbix until the control plane stored it (`received_at_ms`), p50/p99/max, and the
//! time until the last one was stored.
//!
//! Needs the Zabbix of `scripts/lib/zabbix.sh`:
//! `bash -c '. scripts/lib/postgres.sh; start_postgres; . scripts/lib/zabbix.sh; start_zabbix;
//! target/release/bench-zabbix-poll --backend sqlite --burst 10000'`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use vantage_tests::zabbix::Zabbix;
use vantage_tests::{Backend, ControlPlane, TestStore};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut backend = Backend::Sqlite;
    let mut burst = 10_000u64;
    let mut interval_s = 1u32;
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--backend" => backend = Backend::parse(&value)?,
            "--burst" => burst = value.parse()?,
            "--interval-s" => interval_s = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let zabbix = Zabbix::connect().await?;
    let store = TestStore::create(backend).await?;
    let cp = ControlPlane::start(&store).await?;
    let name = format!(
        "vantage-bench-poll-{}-{}",
        backend.name(),
        std::process::id()
    );
    let (groupid, hostid) = zabbix.create_host(&name, &name).await?;
    zabbix
        .call(
            "item.create",
            json!({"name": "Vantage burst", "key_": "vantage.test", "hostid": hostid, "type": 2, "value_type": 3}),
        )
        .await?;
    // type 1: a problem event for every value that makes the expression true.
    zabbix
        .call(
            "trigger.create",
            json!({"description": "burst {ITEM.VALUE}", "expression": format!("last(/{name}/vantage.test)>5"), "priority": 4, "type": 1}),
        )
        .await?;
    let api_url = std::env::var("VANTAGE_TEST_ZABBIX_API_URL")?;
    let (status, body) = cp
        .post(
            "/api/v1/sources",
            json!({"id": "zabbix", "kind": "zabbix",
                "poll": {"api_url": api_url, "api_token": zabbix.session(), "interval_s": interval_s, "groupids": [groupid]}}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    // The item and trigger reach the server's config cache, and the poller starts.
    zabbix.send(&name, 1).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;

    let mut file = tempfile::NamedTempFile::new()?;
    // Distinct clocks, one second apart and ending now: Zabbix makes one problem per value
    // (values sharing a clock were seen to collapse into fewer problems).
    let now = vantage_tests::now_ms() / 1000;
    for n in 0..burst {
        writeln!(
            file,
            "\"{name}\" vantage.test {} {}",
            now - burst as i64 + n as i64 + 1,
            10 + n
        )?;
    }
    file.flush()?;
    let (address, port) = zabbix.trapper.rsplit_once(':').context("trapper")?;
    let started = Instant::now();
    let output = tokio::process::Command::new("zabbix_sender")
        .args(["-z", address, "-p", port, "-T", "-i"])
        .arg(file.path())
        .output()
        .await?;
    let sent_s = started.elapsed().as_secs_f64();
    let said = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        said.contains(&format!("processed: {burst}")) || said.contains("sent:"),
        "zabbix_sender: {said}"
    );

    // Until the control plane has every problem.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut rows = Vec::new();
    loop {
        rows.clear();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(id) => {
                    format!("/api/v1/events?source=zabbix&status=problem&limit=1000&before={id}")
                }
                None => "/api/v1/events?source=zabbix&status=problem&limit=1000".to_owned(),
            };
            let (_, page) = cp.get(&path).await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let n = page.len();
            before = page.last().and_then(|e| e["id"].as_i64());
            rows.extend(page);
            if n < 1000 {
                break;
            }
        }
        if rows.len() as u64 >= burst || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let caught_up_s = started.elapsed().as_secs_f64();
    // Values are dated in the past: a problem's lag counts from when zabbix_sender finished
    // (Zabbix had them all) or its own clock, whichever is later.
    let sent_ms =
        vantage_tests::now_ms() - ((started.elapsed().as_secs_f64() - sent_s) * 1000.0) as i64;
    let mut lags: Vec<i64> = rows
        .iter()
        .filter_map(|e| {
            Some(e["received_at_ms"].as_i64()? - e["occurred_at_ms"].as_i64()?.max(sent_ms))
        })
        .collect();
    lags.sort_unstable();
    let pick = |p: f64| {
        lags.get(((lags.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let (_, sources) = cp.get("/api/v1/sources").await?;
    println!(
        "backend {} | burst {burst} problems, poll interval {interval_s} s | zabbix_sender {sent_s:.1} s | stored {} in {caught_up_s:.1} s after the send began",
        backend.name(),
        rows.len()
    );
    println!(
        "lag (Zabbix had the values → stored in Vantage): p50 {} ms, p99 {} ms, max {} ms | polls {} | errors {} | cursor {}",
        pick(0.5),
        pick(0.99),
        lags.last().copied().unwrap_or(0),
        cp.counter("vantage_zabbix_polls_total").await?,
        cp.counter("vantage_zabbix_poll_errors_total").await?,
        sources[0]["poll_cursor"]
    );
    anyhow::ensure!(
        rows.len() as u64 == burst,
        "{} of {burst} problems stored",
        rows.len()
    );
    Ok(())
}
