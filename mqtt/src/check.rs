//! Check specifications: what each check type probes and what it asserts.
//!
//! One struct per type, tagged by `type` inside [`CheckKind`]. Every field has a documented
//! unit and a default where one makes sense; unknown fields are refused. Semantic validation
//! (regexes compile, ports are non-zero, …) lives with the probes in the agent library, which
//! the control plane calls when a check is created.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a check probes, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Dns(DnsCheck),
    Smtp(SmtpCheck),
    Icmp(IcmpCheck),
    Tls(TlsCheck),
    Chain(ChainCheck),
    Process(ProcessCheck),
}

impl CheckKind {
    /// The type name used on the wire and in the API.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Http(_) => "http",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::Dns(_) => "dns",
            CheckKind::Smtp(_) => "smtp",
            CheckKind::Icmp(_) => "icmp",
            CheckKind::Tls(_) => "tls",
            CheckKind::Chain(_) => "chain",
            CheckKind::Process(_) => "process",
        }
    }

    /// Every type name.
    pub const TYPE_NAMES: [&'static str; 8] = [
        "http", "tcp", "dns", "smtp", "icmp", "tls", "chain", "process",
    ];
}

/// Which address family to use when a name resolves to both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    /// Try every resolved address, IPv6 and IPv4, in resolver order.
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

/// HTTP protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/2 when the server offers it over TLS (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    Http1,
    Http2,
}

fn default_method() -> String {
    "GET".to_owned()
}
fn yes() -> bool {
    true
}
fn default_max_redirects() -> u8 {
    5
}
fn default_body_limit() -> u32 {
    1024 * 1024
}

/// An HTTP(S) request and its assertions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Follow 3xx redirects (up to `max_redirects`), else judge the 3xx itself.
    #[serde(default = "yes")]
    pub follow_redirects: bool,
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u8,
    #[serde(default)]
    pub http_version: HttpVersion,
    #[serde(default)]
    pub ip_version: IpVersion,
    /// Verify the server certificate (chain and name).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Trust this CA (PEM) instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// TLS server name to send and verify, instead of the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Most body bytes read, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u32,
    /// Accepted status codes; with `expect_status_ranges` both empty, 200-399 pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Accepted inclusive status ranges, e.g. `[[200, 299]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status_ranges: Vec<(u16, u16)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<HttpAssertion>,
}

impl HttpCheck {
    /// A plain GET of `url` with every default.
    pub fn get(url: impl Into<String>) -> HttpCheck {
        HttpCheck {
            url: url.into(),
            method: default_method(),
            headers: BTreeMap::new(),
            body: None,
            follow_redirects: true,
            max_redirects: default_max_redirects(),
            http_version: HttpVersion::Auto,
            ip_version: IpVersion::Any,
            tls_verify: true,
            ca_pem: None,
            server_name: None,
            body_limit_bytes: default_body_limit(),
            expect_status: Vec::new(),
            expect_status_ranges: Vec::new(),
            assertions: Vec::new(),
        }
    }
}

/// One assertion on an HTTP response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAssertion {
    /// The body contains this text.
    BodyContains(String),
    /// The body does not contain this text.
    BodyNotContains(String),
    /// The body matches this regular expression.
    BodyMatches(String),
    /// The JSON value at this JSON pointer (RFC 6901) equals `equals`.
    JsonPointer {
        pointer: String,
        equals: serde_json::Value,
    },
    /// A response header exists and its value matches the regular expression.
    Header { name: String, matches: String },
    /// The whole request took at most this long, in milliseconds.
    MaxDurationMs(u32),
    /// The server certificate is valid for at least this many more days.
    CertDaysLeft(u32),
}

/// One step of a TCP conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TcpStep {
    /// Send this text (JSON escapes such as `\r\n` included).
    Send(String),
    /// Read until the received text matches this regular expression.
    Expect(String),
}

/// A TCP connect, optionally over TLS, optionally a send/expect conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub ip_version: IpVersion,
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<TcpStep>,
}

impl TcpCheck {
    /// A plain connect to `host:port`.
    pub fn connect(host: impl Into<String>, port: u16) -> TcpCheck {
        TcpCheck {
            host: host.into(),
            port,
            ip_version: IpVersion::Any,
            tls: false,
            tls_verify: true,
            ca_pem: None,
            server_name: None,
            steps: Vec::new(),
        }
    }
}

/// DNS transport to the resolver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    #[default]
    Udp,
    Tcp,
}

fn default_rcode() -> String {
    "NOERROR".to_owned()
}

/// A DNS query and the answer it expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DnsCheck {
    /// The name to query.
    pub name: String,
    /// A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, CAA or PTR.
    pub record_type: String,
    /// `ip:port` of the resolver to ask; the system's resolvers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    #[serde(default)]
    pub transport: DnsTransport,
    /// NOERROR, NXDOMAIN, SERVFAIL, REFUSED, …
    #[serde(default = "default_rcode")]
    pub expect_rcode: String,
    /// Every one of these answers (in the record's presentation format) must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_answers: Vec<String>,
    /// Some answer must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_answer_matches: Option<String>,
}

fn default_smtp_port() -> u16 {
    25
}

/// An SMTP conversation: banner, EHLO, optionally STARTTLS and a certificate check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SmtpCheck {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The name sent in EHLO (default `vantage.invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_name: Option<String>,
}

fn default_count() -> u16 {
    3
}
fn default_interval_ms() -> u32 {
    200
}
fn default_size() -> u16 {
    56
}

/// ICMP echo: loss and round-trip times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IcmpCheck {
    pub host: String,
    /// Echo requests sent.
    #[serde(default = "default_count")]
    pub count: u16,
    /// Time between requests, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Payload size, in bytes.
    #[serde(default = "default_size")]
    pub size: u16,
    #[serde(default)]
    pub ip_version: IpVersion,
    /// Highest loss that still passes, in percent (default 0: every reply must come).
    #[serde(default)]
    pub max_loss_pct: f64,
    /// Highest average round trip that still passes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rtt_ms: Option<f64>,
}

/// How to reach TLS on a port that starts in plain text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    #[default]
    None,
    Smtp,
}

fn default_days_left() -> u32 {
    14
}

/// A TLS handshake: chain validity, days until expiry, issuer, name match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsCheck {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub starttls: StartTls,
    /// The name the certificate must be valid for (default: `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Fewer days than this until expiry fails the check.
    #[serde(default = "default_days_left")]
    pub min_days_left: u32,
}

/// Which chain's JSON-RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// `getHealth`, `getSlot`.
    Solana,
    /// `eth_syncing`, `eth_blockNumber`.
    Evm,
}

/// A blockchain node's JSON-RPC health and lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ChainCheck {
    pub chain: Chain,
    pub url: String,
    /// A reference endpoint whose height the node is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_url: Option<String>,
    /// Most slots (Solana) or blocks (EVM) behind the reference that still pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u64>,
}

/// A host-local process check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessCheck {
    /// Exact process name (as in /proc/<pid>/comm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Regular expression over the full command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default = "one")]
    pub min_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u32>,
    /// Largest resident memory of any matching process, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_from_its_minimal_form_with_defaults() {
        let cases = [
            r#"{"type":"http","url":"https://x/"}"#,
            r#"{"type":"tcp","host":"h","port":22,"steps":[{"expect":"^SSH-"},{"send":"QUIT\r\n"}]}"#,
            r#"{"type":"dns","name":"example.com","record_type":"A"}"#,
            r#"{"type":"smtp","host":"mx"}"#,
            r#"{"type":"icmp","host":"10.0.0.1"}"#,
            r#"{"type":"tls","host":"h","port":443}"#,
            r#"{"type":"chain","chain":"solana","url":"http://rpc"}"#,
            r#"{"type":"process","name":"sshd"}"#,
        ];
        for (case, name) in cases.iter().zip(CheckKind::TYPE_NAMES) {
            let kind: CheckKind = serde_json::from_str(case).unwrap();
            assert_eq!(kind.type_name(), name);
            let back: CheckKind =
                serde_json::from_str(&serde_json::to_string(&kind).unwrap()).unwrap();
            assert_eq!(back, kind);
        }
        let CheckKind::Http(http) = serde_json::from_str(cases[0]).unwrap() else {
            panic!("not http");
        };
        assert_eq!(http, HttpCheck::get("https://x/"));
        let CheckKind::Smtp(smtp) = serde_json::from_str(cases[3]).unwrap() else {
            panic!("not smtp");
        };
        assert_eq!(smtp.port, 25);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        for bad in [
            r#"{"type":"http","url":"https://x/","colour":"red"}"#,
            r#"{"type":"gopher","host":"h"}"#,
            r#"{"type":"tcp","host":"h"}"#,
            r#"{"type":"http","url":"https://x/","assertions":[{"body_smells":"x"}]}"#,
            r#"{"type":"dns","name":"x","record_type":"A","transport":"carrier-pigeon"}"#,
        ] {
            assert!(
                serde_json::from_str::<CheckKind>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn assertions_use_readable_json() {
        let assertions: Vec<HttpAssertion> = serde_json::from_str(
            r#"[{"body_contains":"ok"},{"json_pointer":{"pointer":"/status","equals":"up"}},
                {"header":{"name":"content-type","matches":"json"}},{"max_duration_ms":500},
                {"cert_days_left":14}]"#,
        )
        .unwrap();
        assert_eq!(assertions.len(), 5);
        assert_eq!(assertions[3], HttpAssertion::MaxDurationMs(500));
    }
}
