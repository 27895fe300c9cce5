//! `vantage-agent probe` as operators run it on a node: exit codes and clear errors, and ICMP
//! through both socket kinds — raw as root, and unprivileged ping sockets for a user without
//! capabilities where `net.ipv4.ping_group_range` allows its group, with a reason naming the
//! sysctl where it does not.
//!
//! The ICMP cases run in a network namespace the test creates: `ping_group_range` is per
//! namespace, so setting it there leaves the host's value untouched (nothing to restore), and
//! the namespace goes with the test.

use std::process::{Command, Output};

use anyhow::{Context, ensure};
use serde_json::Value;
use vantage_tests::{bin, output_text};

fn outcome(output: &Output) -> anyhow::Result<Value> {
    serde_json::from_slice(&output.stdout).with_context(|| output_text(output))
}

#[test]
fn probe_subcommand_exit_codes_and_errors() -> anyhow::Result<()> {
    let agent = bin("vantage-agent");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let open = listener.local_addr()?.port();
    let up = Command::new(&agent)
        .args([
            "probe",
            &format!(r#"{{"type":"tcp","host":"127.0.0.1","port":{open}}}"#),
        ])
        .output()?;
    ensure!(up.status.code() == Some(0), "{}", output_text(&up));
    ensure!(outcome(&up)?["ok"] == true, "{}", output_text(&up));
    // From stdin, as operators pass checks that carry secrets.
    let mut child = Command::new(&agent)
        .args(["probe", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        format!(r#"{{"type":"tcp","host":"127.0.0.1","port":{open}}}"#).as_bytes(),
    )?;
    let piped = child.wait_with_output()?;
    ensure!(piped.status.code() == Some(0), "{}", output_text(&piped));
    drop(listener);
    let down = Command::new(&agent)
        .args([
            "probe",
            &format!(r#"{{"type":"tcp","host":"127.0.0.1","port":{open}}}"#),
        ])
        .output()?;
    ensure!(down.status.code() == Some(2), "{}", output_text(&down));
    let down_json = outcome(&down)?;
    ensure!(
        down_json["ok"] == false
            && down_json["reason"]
                .as_str()
                .is_some_and(|r| r.contains("refused")),
        "{}",
        output_text(&down)
    );
    for (bad, says) in [
        (r#"{"type":"gopher"}"#, "unknown variant"),
        (r#"{"type":"tcp","host":"h","port":0}"#, "port"),
        ("not json", "invalid check"),
    ] {
        let output = Command::new(&agent).args(["probe", bad]).output()?;
        ensure!(
            output.status.code() == Some(1),
            "{bad}: {}",
            output_text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains(says), "{bad}: {}", output_text(&output));
        ensure!(output.stdout.is_empty(), "{bad}: {}", output_text(&output));
    }
    Ok(())
}

/// A network namespace with only loopback up.
struct Namespace(String);

impl Namespace {
    fn new() -> anyhow::Result<Namespace> {
        let name = format!("vtp{:06x}", rand::random::<u32>() & 0xff_ffff);
        for args in [
            vec!["netns", "add", name.as_str()],
            vec!["-n", name.as_str(), "link", "set", "lo", "up"],
        ] {
            let output = Command::new("ip").args(&args).output()?;
            ensure!(
                output.status.success(),
                "ip {args:?}: {}",
                output_text(&output)
            );
        }
        Ok(Namespace(name))
    }

    fn set_ping_range(&self, range: &str) -> anyhow::Result<()> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0, "sysctl", "-w"])
            .arg(format!("net.ipv4.ping_group_range={range}"))
            .output()?;
        ensure!(output.status.success(), "{}", output_text(&output));
        Ok(())
    }

    /// Pings `host` from the namespace, as root or as `nobody` without any capability.
    fn ping(&self, host: &str, unprivileged: bool) -> anyhow::Result<Output> {
        let check = format!(r#"{{"type":"icmp","host":"{host}","count":3,"interval_ms":50}}"#);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]);
        if unprivileged {
            command.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ]);
        }
        Ok(command
            .arg(bin("vantage-agent"))
            .args(["probe", &check])
            .output()?)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn icmp_works_raw_as_root_and_unprivileged_where_the_sysctl_allows() -> anyhow::Result<()> {
    let ns = Namespace::new()?;
    // Off (the kernel default "1 0"): root still pings through a raw socket; a user without
    // CAP_NET_RAW gets a reason naming the cause.
    ns.set_ping_range("1 0")?;
    for host in ["127.0.0.1", "::1"] {
        let root = ns.ping(host, false)?;
        ensure!(
            root.status.code() == Some(0),
            "root {host}: {}",
            output_text(&root)
        );
        ensure!(
            outcome(&root)?["values"]["loss_pct"] == 0.0,
            "{}",
            output_text(&root)
        );
        let refused = ns.ping(host, true)?;
        ensure!(
            refused.status.code() == Some(2),
            "nobody {host}: {}",
            output_text(&refused)
        );
        let reason = outcome(&refused)?["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            reason.contains("permission denied")
                && reason.contains("CAP_NET_RAW")
                && reason.contains("net.ipv4.ping_group_range")
                && reason.contains("\"1 0\""),
            "{reason}"
        );
    }
    // On for nobody's group: the same user pings through unprivileged ping sockets.
    ns.set_ping_range("65534 65534")?;
    for host in ["127.0.0.1", "::1"] {
        let user = ns.ping(host, true)?;
        ensure!(
            user.status.code() == Some(0),
            "nobody {host}: {}",
            output_text(&user)
        );
        let json = outcome(&user)?;
        ensure!(json["values"]["loss_pct"] == 0.0, "{}", output_text(&user));
        ensure!(
            json["values"]["rtt_avg_ms"]
                .as_f64()
                .is_some_and(|rtt| rtt > 0.0),
            "{}",
            output_text(&user)
        );
    }
    Ok(())
}
