//! ICMP echo probe (surge-ping): loss and round-trip min/avg/max/stddev over IPv4 or IPv6.
//!
//! Unprivileged ICMP ("ping") sockets are tried first, raw sockets second; when neither can
//! be opened the reason names both ways to allow it (root or `CAP_NET_RAW`, or
//! `net.ipv4.ping_group_range` covering the agent's group).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};
use vantage_mqtt::{IcmpCheck, Timings};

use super::{Outcome, ms, valid_host};

/// Why no ICMP socket could be opened, naming the cause and both ways to allow it.
fn socket_error(error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return format!("cannot open an ICMP socket: {error}");
    }
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "cannot open an ICMP socket: permission denied. Raw sockets need root or CAP_NET_RAW, \
         and unprivileged ping sockets need the agent's group in net.ipv4.ping_group_range, \
         which is \"{range}\" here (allow it: sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")"
    )
}

/// Runs an ICMP check.
pub async fn probe(check: &IcmpCheck, started: Instant) -> Outcome {
    let resolve_started = Instant::now();
    let address: IpAddr = match super::dns::resolve(&check.host, 0, check.ip_version).await {
        Ok(addresses) => match addresses.first() {
            Some(address) => address.ip(),
            None => {
                return Outcome::fail(format!("{} resolved to no address", check.host), started);
            }
        },
        Err(error) => return Outcome::fail(error, started),
    };
    let timings = Timings {
        dns_ms: Some(ms(resolve_started.elapsed())),
        ..Timings::default()
    };
    let kind = if address.is_ipv6() {
        ICMP::V6
    } else {
        ICMP::V4
    };
    let client = match Client::new(&Config::builder().kind(kind).build()) {
        Ok(client) => client,
        Err(error) => return Outcome::fail(socket_error(&error), started),
    };
    let mut pinger = client.pinger(address, PingIdentifier(rand::random())).await;
    let interval = Duration::from_millis(u64::from(check.interval_ms));
    pinger.timeout(interval.max(Duration::from_millis(1000)));
    let payload = vec![0u8; usize::from(check.size)];
    let mut rtts: Vec<f64> = Vec::new();
    let mut last_error = None;
    for seq in 0..check.count {
        let sent = Instant::now();
        match pinger.ping(PingSequence(seq), &payload).await {
            Ok((_, rtt)) => rtts.push(ms(rtt)),
            Err(error) => last_error = Some(error.to_string()),
        }
        if seq + 1 < check.count {
            tokio::time::sleep(interval.saturating_sub(sent.elapsed())).await;
        }
    }
    let sent = f64::from(check.count);
    let loss_pct = 100.0 * (sent - rtts.len() as f64) / sent;
    let mut outcome = Outcome::verdict(false, String::new(), timings, started);
    outcome.values.insert("loss_pct".into(), loss_pct);
    if rtts.is_empty() {
        outcome.reason = format!(
            "100% loss to {address} ({} sent{})",
            check.count,
            last_error.map(|e| format!(", {e}")).unwrap_or_default()
        );
        return outcome;
    }
    let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rtts.iter().copied().fold(0.0, f64::max);
    let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
    let stddev = (rtts.iter().map(|r| (r - avg).powi(2)).sum::<f64>() / rtts.len() as f64).sqrt();
    for (name, value) in [
        ("rtt_min_ms", min),
        ("rtt_avg_ms", avg),
        ("rtt_max_ms", max),
        ("rtt_stddev_ms", stddev),
    ] {
        outcome.values.insert(name.into(), value);
    }
    let summary = format!("{loss_pct:.0}% loss to {address}, rtt avg {avg:.2} ms");
    if loss_pct > check.max_loss_pct {
        outcome.reason = format!("{summary} (more than {}% lost)", check.max_loss_pct);
    } else if let Some(limit) = check.max_rtt_ms.filter(|limit| avg > *limit) {
        outcome.reason = format!("{summary} (above {limit} ms)");
    } else {
        outcome.ok = true;
        outcome.reason = summary;
    }
    outcome
}

/// Checks an ICMP check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &IcmpCheck) -> Result<(), String> {
    if !valid_host(&check.host) {
        return Err("host must be a host name or address".into());
    }
    if !(1..=100).contains(&check.count) {
        return Err("count must be 1..=100".into());
    }
    if !(10..=10_000).contains(&check.interval_ms) {
        return Err("interval_ms must be 10..=10000".into());
    }
    if check.size > 65_000 {
        return Err("size must be at most 65000 bytes".into());
    }
    if !(0.0..=100.0).contains(&check.max_loss_pct) {
        return Err("max_loss_pct must be 0..=100".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str) -> IcmpCheck {
        IcmpCheck {
            host: host.into(),
            count: 3,
            interval_ms: 50,
            size: 56,
            ip_version: vantage_mqtt::IpVersion::Any,
            max_loss_pct: 0.0,
            max_rtt_ms: None,
        }
    }

    #[tokio::test]
    async fn loopback_answers_on_ipv4_and_ipv6() {
        for host in ["127.0.0.1", "::1"] {
            let outcome = probe(&check(host), Instant::now()).await;
            assert!(outcome.ok, "{host}: {outcome:?}");
            assert_eq!(outcome.values["loss_pct"], 0.0);
            assert!(outcome.values["rtt_avg_ms"] >= 0.0);
            assert!(outcome.reason.starts_with("0% loss"), "{}", outcome.reason);
        }
    }
}

#[cfg(test)]
mod namespace_tests {
    use std::process::Command;

    use super::*;

    /// A network namespace with one veth link to it, removed on drop. The far address
    /// answers pings until the link is taken down.
    struct TestHost {
        namespace: String,
        link: String,
        peer: String,
        address: String,
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip")
            .args(args)
            .status()
            .expect("ip (iproute2)");
        assert!(
            status.success(),
            "ip {args:?} failed (these tests need root)"
        );
    }

    impl TestHost {
        fn new() -> TestHost {
            let id: u16 = rand::random::<u16>() % 4000;
            let namespace = format!("vtest-icmp-{id}");
            let link = format!("vti{id}");
            let peer = format!("vtp{id}");
            // 10.213.x.y/30: a private range used only inside this test's own namespace.
            let (a, b) = (id / 64, (id % 64) * 4);
            let near = format!("10.213.{a}.{}", b + 1);
            let far = format!("10.213.{a}.{}", b + 2);
            ip(&["netns", "add", &namespace]);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &namespace]);
            ip(&["addr", "add", &format!("{near}/30"), "dev", &link]);
            ip(&["link", "set", &link, "up"]);
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{far}/30"),
                "dev",
                &peer,
            ]);
            ip(&["-n", &namespace, "link", "set", &peer, "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
            TestHost {
                namespace,
                link,
                peer,
                address: far,
            }
        }
    }

    impl Drop for TestHost {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.link])
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace])
                .status();
        }
    }

    #[tokio::test]
    async fn a_host_answers_until_its_link_is_cut() {
        let host = TestHost::new();
        let check = IcmpCheck {
            host: host.address.clone(),
            count: 3,
            interval_ms: 50,
            size: 56,
            ip_version: vantage_mqtt::IpVersion::Any,
            max_loss_pct: 0.0,
            max_rtt_ms: None,
        };
        let up = probe(&check, Instant::now()).await;
        assert!(up.ok, "{up:?}");
        // Cut the link from the namespace's side: the host keeps its connected route (now
        // without carrier), so nothing is sent anywhere else.
        ip(&["-n", &host.namespace, "link", "set", &host.peer, "down"]);
        let down = probe(
            &IcmpCheck {
                interval_ms: 10,
                ..check
            },
            Instant::now(),
        )
        .await;
        assert!(!down.ok);
        assert!(down.reason.starts_with("100% loss to "), "{}", down.reason);
        assert_eq!(down.values["loss_pct"], 100.0);
    }
}
