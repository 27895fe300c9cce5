//! `vantage demo`, the README's first command: the fleet comes up on its own.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use vantage_tests::{bin, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fleet_comes_up_and_reports() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("demo");
    let mut child = Command::new(bin("vantage"))
        .arg("demo")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--exit-after-s")
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let env_path = data_dir.join("demo.env");
    let env = wait_for("demo.env", Duration::from_secs(30), || async {
        std::fs::read_to_string(&env_path).ok()
    })
    .await?;
    let value = |key: &str| -> anyhow::Result<String> {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .with_context(|| format!("{key} missing from demo.env"))
    };
    let api = value("VANTAGE_API_URL")?;
    let token = value("VANTAGE_ADMIN_TOKEN")?;
    let ca = std::fs::read(value("VANTAGE_CA_FILE")?)?;
    assert!(value("VANTAGE_LIVE_URL")?.ends_with("/api/v1/live"));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .use_rustls_tls()
        .build()?;
    let get = |path: String| {
        let (client, token, api) = (client.clone(), token.clone(), api.clone());
        async move {
            let response = client
                .get(format!("{api}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    wait_for(
        "three agents online in three regions",
        Duration::from_secs(40),
        || async {
            let agents = get("/api/v1/agents".into()).await?;
            let mut regions: Vec<String> = agents
                .as_array()?
                .iter()
                .filter(|a| a["state"] == "online")
                .filter_map(|a| a["region"].as_str().map(str::to_owned))
                .collect();
            regions.sort();
            (regions == ["asia", "europe", "us-east"]).then_some(())
        },
    )
    .await?;
    for check in ["demo-http", "demo-tcp"] {
        wait_for("demo results", Duration::from_secs(40), || async {
            let rows = get(format!("/api/v1/results?check={check}")).await?;
            rows.as_array()?
                .iter()
                .any(|r| r["ok"] == true)
                .then_some(())
        })
        .await
        .with_context(|| format!("no passing result for {check}"))?;
    }
    // SIGTERM: the demo stops its agents and exits cleanly.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the demo did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exited.success(), "demo exited with {exited}");
    // Its agents went with it.
    let agents_dir = data_dir.join("agents").display().to_string();
    wait_for(
        "the demo's agents to exit",
        Duration::from_secs(10),
        || async {
            let output = Command::new("pgrep")
                .arg("-f")
                .arg(&agents_dir)
                .output()
                .ok()?;
            output.stdout.is_empty().then_some(())
        },
    )
    .await?;
    Ok(())
}
