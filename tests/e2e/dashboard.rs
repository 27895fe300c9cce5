//! The dashboard in a real browser (Debian's chromium driven by playwright-core through
//! `tests/browser/run.mjs`, both installed by `scripts/test` via `scripts/lib/browser.sh`),
//! against a real control plane with two agents in two regions: sign-in and sign-out with the
//! session cookie, a matrix cell turning red within a second of the verdict, a drawn chart, a
//! check created in the form running only in the regions ticked, a viewer that can write
//! nothing and sees no secret, and the public status page and badges showing only the checks
//! labelled for them, the enrollment page's token enrolling an agent, and a live client
//! getting the latest state on connect.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, wait_for};

const SECRET: &str = "s3cret-pass";

/// Runs one browser session of `steps` and returns each step's value.
async fn browser(steps: Value) -> anyhow::Result<Vec<Value>> {
    let dir = std::env::var("VANTAGE_BROWSER_DIR")
        .context("VANTAGE_BROWSER_DIR is not set: run scripts/test, which installs chromium and playwright-core (scripts/lib/browser.sh)")?;
    std::env::var("VANTAGE_CHROMIUM")
        .context("VANTAGE_CHROMIUM is not set: see scripts/lib/browser.sh")?;
    let mut steps = steps;
    // What the page showed when a step failed, for whoever reads the failure.
    let shot = std::env::temp_dir().join(format!("vantage-dashboard-{}.png", std::process::id()));
    steps["failure_screenshot"] = json!(shot);
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
    let line = stdout.lines().last().unwrap_or("");
    let report: Value = serde_json::from_str(line).with_context(|| {
        format!(
            "the browser run printed no report: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    anyhow::ensure!(
        report["ok"] == true,
        "the browser run failed (screenshot: {}): {report}",
        shot.display()
    );
    Ok(report["results"]
        .as_array()
        .context("results")?
        .iter()
        .map(|r| r["value"].clone())
        .collect())
}

/// `promtool check metrics` on an exposition: valid, and clean of its lint.
async fn promtool_check(text: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let promtool = vantage_tests::find_program(&["promtool"])
        .context("promtool is missing: scripts/test installs Debian's prometheus package")?;
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let checked = child.wait_with_output().await?;
    anyhow::ensure!(
        checked.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

fn step(op: &str, args: Value) -> Value {
    let mut step = json!({ "op": op });
    if let (Some(step), Some(args)) = (step.as_object_mut(), args.as_object()) {
        step.extend(args.clone());
    }
    step
}

/// An HTTP target that answers 200 while up, else 503.
struct Target {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Target {
    async fn start() -> anyhow::Result<Target> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 2048];
                    let _ = stream.read(&mut buffer).await;
                    let answer: &[u8] = if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    };
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        Ok(Target { port, up })
    }
}

async fn verdict_state(cp: &ControlPlane, check: &str) -> Option<String> {
    let (_, views) = cp.get("/api/v1/verdicts").await.ok()?;
    views
        .as_array()?
        .iter()
        .find(|v| v["check_id"] == check)
        .and_then(|v| v["state"].as_str().map(str::to_owned))
}

/// The cookie named `vantage_session` among a `cookies` step's value.
fn session_cookie(cookies: &Value) -> Option<Value> {
    cookies
        .as_array()?
        .iter()
        .find(|c| c["name"] == "vantage_session")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_turns_red_live_creates_checks_and_keeps_viewers_read_only()
-> anyhow::Result<()> {
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    let target = Target::start().await?;
    let mut agents = Vec::new();
    for region in ["r1", "r2"] {
        let token = cp.enrollment_token(region, 1).await?;
        agents.push(Agent::start(&cp, &token, "metrics_interval_s = 1")?);
    }
    for agent in &agents {
        agent.wait_enrolled().await?;
    }
    for region in ["r1", "r2"] {
        cp.wait_online_in(region, Duration::from_secs(20)).await?;
    }
    let url = format!("http://127.0.0.1:{}/", target.port);
    let (status, body) = cp
        .post(
            "/api/v1/checks",
            json!({"id": "web", "name": "web", "interval_s": 1, "timeout_ms": 900,
                "kind": {"type": "http", "url": url,
                    "headers": {"Authorization": format!("Bearer {SECRET}")}},
                "regions": ["r1", "r2"], "retries": 1, "recovery": 1,
                "labels": {"status_page": "public"}}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    wait_for("web up", Duration::from_secs(20), || async {
        (verdict_state(&cp, "web").await.as_deref() == Some("up")).then_some(())
    })
    .await
    .with_context(|| cp.log_tail())?;

    let base = cp.url("/");
    let target_url = format!("http://127.0.0.1:{}/", target.port);
    let cell = |region: &str, state: &str| {
        format!(".cell.s-{state}[data-check=\"web\"][data-region=\"{region}\"]")
    };
    // Resolves with the time the overall cell of `web` turned red.
    let red_at = format!(
        "() => new Promise((resolve, reject) => {{ const started = Date.now(); \
         const tick = () => {{ if (document.querySelector('{}')) return resolve(Date.now()); \
         if (Date.now() - started > 40000) return reject(new Error('never red')); \
         requestAnimationFrame(tick); }}; tick(); }})",
        cell("", "down")
    );
    let operator_run = browser(json!({
        "timeout_ms": 15000,
        "total_timeout_ms": 150000,
        // The wrong token's refusal (401) is logged by the browser; nothing else may be.
        "ignore_console_errors": ["status of 401"],
        "steps": [
            step("goto", json!({"url": base})),
            step("wait_for", json!({"selector": "#login"})),
            step("expect_no_console_errors", json!({})),
            step("fill", json!({"selector": "#token", "value": "vat_not-a-token"})),
            step("click", json!({"selector": "#login button[type=submit]"})),
            step("wait_for_text", json!({"selector": "#login-error", "text": "not valid"})),
            step("fill", json!({"selector": "#token", "value": cp.admin_token})),
            step("click", json!({"selector": "#login button[type=submit]"})),
            step("wait_for", json!({"selector": cell("r1", "up"), "state": "attached"})),
            step("cookies", json!({})),
            // 10: the Rust side now makes the target fail and notes the verdict's time.
            step("eval", json!({"js": red_at, "timeout_ms": 45000})),
            step("eval", json!({"js": "location.hash = '#/checks/web'"})),
            step("wait_for", json!({"selector": "#latency-chart canvas"})),
            step("drawn_pixels", json!({"selector": "#latency-chart canvas"})),
            step("eval", json!({"js": "document.querySelectorAll('#uptime .card').length"})),
            // A check made in the form, ticked for r1 only.
            step("eval", json!({"js": "location.hash = '#/new'"})),
            step("wait_for", json!({"selector": "#check-form"})),
            step("fill", json!({"selector": "#check-form input[name=name]", "value": "made-in-ui"})),
            step("fill", json!({"selector": "#check-form input[name=url]", "value": target_url})),
            step("fill", json!({"selector": "#check-form input[name=interval_s]", "value": "1"})),
            step("fill", json!({"selector": "#check-form input[name=timeout_ms]", "value": "900"})),
            step("click", json!({"selector": "#regions input[value=r2]"})),
            step("click", json!({"selector": "#check-form button[type=submit]"})),
            step("wait_for_text", json!({"selector": "h2", "text": "made-in-ui"})),
            step("perf", json!({})),
            step("expect_no_console_errors", json!({})),
            step("click", json!({"selector": "#signout"})),
            step("wait_for", json!({"selector": "#login"})),
            step("cookies", json!({})),
            step("goto", json!({"url": base})),
            step("wait_for", json!({"selector": "#login"})),
        ]
    }));
    // While the browser signs in: once a session exists and the page has had time to open
    // its live feed, make `web` fail everywhere and note when its verdict turns DOWN.
    let flip = async {
        let pool = cp.store_pool().await?;
        wait_for("a dashboard session", Duration::from_secs(60), || async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n > 0).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut live = cp.live_socket("kind=verdict&check=web").await?;
        target.up.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match live.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                        let event: Value = serde_json::from_str(&text)?;
                        if event["data"]["state"] == "down" {
                            return event["at_ms"].as_i64().context("at_ms");
                        }
                    }
                    Some(Ok(_)) => {}
                    other => anyhow::bail!("live feed ended: {other:?}"),
                }
            }
        })
        .await
        .context("no DOWN verdict")?
    };
    let (results, down_at) = tokio::join!(operator_run, flip);
    let results = results.with_context(|| cp.log_tail())?;
    let down_at = down_at?;

    // The compact overview the page loads agrees with the verdict and the latest results.
    let (status, overview) = cp.get("/api/v1/overview").await?;
    anyhow::ensure!(status == 200, "{status} {overview}");
    let (_, verdict) = cp.get("/api/v1/verdicts").await?;
    let verdict = verdict
        .as_array()
        .and_then(|all| all.iter().find(|v| v["check_id"] == "web"))
        .cloned()
        .context("web's verdict")?;
    let regions = overview["regions"].as_array().context("regions")?;
    let web = overview["checks"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c[0] == "web"))
        .cloned()
        .context("web in the overview")?;
    assert_eq!(web[4], verdict["state"], "{web}");
    for cell in web[6].as_array().context("cells")? {
        let region = &regions[cell[0].as_u64().context("index")? as usize];
        let evidence = verdict["regions"]
            .as_array()
            .and_then(|all| all.iter().find(|e| &e["region"] == region))
            .context("evidence")?;
        let flags = cell[1].as_u64().context("flags")?;
        assert_eq!(
            flags & 1 == 1,
            evidence["failing"] == true,
            "{cell} {evidence}"
        );
        assert_eq!(flags & 2 == 2, evidence["maintenance"] == true, "{cell}");
    }

    let cookie = session_cookie(&results[9]).context("no session cookie after sign-in")?;
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    let red = results[10].as_i64().context("red time")?;
    let lag = red - down_at;
    println!("matrix cell red {lag} ms after the verdict was published");
    assert!(
        (0..=1000).contains(&lag),
        "the cell turned red {lag} ms after the verdict"
    );
    let drawn = results[13]["count"].as_u64().unwrap_or(0);
    assert!(
        drawn > 500,
        "the latency chart drew {drawn} pixels: {}",
        results[13]
    );
    assert_eq!(results[14], 4, "four uptime windows");
    // Signed out: the cookie is gone from the browser and the session from the server.
    assert!(session_cookie(&results[28]).is_none(), "{}", results[28]);
    let stale = format!("vantage_session={}", cookie["value"].as_str().unwrap_or(""));
    let response = cp
        .client
        .get(cp.url("/api/v1/checks"))
        .header("cookie", &stale)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);

    // The check made in the form runs in r1 only.
    let (_, checks) = cp.get("/api/v1/checks").await?;
    let made = checks
        .as_array()
        .context("checks")?
        .iter()
        .find(|c| c["name"] == "made-in-ui")
        .cloned()
        .context("the form's check")?;
    assert_eq!(made["regions"], json!(["r1"]), "{made}");
    let id = made["id"].as_str().context("id")?.to_owned();
    wait_for(
        "a result of the form's check",
        Duration::from_secs(20),
        || async {
            let (_, rows) = cp.get(&format!("/api/v1/results?check={id}")).await.ok()?;
            (rows.as_array()?.len() >= 3).then_some(())
        },
    )
    .await?;
    let (_, rows) = cp.get(&format!("/api/v1/results?check={id}")).await?;
    let regions: std::collections::BTreeSet<&str> = rows
        .as_array()
        .context("rows")?
        .iter()
        .filter_map(|r| r["region"].as_str())
        .collect();
    assert_eq!(regions, ["r1"].into_iter().collect(), "{rows}");

    // A viewer: reads everything, writes nothing, sees no secret.
    let (status, body) = cp
        .post(
            "/api/v1/api-tokens",
            json!({"role": "viewer", "name": "wall"}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{status} {body}");
    let viewer = body["token"].as_str().context("token")?.to_owned();
    let post_check = "() => fetch('/api/v1/checks', {method: 'POST', headers: {'content-type': \
                      'application/json'}, body: JSON.stringify({name: 'x', kind: {type: 'tcp', \
                      host: '127.0.0.1', port: 9}, regions: ['r1']})}).then(r => r.status)";
    let viewer_run = browser(json!({
        "timeout_ms": 15000,
        "total_timeout_ms": 90000,
        "ignore_console_errors": ["status of 403"],
        "steps": [
            step("goto", json!({"url": base})),
            step("fill", json!({"selector": "#token", "value": viewer})),
            step("click", json!({"selector": "#login button[type=submit]"})),
            step("wait_for", json!({"selector": ".cell[data-check=\"web\"]"})),
            step("eval", json!({"js": "!!document.querySelector('#new-check')"})),
            step("eval", json!({"js": "location.hash = '#/checks/web'"})),
            step("wait_for", json!({"selector": "#check-reason"})),
            step("eval", json!({"js": "!!document.querySelector('#run-now')"})),
            step("eval", json!({"js": format!("document.documentElement.outerHTML.includes('{SECRET}')")})),
            step("eval", json!({"js": format!("() => fetch('/api/v1/checks/web').then(r => r.text()).then(t => t.includes('{SECRET}'))")})),
            step("eval", json!({"js": "location.hash = '#/nodes'"})),
            step("wait_for", json!({"selector": "#nodes tr[data-agent]"})),
            step("eval", json!({"js": "location.hash = '#/incidents'"})),
            step("wait_for", json!({"selector": "#incidents"})),
            step("expect_no_console_errors", json!({})),
            step("eval", json!({"js": post_check})),
            // 16: each node's last hour of metrics as sparklines.
            step("eval", json!({"js": "location.hash = '#/nodes'"})),
            step("wait_for", json!({"selector": "#nodes td[data-spark=cpu] svg polyline", "state": "attached"})),
            // The nodes' sparklines load one node after another: wait for both nodes'.
            step("eval", json!({"js": "() => new Promise((resolve) => { const started = Date.now(); \
                const tick = () => { const n = document.querySelectorAll('#nodes td[data-spark] svg polyline').length; \
                if (n >= 6 || Date.now() - started > 10000) return resolve(n); setTimeout(tick, 50); }; tick(); })"})),
            // 19: a node's own page: its metrics as charts over the last hour (raw samples),
            // then over 24 h (minute rollups).
            step("eval", json!({"js": "document.querySelector('#nodes tr[data-agent] a').click()"})),
            step("wait_for", json!({"selector": "#node-cpu-chart canvas"})),
            step("drawn_pixels", json!({"selector": "#node-cpu-chart"})),
            step("eval", json!({"js": "document.querySelector('#node-source').textContent"})),
            step("eval", json!({"js": "['cpu', 'memory', 'disk', 'load', 'network'].filter((c) => document.querySelector(`#node-${c}-chart canvas`)).length"})),
            step("click", json!({"selector": "#node-ranges button[data-range=\"24h\"]"})),
            step("wait_for_text", json!({"selector": "#node-source", "text": "minute"})),
            step("wait_for", json!({"selector": "#node-network-chart canvas"})),
            step("drawn_pixels", json!({"selector": "#node-network-chart"})),
            step("expect_no_console_errors", json!({})),
        ]
    }))
    .await?;
    assert_eq!(viewer_run[4], false, "a viewer is offered New check");
    assert_eq!(viewer_run[7], false, "a viewer is offered Run now");
    assert_eq!(
        viewer_run[8], false,
        "the page shows the check's secret to a viewer"
    );
    assert_eq!(
        viewer_run[9], false,
        "the API shows the check's secret to a viewer"
    );
    assert_eq!(viewer_run[15], 403, "a viewer's session created a check");
    let lines = viewer_run[18].as_u64().unwrap_or(0);
    assert!(
        lines >= 6,
        "{lines} sparklines for two nodes' cpu, memory, network (and disk)"
    );
    let drawn = viewer_run[21]["count"].as_u64().unwrap_or(0);
    assert!(drawn > 500, "the node's CPU chart drew {drawn} pixels");
    let source = viewer_run[22].as_str().unwrap_or("");
    assert!(source.contains("raw samples"), "{source}");
    assert_eq!(
        viewer_run[23], 5,
        "a chart each for cpu, memory, disk, load, network"
    );
    let source = viewer_run[25].as_str().unwrap_or("");
    assert!(source.contains("minute rollups"), "24 h: {source}");
    let drawn = viewer_run[27]["count"].as_u64().unwrap_or(0);
    assert!(
        drawn > 500,
        "the node's 24 h network chart drew {drawn} pixels"
    );

    // The events page: events from a Zabbix source, the stored ones and then live ones (a
    // task posts one a second while the browser watches).
    let zabbix_secret = cp
        .create_source(json!({"id": "zabbix", "kind": "zabbix"}))
        .await?;
    let zabbix_event = |id: u64, name: &str| {
        json!({"v": 1, "event": {"id": id.to_string(), "name": name, "status": "problem",
            "nseverity": 4, "timestamp": 1_735_812_672}, "host": {"host": "db-7", "name": "", "ip": ""}})
    };
    let (status, body) = cp
        .request(
            reqwest::Method::POST,
            "/api/v1/integrations/zabbix",
            Some(&zabbix_secret),
            Some(zabbix_event(1, "stored before the page opened")),
        )
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    let poster = {
        let (url, secret) = (cp.url("/api/v1/integrations/zabbix"), zabbix_secret.clone());
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_bytes())?)
            .build()?;
        tokio::spawn(async move {
            for n in 2..120_u64 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = client
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&zabbix_event(n, &format!("live event {n}")))
                    .send()
                    .await;
            }
        })
    };

    // The enrollment page makes a token and the snippets that use it; an agent enrolls with it.
    let enroll_run = browser(json!({
        "timeout_ms": 15000,
        "total_timeout_ms": 60000,
        "steps": [
            step("goto", json!({"url": base})),
            step("fill", json!({"selector": "#token", "value": cp.admin_token})),
            step("click", json!({"selector": "#login button[type=submit]"})),
            step("wait_for", json!({"selector": ".cell[data-check=\"web\"]", "state": "attached"})),
            step("eval", json!({"js": "location.hash = '#/nodes'"})),
            step("click", json!({"selector": "#enroll-link button"})),
            step("fill", json!({"selector": "#enroll-form input[name=region]", "value": "r3"})),
            step("click", json!({"selector": "#enroll-form button[type=submit]"})),
            step("wait_for", json!({"selector": "#enroll-token"})),
            step("eval", json!({"js": "document.querySelector('#enroll-token').textContent"})),
            step("eval", json!({"js": "document.querySelector('#snippet-ssh').textContent"})),
            step("eval", json!({"js": "(document.querySelector('#snippet-shell') || document.querySelector('#snippet-unavailable')).textContent"})),
            step("expect_no_console_errors", json!({})),
            // 13: web's incident, its timeline, and a note added to it.
            step("eval", json!({"js": "location.hash = '#/incidents'"})),
            step("click", json!({"selector": "#incidents a:has-text(\"check: web\") >> nth=0"})),
            step("wait_for", json!({"selector": "#timeline tr[data-change]"})),
            step("fill", json!({"selector": "#note-form textarea", "value": "rolled back the deploy"})),
            step("click", json!({"selector": "#note-form button[type=submit]"})),
            step("wait_for_text", json!({"selector": "#timeline tr[data-change=note]", "text": "rolled back the deploy"})),
            step("expect_no_console_errors", json!({})),
            // The events page: the stored event, then a live one arriving while it is open.
            step("eval", json!({"js": "location.hash = '#/events'"})),
            step("wait_for_text", json!({"selector": "#events tbody", "text": "stored before the page opened"})),
            step("eval", json!({"js": "window.__first = Number(document.querySelector('#events tbody tr').dataset.event)"})),
            step("eval", json!({"js": "() => new Promise((resolve) => { const started = Date.now(); \
                const tick = () => { const top = document.querySelector('#events tbody tr'); \
                if (Number(top.dataset.event) > window.__first && top.textContent.includes('live event')) return resolve(true); \
                if (Date.now() - started > 10000) return resolve(false); setTimeout(tick, 50); }; tick(); })"})),
            step("expect_no_console_errors", json!({})),
        ]
    }))
    .await?;
    poster.abort();
    assert_eq!(
        enroll_run.get(enroll_run.len() - 2),
        Some(&json!(true)),
        "no live row on the events page: {enroll_run:?}"
    );
    let enrollment = enroll_run[9].as_str().unwrap_or("").to_owned();
    assert!(enrollment.starts_with("vet_"), "{enrollment}");
    let ssh = enroll_run[10].as_str().unwrap_or("");
    assert!(
        ssh.contains(&format!("VANTAGE_ENROLLMENT_TOKEN={enrollment}"))
            && ssh.contains(&format!("--server-url https://127.0.0.1:{}", cp.http_port)),
        "{ssh}"
    );
    let shell = enroll_run[11].as_str().unwrap_or("");
    assert!(
        shell.contains("openssl pkeyutl -verify") || shell.contains("--dist-dir"),
        "{shell}"
    );
    let (_, incidents) = cp.get("/api/v1/incidents").await?;
    let noted = incidents
        .as_array()
        .context("incidents")?
        .iter()
        .find(|i| i["subject_id"] == "web")
        .and_then(|i| i["id"].as_str())
        .context("web's incident")?
        .to_owned();
    let (_, incident) = cp.get(&format!("/api/v1/incidents/{noted}")).await?;
    let notes: Vec<&Value> = incident["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter(|t| t["change"] == "note")
        .collect();
    assert!(
        notes.len() == 1 && notes[0]["text"] == "rolled back the deploy",
        "{incident}"
    );
    let third = Agent::start(&cp, &enrollment, "")?;
    third.wait_enrolled().await?;
    cp.wait_online_in("r3", Duration::from_secs(20))
        .await
        .with_context(|| third.log())?;
    agents.push(third);

    // The public status page: no login, only the checks labelled for it, nothing secret.
    let now = vantage_control_plane::store::now_ms();
    for (name, scope) in [
        (
            "db upgrade",
            json!({"check_labels": {"status_page": "public"}}),
        ),
        ("private window", json!({"checks": [id]})),
    ] {
        let (status, body) = cp
            .post(
                "/api/v1/maintenance",
                json!({"name": name, "scope": scope, "schedule": {"type": "once",
                    "starts_at_ms": now + 86_400_000, "ends_at_ms": now + 90_000_000}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status} {body}");
    }
    let public_run = browser(json!({
        "timeout_ms": 15000,
        "total_timeout_ms": 60000,
        "steps": [
            step("goto", json!({"url": cp.url("/status/public")})),
            step("wait_for", json!({"selector": "#summary"})),
            step("eval", json!({"js": "[...document.querySelectorAll('section.check')].map(s => s.dataset.check)"})),
            step("eval", json!({"js": "document.querySelectorAll('section.check[data-check=web] .bars span').length"})),
            step("eval", json!({"js": "document.querySelector('section.check[data-check=web] .bars span:last-child').className"})),
            step("eval", json!({"js": "document.querySelector('#summary').dataset.state"})),
            step("wait_for", json!({"selector": "#incidents li[data-check=web]", "state": "attached"})),
            step("eval", json!({"js": "document.querySelector('#maintenance').textContent"})),
            step("eval", json!({"js": "document.documentElement.outerHTML"})),
            step("expect_no_console_errors", json!({})),
        ]
    }))
    .await?;
    assert_eq!(public_run[2], json!(["web"]), "only the public check");
    assert_eq!(public_run[3], 90, "90 daily bars");
    assert_ne!(public_run[4], "b-none", "today's bar has results");
    assert_eq!(public_run[5], "down");
    let maintenance = public_run[7].as_str().unwrap_or("");
    assert!(maintenance.contains("db upgrade"), "{maintenance}");
    assert!(!maintenance.contains("private window"), "{maintenance}");
    let html = public_run[8].as_str().unwrap_or("");
    for hidden in [SECRET, "made-in-ui", &format!("127.0.0.1:{}", target.port)] {
        assert!(!html.contains(hidden), "the status page shows {hidden:?}");
    }
    let public_get = |path: String| cp.client.get(cp.url(&path)).send();
    let data = public_get("/status/public/data".into())
        .await?
        .text()
        .await?;
    for hidden in [SECRET, "made-in-ui", id.as_str(), "private window", "r1"] {
        assert!(
            !data.contains(hidden),
            "the page's data shows {hidden:?}: {data}"
        );
    }
    let badge = public_get("/status/public/badge/web.svg".into()).await?;
    assert_eq!(badge.status().as_u16(), 200);
    assert_eq!(
        badge
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/svg+xml; charset=utf-8")
    );
    let svg = badge.text().await?;
    assert!(
        svg.starts_with("<svg") && svg.contains("web: down"),
        "{svg}"
    );
    for (path, status) in [
        (format!("/status/public/badge/{id}.svg"), 404),
        ("/status/other/badge/web.svg".into(), 404),
        ("/status/public/badge/web.png".into(), 404),
        ("/status/nobody/data".into(), 404),
        ("/status/Not%20a%20page/data".into(), 400),
    ] {
        let got = public_get(path.clone()).await?.status().as_u16();
        assert_eq!(got, status, "{path}");
    }

    // A live client gets the latest state on connect: web's verdict, DOWN since long before
    // it connected (no transition comes while it listens); with latest=false it does not.
    let cp_ref = &cp;
    let first_verdict = |query: &'static str| async move {
        let mut live = cp_ref.live_socket(query).await?;
        let first = tokio::time::timeout(Duration::from_secs(3), live.next()).await;
        anyhow::Ok(match first {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                Some(serde_json::from_str::<Value>(&text)?)
            }
            Ok(other) => anyhow::bail!("live feed ended: {other:?}"),
            Err(_) => None,
        })
    };
    let on_connect = first_verdict("kind=verdict&check=web")
        .await?
        .context("no verdict on connect")?;
    assert_eq!(on_connect["data"]["state"], "down", "{on_connect}");
    assert!(
        first_verdict("kind=verdict&check=web&latest=false")
            .await?
            .is_none(),
        "latest=false still sent the latest state"
    );

    // A cookie request that writes must come from this origin.
    let response = cp
        .client
        .post(cp.url("/ui/session"))
        .json(&json!({"token": cp.admin_token}))
        .send()
        .await?;
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .context("set-cookie")?
        .to_owned();
    let session = set.split(';').next().context("cookie")?.to_owned();
    let check = json!({"name": "csrf", "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9},
        "regions": ["r1"]});
    for origin in [None, Some("https://evil.example")] {
        let mut request = cp
            .client
            .post(cp.url("/api/v1/checks"))
            .header("cookie", &session)
            .json(&check);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let status = request.send().await?.status().as_u16();
        assert_eq!(status, 403, "a cookie POST from origin {origin:?}");
    }
    let own = format!("https://127.0.0.1:{}", cp.http_port);
    let status = cp
        .client
        .post(cp.url("/api/v1/checks"))
        .header("cookie", &session)
        .header("origin", own)
        .json(&check)
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 201, "a same-origin cookie POST");
    // Signing in from another site is refused.
    let status = cp
        .client
        .post(cp.url("/ui/session"))
        .header("origin", "https://evil.example")
        .json(&json!({"token": cp.admin_token}))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 403);

    // Per-check series for Prometheus, for a viewer's token, valid for promtool.
    let scrape = |token: Option<&str>| {
        let mut request = cp.client.get(cp.url("/metrics/checks"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(scrape(None).await?.status().as_u16(), 401);
    let response = scrape(Some(&viewer)).await?;
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await?;
    for line in [
        "vantage_check_up{check=\"web\",region=\"r1\"} 0",
        "vantage_check_up{check=\"web\",region=\"r2\"} 0",
        "vantage_check_state{check=\"web\",state=\"down\"} 1",
        "vantage_check_state{check=\"web\",state=\"up\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    for part in [
        "vantage_build_info{version=",
        "vantage_check_duration_seconds{check=\"web\",region=\"r1\",phase=\"total\"}",
        &format!(
            "vantage_check_duration_seconds{{check=\"{id}\",region=\"r1\",phase=\"connect\"}}"
        ),
        "vantage_check_result_timestamp_seconds{check=\"web\",region=\"r1\"}",
    ] {
        assert!(text.contains(part), "no {part} in\n{text}");
    }
    assert!(!text.contains(SECRET));
    promtool_check(&text).await?;
    // The certificate series too (these checks serve none): the same renderer, one sample.
    let extras = std::collections::HashMap::from([(
        ("tls".to_owned(), "r1".to_owned()),
        vantage_control_plane::exporter::Extras {
            measured_at_ms: 1,
            phases: vec![("tls", 0.02)],
            cert_days_left: Some(61.5),
        },
    )]);
    let sample = vantage_control_plane::exporter::render(
        "0.1.0",
        &[vantage_control_plane::exporter::Status {
            check_id: "tls".into(),
            region: "r1".into(),
            ok: true,
            total_ms: 40.0,
            measured_at_ms: 1,
        }],
        &extras,
        &std::collections::BTreeMap::new(),
    );
    assert!(
        sample.contains("vantage_check_cert_expiry_seconds{check=\"tls\",region=\"r1\"} 5313600")
    );
    promtool_check(&sample).await?;
    drop(agents);
    Ok(())
}
