//! Owns the `bench-probes` benchmark: Vantage's probes beside Prometheus blackbox_exporter on
//! one matrix of loopback targets (verdict and duration of each case, issue 3), and the HTTP
//! checks per second one agent sustains against a loopback target, with its resident memory.
//!
//! Everything runs on this machine; the benchmark starts its own targets on ports bound to 0:
//! an HTTP server (200, 404, 500, a slow path past the timeout, a redirect loop), three HTTPS
//! servers with certificates it issues with rcgen (valid, expired, wrong name) under a CA
//! file both tools trust, a refused port (bound, then closed), a banner server (`SSH-2.0-…`),
//! a UDP DNS server (an A record for `known.bench.test`, NXDOMAIN for every other name), ICMP
//! to 127.0.0.1 and to an address inside a network namespace whose veth link is cut from the
//! namespace side (removed on exit, on error and on Ctrl-C). Run as root.
//!
//! Both tools get the same timeout and the same expectation for every case (the mapping is
//! printed with the table): blackbox_exporter through `GET /probe?module=…&target=…`
//! (`probe_success`, `probe_duration_seconds`), Vantage through `vantage-agent probe` (the
//! agent binary, one process per run, `ok` and `timings.total_ms`) when that subcommand
//! exists, otherwise through `vantage_agent::probe::run_check` on a current-thread tokio
//! runtime in this process (the agent's runtime flavour); the output says which. Both
//! durations are the probe's own measurement, without process start or HTTP overhead. Each
//! case runs `--runs` times per tool, alternating which tool goes first; medians are shown.
//!
//! Throughput, two figures, each labelled in the output:
//! - the real `vantage-agent` enrolled at a real control plane (SQLite) with as many HTTP
//!   checks at the minimum interval (1 s) as fit in one desired config, counting the results
//!   committed at the control plane whose measurement time falls in a `--seconds` window,
//!   and the agent's RSS and CPU from `/proc` during that window;
//! - the probe code alone at saturation: a child process of this binary (`--load`) running
//!   `run_check` in a closed loop with N checks in flight on a current-thread runtime, its
//!   RSS sampled from `/proc` (the agent's scheduler cannot be driven faster than one run
//!   per check per second, and one config holds about a thousand HTTP checks).
//!
//! Usage: `bench-probes [--runs 5] [--timeout-ms 1000] [--seconds 30] [--checks 2000]
//! [--load-seconds 5] [--load-concurrency 16,64,256] [--vantage auto|binary|in-process]`.
//! `--seconds 0` skips the throughput part. Needs `prometheus-blackbox-exporter` on PATH or in
//! `/usr/bin` (`scripts/bench` installs it) and `ip` (iproute2).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use vantage_mqtt::{CheckKind, CheckSpec, DesiredConfig, MAX_CONFIG_BYTES, encode};
use vantage_tests::{Agent, Backend, ControlPlane, TestStore, bin_dir, proc_sample, wait_for};

/// The name the DNS target answers, and its address.
const KNOWN_NAME: &str = "known.bench.test";
const KNOWN_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A different address: the "wrong answer" case expects this one.
const OTHER_ADDRESS: &str = "10.0.0.2";
/// The banner the TCP target sends on connect.
const BANNER: &str = "SSH-2.0-VantageBench_1.0\r\n";

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// The HTTP routes, served over plain TCP and over TLS. One request per connection.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, slow: Duration) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let path = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let (status, reason, location, body) = match path.as_str() {
        "/ok" => (200, "OK", None, "ok\n"),
        "/missing" => (404, "Not Found", None, "not here\n"),
        "/error" => (500, "Internal Server Error", None, "boom\n"),
        "/slow" => {
            tokio::time::sleep(slow).await;
            (200, "OK", None, "late\n")
        }
        "/loop" => (302, "Found", Some("/loop2"), ""),
        "/loop2" => (302, "Found", Some("/loop"), ""),
        _ => (404, "Not Found", None, ""),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(location) = location {
        response.push_str(&format!("location: {location}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(body);
    let _ = stream.write_all(response.as_bytes()).await;
    // The server closes first, so TIME_WAIT stays on its side and the prober's ephemeral
    // ports are free again at once (this matters at thousands of checks per second).
    let _ = stream.shutdown().await;
}

/// Serves the HTTP routes on 127.0.0.1, over TLS when an acceptor is given.
async fn http_server(
    tls: Option<tokio_rustls::TlsAcceptor>,
    slow: Duration,
) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            serve_http(stream, slow).await;
                        }
                    }
                    None => serve_http(tcp, slow).await,
                }
            });
        }
    });
    Ok(port)
}

/// A TLS acceptor for one leaf certificate (HTTP/1.1 only in ALPN).
fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("leaf PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A CA and the three leaves the HTTPS targets serve.
struct Certificates {
    ca_pem: String,
    valid: (String, String),
    expired: (String, String),
    wrong_name: (String, String),
}

fn certificates() -> anyhow::Result<Certificates> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench-probes CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let leaf = |names: &[&str], expired: bool| -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )?;
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    Ok(Certificates {
        valid: leaf(&["127.0.0.1"], false)?,
        expired: leaf(&["127.0.0.1"], true)?,
        wrong_name: leaf(&["wrong.example"], false)?,
        ca_pem,
    })
}

/// Sends the banner, then holds the connection until the client closes it (as sshd waits for
/// the client's version line).
async fn banner_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if stream.write_all(BANNER.as_bytes()).await.is_err() {
                    return;
                }
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    Ok(port)
}

/// The answer to one DNS query: an A record for [`KNOWN_NAME`], NXDOMAIN for other names.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let known = labels.join(".") == KNOWN_NAME;
    let with_answer = known && qtype == 1;
    let rcode: u8 = if known { 0 } else { 3 };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[0..2]);
    // QR, the query's opcode, AA, the query's RD; then RA and the rcode.
    out.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&[0, 1, 0, u8::from(with_answer), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if with_answer {
        // Name pointer to the question, type A, class IN, TTL 300, 4 bytes.
        out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 1, 0x2C, 0, 4]);
        out.extend_from_slice(&KNOWN_ADDRESS.octets());
    }
    Some(out)
}

async fn dns_server() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let port = socket.local_addr()?.port();
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
                continue;
            };
            if let Some(reply) = dns_answer(&buffer[..n]) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    Ok(port)
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    anyhow::ensure!(
        output.status.success(),
        "ip {} failed (run as root): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Removes a namespace and the host end of its link; errors are ignored (it may be gone).
fn remove_namespace(namespace: &str, link: &str) {
    for args in [vec!["link", "del", link], vec!["netns", "del", namespace]] {
        let _ = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A network namespace holding one address at the far end of a veth pair, removed on drop.
/// Only the pair's own /30 is routed to it: no test traffic leaves through the host's
/// interfaces.
struct Namespace {
    name: String,
    link: String,
    peer: String,
    near: String,
    far: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        remove_namespace(&self.name, &self.link);
    }
}

impl Namespace {
    fn create() -> anyhow::Result<Namespace> {
        let id = std::process::id() % 4000;
        // 10.214.x.y/30: a private range used only between the host and this namespace.
        let (a, b) = (id / 64, (id % 64) * 4);
        let namespace = Namespace {
            name: format!("vbench-{id}"),
            link: format!("vbh{id}"),
            peer: format!("vbn{id}"),
            near: format!("10.214.{a}.{}", b + 1),
            far: format!("10.214.{a}.{}", b + 2),
        };
        // Leftovers of a killed run with the same id.
        remove_namespace(&namespace.name, &namespace.link);
        let (name, link, peer) = (&namespace.name, &namespace.link, &namespace.peer);
        ip(&["netns", "add", name])?;
        ip(&["link", "add", link, "type", "veth", "peer", "name", peer])?;
        ip(&["link", "set", peer, "netns", name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", namespace.near),
            "dev",
            link,
        ])?;
        ip(&["link", "set", link, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{}/30", namespace.far),
            "dev",
            peer,
        ])?;
        ip(&["-n", name, "link", "set", peer, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Takes the link down from the namespace's side: the host keeps its connected route
    /// (without carrier), so echo requests go nowhere else and get no reply.
    fn cut(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "link", "set", &self.peer, "down"])
    }
}

// ---------------------------------------------------------------------------------------------
// The two tools
// ---------------------------------------------------------------------------------------------

/// One run of one case by one tool.
#[derive(Debug, Clone)]
struct Run {
    ok: bool,
    ms: f64,
    reason: String,
}

/// blackbox_exporter as a child process, killed on drop.
struct Blackbox {
    child: std::process::Child,
    port: u16,
    version: String,
    http: reqwest::Client,
}

impl Drop for Blackbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blackbox_binary() -> anyhow::Result<&'static str> {
    vantage_tests::find_program(&[
        "prometheus-blackbox-exporter",
        "/usr/bin/prometheus-blackbox-exporter",
    ])
    .context("prometheus-blackbox-exporter is not installed (scripts/bench installs it)")
}

impl Blackbox {
    async fn start(config: &Path, log: &Path) -> anyhow::Result<Blackbox> {
        let binary = blackbox_binary()?;
        let version = Command::new(binary).arg("--version").output()?;
        let version = format!(
            "{}{}",
            String::from_utf8_lossy(&version.stdout),
            String::from_utf8_lossy(&version.stderr)
        )
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
        // Bound to 0 and released just before the exporter binds it.
        let port = vantage_tests::free_port();
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start blackbox_exporter")?;
        let blackbox = Blackbox {
            child,
            port,
            version,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        let url = format!("http://127.0.0.1:{port}/-/healthy");
        wait_for("blackbox_exporter up", Duration::from_secs(15), || async {
            let response = blackbox.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await?;
        Ok(blackbox)
    }

    /// One probe: `probe_success` and `probe_duration_seconds`; with `debug`, the reason a
    /// failed probe gives in its log ([`blackbox_reason`]).
    async fn probe(&self, module: &str, target: &str, debug: bool) -> anyhow::Result<Run> {
        let mut query = vec![("module", module), ("target", target)];
        if debug {
            query.push(("debug", "true"));
        }
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/probe", self.port))
            .query(&query)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let metric = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let ok = metric("probe_success").with_context(|| format!("no probe_success in {text}"))?;
        let seconds = metric("probe_duration_seconds").context("no probe_duration_seconds")?;
        let reason = if debug && ok != 1.0 {
            blackbox_reason(&text)
        } else {
            String::new()
        };
        Ok(Run {
            ok: ok == 1.0,
            ms: seconds * 1000.0,
            reason,
        })
    }
}

/// Why a blackbox_exporter probe failed, from its `debug=true` log: the first warning or
/// error other than the final "Probe failed" summary, else the first message that names a
/// failed expectation (an unwanted status code is logged at info level). Message and
/// attributes, without the timestamp, caller and labels.
fn blackbox_reason(text: &str) -> String {
    let lines: Vec<(&str, &str, &str)> = text
        .lines()
        .take_while(|l| !l.starts_with("Metrics that would have been returned"))
        .filter_map(|l| {
            let level = l.split_once("level=")?.1.split(' ').next()?;
            let rest = l.split_once("msg=\"")?.1;
            let message = rest.split('"').next()?;
            Some((level, message, rest))
        })
        .filter(|(_, message, _)| *message != "Probe failed")
        .collect();
    let warned = lines
        .iter()
        .find(|(level, _, _)| matches!(*level, "error" | "warn"));
    let named = lines.iter().find(|(_, message, _)| {
        let message = message.to_ascii_lowercase();
        ["invalid", "fail", "match", "not "]
            .iter()
            .any(|word| message.contains(word))
    });
    warned
        .or(named)
        .map(|(_, _, rest)| format!("\"{}", rest.trim()))
        .unwrap_or_default()
}

/// How Vantage's probes are run.
enum Vantage {
    /// `vantage-agent probe '<check JSON>' --timeout-ms N`, one process per run.
    Binary(PathBuf),
    /// `run_check` on a long-lived current-thread runtime on its own thread.
    InProcess(std::sync::mpsc::Sender<(CheckSpec, tokio::sync::oneshot::Sender<Run>)>),
}

impl Vantage {
    fn in_process() -> anyhow::Result<Vantage> {
        let (tx, rx) = std::sync::mpsc::channel::<(CheckSpec, tokio::sync::oneshot::Sender<Run>)>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            while let Ok((spec, reply)) = rx.recv() {
                let outcome = runtime.block_on(vantage_agent::probe::run_check(&spec));
                let _ = reply.send(Run {
                    ok: outcome.ok,
                    ms: outcome.timings.total_ms,
                    reason: outcome.reason,
                });
            }
        });
        Ok(Vantage::InProcess(tx))
    }

    /// The agent binary when it has the `probe` subcommand.
    fn binary() -> Option<Vantage> {
        let path = bin_dir().join("vantage-agent");
        let has_probe = Command::new(&path)
            .args(["probe", "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        has_probe.then_some(Vantage::Binary(path))
    }

    fn describe(&self) -> String {
        match self {
            Vantage::Binary(path) => format!(
                "agent binary ({} probe, one process per run; duration = timings.total_ms)",
                path.display()
            ),
            Vantage::InProcess(_) => "in process (vantage_agent::probe::run_check on a current-thread runtime; duration = timings.total_ms)".to_owned(),
        }
    }

    async fn probe(&self, kind: &Value, timeout_ms: u32) -> anyhow::Result<Run> {
        match self {
            Vantage::Binary(path) => {
                let output = tokio::process::Command::new(path)
                    .arg("probe")
                    .arg(kind.to_string())
                    .arg("--timeout-ms")
                    .arg(timeout_ms.to_string())
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .output()
                    .await?;
                anyhow::ensure!(
                    matches!(output.status.code(), Some(0 | 2)),
                    "vantage-agent probe exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                let outcome: Value = serde_json::from_slice(&output.stdout).with_context(|| {
                    format!(
                        "vantage-agent probe printed {:?}",
                        String::from_utf8_lossy(&output.stdout)
                    )
                })?;
                Ok(Run {
                    ok: outcome["ok"].as_bool().context("no ok")?,
                    ms: outcome["timings"]["total_ms"]
                        .as_f64()
                        .context("no timings.total_ms")?,
                    reason: outcome["reason"].as_str().unwrap_or_default().to_owned(),
                })
            }
            Vantage::InProcess(tx) => {
                let spec = CheckSpec {
                    id: "bench".into(),
                    interval_s: 60,
                    timeout_ms,
                    kind: serde_json::from_value(kind.clone())?,
                };
                let (reply, answer) = tokio::sync::oneshot::channel();
                tx.send((spec, reply))
                    .map_err(|_| anyhow::anyhow!("probe thread gone"))?;
                Ok(answer.await?)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// One case: the same target and expectation in both tools.
struct Case {
    name: &'static str,
    expect_up: bool,
    module: &'static str,
    target: String,
    vantage: Value,
}

/// blackbox_exporter's modules, one per distinct expectation. Every module has the same
/// timeout as the Vantage checks and uses IPv4 only (every target is an IPv4 literal).
fn blackbox_config(timeout_ms: u32, ca_file: &Path) -> String {
    let t = format!("{timeout_ms}ms");
    let ca = ca_file.display();
    let dns = |name: &str, rcode: &str, answer: Option<&str>| {
        let validate = answer
            .map(|a| {
                format!(
                    "\n      validate_answer_rrs:\n        fail_if_none_matches_regexp: ['\\sA\\s+{}$']",
                    a.replace('.', "\\.")
                )
            })
            .unwrap_or_default();
        format!(
            "    prober: dns\n    timeout: {t}\n    dns:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      transport_protocol: udp\n      query_name: {name}\n      query_type: A\n      valid_rcodes: [{rcode}]{validate}\n"
        )
    };
    let tcp = |expect: &str| {
        format!(
            "    prober: tcp\n    timeout: {t}\n    tcp:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      query_response:\n        - expect: '{expect}'\n"
        )
    };
    format!(
        "modules:\n  http_2xx:\n    prober: http\n    timeout: {t}\n    http:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      valid_status_codes: []\n      follow_redirects: true\n      tls_config:\n        ca_file: {ca}\n  tcp_ssh:\n{}  tcp_smtp:\n{}  dns_known:\n{}  dns_wrong:\n{}  dns_missing:\n{}  dns_missing_expected:\n{}  icmp:\n    prober: icmp\n    timeout: {t}\n    icmp:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      payload_size: 56\n",
        tcp("^SSH-2\\.0-"),
        tcp("^220 "),
        dns(KNOWN_NAME, "NOERROR", Some(&KNOWN_ADDRESS.to_string())),
        dns(KNOWN_NAME, "NOERROR", Some(OTHER_ADDRESS)),
        dns("missing.bench.test", "NOERROR", None),
        dns("missing.bench.test", "NXDOMAIN", None),
    )
}

struct Ports {
    http: u16,
    https_valid: u16,
    https_expired: u16,
    https_wrong: u16,
    refused: u16,
    banner: u16,
    dns: u16,
}

fn cases(ports: &Ports, ca_pem: &str, icmp_down: &str) -> Vec<Case> {
    // Vantage's HTTP settings matching blackbox's http_2xx: 2xx only (Vantage's default is
    // 200-399), up to 10 redirects (Go's client limit), the same CA, IPv4.
    let http = |url: String| {
        json!({"type": "http", "url": url, "expect_status_ranges": [[200, 299]],
               "max_redirects": 10, "ip_version": "ipv4", "ca_pem": ca_pem})
    };
    let plain = |path: &str| format!("http://127.0.0.1:{}{path}", ports.http);
    let secure = |port: u16| format!("https://127.0.0.1:{port}/ok");
    let dns = |name: &str, rcode: &str, answers: Vec<String>| {
        json!({"type": "dns", "name": name, "record_type": "A",
               "resolver": format!("127.0.0.1:{}", ports.dns), "transport": "udp",
               "expect_rcode": rcode, "expect_answers": answers})
    };
    let tcp = |expect: &str| {
        json!({"type": "tcp", "host": "127.0.0.1", "port": ports.banner, "ip_version": "ipv4",
               "steps": [{"expect": expect}]})
    };
    let icmp = |host: &str| json!({"type": "icmp", "host": host, "count": 1, "size": 56, "ip_version": "ipv4"});
    let case = |name, expect_up, module, target: String, vantage| Case {
        name,
        expect_up,
        module,
        target,
        vantage,
    };
    let dns_target = format!("127.0.0.1:{}", ports.dns);
    let banner_target = format!("127.0.0.1:{}", ports.banner);
    vec![
        case(
            "http 200",
            true,
            "http_2xx",
            plain("/ok"),
            http(plain("/ok")),
        ),
        case(
            "http 404",
            false,
            "http_2xx",
            plain("/missing"),
            http(plain("/missing")),
        ),
        case(
            "http 500",
            false,
            "http_2xx",
            plain("/error"),
            http(plain("/error")),
        ),
        case(
            "http timeout",
            false,
            "http_2xx",
            plain("/slow"),
            http(plain("/slow")),
        ),
        {
            let url = format!("http://127.0.0.1:{}/", ports.refused);
            case("http refused", false, "http_2xx", url.clone(), http(url))
        },
        case(
            "http redirect loop",
            false,
            "http_2xx",
            plain("/loop"),
            http(plain("/loop")),
        ),
        case(
            "https valid cert",
            true,
            "http_2xx",
            secure(ports.https_valid),
            http(secure(ports.https_valid)),
        ),
        case(
            "https expired cert",
            false,
            "http_2xx",
            secure(ports.https_expired),
            http(secure(ports.https_expired)),
        ),
        case(
            "https wrong-name cert",
            false,
            "http_2xx",
            secure(ports.https_wrong),
            http(secure(ports.https_wrong)),
        ),
        case(
            "dns A answer",
            true,
            "dns_known",
            dns_target.clone(),
            dns(KNOWN_NAME, "NOERROR", vec![KNOWN_ADDRESS.to_string()]),
        ),
        case(
            "dns wrong answer",
            false,
            "dns_wrong",
            dns_target.clone(),
            dns(KNOWN_NAME, "NOERROR", vec![OTHER_ADDRESS.to_owned()]),
        ),
        case(
            "dns NXDOMAIN",
            false,
            "dns_missing",
            dns_target.clone(),
            dns("missing.bench.test", "NOERROR", Vec::new()),
        ),
        case(
            "dns NXDOMAIN expected",
            true,
            "dns_missing_expected",
            dns_target,
            dns("missing.bench.test", "NXDOMAIN", Vec::new()),
        ),
        case(
            "icmp up",
            true,
            "icmp",
            "127.0.0.1".into(),
            icmp("127.0.0.1"),
        ),
        case(
            "icmp down",
            false,
            "icmp",
            icmp_down.into(),
            icmp(icmp_down),
        ),
        case(
            "tcp banner match",
            true,
            "tcp_ssh",
            banner_target.clone(),
            tcp("^SSH-2\\.0-"),
        ),
        case(
            "tcp banner mismatch",
            false,
            "tcp_smtp",
            banner_target,
            tcp("^220 "),
        ),
    ]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "up" or "down" when every run agrees, else "mixed k/n up".
fn verdict(runs: &[Run]) -> (Option<bool>, String) {
    let up = runs.iter().filter(|r| r.ok).count();
    match up {
        0 => (Some(false), "down".into()),
        n if n == runs.len() => (Some(true), "up".into()),
        n => (None, format!("mixed {n}/{} up", runs.len())),
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------------------------

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// `--load`: the child process of the saturation figure. Runs one HTTP check in a closed
/// loop with `concurrency` runs in flight on a current-thread runtime (the agent's flavour),
/// prints `start` when the measured window opens and one JSON line at its end.
fn load_child(url: &str, concurrency: usize, seconds: u64, timeout_ms: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let spec = Arc::new(CheckSpec {
            id: "load".into(),
            interval_s: 1,
            timeout_ms,
            kind: CheckKind::Http(vantage_mqtt::HttpCheck::get(url)),
        });
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        // Failure reasons with their numbers (ports, timings) masked, counted.
        let reasons = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
        let warmup = Duration::from_secs(1);
        let started = Instant::now();
        let window_start = started + warmup;
        let deadline = window_start + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (spec, ok, failed, reasons) =
                (spec.clone(), ok.clone(), failed.clone(), reasons.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let outcome = vantage_agent::probe::run_check(&spec).await;
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    if now >= window_start {
                        if outcome.ok {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let masked: String = outcome
                                .reason
                                .chars()
                                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                                .collect();
                            if let Ok(mut reasons) = reasons.lock() {
                                *reasons.entry(masked).or_default() += 1;
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep_until(window_start.into()).await;
        println!("start");
        for task in tasks {
            task.await?;
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let reasons = reasons.lock().map(|r| r.clone()).unwrap_or_default();
        println!(
            "{}",
            json!({"ok": ok, "failed": failed, "seconds": seconds,
                   "ok_per_second": ok as f64 / seconds as f64, "failures": reasons})
        );
        Ok(())
    })
}

/// Runs the `--load` child at `concurrency` and samples its RSS during the window.
async fn saturation(
    url: &str,
    concurrency: usize,
    seconds: u64,
    timeout_ms: u32,
) -> anyhow::Result<(Value, f64, f64)> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--load",
            url,
            "--concurrency",
            &concurrency.to_string(),
            "--load-seconds",
            &seconds.to_string(),
            "--timeout-ms",
            &timeout_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("child pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = lines.next_line().await?.context("load child ended early")?;
    anyhow::ensure!(first == "start", "load child said {first:?}");
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        tokio::select! {
            line = lines.next_line() => break line?.context("load child printed no result")?,
            _ = tick.tick() => {
                if let Ok(s) = proc_sample(pid) {
                    rss.push(s.rss_kib as f64);
                }
            }
        }
    };
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "load child failed: {status}");
    let avg = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    let max = rss.iter().copied().fold(0.0, f64::max);
    Ok((serde_json::from_str(&result)?, mib(avg), mib(max)))
}

/// The size of a desired config holding `n` copies of `kind` with short ids.
fn config_bytes(kind: &CheckKind, n: usize) -> usize {
    let config = DesiredConfig {
        v: vantage_mqtt::PROTOCOL_VERSION,
        revision: u64::MAX,
        region: "bench".into(),
        metrics_interval_s: 10,
        heartbeat_interval_s: 10,
        checks: (0..n)
            .map(|i| CheckSpec {
                id: format!("p{i:05}"),
                interval_s: 1,
                timeout_ms: 1000,
                kind: kind.clone(),
            })
            .collect(),
    };
    encode(&config).len()
}

/// The real agent through a real control plane: `n` HTTP checks every second.
async fn agent_throughput(url: &str, wanted: usize, seconds: u64) -> anyhow::Result<()> {
    let kind = CheckKind::Http(vantage_mqtt::HttpCheck::get(url));
    // The agent refuses a desired config over MAX_CONFIG_BYTES: keep a margin for the
    // region and revision fields of the real one.
    let mut n = wanted;
    while n > 1 && config_bytes(&kind, n) > MAX_CONFIG_BYTES - 1024 {
        n -= 1;
    }
    if n < wanted {
        println!(
            "throughput agent: {wanted} checks do not fit in one desired config ({} bytes > {MAX_CONFIG_BYTES}); using {n} ({} bytes)",
            config_bytes(&kind, wanted),
            config_bytes(&kind, n)
        );
    }
    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start(&store).await?;
    // Created before the agent exists, so each creation reassigns nothing.
    for i in 0..n {
        let body = json!({"id": format!("p{i:05}"), "name": "load", "kind": kind,
                          "interval_s": 1, "timeout_ms": 1000, "regions": ["bench"]});
        loop {
            let (status, reply) = cp.post("/api/v1/checks", body.clone()).await?;
            match status {
                201 => break,
                429 => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => bail!("check creation: {status} {reply}"),
            }
        }
    }
    let token = cp.enrollment_token("bench", 1).await?;
    let agent = Agent::start(&cp, &token, "")?;
    let id = agent.wait_enrolled().await?;
    let pid = agent.pid().context("agent pid")?;
    let pool = cp.store_pool().await?;
    let count = |from: i64, to: i64| {
        let pool = pool.clone();
        let id = id.clone();
        async move {
            // Integers and a hex agent id only: nothing to escape.
            let sql = format!(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN ok THEN 0 ELSE 1 END), 0) FROM results \
                 WHERE agent_id = '{id}' AND measured_at_ms >= {from} AND measured_at_ms < {to}"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await?;
            use sqlx::Row;
            anyhow::Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?))
        }
    };
    wait_for("first results", Duration::from_secs(60), || async {
        let (rows, _) = count(0, i64::MAX).await.ok()?;
        (rows > 0).then_some(())
    })
    .await
    .with_context(|| agent.log())?;
    // Every check starts within its first interval; let the rate settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let from = vantage_agent::now_ms();
    let start = proc_sample(pid)?;
    let started = Instant::now();
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        rss.push(proc_sample(pid)?.rss_kib as f64);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let to = vantage_agent::now_ms();
    let end = proc_sample(pid)?;
    // Results measured in the window but still in flight or in the spool.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rows, failed) = count(from, to).await?;
    let window_s = (to - from) as f64 / 1000.0;
    let cpu_pct = 100.0 * (end.cpu_ticks - start.cpu_ticks) as f64 / 100.0 / elapsed;
    let avg = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    let max = rss.iter().copied().fold(0.0, f64::max);
    println!(
        "throughput agent (real vantage-agent, control plane on SQLite, {n} HTTP checks every 1 s = {n} offered/s): \
         {:.0} results/s committed over {window_s:.0} s ({rows} results, {failed} failed), \
         agent rss_avg_mib={:.1} rss_max_mib={:.1} cpu_pct={cpu_pct:.0}",
        rows as f64 / window_s,
        mib(avg),
        mib(max),
    );
    drop(agent);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

struct Options {
    runs: usize,
    timeout_ms: u32,
    seconds: u64,
    checks: usize,
    load_seconds: u64,
    load_concurrency: Vec<usize>,
    vantage: String,
    load_url: Option<String>,
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let mut options = Options {
        runs: 5,
        timeout_ms: 1000,
        seconds: 30,
        checks: 2000,
        load_seconds: 5,
        load_concurrency: vec![16, 64, 256],
        vantage: "auto".into(),
        load_url: None,
        concurrency: 64,
    };
    for (flag, value) in vantage_tests::flags()? {
        match flag.as_str() {
            "--runs" => options.runs = value.parse()?,
            "--timeout-ms" => options.timeout_ms = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--checks" => options.checks = value.parse()?,
            "--load-seconds" => options.load_seconds = value.parse()?,
            "--load-concurrency" => {
                options.load_concurrency =
                    value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--vantage" => options.vantage = value,
            "--load" => options.load_url = Some(value),
            "--concurrency" => options.concurrency = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if let Some(url) = &options.load_url {
        return load_child(
            url,
            options.concurrency,
            options.load_seconds,
            options.timeout_ms,
        );
    }
    anyhow::ensure!(options.runs > 0, "--runs must be at least 1");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // On Ctrl-C or SIGTERM the benchmark is dropped where it stands: every drop
            // runs (the namespace is removed; blackbox_exporter, the control plane and the
            // agents are killed).
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = bench(options) => result,
                _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); cleaned up"),
                _ = term.recv() => bail!("terminated (SIGTERM); cleaned up"),
            }
        })
}

async fn bench(options: Options) -> anyhow::Result<()> {
    let timeout_ms = options.timeout_ms;
    let vantage = match options.vantage.as_str() {
        "auto" => match Vantage::binary() {
            Some(binary) => binary,
            None => Vantage::in_process()?,
        },
        "binary" => Vantage::binary()
            .context("the vantage-agent binary has no probe subcommand (build it first)")?,
        "in-process" => Vantage::in_process()?,
        other => bail!("--vantage must be auto, binary or in-process, not {other}"),
    };

    // Targets.
    let temp = tempfile::tempdir()?;
    let slow = Duration::from_millis(u64::from(timeout_ms) * 3);
    let certs = certificates()?;
    let ca_file = temp.path().join("ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem)?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ports = Ports {
        http: http_server(None, slow).await?,
        https_valid: http_server(Some(acceptor(&certs.valid.0, &certs.valid.1)?), slow).await?,
        https_expired: http_server(Some(acceptor(&certs.expired.0, &certs.expired.1)?), slow)
            .await?,
        https_wrong: http_server(
            Some(acceptor(&certs.wrong_name.0, &certs.wrong_name.1)?),
            slow,
        )
        .await?,
        refused,
        banner: banner_server().await?,
        dns: dns_server().await?,
    };
    let namespace = Namespace::create()?;

    // blackbox_exporter.
    let config = temp.path().join("blackbox.yml");
    std::fs::write(&config, blackbox_config(timeout_ms, &ca_file))?;
    let blackbox = Blackbox::start(&config, &temp.path().join("blackbox.log"))
        .await
        .with_context(|| {
            std::fs::read_to_string(temp.path().join("blackbox.log")).unwrap_or_default()
        })?;

    // The namespace host answers before its link is cut: the "icmp down" case is the cut.
    let icmp = json!({"type": "icmp", "host": namespace.far, "count": 1, "size": 56, "ip_version": "ipv4"});
    let before_bb = blackbox.probe("icmp", &namespace.far, false).await?;
    let before_v = vantage.probe(&icmp, timeout_ms).await?;
    namespace.cut()?;
    println!(
        "probes icmp namespace host {} (via {}) before the cut: blackbox {}, vantage {}",
        namespace.far,
        namespace.near,
        if before_bb.ok { "up" } else { "down" },
        if before_v.ok { "up" } else { "down" },
    );

    let matrix = cases(&ports, &certs.ca_pem, &namespace.far);
    let mut bb_runs: Vec<Vec<Run>> = vec![Vec::new(); matrix.len()];
    let mut v_runs: Vec<Vec<Run>> = vec![Vec::new(); matrix.len()];
    for round in 0..options.runs {
        for (i, case) in matrix.iter().enumerate() {
            let blackbox_first = (round + i) % 2 == 0;
            if blackbox_first {
                bb_runs[i].push(blackbox.probe(case.module, &case.target, false).await?);
                v_runs[i].push(vantage.probe(&case.vantage, timeout_ms).await?);
            } else {
                v_runs[i].push(vantage.probe(&case.vantage, timeout_ms).await?);
                bb_runs[i].push(blackbox.probe(case.module, &case.target, false).await?);
            }
        }
    }
    // One more blackbox run per case with debug on, for its reason only (not timed).
    let mut bb_reasons = Vec::new();
    for case in &matrix {
        bb_reasons.push(
            blackbox
                .probe(case.module, &case.target, true)
                .await?
                .reason,
        );
    }

    println!(
        "probes runs={} timeout_ms={timeout_ms} blackbox=\"{}\" vantage={}",
        options.runs,
        blackbox.version,
        vantage.describe()
    );
    println!(
        "{:<24} {:<8} {:<8} {:<8} {:>9} {:>10} {:>7}  vantage reason | blackbox reason",
        "case", "expected", "blackbox", "vantage", "bb ms", "vantage ms", "v/bb"
    );
    let mut agree = 0;
    let mut as_expected = 0;
    let mut ratios = Vec::new();
    let mut faster_or_equal = 0;
    let mut differences = Vec::new();
    for (i, case) in matrix.iter().enumerate() {
        let (bb_ok, bb_verdict) = verdict(&bb_runs[i]);
        let (v_ok, v_verdict) = verdict(&v_runs[i]);
        let bb_ms = median(&bb_runs[i].iter().map(|r| r.ms).collect::<Vec<_>>());
        let v_ms = median(&v_runs[i].iter().map(|r| r.ms).collect::<Vec<_>>());
        let ratio = v_ms / bb_ms;
        ratios.push(ratio);
        if v_ms <= bb_ms {
            faster_or_equal += 1;
        }
        if bb_ok.is_some() && bb_ok == v_ok {
            agree += 1;
        } else {
            differences.push(case.name);
        }
        if bb_ok == Some(case.expect_up) && v_ok == Some(case.expect_up) {
            as_expected += 1;
        }
        let v_reason = v_runs[i].last().map(|r| r.reason.as_str()).unwrap_or("");
        println!(
            "{:<24} {:<8} {:<8} {:<8} {:>9.2} {:>10.2} {:>7.2}  {} | {}",
            case.name,
            if case.expect_up { "up" } else { "down" },
            bb_verdict,
            v_verdict,
            bb_ms,
            v_ms,
            ratio,
            shorten(v_reason, 70),
            shorten(&bb_reasons[i], 90),
        );
    }
    let n = matrix.len();
    println!(
        "probes verdicts_agree={agree}/{n} both_as_expected={as_expected}/{n}{}",
        if differences.is_empty() {
            String::new()
        } else {
            format!(" differing: {}", differences.join(", "))
        }
    );
    println!(
        "probes median_ratio_vantage_over_blackbox={:.2} (median of the per-case ratios of medians) \
         cases_vantage_median_le_blackbox={faster_or_equal}/{n} sum_of_medians_ms blackbox={:.1} vantage={:.1}",
        median(&ratios),
        bb_runs
            .iter()
            .map(|r| median(&r.iter().map(|r| r.ms).collect::<Vec<_>>()))
            .sum::<f64>(),
        v_runs
            .iter()
            .map(|r| median(&r.iter().map(|r| r.ms).collect::<Vec<_>>()))
            .sum::<f64>(),
    );
    println!("probes mapping (blackbox module and target | Vantage check, ca_pem elided):");
    for case in &matrix {
        let mut shown = case.vantage.clone();
        if shown.get("ca_pem").is_some() {
            shown["ca_pem"] = json!("<CA>");
        }
        println!(
            "  {:<24} {} {} | {}",
            case.name, case.module, case.target, shown
        );
    }
    println!(
        "probes blackbox modules:\n{}",
        blackbox_config(timeout_ms, &ca_file)
    );
    drop(blackbox);
    drop(namespace);

    if options.seconds > 0 {
        let url = format!("http://127.0.0.1:{}/ok", ports.http);
        for concurrency in &options.load_concurrency {
            let (result, rss_avg, rss_max) =
                saturation(&url, *concurrency, options.load_seconds, timeout_ms).await?;
            println!(
                "throughput probe code alone (child process, current-thread runtime, {concurrency} checks in flight, closed loop): \
                 {:.0} successful checks/s over {} s ({} ok, {} failed{}), rss_avg_mib={rss_avg:.1} rss_max_mib={rss_max:.1}",
                result["ok_per_second"].as_f64().unwrap_or(0.0),
                result["seconds"],
                result["ok"],
                result["failed"],
                result["failures"]
                    .as_object()
                    .filter(|f| !f.is_empty())
                    .map(|f| format!(": {}", Value::Object(f.clone())))
                    .unwrap_or_default(),
            );
        }
        agent_throughput(&url, options.checks, options.seconds).await?;
    }
    Ok(())
}
