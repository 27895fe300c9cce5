//! DNS: the pure-Rust name resolution every probe uses ([`resolve`], hickory's resolver on the
//! system configuration, no getaddrinfo) and the DNS check ([`probe`], [`validate`]): one raw
//! query to one server, judged on the response code and the answer records.
//!
//! The check sends exactly one query (one UDP datagram, or one query over one TCP connection)
//! for `name`/`record_type` to `resolver`, or to the first `nameserver` of `/etc/resolv.conf`
//! when none is given. It works at the message level (hickory's `DnsExchange`), so NXDOMAIN,
//! SERVFAIL, REFUSED, … are responses to judge, not errors. There is no retransmission and no
//! fallback: an unanswered query waits for the check's timeout, which the caller enforces.
//!
//! Answers are compared in hickory's presentation format of each answer record's data (every
//! record of the answer section, CNAMEs of a chain included):
//!
//! | type  | presentation                                                   |
//! |-------|----------------------------------------------------------------|
//! | A     | `192.0.2.1`                                                    |
//! | AAAA  | `2001:db8::1`                                                  |
//! | CNAME, NS, PTR | `host.example.com.`                                   |
//! | MX    | `10 mail.example.com.`                                         |
//! | TXT   | the strings of the record concatenated, without quotes         |
//! | SOA   | `ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 300` |
//! | SRV   | `10 60 5060 sip.example.com.` (priority weight port target)    |
//! | CAA   | `0 issue "letsencrypt.org"`                                    |
//!
//! `expect_answers` entries match case-insensitively, with runs of whitespace collapsed and a
//! trailing dot ignored on every space-separated word (so `10 MAIL.example.com` matches
//! `10 mail.example.com.`). `expect_answer_matches` is a regular expression searched in each
//! presentation string as it is (add `(?i)` for case-insensitivity).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{DnsResponse, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::client::ClientHandle;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::tcp::TcpClientStream;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::DnsExchange;
use hickory_resolver::{Resolver, TokioResolver};
use vantage_mqtt::{DnsCheck, DnsTransport, IpVersion, Timings};

use super::{Outcome, ms};

/// Record types a DNS check may query.
pub const RECORD_TYPES: [&str; 10] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "SRV", "CAA", "PTR",
];

/// Response codes a DNS check may expect.
pub const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// Longest DNS name in presentation format (without the trailing dot).
const MAX_NAME_LEN: usize = 253;

/// hickory's own per-query limit. Deliberately long: the check's timeout, enforced by the
/// caller around the whole probe, is the one that normally ends an unanswered query.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Answers listed in a reason before the rest is summarised.
const MAX_LISTED: usize = 8;

/// The system resolver, built once per tokio runtime (a resolver's connections belong to the
/// runtime that opened them; the agent has one runtime, tests have many).
static RESOLVER: Mutex<Option<(tokio::runtime::Id, TokioResolver)>> = Mutex::new(None);

/// Builds a resolver on `/etc/resolv.conf` and `/etc/hosts`. Without a usable resolv.conf it
/// still answers from the hosts file and for `localhost`.
fn build_resolver() -> Result<TokioResolver, String> {
    let builder = match TokioResolver::builder_tokio() {
        Ok(builder) => builder,
        Err(error) => {
            tracing::warn!(%error, "no usable /etc/resolv.conf; resolving from /etc/hosts only");
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                TokioRuntimeProvider::default(),
            )
        }
    };
    builder
        .build()
        .map_err(|e| format!("cannot set up the resolver: {e}"))
}

/// The shared system resolver for the current runtime.
fn system_resolver() -> Result<TokioResolver, String> {
    let runtime = tokio::runtime::Handle::try_current()
        .ok()
        .map(|handle| handle.id());
    let mut slot = RESOLVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let (Some(id), Some((cached, resolver))) = (runtime, slot.as_ref())
        && *cached == id
    {
        return Ok(resolver.clone());
    }
    let resolver = build_resolver()?;
    if let Some(id) = runtime {
        *slot = Some((id, resolver.clone()));
    }
    Ok(resolver)
}

fn family(ip_version: IpVersion) -> &'static str {
    match ip_version {
        IpVersion::Any => "IP",
        IpVersion::Ipv4 => "IPv4",
        IpVersion::Ipv6 => "IPv6",
    }
}

/// Resolves `host` to addresses with `port`, honouring the IP version preference.
///
/// IP literals (IPv6 also in brackets) are returned as they are. Names go to hickory's
/// resolver on the system configuration (`/etc/hosts` first, then the `/etc/resolv.conf`
/// nameservers; `localhost` always resolves to loopback). With [`IpVersion::Any`] the IPv6
/// and IPv4 addresses come in resolver order (IPv6 first).
///
/// # Errors
/// A message naming the host and the cause.
pub async fn resolve(
    host: &str,
    port: u16,
    ip_version: IpVersion,
) -> Result<Vec<SocketAddr>, String> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        let fits = match ip_version {
            IpVersion::Any => true,
            IpVersion::Ipv4 => ip.is_ipv4(),
            IpVersion::Ipv6 => ip.is_ipv6(),
        };
        if !fits {
            return Err(format!("{host} is not an {} address", family(ip_version)));
        }
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.is_empty() {
        return Err("cannot resolve an empty host name".into());
    }
    let resolver = system_resolver()?;
    let ips: Vec<IpAddr> = match ip_version {
        IpVersion::Any => resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .iter()
            .collect(),
        IpVersion::Ipv4 | IpVersion::Ipv6 => {
            let record_type = if ip_version == IpVersion::Ipv4 {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            resolver
                .lookup(host, record_type)
                .await
                .map_err(|e| format!("cannot resolve {host} ({record_type}): {e}"))?
                .answers()
                .iter()
                .filter_map(|record| record.data.ip_addr())
                .collect()
        }
    };
    let addresses: Vec<SocketAddr> = ips
        .into_iter()
        .filter(|ip| match ip_version {
            IpVersion::Any => true,
            IpVersion::Ipv4 => ip.is_ipv4(),
            IpVersion::Ipv6 => ip.is_ipv6(),
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if addresses.is_empty() {
        return Err(format!("{host} has no {} address", family(ip_version)));
    }
    Ok(addresses)
}

/// The record type named `text` (case-insensitive), if a DNS check may query it.
fn record_type(text: &str) -> Result<RecordType, String> {
    let upper = text.trim().to_ascii_uppercase();
    if !RECORD_TYPES.contains(&upper.as_str()) {
        return Err(format!(
            "record_type {text:?} is not one of {}",
            RECORD_TYPES.join(", ")
        ));
    }
    RecordType::from_str(&upper).map_err(|e| format!("record_type {text:?}: {e}"))
}

/// The name to query: `name` made absolute; for PTR an IP address becomes its reverse name.
fn query_name(name: &str, record_type: RecordType) -> Result<Name, String> {
    if record_type == RecordType::PTR
        && let Ok(ip) = name.parse::<IpAddr>()
    {
        return Ok(Name::from(ip));
    }
    let mut parsed =
        Name::from_str(name).map_err(|e| format!("name {name:?} is not a DNS name: {e}"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// The server to ask: `resolver` (`ip:port`), else the first system nameserver on port 53.
fn server_address(resolver: Option<&str>) -> Result<SocketAddr, String> {
    if let Some(text) = resolver {
        return text
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("resolver {text:?} is not ip:port"));
    }
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("no resolver given and no system nameserver: {e}"))?;
    let server = config
        .name_servers
        .first()
        .ok_or("no resolver given and /etc/resolv.conf lists no nameserver")?;
    let port = server
        .connections
        .first()
        .map_or(53, |connection| connection.port);
    Ok(SocketAddr::new(server.ip, port))
}

/// Sends one query and returns the whole response, whatever its response code.
async fn exchange(
    server: SocketAddr,
    transport: DnsTransport,
    name: Name,
    record_type: RecordType,
) -> Result<DnsResponse, String> {
    // The provider owns the task set that drives the exchange in the background: it must live
    // until the response is in (dropping it afterwards also stops that task and closes TCP).
    let provider = TokioRuntimeProvider::new();
    let mut client: DnsExchange<TokioRuntimeProvider> = match transport {
        // One datagram: `max_retries(1)` means a single attempt, no retransmission.
        DnsTransport::Udp => UdpClientStream::builder(server, provider.clone())
            .with_timeout(Some(CLIENT_TIMEOUT))
            .with_max_retries(1)
            .exchange(),
        DnsTransport::Tcp => {
            TcpClientStream::exchange(server, None, CLIENT_TIMEOUT, None, provider.clone())
                .await
                .map_err(|e| format!("cannot connect to {server} over TCP: {e}"))?
        }
    };
    let response = client
        .query(name, DNSClass::IN, record_type)
        .await
        .map_err(|e| e.to_string());
    drop(client);
    drop(provider);
    response
}

/// The response code's mnemonic, as written in checks (`NOERROR`, `NXDOMAIN`, …).
fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS | ResponseCode::BADSIG => "BADVERS",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        ResponseCode::BADMODE => "BADMODE",
        ResponseCode::BADNAME => "BADNAME",
        ResponseCode::BADALG => "BADALG",
        ResponseCode::BADTRUNC => "BADTRUNC",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        ResponseCode::Unknown(code) => return format!("RCODE{code}"),
    };
    name.to_owned()
}

/// The comparison form of a presentation string: lowercase, whitespace collapsed, a trailing
/// dot dropped from every word.
fn normalize(text: &str) -> String {
    text.split_whitespace()
        .map(|word| word.strip_suffix('.').unwrap_or(word).to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `items` joined for a reason, at most [`MAX_LISTED`] of them.
fn listing(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    let text = items
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_LISTED {
        return format!("{text}, … ({} more)", items.len() - MAX_LISTED);
    }
    text
}

/// The verdict and reason for a response with `rcode` and `answers` (presentation strings).
fn judge(
    check: &DnsCheck,
    rcode: ResponseCode,
    answers: &[String],
    pattern: Option<&regex_lite::Regex>,
) -> (bool, String) {
    let got = rcode_name(rcode);
    let expected = check.expect_rcode.trim().to_ascii_uppercase();
    if got != expected {
        return (false, format!("rcode {got}, expected {expected}"));
    }
    let present: Vec<String> = answers.iter().map(String::as_str).map(normalize).collect();
    let missing: Vec<String> = check
        .expect_answers
        .iter()
        .filter(|wanted| !present.contains(&normalize(wanted.as_str())))
        .cloned()
        .collect();
    match missing.len() {
        0 => {}
        1 => {
            return (
                false,
                format!("answer {} missing (got {})", missing[0], listing(answers)),
            );
        }
        _ => {
            return (
                false,
                format!(
                    "answers {} missing (got {})",
                    missing.join(", "),
                    listing(answers)
                ),
            );
        }
    }
    if let Some(re) = pattern
        && !answers.iter().any(|answer| re.is_match(answer))
    {
        return (
            false,
            format!(
                "no answer matches /{}/ (got {})",
                re.as_str(),
                listing(answers)
            ),
        );
    }
    let reason = match answers.len() {
        0 => format!("{got}, 0 answers"),
        1 => format!("{got}, 1 answer: {}", answers[0]),
        n => format!("{got}, {n} answers: {}", listing(answers)),
    };
    (true, reason)
}

/// Runs a DNS check: one query, judged on the response code and the answers.
pub async fn probe(check: &DnsCheck, started: Instant) -> Outcome {
    let record_type = match record_type(&check.record_type) {
        Ok(record_type) => record_type,
        Err(error) => return Outcome::fail(error, started),
    };
    let name = match query_name(check.name.trim(), record_type) {
        Ok(name) => name,
        Err(error) => return Outcome::fail(error, started),
    };
    let pattern = match check
        .expect_answer_matches
        .as_deref()
        .map(regex_lite::Regex::new)
    {
        None => None,
        Some(Ok(re)) => Some(re),
        Some(Err(error)) => {
            return Outcome::fail(
                format!("expect_answer_matches is not a valid regex: {error}"),
                started,
            );
        }
    };
    let server = match server_address(check.resolver.as_deref()) {
        Ok(server) => server,
        Err(error) => return Outcome::fail(error, started),
    };
    let transport = match check.transport {
        DnsTransport::Udp => "UDP",
        DnsTransport::Tcp => "TCP",
    };
    let query_started = Instant::now();
    let response = match exchange(server, check.transport, name.clone(), record_type).await {
        Ok(response) => response,
        Err(error) => {
            let mut outcome = Outcome::fail(
                format!("{name} {record_type} query to {server} over {transport} failed: {error}"),
                started,
            );
            outcome.timings.dns_ms = Some(ms(query_started.elapsed()));
            return outcome;
        }
    };
    let dns_ms = ms(query_started.elapsed());
    let rcode = response.metadata.response_code;
    let answers: Vec<String> = response
        .answers
        .iter()
        .map(|record| record.data.to_string())
        .collect();
    let (ok, reason) = judge(check, rcode, &answers, pattern.as_ref());
    let mut values = BTreeMap::new();
    // Answer counts are tiny; the conversion is exact.
    values.insert("answers".to_owned(), answers.len() as f64);
    values.insert("rcode".to_owned(), f64::from(u16::from(rcode)));
    Outcome {
        ok,
        reason,
        timings: Timings {
            dns_ms: Some(dns_ms),
            total_ms: ms(started.elapsed()),
            ..Timings::default()
        },
        status_code: None,
        values,
    }
}

/// Checks a DNS check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &DnsCheck) -> Result<(), String> {
    let name = check.name.as_str();
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!("name {name:?} must not contain whitespace"));
    }
    if name.strip_suffix('.').unwrap_or(name).len() > MAX_NAME_LEN {
        return Err(format!("name is longer than {MAX_NAME_LEN} characters"));
    }
    let record_type = record_type(&check.record_type)?;
    query_name(name, record_type)?;
    if let Some(resolver) = &check.resolver
        && resolver.trim().parse::<SocketAddr>().is_err()
    {
        return Err(format!(
            "resolver {resolver:?} is not ip:port (e.g. 192.0.2.53:53 or [2001:db8::53]:53)"
        ));
    }
    let rcode = check.expect_rcode.trim().to_ascii_uppercase();
    if !RCODES.contains(&rcode.as_str()) {
        return Err(format!(
            "expect_rcode {:?} is not one of {}",
            check.expect_rcode,
            RCODES.join(", ")
        ));
    }
    if let Some(pattern) = &check.expect_answer_matches {
        regex_lite::Regex::new(pattern)
            .map_err(|e| format!("expect_answer_matches is not a valid regex: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
    use hickory_proto::rr::{RData, Record};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    use super::*;

    type Zone = HashMap<(Name, RecordType), Vec<RData>>;

    fn n(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// The test zone: every record type, plus `servfail.example.test.` answering SERVFAIL.
    fn zone() -> Zone {
        let mut zone: Zone = HashMap::new();
        let mut add = |name: &str, rdata: RData| {
            zone.entry((n(name), rdata.record_type()))
                .or_default()
                .push(rdata);
        };
        add(
            "www.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        );
        add(
            "www.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, 2))),
        );
        add(
            "www.example.test.",
            RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        );
        add(
            "alias.example.test.",
            RData::CNAME(CNAME(n("www.example.test."))),
        );
        add(
            "example.test.",
            RData::MX(MX::new(10, n("mail.example.test."))),
        );
        add(
            "example.test.",
            RData::MX(MX::new(20, n("backup.example.test."))),
        );
        add(
            "example.test.",
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
        );
        add("example.test.", RData::NS(NS(n("ns1.example.test."))));
        add("example.test.", RData::NS(NS(n("ns2.example.test."))));
        add(
            "example.test.",
            RData::SOA(SOA::new(
                n("ns1.example.test."),
                n("hostmaster.example.test."),
                2024010101,
                7200,
                3600,
                1209600,
                300,
            )),
        );
        add(
            "_sip._tcp.example.test.",
            RData::SRV(SRV::new(10, 60, 5060, n("sip.example.test."))),
        );
        add(
            "example.test.",
            RData::CAA(CAA::new_issue(
                false,
                Some(n("letsencrypt.org")),
                Vec::new(),
            )),
        );
        add(
            "1.2.0.192.in-addr.arpa.",
            RData::PTR(PTR(n("www.example.test."))),
        );
        zone
    }

    /// The response to one wire-format query.
    fn answer(zone: &Zone, request: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(request).ok()?;
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.authoritative = true;
        let query = request.queries.first()?.clone();
        response.add_query(query.clone());
        let name = query.name().to_lowercase();
        if name == n("servfail.example.test.") {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if let Some(records) = zone.get(&(name.clone(), query.query_type())) {
            for rdata in records {
                response.add_answer(Record::from_rdata(query.name().clone(), 300, rdata.clone()));
            }
        } else if !zone.keys().any(|(known, _)| *known == name) {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response.to_vec().ok()
    }

    /// A DNS server for [`zone`] on 127.0.0.1, UDP and TCP on the same port.
    async fn server() -> SocketAddr {
        let zone = Arc::new(zone());
        let (udp, tcp) = loop {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let address = tcp.local_addr().unwrap();
        let udp_zone = zone.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buffer).await {
                if let Some(response) = answer(&udp_zone, &buffer[..len]) {
                    let _ = udp.send_to(&response, peer).await;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let zone = zone.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut request = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut request).await.is_err() {
                            return;
                        }
                        let Some(response) = answer(&zone, &request) else {
                            return;
                        };
                        let mut framed = u16::try_from(response.len())
                            .unwrap()
                            .to_be_bytes()
                            .to_vec();
                        framed.extend_from_slice(&response);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    fn check(server: SocketAddr, name: &str, record_type: &str) -> DnsCheck {
        DnsCheck {
            name: name.into(),
            record_type: record_type.into(),
            resolver: Some(server.to_string()),
            transport: DnsTransport::Udp,
            expect_rcode: "NOERROR".into(),
            expect_answers: Vec::new(),
            expect_answer_matches: None,
        }
    }

    async fn run(check: &DnsCheck) -> Outcome {
        tokio::time::timeout(Duration::from_secs(10), probe(check, Instant::now()))
            .await
            .expect("the probe answers within 10 s")
    }

    fn assert_outcome(outcome: &Outcome, ok: bool, reason: &str) {
        assert_eq!(
            (outcome.ok, outcome.reason.as_str()),
            (ok, reason),
            "{outcome:?}"
        );
        assert!(outcome.timings.dns_ms.is_some(), "{outcome:?}");
        assert!(outcome.timings.total_ms >= outcome.timings.dns_ms.unwrap_or_default());
    }

    #[tokio::test]
    async fn a_records_match() {
        let server = server().await;
        let mut c = check(server, "www.example.test", "A");
        c.expect_answers = vec!["192.0.2.2".into(), "192.0.2.1".into()];
        let outcome = run(&c).await;
        assert_outcome(&outcome, true, "NOERROR, 2 answers: 192.0.2.1, 192.0.2.2");
        assert_eq!(outcome.values.get("answers"), Some(&2.0));
        assert_eq!(outcome.values.get("rcode"), Some(&0.0));
        assert_eq!(outcome.status_code, None);
    }

    #[tokio::test]
    async fn a_record_wrong_answer_fails() {
        let server = server().await;
        let mut c = check(server, "www.example.test", "a");
        c.expect_answers = vec!["192.0.2.1".into(), "192.0.2.9".into()];
        let outcome = run(&c).await;
        assert_outcome(
            &outcome,
            false,
            "answer 192.0.2.9 missing (got 192.0.2.1, 192.0.2.2)",
        );
        assert_eq!(outcome.values.get("answers"), Some(&2.0));

        c.expect_answers = vec!["192.0.2.8".into(), "192.0.2.9".into()];
        let outcome = run(&c).await;
        assert_outcome(
            &outcome,
            false,
            "answers 192.0.2.8, 192.0.2.9 missing (got 192.0.2.1, 192.0.2.2)",
        );
    }

    #[tokio::test]
    async fn aaaa_record() {
        let server = server().await;
        let mut c = check(server, "www.example.test.", "AAAA");
        c.expect_answers = vec!["2001:DB8::1".into()];
        assert_outcome(&run(&c).await, true, "NOERROR, 1 answer: 2001:db8::1");
    }

    #[tokio::test]
    async fn cname_record() {
        let server = server().await;
        let mut c = check(server, "alias.example.test", "CNAME");
        c.expect_answers = vec!["www.example.test".into()];
        assert_outcome(&run(&c).await, true, "NOERROR, 1 answer: www.example.test.");
    }

    #[tokio::test]
    async fn mx_records() {
        let server = server().await;
        let mut c = check(server, "example.test", "MX");
        c.expect_answers = vec![
            "10 MAIL.example.test".into(),
            "20 backup.example.test.".into(),
        ];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 2 answers: 10 mail.example.test., 20 backup.example.test.",
        );
        c.expect_answers = vec!["30 mail.example.test.".into()];
        assert_outcome(
            &run(&c).await,
            false,
            "answer 30 mail.example.test. missing (got 10 mail.example.test., 20 backup.example.test.)",
        );
    }

    #[tokio::test]
    async fn txt_record() {
        let server = server().await;
        let mut c = check(server, "example.test", "TXT");
        c.expect_answers = vec!["v=spf1 -all".into()];
        assert_outcome(&run(&c).await, true, "NOERROR, 1 answer: v=spf1 -all");
    }

    #[tokio::test]
    async fn ns_records() {
        let server = server().await;
        let mut c = check(server, "example.test", "NS");
        c.expect_answers = vec!["ns2.example.test".into()];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 2 answers: ns1.example.test., ns2.example.test.",
        );
    }

    #[tokio::test]
    async fn soa_record() {
        let server = server().await;
        let mut c = check(server, "example.test", "SOA");
        c.expect_answers = vec![
            "ns1.example.test hostmaster.example.test 2024010101 7200 3600 1209600 300".into(),
        ];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 1 answer: ns1.example.test. hostmaster.example.test. 2024010101 7200 3600 1209600 300",
        );
    }

    #[tokio::test]
    async fn srv_record() {
        let server = server().await;
        let mut c = check(server, "_sip._tcp.example.test", "SRV");
        c.expect_answers = vec!["10 60 5060 sip.example.test.".into()];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 1 answer: 10 60 5060 sip.example.test.",
        );
    }

    #[tokio::test]
    async fn caa_record() {
        let server = server().await;
        let mut c = check(server, "example.test", "CAA");
        c.expect_answers = vec!["0 issue \"letsencrypt.org\"".into()];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 1 answer: 0 issue \"letsencrypt.org\"",
        );
    }

    #[tokio::test]
    async fn ptr_record_by_name_and_by_address() {
        let server = server().await;
        let mut c = check(server, "1.2.0.192.in-addr.arpa", "PTR");
        c.expect_answers = vec!["www.example.test".into()];
        assert_outcome(&run(&c).await, true, "NOERROR, 1 answer: www.example.test.");
        c.name = "192.0.2.1".into();
        assert_outcome(&run(&c).await, true, "NOERROR, 1 answer: www.example.test.");
    }

    #[tokio::test]
    async fn nodata_is_noerror_without_answers() {
        let server = server().await;
        let c = check(server, "alias.example.test", "TXT");
        let outcome = run(&c).await;
        assert_outcome(&outcome, true, "NOERROR, 0 answers");
        assert_eq!(outcome.values.get("answers"), Some(&0.0));
    }

    #[tokio::test]
    async fn nxdomain_expected_passes() {
        let server = server().await;
        let mut c = check(server, "missing.example.test", "A");
        c.expect_rcode = "nxdomain".into();
        let outcome = run(&c).await;
        assert_outcome(&outcome, true, "NXDOMAIN, 0 answers");
        assert_eq!(outcome.values.get("rcode"), Some(&3.0));
    }

    #[tokio::test]
    async fn nxdomain_unexpected_fails() {
        let server = server().await;
        let c = check(server, "missing.example.test", "A");
        let outcome = run(&c).await;
        assert_outcome(&outcome, false, "rcode NXDOMAIN, expected NOERROR");
        assert_eq!(outcome.values.get("rcode"), Some(&3.0));
    }

    #[tokio::test]
    async fn servfail_is_a_verdict() {
        let server = server().await;
        let mut c = check(server, "servfail.example.test", "A");
        let outcome = run(&c).await;
        assert_outcome(&outcome, false, "rcode SERVFAIL, expected NOERROR");
        assert_eq!(outcome.values.get("rcode"), Some(&2.0));
        c.expect_rcode = "SERVFAIL".into();
        assert_outcome(&run(&c).await, true, "SERVFAIL, 0 answers");
    }

    #[tokio::test]
    async fn regex_match_and_miss() {
        let server = server().await;
        let mut c = check(server, "example.test", "MX");
        c.expect_answer_matches = Some(r"^10 mail\.".into());
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 2 answers: 10 mail.example.test., 20 backup.example.test.",
        );
        c.expect_answer_matches = Some(r"^5 ".into());
        assert_outcome(
            &run(&c).await,
            false,
            "no answer matches /^5 / (got 10 mail.example.test., 20 backup.example.test.)",
        );
    }

    #[tokio::test]
    async fn tcp_transport() {
        let server = server().await;
        let mut c = check(server, "www.example.test", "A");
        c.transport = DnsTransport::Tcp;
        c.expect_answers = vec!["192.0.2.1".into()];
        assert_outcome(
            &run(&c).await,
            true,
            "NOERROR, 2 answers: 192.0.2.1, 192.0.2.2",
        );
        c.name = "missing.example.test".into();
        assert_outcome(&run(&c).await, false, "rcode NXDOMAIN, expected NOERROR");
    }

    #[tokio::test]
    async fn unanswered_udp_query_is_left_to_the_callers_timeout() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c = check(silent.local_addr().unwrap(), "www.example.test", "A");
        let result =
            tokio::time::timeout(Duration::from_millis(300), probe(&c, Instant::now())).await;
        assert!(result.is_err(), "{result:?}");
    }

    #[tokio::test]
    async fn tcp_connection_refused_is_a_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let mut c = check(address, "www.example.test", "A");
        c.transport = DnsTransport::Tcp;
        let outcome = run(&c).await;
        assert!(!outcome.ok);
        assert!(
            outcome.reason.starts_with(&format!(
                "www.example.test. A query to {address} over TCP failed: "
            )),
            "{}",
            outcome.reason
        );
    }

    #[test]
    fn validate_accepts_good_checks() {
        let mut c = check("127.0.0.1:53".parse().unwrap(), "example.com", "mx");
        assert_eq!(validate(&c), Ok(()));
        c.resolver = Some("[::1]:5353".into());
        c.expect_rcode = "nxdomain".into();
        c.expect_answer_matches = Some("^10 ".into());
        assert_eq!(validate(&c), Ok(()));
        c.resolver = None;
        c.name = format!("{}.", "a.".repeat(126) + "b");
        assert_eq!(validate(&c), Ok(()));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let good = check("127.0.0.1:53".parse().unwrap(), "example.com", "A");
        let cases: Vec<(DnsCheck, &str)> = vec![
            (
                DnsCheck {
                    name: String::new(),
                    ..good.clone()
                },
                "name must not be empty",
            ),
            (
                DnsCheck {
                    name: "exa mple.com".into(),
                    ..good.clone()
                },
                "name \"exa mple.com\" must not contain whitespace",
            ),
            (
                DnsCheck {
                    name: "a".repeat(254),
                    ..good.clone()
                },
                "name is longer than 253 characters",
            ),
            (
                DnsCheck {
                    record_type: "ANY".into(),
                    ..good.clone()
                },
                "record_type \"ANY\" is not one of A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, CAA, PTR",
            ),
            (
                DnsCheck {
                    resolver: Some("127.0.0.1".into()),
                    ..good.clone()
                },
                "resolver \"127.0.0.1\" is not ip:port (e.g. 192.0.2.53:53 or [2001:db8::53]:53)",
            ),
            (
                DnsCheck {
                    resolver: Some("dns.example:53".into()),
                    ..good.clone()
                },
                "resolver \"dns.example:53\" is not ip:port (e.g. 192.0.2.53:53 or [2001:db8::53]:53)",
            ),
            (
                DnsCheck {
                    expect_rcode: "OK".into(),
                    ..good.clone()
                },
                "expect_rcode \"OK\" is not one of NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED",
            ),
        ];
        for (bad, message) in cases {
            assert_eq!(validate(&bad), Err(message.to_owned()), "{bad:?}");
        }
        let bad_regex = DnsCheck {
            expect_answer_matches: Some("(unclosed".into()),
            ..good.clone()
        };
        let error = validate(&bad_regex).unwrap_err();
        assert!(
            error.starts_with("expect_answer_matches is not a valid regex: "),
            "{error}"
        );
        let bad_label = DnsCheck {
            name: format!("{}.com", "a".repeat(64)),
            ..good
        };
        let error = validate(&bad_label).unwrap_err();
        assert!(error.starts_with("name \"aaaa"), "{error}");
    }

    #[test]
    fn normalize_ignores_case_and_trailing_dots() {
        assert_eq!(normalize("10  MAIL.Example.com."), "10 mail.example.com");
        assert_eq!(
            normalize("ns1.example.com. host.example.com. 1 2 3 4 5"),
            "ns1.example.com host.example.com 1 2 3 4 5"
        );
    }

    #[test]
    fn long_answer_lists_are_cut() {
        let answers: Vec<String> = (1..=10).map(|i| format!("192.0.2.{i}")).collect();
        assert_eq!(
            listing(&answers),
            "192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4, 192.0.2.5, 192.0.2.6, 192.0.2.7, 192.0.2.8, … (2 more)"
        );
        assert_eq!(listing(&[]), "none");
    }

    #[tokio::test]
    async fn resolve_localhost() {
        let any = resolve("localhost", 80, IpVersion::Any).await.unwrap();
        assert!(
            !any.is_empty() && any.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
            "{any:?}"
        );
        let v4 = resolve("localhost", 80, IpVersion::Ipv4).await.unwrap();
        assert!(v4.contains(&"127.0.0.1:80".parse().unwrap()), "{v4:?}");
        let v6 = resolve("localhost", 443, IpVersion::Ipv6).await.unwrap();
        assert!(
            v6.iter().all(|a| a.is_ipv6() && a.ip().is_loopback()) && !v6.is_empty(),
            "{v6:?}"
        );
    }

    #[tokio::test]
    async fn resolve_ip_literals() {
        assert_eq!(
            resolve("192.0.2.7", 25, IpVersion::Any).await,
            Ok(vec!["192.0.2.7:25".parse().unwrap()])
        );
        assert_eq!(
            resolve("[2001:db8::7]", 443, IpVersion::Ipv6).await,
            Ok(vec!["[2001:db8::7]:443".parse().unwrap()])
        );
        assert_eq!(
            resolve("::1", 22, IpVersion::Any).await,
            Ok(vec!["[::1]:22".parse().unwrap()])
        );
        assert_eq!(
            resolve("192.0.2.7", 25, IpVersion::Ipv6).await,
            Err("192.0.2.7 is not an IPv6 address".to_owned())
        );
    }

    #[tokio::test]
    async fn resolve_failure_names_the_host() {
        // `.invalid` is answered NXDOMAIN by the resolver itself (RFC 6761), no query leaves.
        let error = resolve("nothing.invalid.", 80, IpVersion::Any)
            .await
            .unwrap_err();
        assert!(error.contains("nothing.invalid"), "{error}");
    }
}
