//! Probes: one module per check type, behind [`Probe`], so the control plane's fallback
//! executor and tests can run them without an MQTT session.
//!
//! A probe never fails as a function: every outcome, including timeouts and refusals, is an
//! [`Outcome`] with a verdict, a reason, phase timings and numeric values. The whole probe
//! runs under the check's timeout. [`validate`] checks a specification before it is stored
//! (the control plane calls it) so that a bad regex or port is refused at creation time.
//!
//! Modules: [`http`], [`tcp`], [`dns`] (also the pure-Rust name resolution every probe
//! uses), [`tls`] (certificate checks and the TLS client settings probes share), [`smtp`],
//! [`icmp`], [`chain`], [`process`].

pub mod chain;
pub mod dns;
pub mod http;
pub mod icmp;
pub mod process;
pub mod smtp;
pub mod tcp;
#[cfg(test)]
pub mod testutil;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use vantage_mqtt::{CheckKind, CheckResult, CheckSpec, IpVersion, Timings};

/// What one probe run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub reason: String,
    pub timings: Timings,
    pub status_code: Option<u16>,
    /// Numeric facts, unit in the name (`loss_pct`, `cert_days_left`, …).
    pub values: BTreeMap<String, f64>,
}

impl Outcome {
    /// The result of this run as the wire carries it, its texts bounded to the wire limits.
    pub fn into_result(self, seq: u64, check_id: &str, measured_at_ms: i64) -> CheckResult {
        let mut result = CheckResult {
            seq,
            measured_at_ms,
            check_id: check_id.to_owned(),
            ok: self.ok,
            reason: self.reason,
            timings: self.timings,
            status_code: self.status_code,
            values: self.values,
        };
        result.bound_texts();
        result
    }

    /// A failure with `reason` after `started`.
    pub fn fail(reason: impl Into<String>, started: Instant) -> Outcome {
        Outcome {
            ok: false,
            reason: reason.into(),
            timings: Timings {
                total_ms: ms(started.elapsed()),
                ..Timings::default()
            },
            status_code: None,
            values: BTreeMap::new(),
        }
    }

    /// A verdict with `reason`, the total time measured from `started`.
    pub fn verdict(
        ok: bool,
        reason: impl Into<String>,
        mut timings: Timings,
        started: Instant,
    ) -> Outcome {
        timings.total_ms = ms(started.elapsed());
        Outcome {
            ok,
            reason: reason.into(),
            timings,
            status_code: None,
            values: BTreeMap::new(),
        }
    }
}

/// Milliseconds as f64.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs one check under its timeout.
pub async fn run_check(check: &CheckSpec) -> Outcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(u64::from(check.timeout_ms.max(1)));
    let run = async {
        match &check.kind {
            CheckKind::Http(http) => http::probe(http, started).await,
            CheckKind::Tcp(tcp) => tcp::probe(tcp, started).await,
            CheckKind::Dns(dns) => dns::probe(dns, started).await,
            CheckKind::Smtp(smtp) => smtp::probe(smtp, started).await,
            CheckKind::Icmp(icmp) => icmp::probe(icmp, started).await,
            CheckKind::Tls(tls) => tls::probe(tls, started).await,
            CheckKind::Chain(chain) => chain::probe(chain, started).await,
            CheckKind::Process(process) => process::probe(process, started).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::fail(format!("timed out after {} ms", check.timeout_ms), started),
    }
}

/// Checks a specification's fields; the message names the field.
///
/// # Errors
/// The first invalid field.
pub fn validate(kind: &CheckKind) -> Result<(), String> {
    match kind {
        CheckKind::Http(http) => http::validate(http),
        CheckKind::Tcp(tcp) => tcp::validate(tcp),
        CheckKind::Dns(dns) => dns::validate(dns),
        CheckKind::Smtp(smtp) => smtp::validate(smtp),
        CheckKind::Icmp(icmp) => icmp::validate(icmp),
        CheckKind::Tls(tls) => tls::validate(tls),
        CheckKind::Chain(chain) => chain::validate(chain),
        CheckKind::Process(process) => process::validate(process),
    }
}

/// Check types this agent can run.
pub const CAPABILITIES: [&str; 8] = CheckKind::TYPE_NAMES;

/// Whether `host` is a usable host name or address.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '@')
}

/// Checks the fields every network probe shares: host, port, and the optional TLS server
/// name and CA.
///
/// # Errors
/// A message naming the field.
pub fn validate_endpoint(
    host: &str,
    port: u16,
    server_name: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<(), String> {
    if !valid_host(host) {
        return Err("host must be a host name or address".into());
    }
    if port == 0 {
        return Err("port must be 1..=65535".into());
    }
    if let Some(name) = server_name
        && rustls::pki_types::ServerName::try_from(name.to_owned()).is_err()
    {
        return Err("server_name is not a valid TLS name".into());
    }
    if let Some(pem) = ca_pem {
        crate::tls::roots(pem).map_err(|_| "ca_pem holds no valid certificate".to_owned())?;
    }
    Ok(())
}

/// Compiles a regular expression, naming the field on error.
///
/// # Errors
/// The field and the parse error.
pub fn regex(field: &str, pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(pattern)
        .map_err(|e| format!("{field} is not a valid regular expression: {e}"))
}

/// A connected TCP stream and the timings of getting there.
pub struct Connected {
    pub stream: TcpStream,
    pub address: SocketAddr,
    /// `dns_ms` and `connect_ms` filled in.
    pub timings: Timings,
}

/// Resolves `host` and connects to the first address that answers, trying each in turn.
///
/// # Errors
/// Every address's failure, each named, in the order tried.
pub async fn connect(host: &str, port: u16, ip_version: IpVersion) -> Result<Connected, String> {
    let resolve_started = Instant::now();
    let addresses = dns::resolve(host, port, ip_version).await?;
    let dns_ms = ms(resolve_started.elapsed());
    let connect_started = Instant::now();
    let mut errors = Vec::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let timings = Timings {
                    dns_ms: Some(dns_ms),
                    connect_ms: Some(ms(connect_started.elapsed())),
                    ..Timings::default()
                };
                return Ok(Connected {
                    stream,
                    address,
                    timings,
                });
            }
            Err(error) => errors.push(format!("connect to {address} failed: {error}")),
        }
    }
    if errors.is_empty() {
        return Err(format!("{host} resolved to no address"));
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad: Vec<(&str, &str)> = vec![
            (r#"{"type":"http","url":"ftp://x/"}"#, "url"),
            (
                r#"{"type":"http","url":"http://x/","assertions":[{"body_matches":"("}]}"#,
                "body_matches",
            ),
            (r#"{"type":"tcp","host":"h","port":0}"#, "port"),
            (
                r#"{"type":"tcp","host":"h","port":1,"steps":[{"expect":"[z-a]"}]}"#,
                "expect",
            ),
            (r#"{"type":"icmp","host":"h","count":0}"#, "count"),
            (r#"{"type":"tls","host":"","port":443}"#, "host"),
            (r#"{"type":"chain","chain":"evm","url":"nope"}"#, "url"),
            (r#"{"type":"process"}"#, "name or pattern"),
            (r#"{"type":"smtp","host":"mx","port":0}"#, "port"),
        ];
        for (json, field) in bad {
            let kind: CheckKind = serde_json::from_str(json).unwrap();
            let error = validate(&kind).unwrap_err();
            assert!(
                error.contains(field),
                "{json}: {error:?} does not name {field}"
            );
        }
        let good: CheckKind =
            serde_json::from_str(r#"{"type":"http","url":"https://example.com/"}"#).unwrap();
        validate(&good).unwrap();
    }

    #[tokio::test]
    async fn the_timeout_is_honoured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = CheckSpec {
            id: "slow".into(),
            interval_s: 60,
            timeout_ms: 300,
            kind: serde_json::from_value(serde_json::json!({
                "type": "tcp", "host": "127.0.0.1", "port": port, "steps": [{"expect": "never"}]
            }))
            .unwrap(),
        };
        let started = Instant::now();
        let outcome = run_check(&check).await;
        let elapsed = started.elapsed();
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "timed out after 300 ms");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(330),
            "took {elapsed:?} for a 300 ms timeout"
        );
        drop(listener);
    }
}
