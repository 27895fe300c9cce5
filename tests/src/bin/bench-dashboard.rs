//! Dashboard benchmark: the overview of `--checks` checks (10,000) in `--regions` regions (4)
//! in a real browser (Debian's chromium through `tests/browser/run.mjs`; run
//! `. scripts/lib/browser.sh; ensure_browser` first), against a real control plane on SQLite.
//!
//! The checks are written into the store before the control plane starts (as a restored
//! store would hold them): TCP checks every 10 minutes, half against a port that accepts
//! (UP), half against one that refuses (DOWN). No agent is enrolled, so the control plane's
//! own executor runs them in every region and judges real verdicts. Once every check has one,
//! the browser signs in, then loads the page again (the session cookie kept) and reads
//! through the Performance API:
//! - first paint of the overview: navigation start → the frame after the matrix is drawn;
//! - filter: typing a name into the filter, until the frame after the matrix is redrawn
//!   (`--rounds` different names; median and slowest);
//! - sort by state and back, and the per-region view;
//! - opening a check from the matrix: the click → the frame after its page (five API calls,
//!   the chart) is drawn.
//!
//! Goals (issue 12): first paint ≤ 1 s; filter, sort and open ≤ 200 ms.
//! Usage: `bench-dashboard [--checks 10000] [--regions 4] [--rounds 5]`.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use vantage_control_plane::checks::{CheckDefinition, to_row};
use vantage_control_plane::store::Store;
use vantage_tests::{Backend, ControlPlane, TestStore, flags, wait_for};

struct Args {
    checks: usize,
    regions: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        checks: 10_000,
        regions: 4,
        rounds: 5,
    };
    for (flag, value) in flags()? {
        match flag.as_str() {
            "--checks" => args.checks = value.parse()?,
            "--regions" => args.regions = value.parse()?,
            "--rounds" => args.rounds = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn step(op: &str, args: Value) -> Value {
    let mut step = json!({ "op": op });
    if let (Some(step), Some(args)) = (step.as_object_mut(), args.as_object()) {
        step.extend(args.clone());
    }
    step
}

/// Runs one browser session and returns each step's value.
async fn browser(steps: Value) -> anyhow::Result<Vec<Value>> {
    let dir = std::env::var("VANTAGE_BROWSER_DIR")
        .context("VANTAGE_BROWSER_DIR is not set: `. scripts/lib/browser.sh; ensure_browser`")?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), serde_json::to_vec(&steps)?)?;
    let output = tokio::process::Command::new("node")
        .arg("run.mjs")
        .arg(file.path())
        .current_dir(&dir)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).with_context(|| {
            format!(
                "no report: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    anyhow::ensure!(report["ok"] == true, "the browser run failed: {report}");
    Ok(report["results"]
        .as_array()
        .context("results")?
        .iter()
        .map(|r| r["value"].clone())
        .collect())
}

/// Durations of the measures named `name` in a `perf` step's value.
fn measures(perf: &Value, name: &str) -> Vec<f64> {
    perf["measures"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|m| m["name"] == name)
                .filter_map(|m| m["duration"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}

fn mark(perf: &Value, name: &str) -> Option<f64> {
    perf["marks"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["startTime"]
        .as_f64()
}

fn median_and_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
    (median, values.last().copied().unwrap_or(f64::NAN))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    // A port that accepts (UP) and one that refuses (DOWN).
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open_port = open.local_addr()?.port();
    tokio::spawn(async move { while open.accept().await.is_ok() {} });
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let test_store = TestStore::create(Backend::Sqlite).await?;
    let seed_dir = tempfile::tempdir()?;
    let regions: Vec<String> = (1..=args.regions).map(|r| format!("region-{r}")).collect();
    let started = Instant::now();
    {
        let store = Store::connect(test_store.url.as_deref(), seed_dir.path()).await?;
        store.migrate().await?;
        let now = vantage_tests::now_ms();
        for region in &regions {
            store.ensure_region(region).await?;
        }
        for i in 0..args.checks {
            let port = if i % 2 == 0 { open_port } else { closed_port };
            let definition: CheckDefinition = serde_json::from_value(json!({
                "name": format!("site-{i:05}"), "interval_s": 600, "timeout_ms": 2000,
                "regions": regions, "retries": 1,
                "labels": {"team": format!("team-{}", i % 20)},
                "kind": {"type": "tcp", "host": "127.0.0.1", "port": port}
            }))?;
            store
                .insert_check(&to_row(format!("site-{i:05}"), &definition, now))
                .await?;
        }
        store.close().await;
    }
    let seeded_s = started.elapsed().as_secs_f64();
    // The control plane on that store (its data dir holds the SQLite file).
    // Heartbeats every 2 s: the fallback executor starts three of them after the start.
    let cp = ControlPlane::start_in(
        &test_store,
        seed_dir.path(),
        &[("VANTAGE_HEARTBEAT_INTERVAL_S", "2")],
    )
    .await?;
    let started = Instant::now();
    wait_for(
        "a verdict for every check",
        Duration::from_secs(600),
        || async {
            let (_, views) = cp.get("/api/v1/verdicts").await.ok()?;
            let judged = views
                .as_array()?
                .iter()
                .filter(|v| v["state"] == "up" || v["state"] == "down")
                .count();
            (judged >= args.checks).then_some(())
        },
    )
    .await
    .with_context(|| cp.log_tail())?;
    let judged_s = started.elapsed().as_secs_f64();
    // Let the executor's burst settle before timing the page.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let base = cp.url("/");
    let mut steps = vec![
        step("goto", json!({"url": base})),
        step(
            "fill",
            json!({"selector": "#token", "value": cp.admin_token}),
        ),
        step("click", json!({"selector": "#login button[type=submit]"})),
        step(
            "wait_for",
            json!({"selector": ".matrix .row", "state": "attached"}),
        ),
        // Again with the session: the load a returning operator sees.
        step("goto", json!({"url": base})),
        step(
            "wait_for",
            json!({"selector": ".matrix .row", "state": "attached"}),
        ),
        step(
            "eval",
            json!({"js": "() => new Promise(r => setTimeout(r, 300))"}),
        ),
        step("perf", json!({})),
    ];
    for round in 0..args.rounds {
        steps.push(step(
            "fill",
            json!({"selector": "#filter", "value": format!("site-{:03}", 17 + round * 131)}),
        ));
        steps.push(step(
            "eval",
            json!({"js": "() => new Promise(r => setTimeout(r, 200))"}),
        ));
    }
    steps.push(step("fill", json!({"selector": "#filter", "value": ""})));
    for value in ["state", "name", "state", "label", "name"] {
        steps.push(step(
            "eval",
            json!({"js": format!("() => {{ const s = document.getElementById('sort'); s.value = '{value}'; s.dispatchEvent(new Event('change')); return new Promise(r => setTimeout(r, 200)); }}")}),
        ));
    }
    for value in [
        regions[0].as_str(),
        "",
        regions[regions.len() - 1].as_str(),
        "",
    ] {
        steps.push(step(
            "eval",
            json!({"js": format!("() => {{ const s = document.getElementById('region'); s.value = '{value}'; s.dispatchEvent(new Event('change')); return new Promise(r => setTimeout(r, 200)); }}")}),
        ));
    }
    for _ in 0..args.rounds {
        steps.push(step(
            "click",
            json!({"selector": ".matrix .row a.name >> nth=0"}),
        ));
        steps.push(step(
            "wait_for",
            json!({"selector": "#latency-chart", "state": "attached"}),
        ));
        steps.push(step(
            "eval",
            json!({"js": "() => new Promise(r => setTimeout(r, 300))"}),
        ));
        steps.push(step("eval", json!({"js": "history.back()"})));
        steps.push(step(
            "wait_for",
            json!({"selector": ".matrix .row", "state": "attached"}),
        ));
    }
    steps.push(step("perf", json!({})));
    let results = browser(json!({"timeout_ms": 60000, "total_timeout_ms": 600000, "steps": steps}))
        .await
        .with_context(|| cp.log_tail())?;
    let first = &results[7];
    let last = results.last().context("perf")?;
    let overview = mark(first, "vantage:overview").context("no overview mark")?;
    let (filter, filter_max) = median_and_max(measures(last, "vantage:filter"));
    let (sort, sort_max) = median_and_max(measures(last, "vantage:sort"));
    let (region, region_max) = median_and_max(measures(last, "vantage:region"));
    let (open_check, open_max) = median_and_max(measures(last, "vantage:open-check"));
    let rss = cp
        .pid()
        .and_then(|pid| vantage_tests::proc_sample(pid).ok())
        .map(|s| s.rss_kib as f64 / 1024.0)
        .unwrap_or(f64::NAN);
    println!(
        "dashboard checks={} regions={} seed_s={seeded_s:.1} judged_s={judged_s:.1} \
         first_paint_ms={:.0} overview_drawn_ms={overview:.0} (goal 1000) \
         filter_ms={filter:.1} (slowest {filter_max:.1}, goal 200) sort_ms={sort:.1} (slowest {sort_max:.1}) \
         region_view_ms={region:.1} (slowest {region_max:.1}) open_check_ms={open_check:.1} (slowest {open_max:.1}, goal 200) \
         control_plane_rss_mib={rss:.0}",
        args.checks,
        args.regions,
        first["first-contentful-paint"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(())
}
