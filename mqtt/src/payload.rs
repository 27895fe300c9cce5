//! Payload types carried on the topic tree, one per message, plus the check specifications.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`), durations carry their unit in the
//! field name. Every top-level payload has a `v` field (see [`crate::PROTOCOL_VERSION`]) and
//! refuses unknown fields, so a typo or a newer producer is an error, never silently ignored.
//! Results, metrics and events carry a per-agent sequence number (`seq`) shared by all three
//! kinds: the control plane acknowledges the exact committed seq ranges on `results/ack`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::CheckKind;

/// A top-level payload: it carries the protocol version in `v`.
pub trait Versioned {
    /// The payload's `v` field.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($ty:ty),* $(,)?) => {
        $(impl Versioned for $ty {
            fn version(&self) -> u32 {
                self.v
            }
        })*
    };
}

versioned!(
    Hello,
    Status,
    Heartbeat,
    MetricsBatch,
    ResultsBatch,
    EventsBatch,
    DesiredConfig,
    CommandMessage,
    AgentAck,
    CsrRequest,
    ResultsAck,
    NodeStatusView,
    CheckStatusView,
    CheckVerdictView,
    IncidentView,
);

/// `agents/{id}/hello`: sent on every (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub v: u32,
    /// Agent software version.
    pub version: String,
    /// CPU architecture (`x86_64`, `aarch64`, `arm`).
    pub arch: String,
    /// Operating system (`linux`).
    pub os: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Check types this agent can run.
    pub capabilities: Vec<String>,
    /// Random id chosen at process start: a new value means the agent restarted.
    pub boot_id: String,
    /// Next sequence number the agent will assign.
    pub next_seq: u64,
    /// Config revision the agent is running.
    pub config_revision: u64,
}

/// Connection state published retained on `agents/{id}/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Online,
    Offline,
}

impl NodeState {
    /// The state's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Offline => "offline",
        }
    }
}

/// A stored or sent state name that is not one of [`NodeState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node state {0:?}")]
pub struct UnknownNodeState(pub String);

impl TryFrom<String> for NodeState {
    type Error = UnknownNodeState;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.as_str() {
            "online" => Ok(NodeState::Online),
            "offline" => Ok(NodeState::Offline),
            _ => Err(UnknownNodeState(name)),
        }
    }
}

/// `agents/{id}/status`: retained `online`; the last will carries `offline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub v: u32,
    pub state: NodeState,
}

/// `agents/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub v: u32,
    pub at_ms: i64,
    pub uptime_s: u64,
    /// Entries waiting in the spool for an acknowledgement.
    pub spool_len: u64,
    /// Entries dropped from the spool because a bound was hit, since the agent's state began.
    pub spool_dropped_total: u64,
    /// Rows dropped because they could never be sent (larger than a batch may be), since the
    /// agent's state began.
    #[serde(default)]
    pub spool_unsendable_total: u64,
    /// Rows lost because the spool could not be written, since the agent process started.
    #[serde(default)]
    pub spool_write_errors_total: u64,
    pub next_seq: u64,
    pub config_revision: u64,
}

/// Per-mount disk usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskUsage {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// Per-interface network counters and rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NetUsage {
    pub iface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
}

/// One host metrics sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HostMetrics {
    pub seq: u64,
    pub measured_at_ms: i64,
    pub cpu_pct: f32,
    /// Per-core usage, when the agent is configured to report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_pct: Option<Vec<f32>>,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub uptime_s: u64,
    pub disks: Vec<DiskUsage>,
    pub nets: Vec<NetUsage>,
}

/// `agents/{id}/metrics`: a batch of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MetricsBatch {
    pub v: u32,
    pub items: Vec<HostMetrics>,
}

/// Phase timings of a probe, in milliseconds; absent phases are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_ms: Option<f64>,
    pub total_ms: f64,
}

/// One check execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    pub seq: u64,
    pub measured_at_ms: i64,
    pub check_id: String,
    /// Whether every assertion of the check held.
    pub ok: bool,
    /// Why the check failed, or a short summary when it passed.
    pub reason: String,
    pub timings: Timings,
    /// HTTP status code, for HTTP checks that got a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Numeric facts of the probe, unit in the name: `loss_pct`, `rtt_avg_ms`,
    /// `cert_days_left`, `slot_lag`, `process_count`, …
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, f64>,
}

/// `agents/{id}/results`: a batch of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResultsBatch {
    pub v: u32,
    pub items: Vec<CheckResult>,
}

/// One event an agent sends: agent-local (`severity`, `message`), or a webhook body it
/// received on its network for the integration source `source` (`relayed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    pub measured_at_ms: i64,
    pub source: String,
    pub severity: String,
    pub message: String,
    /// A relayed webhook: the control plane takes it through the source's own webhook path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<RelayedBody>,
}

/// Largest webhook body an agent relays, in bytes.
pub const MAX_RELAYED_BODY_BYTES: usize = 64 * 1024;

/// A webhook body an agent's relay listener received and accepted.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayedBody {
    /// The body as received: UTF-8, at most [`MAX_RELAYED_BODY_BYTES`].
    pub body: String,
    /// `sha256=<hex>`: the HMAC-SHA256 of `body` under the source's secret, made by the agent
    /// after it checked the sender's bearer against that secret. The control plane checks
    /// it as it checks a webhook's `X-Vantage-Signature`, so an agent without the secret
    /// cannot speak for the source.
    pub signature: String,
}

impl std::fmt::Debug for RelayedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayedBody")
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// `agents/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EventsBatch {
    pub v: u32,
    pub items: Vec<Event>,
}

/// One assigned check in an agent's desired config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub id: String,
    pub interval_s: u32,
    pub timeout_ms: u32,
    pub kind: CheckKind,
}

/// `agents/{id}/config` (retained): the desired state of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DesiredConfig {
    pub v: u32,
    /// Increases with every change; the agent applies a revision once.
    pub revision: u64,
    pub region: String,
    pub metrics_interval_s: u32,
    pub heartbeat_interval_s: u32,
    pub checks: Vec<CheckSpec>,
}

/// A command on `agents/{id}/cmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Run one check now and publish its result (with the request id on `ack`).
    RunNow { check: Box<CheckSpec> },
    /// Exit so that the service manager restarts the agent.
    Restart,
    /// The store already holds rows up to `next_seq - 1`, but the agent's hello said it would
    /// number new rows from `from`, at or below that: its state dir was rewound (restored,
    /// re-flashed, or writes lost in a power cut). The control plane holds back rows whose
    /// seqs fall in `from..next_seq`; the agent gives the rows it still holds in that range
    /// new seqs past both `next_seq` and its own counter, and numbers on from there.
    RaiseSeq { from: u64, next_seq: u64 },
    /// The answer to a [`CsrRequest`] (same `request_id`): a client certificate for the key
    /// of that CSR, signed by the control plane's CA, CN = the agent id. The agent checks it
    /// (its key, its CA, its id) before it keeps it.
    RenewedCertificate {
        cert_pem: String,
        /// The certificate's `notAfter`.
        not_after_ms: i64,
    },
}

/// `agents/{id}/cmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    pub v: u32,
    pub request_id: String,
    pub command: Command,
}

/// `agents/{id}/ack`: the agent applied a config revision or answered a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentAck {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The outcome of a `run_now` command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `agents/{id}/csr`: the agent asks for a certificate for a new key (renewal before its
/// current certificate expires). The CSR's subject is the agent id as CN and nothing else;
/// the answer is a [`Command::RenewedCertificate`] on `cmd` with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    pub v: u32,
    pub request_id: String,
    /// PKCS#10 request in PEM.
    pub csr_pem: String,
}

/// `agents/{id}/results/ack`: the entries whose seqs fall in `ranges` (inclusive `[from,
/// to]` pairs) are committed to the store, or were refused for good; the agent may forget
/// exactly those. Acks are exact, not cumulative, so a message lost on the way is never
/// covered by a later ack: it stays in the spool and is sent again.
///
/// The answer to a hello is an ack too ([`ResultsAck::hello_answer`]): it carries the
/// `next_seq` that hello announced, and the control plane sends it only once the hello is
/// recorded, with any seq range it holds back for a rewound agent. The agent sends rows only
/// after it, so wherever those rows are ingested (any replica on a broker cluster) the held
/// range is already in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResultsAck {
    pub v: u32,
    pub ranges: Vec<(u64, u64)>,
    /// Set on the answer to a hello: the `next_seq` that hello announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<u64>,
}

impl ResultsAck {
    /// Merges `seqs` (any order, duplicates allowed) into the fewest inclusive ranges.
    pub fn from_seqs(mut seqs: Vec<u64>) -> ResultsAck {
        seqs.sort_unstable();
        seqs.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == seq => *to = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        ResultsAck {
            v: crate::PROTOCOL_VERSION,
            ranges,
            hello: None,
        }
    }

    /// The answer to a recorded hello that announced `next_seq`; it acknowledges no rows.
    pub fn hello_answer(next_seq: u64) -> ResultsAck {
        ResultsAck {
            v: crate::PROTOCOL_VERSION,
            ranges: Vec::new(),
            hello: Some(next_seq),
        }
    }

    /// Whether `seq` is acknowledged.
    pub fn covers(&self, seq: u64) -> bool {
        self.ranges
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&seq))
    }
}

/// The retained node status on `status/nodes/{id}`, for viewers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeStatusView {
    pub v: u32,
    pub agent_id: String,
    pub region: String,
    pub state: NodeState,
    pub at_ms: i64,
}

/// The retained per-region check status on `status/checks/{check}/{region}`, for viewers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckStatusView {
    pub v: u32,
    pub check_id: String,
    pub region: String,
    pub agent_id: String,
    pub ok: bool,
    pub reason: String,
    pub total_ms: f64,
    pub measured_at_ms: i64,
}

/// A check's overall state, judged across its regions by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// No region has reported yet.
    Pending,
    /// No region is failing.
    Up,
    /// Some regions are failing, fewer than the quorum.
    Degraded,
    /// At least the quorum of regions is failing.
    Down,
    /// Inside a maintenance window: judged, but nobody is told.
    Maintenance,
    /// The check is disabled.
    Paused,
}

impl CheckState {
    /// The state's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Up => "up",
            CheckState::Degraded => "degraded",
            CheckState::Down => "down",
            CheckState::Maintenance => "maintenance",
            CheckState::Paused => "paused",
        }
    }

    /// Every state, in the order above.
    pub const ALL: [CheckState; 6] = [
        CheckState::Pending,
        CheckState::Up,
        CheckState::Degraded,
        CheckState::Down,
        CheckState::Maintenance,
        CheckState::Paused,
    ];
}

/// A stored or sent check state name that is not one of [`CheckState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown check state {0:?}")]
pub struct UnknownCheckState(pub String);

impl TryFrom<String> for CheckState {
    type Error = UnknownCheckState;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        CheckState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
            .ok_or(UnknownCheckState(name))
    }
}

/// One region's part in a verdict: whether it counts as failing and the result that decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RegionEvidence {
    pub region: String,
    /// Failing: its last `retries` results failed (and it has not recovered since).
    pub failing: bool,
    /// Served by the control plane's own executor because no agent of the region is online.
    #[serde(default)]
    pub fallback: bool,
    /// In a maintenance window: it does not count as failing.
    #[serde(default)]
    pub maintenance: bool,
    /// Consecutive failures (or successes) so far.
    pub streak: u32,
    /// Its latest result, if any.
    pub last: Option<EvidenceResult>,
}

/// A result as evidence for a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvidenceResult {
    pub agent_id: String,
    pub ok: bool,
    pub reason: String,
    pub total_ms: f64,
    pub measured_at_ms: i64,
}

/// The retained overall check status on `status/checks/{check}`, for viewers; also each
/// transition's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckVerdictView {
    pub v: u32,
    pub check_id: String,
    pub state: CheckState,
    /// The state before this one.
    pub previous: CheckState,
    /// When the check entered `state`.
    pub since_ms: i64,
    /// Regions that must fail for DOWN.
    pub quorum: u32,
    /// The reason in words: which regions fail, against what quorum, and why.
    pub reason: String,
    pub regions: Vec<RegionEvidence>,
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum IncidentSubject {
    Check,
    Agent,
    Region,
    /// A host-metric rule on one agent, or a check's response-time anomaly in one region.
    Rule,
    /// A problem reported by an integration source (a Zabbix trigger), id `{source}/{event id}`.
    Event,
}

impl IncidentSubject {
    /// The subject kind's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentSubject::Check => "check",
            IncidentSubject::Agent => "agent",
            IncidentSubject::Region => "region",
            IncidentSubject::Rule => "rule",
            IncidentSubject::Event => "event",
        }
    }
}

/// A stored subject kind name that is not one of [`IncidentSubject`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown incident subject {0:?}")]
pub struct UnknownIncidentSubject(pub String);

impl TryFrom<String> for IncidentSubject {
    type Error = UnknownIncidentSubject;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.as_str() {
            "check" => Ok(IncidentSubject::Check),
            "agent" => Ok(IncidentSubject::Agent),
            "region" => Ok(IncidentSubject::Region),
            "rule" => Ok(IncidentSubject::Rule),
            "event" => Ok(IncidentSubject::Event),
            _ => Err(UnknownIncidentSubject(name)),
        }
    }
}

/// What just happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum IncidentChange {
    Opened,
    Updated,
    Acknowledged,
    Note,
    Resolved,
    /// Still open and unacknowledged: a channel's reminder.
    Reminder,
}

impl IncidentChange {
    /// The change's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentChange::Opened => "opened",
            IncidentChange::Updated => "updated",
            IncidentChange::Acknowledged => "acknowledged",
            IncidentChange::Note => "note",
            IncidentChange::Resolved => "resolved",
            IncidentChange::Reminder => "reminder",
        }
    }
}

/// A stored change name that is not one of [`IncidentChange`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown incident change {0:?}")]
pub struct UnknownIncidentChange(pub String);

impl TryFrom<String> for IncidentChange {
    type Error = UnknownIncidentChange;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        [
            IncidentChange::Opened,
            IncidentChange::Updated,
            IncidentChange::Acknowledged,
            IncidentChange::Note,
            IncidentChange::Resolved,
            IncidentChange::Reminder,
        ]
        .into_iter()
        .find(|change| change.as_str() == name)
        .ok_or(UnknownIncidentChange(name))
    }
}

/// An incident's change on `incidents` (not retained), for viewers and notification bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IncidentView {
    pub v: u32,
    pub id: String,
    pub subject: IncidentSubject,
    pub subject_id: String,
    pub title: String,
    /// What happened now.
    pub change: IncidentChange,
    /// The words of this change (the verdict's reason, a note, who acknowledged).
    pub text: String,
    pub open: bool,
    /// Opened while a parent it depends on was down: its notifications are suppressed.
    pub dependent: bool,
    pub opened_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub acknowledged_at_ms: Option<i64>,
    pub at_ms: i64,
}

/// A stored name that is not one of an enum's (source kinds, event states, severities).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// A unit enum whose variants have one name each on the wire and in the store: `ALL` (in
/// declaration order), `as_str`, `parse` and `TryFrom<String>` (for sqlx), written once.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the wire and in the store.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant named `name`, if any.
            pub fn parse(name: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownName;

            fn try_from(name: String) -> Result<Self, Self::Error> {
                $name::parse(&name).ok_or(UnknownName { what: $what, name })
            }
        }
    };
}

named_enum! {
    /// What sends events to a source's webhook.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum SourceKind ("source kind") {
        /// Zabbix's webhook media type (`provision/zabbix/`): a bearer secret or an HMAC.
        Zabbix => "zabbix",
        /// Helius's Solana webhooks: the configured `Authorization` header.
        Helius => "helius",
        /// Alchemy's notify webhooks: `X-Alchemy-Signature`, HMAC-SHA256 of the body.
        Alchemy => "alchemy",
        /// Anything else that signs its body: `X-Vantage-Signature: sha256=<hex HMAC>`.
        Hmac => "hmac",
    }
}

named_enum! {
    /// Where an event stands: a problem that began, its resolution, an update to it (a
    /// comment, an acknowledgement in the sender), or a plain occurrence (an on-chain
    /// transaction).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum EventStatus ("event status") {
        Problem => "problem",
        Resolved => "resolved",
        Update => "update",
        Info => "info",
    }
}

named_enum! {
    /// An event's severity, in Zabbix's six steps (its `nseverity` 0-5), lowest first.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
    )]
    #[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
    #[serde(rename_all = "snake_case")]
    pub enum EventSeverity ("event severity") {
        NotClassified => "not_classified",
        Information => "information",
        Warning => "warning",
        Average => "average",
        High => "high",
        Disaster => "disaster",
    }
}

impl EventSeverity {
    /// Zabbix's `nseverity` (0-5): the index in [`EventSeverity::ALL`].
    pub fn from_zabbix(n: i64) -> Option<EventSeverity> {
        usize::try_from(n)
            .ok()
            .and_then(|i| EventSeverity::ALL.get(i).copied())
    }
}

/// An event accepted from an integration source, as `events/{source}` (not retained), the
/// live feed (`kind=event`) and `GET /api/v1/events` carry it. The raw payload is served
/// only by `GET /api/v1/events/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceEventView {
    pub v: u32,
    /// The store's number for the event.
    pub id: i64,
    pub source: String,
    pub kind: SourceKind,
    pub status: EventStatus,
    pub severity: EventSeverity,
    /// The sender's id: Zabbix's event id, a transaction's signature or hash.
    pub external_id: String,
    pub title: String,
    /// The host the sender named (Zabbix's `host.host`), if any.
    pub host: Option<String>,
    /// The agent that host maps to, if any.
    pub node: Option<String>,
    /// When it happened, by the sender's clock.
    pub occurred_at_ms: i64,
    /// When the control plane stored it.
    pub received_at_ms: i64,
    /// A chain event's slot (Solana) or block number (EVM).
    pub block: Option<i64>,
    /// Accounts or addresses the event touches (chain events).
    pub accounts: Vec<String>,
    /// The sender's tags (Zabbix's event tags), in its order.
    pub tags: Vec<(String, String)>,
    /// A resolution or an update: the stored problem it belongs to.
    pub problem_id: Option<i64>,
    /// A problem: when its resolution was stored.
    pub resolved_at_ms: Option<i64>,
    /// The incident it opened, resolved or updated.
    pub incident_id: Option<String>,
}
