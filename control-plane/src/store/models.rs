//! Row types of the store and the small enums stored as text.

use std::collections::BTreeMap;

use serde::Serialize;
use vantage_mqtt::{CheckKind, CheckResult, CheckSpec, Event, HostMetrics, NodeState};

/// A region with its agent counts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RegionRow {
    pub id: String,
    pub created_at_ms: i64,
    pub n_agents: i64,
    pub n_online: i64,
}

/// An enrollment token as stored (the secret is stored only hashed and never read back).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct EnrollmentTokenRow {
    pub id: String,
    pub region: String,
    /// JSON object of labels given to agents enrolled with this token.
    pub labels: String,
    pub uses_left: i64,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
}

/// What a spent enrollment token grants.
#[derive(Debug, Clone)]
pub struct EnrollmentGrant {
    pub region: String,
    pub labels: BTreeMap<String, String>,
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("enrollment token is not known")]
    Unknown,
    #[error("enrollment token has expired")]
    Expired,
    #[error("enrollment token has no uses left")]
    UsedUp,
}

/// The role of an API token.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored role name that is not a [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl TryFrom<String> for Role {
    type Error = UnknownRole;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Role::parse(&name).ok_or(UnknownRole(name))
    }
}

/// An API token as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ApiTokenRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// The live API token a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub id: String,
    pub role: Role,
}

/// The desired config last stored for an agent (the JSON published on its `config`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredConfig {
    pub agent_id: String,
    pub config_json: String,
}

/// One (check, agent) assignment and the region it serves.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AssignmentRow {
    pub check_id: String,
    pub agent_id: String,
    pub region: String,
}

/// Labels (`key=value`), stored as a JSON object in a text column and decoded by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// The text stored in the column.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }
}

impl TryFrom<String> for Labels {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&text).map(Labels)
    }
}

/// An online, unrevoked agent as assignment places checks on it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OnlineAgent {
    pub id: String,
    pub region: String,
}

impl OnlineAgent {
    /// The online, unrevoked agents of `agents`, by id.
    pub fn of(agents: &[AgentRow]) -> Vec<OnlineAgent> {
        let mut online: Vec<OnlineAgent> = agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none() && a.state == vantage_mqtt::NodeState::Online)
            .map(|a| OnlineAgent {
                id: a.id.clone(),
                region: a.region.clone(),
            })
            .collect();
        online.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        online
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub region: String,
    #[sqlx(try_from = "String")]
    pub labels: Labels,
    pub hostname: String,
    pub arch: String,
    pub os: String,
    pub version: String,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
    /// `online` or `offline`.
    #[sqlx(try_from = "String")]
    pub state: NodeState,
    pub last_seen_ms: Option<i64>,
    pub enrolled_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub config_revision: i64,
    /// Highest sequence committed to the store.
    pub last_seq: i64,
    /// The next sequence the agent said (in its last hello) it will assign.
    pub next_seq: i64,
    pub spool_dropped_total: i64,
    /// Rows the agent dropped because they could never be sent.
    pub spool_unsendable_total: i64,
    /// Rows the agent lost because it could not write its spool.
    pub spool_write_errors_total: i64,
    pub boot_id: String,
}

impl AgentRow {
    /// A newly enrolled agent of `region`: offline, no host facts and no certificate yet.
    /// Callers fill in what they know with struct update syntax
    /// (`AgentRow { hostname, ..AgentRow::enrolled(id, region, labels) }`).
    pub fn enrolled(id: String, region: String, labels: Labels) -> AgentRow {
        AgentRow {
            id,
            region,
            labels,
            hostname: String::new(),
            arch: String::new(),
            os: String::new(),
            version: String::new(),
            cert_serial: String::new(),
            cert_not_after_ms: 0,
            state: NodeState::Offline,
            last_seen_ms: None,
            enrolled_at_ms: super::now_ms(),
            revoked_at_ms: None,
            config_revision: 0,
            last_seq: 0,
            next_seq: 0,
            spool_dropped_total: 0,
            spool_unsendable_total: 0,
            spool_write_errors_total: 0,
            boot_id: String::new(),
        }
    }
}

/// A check definition, decoded by the store (see [`RawCheckRow`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    pub id: String,
    pub name: String,
    pub kind: CheckKind,
    pub interval_s: u32,
    pub timeout_ms: u32,
    pub regions: Vec<String>,
    /// Regions that must fail for DOWN; 0 means a majority of `regions`.
    pub quorum: u32,
    /// Consecutive failures before a region counts as failing.
    pub retries: u32,
    /// Consecutive successes before a failing region counts as up again.
    pub recovery: u32,
    /// Agents per region that run the check.
    pub agents_per_region: u32,
    /// Checks this one depends on: while one of them is DOWN, this one's incidents are
    /// dependent and notify nobody.
    pub depends_on: Vec<String>,
    pub labels: Labels,
    /// The z-score of a response time that counts as anomalous (0: no anomaly alerts).
    pub anomaly_z: f64,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl CheckRow {
    /// The number of failing regions that makes the check DOWN.
    pub fn effective_quorum(&self) -> u32 {
        let n = u32::try_from(self.regions.len()).unwrap_or(u32::MAX);
        if self.quorum == 0 {
            n / 2 + 1
        } else {
            self.quorum.min(n.max(1))
        }
    }

    /// The spec the agents run.
    pub fn spec(&self) -> CheckSpec {
        CheckSpec {
            id: self.id.clone(),
            interval_s: self.interval_s,
            timeout_ms: self.timeout_ms,
            kind: self.kind.clone(),
        }
    }

    /// The text columns of the row: (type name, spec JSON, regions JSON, depends_on JSON,
    /// labels JSON).
    pub fn encoded_columns(&self) -> (&'static str, String, String, String, String) {
        (
            self.kind.type_name(),
            serde_json::to_string(&self.kind).unwrap_or_default(),
            serde_json::to_string(&self.regions).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&self.depends_on).unwrap_or_else(|_| "[]".into()),
            self.labels.to_json(),
        )
    }
}

/// A check as its columns hold it; [`CheckRow`] decodes it, one row at a time, so one corrupt
/// row never hides the others.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawCheckRow {
    pub id: String,
    pub name: String,
    pub spec: String,
    pub interval_s: i64,
    pub timeout_ms: i64,
    pub regions: String,
    pub quorum: i64,
    pub retries: i64,
    pub recovery: i64,
    pub agents_per_region: i64,
    pub depends_on: String,
    pub labels: String,
    pub anomaly_z: f64,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Why a stored check row does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored check {id:?}: {field} {detail}")]
pub struct CorruptCheck {
    pub id: String,
    pub field: &'static str,
    pub detail: String,
}

impl TryFrom<RawCheckRow> for CheckRow {
    type Error = CorruptCheck;

    fn try_from(raw: RawCheckRow) -> Result<Self, Self::Error> {
        let id = raw.id.clone();
        let corrupt = |field: &'static str, detail: String| CorruptCheck {
            id: id.clone(),
            field,
            detail,
        };
        let number = |field: &'static str, value: i64| {
            u32::try_from(value).map_err(|_| corrupt(field, format!("{value} is out of range")))
        };
        Ok(CheckRow {
            kind: serde_json::from_str(&raw.spec).map_err(|e| corrupt("spec", e.to_string()))?,
            interval_s: number("interval_s", raw.interval_s)?,
            timeout_ms: number("timeout_ms", raw.timeout_ms)?,
            regions: serde_json::from_str(&raw.regions)
                .map_err(|e| corrupt("regions", e.to_string()))?,
            quorum: number("quorum", raw.quorum)?,
            retries: number("retries", raw.retries)?,
            recovery: number("recovery", raw.recovery)?,
            agents_per_region: number("agents_per_region", raw.agents_per_region)?,
            depends_on: serde_json::from_str(&raw.depends_on)
                .map_err(|e| corrupt("depends_on", e.to_string()))?,
            labels: Labels::try_from(raw.labels).map_err(|e| corrupt("labels", e.to_string()))?,
            anomaly_z: raw.anomaly_z,
            id: raw.id,
            name: raw.name,
            enabled: raw.enabled,
            created_at_ms: raw.created_at_ms,
            updated_at_ms: raw.updated_at_ms,
        })
    }
}

/// One stored check result.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ResultRow {
    pub agent_id: String,
    pub seq: i64,
    pub check_id: String,
    pub region: String,
    pub measured_at_ms: i64,
    pub received_at_ms: i64,
    pub ok: bool,
    pub total_ms: f64,
    pub status_code: Option<i64>,
    pub reason: String,
    /// Phase timings (stored as integer microseconds).
    #[sqlx(flatten)]
    pub timings: PhaseTimings,
    /// JSON object of the probe's numeric values (an object in API answers).
    #[serde(serialize_with = "as_json")]
    #[schemars(with = "serde_json::Value")]
    pub result_values: String,
}

/// Milliseconds as the integer microseconds the compact tables hold (within `i32`).
pub fn micros(ms: f64) -> i64 {
    if ms.is_finite() {
        (ms * 1000.0)
            .round()
            .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i64
    } else {
        0
    }
}

/// A stored result's phase timings in milliseconds; absent phases are `None` and left out
/// of API answers, as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct PhaseTimings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_ms: Option<f64>,
    pub total_ms: f64,
}

/// Serializes a stored JSON text as the JSON value it holds.
pub(crate) fn as_json<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    serde::Serialize::serialize(&value, serializer)
}

/// One stored host metrics sample.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct MetricsRow {
    pub agent_id: String,
    pub seq: i64,
    pub region: String,
    pub measured_at_ms: i64,
    pub received_at_ms: i64,
    pub cpu_pct: f64,
    pub mem_total_bytes: i64,
    pub mem_used_bytes: i64,
    pub swap_total_bytes: i64,
    pub swap_used_bytes: i64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub uptime_s: i64,
    pub net_rx_bytes_per_s: f64,
    pub net_tx_bytes_per_s: f64,
    /// JSON with disks, interfaces and per-core usage (an object in API answers).
    #[serde(serialize_with = "as_json")]
    #[schemars(with = "serde_json::Value")]
    pub detail: String,
}

/// A time-range query over results or metrics.
#[derive(Debug, Clone)]
pub struct SeriesFilter {
    pub agent: Option<String>,
    pub check: Option<String>,
    pub region: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: i64,
}

/// The latest result of one check in one region.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct CheckStatusRow {
    pub check_id: String,
    pub region: String,
    pub agent_id: String,
    pub ok: bool,
    pub reason: String,
    pub total_ms: f64,
    pub measured_at_ms: i64,
}

/// Rows from many agents, committed together.
#[derive(Debug, Default)]
pub struct IngestBatch {
    pub results: Vec<(String, String, CheckResult)>,
    pub metrics: Vec<(String, String, HostMetrics)>,
    pub events: Vec<(String, String, Event)>,
    pub received_at_ms: i64,
}

impl IngestBatch {
    /// Number of rows in the batch.
    pub fn len(&self) -> usize {
        self.results.len() + self.metrics.len() + self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every seq per agent in this batch: exactly what may be acknowledged after commit.
    pub fn seqs_per_agent(&self) -> BTreeMap<String, Vec<u64>> {
        let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        // Rows come in runs of one agent: one map lookup per run.
        let mut run: Option<(&str, &mut Vec<u64>)> = None;
        for (agent, seq) in self.agent_seqs() {
            match &mut run {
                Some((name, list)) if *name == agent => list.push(seq),
                _ => {
                    let list = seqs.entry(agent).or_default();
                    list.push(seq);
                    run = Some((agent, list));
                }
            }
        }
        seqs.into_iter()
            .map(|(agent, seqs)| (agent.to_owned(), seqs))
            .collect()
    }

    /// (agent, seq) of every row, results first, then metrics, then events.
    fn agent_seqs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.results
            .iter()
            .map(|(a, _, r)| (a.as_str(), r.seq))
            .chain(self.metrics.iter().map(|(a, _, m)| (a.as_str(), m.seq)))
            .chain(self.events.iter().map(|(a, _, e)| (a.as_str(), e.seq)))
    }

    /// Takes out the rows whose seq is in their agent's held range (`held`, from
    /// [`super::Store::held_seqs`]): they are neither stored nor acknowledged, and come
    /// back renumbered. The number taken out.
    pub fn hold(&mut self, held: &std::collections::HashMap<String, (u64, u64)>) -> usize {
        if held.is_empty() {
            return 0;
        }
        let keep = |agent: &String, seq: u64| {
            !held
                .get(agent)
                .is_some_and(|(from, to)| (*from..=*to).contains(&seq))
        };
        let before = self.len();
        self.results.retain(|(a, _, r)| keep(a, r.seq));
        self.metrics.retain(|(a, _, m)| keep(a, m.seq));
        self.events.retain(|(a, _, e)| keep(a, e.seq));
        before - self.len()
    }

    /// Drops every row whose (agent, seq) came earlier in the batch (an agent's resend can
    /// share a batch with its first send): the batch then stores and rolls up each row
    /// once. The number dropped.
    pub fn dedup(&mut self) -> usize {
        /// Whether each row is the first of its (agent, seq).
        fn firsts<T>(rows: &[(String, String, T)], seq: impl Fn(&T) -> u64) -> Vec<bool> {
            let mut seen = std::collections::HashSet::with_capacity(rows.len());
            rows.iter()
                .map(|(agent, _, row)| seen.insert((agent.as_str(), seq(row))))
                .collect()
        }
        fn keep_firsts<T>(rows: &mut Vec<(String, String, T)>, seq: impl Fn(&T) -> u64) {
            let firsts = firsts(rows, seq);
            let mut first = firsts.into_iter();
            rows.retain(|_| first.next().unwrap_or(true));
        }
        let before = self.len();
        keep_firsts(&mut self.results, |r| r.seq);
        keep_firsts(&mut self.metrics, |m| m.seq);
        keep_firsts(&mut self.events, |e| e.seq);
        before - self.len()
    }

    /// The highest seq per agent in this batch.
    pub fn max_seq_per_agent(&self) -> BTreeMap<String, u64> {
        let mut max: BTreeMap<&str, u64> = BTreeMap::new();
        // Rows come in runs of one agent: one map lookup per run.
        let mut run: Option<(&str, &mut u64)> = None;
        for (agent, seq) in self.agent_seqs() {
            match &mut run {
                Some((name, top)) if *name == agent => **top = (**top).max(seq),
                _ => {
                    let top = max.entry(agent).or_default();
                    *top = (*top).max(seq);
                    run = Some((agent, top));
                }
            }
        }
        max.into_iter()
            .map(|(agent, seq)| (agent.to_owned(), seq))
            .collect()
    }
}
