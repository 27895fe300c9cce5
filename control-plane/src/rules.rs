//! Host-metric rules: alerts on the agents' own numbers, by agent selector.
//!
//! A rule selects agents (by labels, regions or ids; empty selects every agent) and holds one
//! condition: a threshold that must hold for a duration (`cpu_pct above 90 for 300 s`: seed
//! 004's alerts; the maths in [`crate::signals`]) or a disk-full forecast (a least-squares fit
//! of a mount's used bytes over the last hours; "/var full in ~3 d"). [`Engine::observe`] runs
//! on every committed metrics batch; a condition that fires opens an incident (subject `rule`,
//! id `{rule}/{agent}` or `{rule}/{agent}{mount}`) that says which numbers crossed what, and it
//! is resolved when the condition no longer holds. Agents in maintenance open none. The state
//! lives in memory and is rebuilt from new samples after a restart; incidents still open from
//! before are resolved when their condition is seen not to hold.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use vantage_mqtt::{HostMetrics, IncidentSubject, topic};

use crate::AppState;
use crate::signals::{Comparison, Threshold, ThresholdChange, ThresholdTracker};
use crate::store::{AgentRow, IncidentOp, StoreError, now_ms, random_id};

/// A number an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CpuPct,
    MemUsedPct,
    SwapUsedPct,
    /// The fullest mount's used share.
    DiskUsedPct,
    Load1,
    Load5,
    Load15,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::CpuPct => "cpu_pct",
            Metric::MemUsedPct => "mem_used_pct",
            Metric::SwapUsedPct => "swap_used_pct",
            Metric::DiskUsedPct => "disk_used_pct",
            Metric::Load1 => "load1",
            Metric::Load5 => "load5",
            Metric::Load15 => "load15",
        }
    }

    /// The value in a sample (with the mount it came from, for disks).
    fn value(self, sample: &HostMetrics) -> Option<(f64, Option<String>)> {
        let pct = |used: u64, total: u64| (total > 0).then(|| used as f64 * 100.0 / total as f64);
        match self {
            Metric::CpuPct => Some((f64::from(sample.cpu_pct), None)),
            Metric::MemUsedPct => {
                pct(sample.mem_used_bytes, sample.mem_total_bytes).map(|v| (v, None))
            }
            Metric::SwapUsedPct => {
                pct(sample.swap_used_bytes, sample.swap_total_bytes).map(|v| (v, None))
            }
            Metric::DiskUsedPct => sample
                .disks
                .iter()
                .filter_map(|d| pct(d.used_bytes, d.total_bytes).map(|v| (v, d.mount.clone())))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(v, mount)| (v, Some(mount))),
            Metric::Load1 => Some((sample.load1, None)),
            Metric::Load5 => Some((sample.load5, None)),
            Metric::Load15 => Some((sample.load15, None)),
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// `metric` above (or below) `limit` on every sample for `for_s` seconds.
    Threshold {
        metric: Metric,
        comparison: Comparison,
        limit: f64,
        for_s: u32,
    },
    /// A mount (or any mount) forecast to be full within `within_h` hours.
    DiskFull {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mount: Option<String>,
        within_h: u32,
    },
}

/// Which agents a rule covers; empty fields select every agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
}

impl Selector {
    fn selects(&self, agent: &AgentRow) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| agent.labels.0.get(k) == Some(v))
            && (self.regions.is_empty() || self.regions.contains(&agent.region))
            && (self.agents.is_empty() || self.agents.contains(&agent.id))
    }
}

/// A rule as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub selector: Selector,
    pub condition: Condition,
}

/// Why a rule could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("rule {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a rule.
///
/// # Errors
/// [`RuleError::Invalid`] naming the field.
pub fn validate(rule: &Rule) -> Result<(), RuleError> {
    let invalid = |m: &str| Err(RuleError::Invalid(m.to_owned()));
    if let Some(id) = &rule.id
        && !topic::valid_id(id)
    {
        return invalid("id must be 1-64 of a-z 0-9 - _ .");
    }
    if rule.name.trim().is_empty()
        || rule.name.len() > 255
        || rule.name.chars().any(char::is_control)
    {
        return invalid("name must be 1-255 printable characters");
    }
    let selector = &rule.selector;
    if selector.labels.len() > 32 || selector.regions.len() > 256 || selector.agents.len() > 1000 {
        return invalid("selector: at most 32 labels, 256 regions and 1000 agents");
    }
    let ids = selector
        .regions
        .iter()
        .chain(&selector.agents)
        .chain(selector.labels.keys());
    if ids.into_iter().any(|id| !topic::valid_id(id)) {
        return invalid("selector: every region, agent and label key must be a valid id");
    }
    match &rule.condition {
        Condition::Threshold { limit, for_s, .. } => {
            if !limit.is_finite() {
                return invalid("limit must be a finite number");
            }
            if *for_s > 7 * 86_400 {
                return invalid("for_s must be at most 604800");
            }
        }
        Condition::DiskFull { mount, within_h } => {
            if !(1..=24 * 90).contains(within_h) {
                return invalid("within_h must be 1..=2160");
            }
            if mount
                .as_ref()
                .is_some_and(|m| m.is_empty() || m.len() > 256 || m.chars().any(char::is_control))
            {
                return invalid("mount must be a path of at most 256 printable bytes");
            }
        }
    }
    Ok(())
}

/// Stores a rule (id generated when absent).
///
/// # Errors
/// Invalid, or the store (a taken id is a conflict).
pub async fn create(state: &AppState, mut rule: Rule) -> Result<Rule, RuleError> {
    validate(&rule)?;
    let id = rule.id.clone().unwrap_or_else(|| random_id("rl-", 6));
    rule.id = Some(id.clone());
    let definition = serde_json::to_string(&rule).unwrap_or_default();
    state
        .store
        .insert_rule(&id, &rule.name, &definition, now_ms())
        .await?;
    state.rules.invalidate().await;
    Ok(rule)
}

/// Every stored rule that decodes (a corrupt one is logged and left out).
///
/// # Errors
/// The store.
pub async fn list(store: &crate::store::Store) -> Result<Vec<Rule>, StoreError> {
    Ok(store
        .list_rules()
        .await?
        .into_iter()
        .filter_map(
            |(id, definition)| match serde_json::from_str::<Rule>(&definition) {
                Ok(rule) => Some(rule),
                Err(error) => {
                    tracing::error!(rule = %id, %error, "Stored rule does not decode; ignored");
                    None
                }
            },
        )
        .collect())
}

/// Deletes a rule; its open incidents are resolved.
///
/// # Errors
/// Not found, or the store.
pub async fn delete(state: &AppState, id: &str) -> Result<(), RuleError> {
    if !state.store.delete_rule(id).await? {
        return Err(RuleError::NotFound(id.to_owned()));
    }
    state.rules.invalidate().await;
    for incident in state.store.list_incidents(true, 100_000).await? {
        if incident.subject == IncidentSubject::Rule
            && incident.subject_id.split('/').next() == Some(id)
        {
            crate::incidents::rule_change(
                state,
                &incident.subject_id,
                IncidentOp::Resolve,
                format!("rule {id} was deleted"),
            )
            .await?;
        }
    }
    Ok(())
}

/// Samples of one mount kept for forecasts: one per [`DISK_SAMPLE_MS`], the last [`DISK_SAMPLES`].
const DISK_SAMPLE_MS: i64 = 300_000;
const DISK_SAMPLES: usize = 72;
/// How long the rules and agents are cached before they are read again.
const REFRESH_MS: i64 = 30_000;

#[derive(Debug, Default)]
struct Inner {
    loaded_at_ms: Option<i64>,
    rules: Vec<Rule>,
    agents: HashMap<String, AgentRow>,
    /// (rule, agent) → its threshold tracker.
    trackers: HashMap<(String, String), ThresholdTracker>,
    /// (agent, mount) → (at_ms, used bytes), one per five minutes.
    disks: HashMap<(String, String), VecDeque<(i64, f64)>>,
    /// Incident subjects open now (filled from the store on load).
    firing: HashSet<String>,
}

/// The rules' state; see the module docs.
#[derive(Debug, Default)]
pub struct Engine {
    inner: Mutex<Inner>,
}

impl Engine {
    /// Makes the next batch read the rules again.
    pub async fn invalidate(&self) {
        self.inner.lock().await.loaded_at_ms = None;
    }

    async fn refresh(state: &AppState, inner: &mut Inner) -> Result<(), StoreError> {
        let now = now_ms();
        if inner.loaded_at_ms.is_some_and(|at| now - at < REFRESH_MS) {
            return Ok(());
        }
        inner.rules = list(&state.store).await?;
        inner.agents = state
            .store
            .list_agents(None)
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        inner.firing = state
            .store
            .list_incidents(true, 100_000)
            .await?
            .into_iter()
            .filter(|i| i.subject == IncidentSubject::Rule && !i.subject_id.starts_with("latency/"))
            .map(|i| i.subject_id)
            .collect();
        let ids: HashSet<&str> = inner.rules.iter().filter_map(|r| r.id.as_deref()).collect();
        inner.trackers.retain(|(rule, agent), _| {
            ids.contains(rule.as_str()) && inner.agents.contains_key(agent)
        });
        let agents = &inner.agents;
        inner
            .disks
            .retain(|(agent, _), _| agents.contains_key(agent));
        inner.loaded_at_ms = Some(now);
        Ok(())
    }

    /// Evaluates every rule on a committed batch of samples.
    pub async fn observe(&self, state: &AppState, samples: &[(String, String, HostMetrics)]) {
        let mut inner = self.inner.lock().await;
        if let Err(error) = Self::refresh(state, &mut inner).await {
            tracing::warn!(%error, "Cannot read the host-metric rules");
            return;
        }
        if inner.rules.is_empty() {
            return;
        }
        let maintenance = state.judge.active_maintenance();
        let mut changes: Vec<(String, IncidentOp, String)> = Vec::new();
        let Inner {
            rules,
            agents,
            trackers,
            disks,
            firing,
            ..
        } = &mut *inner;
        for (agent_id, _, sample) in samples {
            let Some(agent) = agents.get(agent_id) else {
                continue;
            };
            let quiet = maintenance.agent(agent);
            // Keep one disk sample per five minutes per mount, for forecasts.
            for disk in &sample.disks {
                let history = disks
                    .entry((agent_id.clone(), disk.mount.clone()))
                    .or_default();
                if history
                    .back()
                    .is_none_or(|(at, _)| sample.measured_at_ms - at >= DISK_SAMPLE_MS)
                {
                    history.push_back((sample.measured_at_ms, disk.used_bytes as f64));
                    if history.len() > DISK_SAMPLES {
                        history.pop_front();
                    }
                }
            }
            for rule in rules.iter().filter(|r| r.selector.selects(agent)) {
                let rule_id = rule.id.clone().unwrap_or_default();
                match &rule.condition {
                    Condition::Threshold {
                        metric,
                        comparison,
                        limit,
                        for_s,
                    } => {
                        let Some((value, mount)) = metric.value(sample) else {
                            continue;
                        };
                        let subject = format!("{rule_id}/{agent_id}");
                        let threshold = Threshold {
                            comparison: *comparison,
                            limit: *limit,
                            for_ms: i64::from(*for_s) * 1000,
                        };
                        let tracker = trackers
                            .entry((rule_id.clone(), agent_id.clone()))
                            .or_insert_with(|| {
                                // Three missed samples break the hold.
                                let gap =
                                    i64::from(state.settings.metrics_interval_s.max(1)) * 3000;
                                ThresholdTracker::new(threshold.clone(), gap)
                            });
                        let name = match &mount {
                            Some(mount) => format!("{} ({mount})", metric.name()),
                            None => metric.name().to_owned(),
                        };
                        match tracker.observe(sample.measured_at_ms, value) {
                            Some(change @ ThresholdChange::Fired { .. }) => {
                                if !quiet && firing.insert(subject.clone()) {
                                    let text = format!(
                                        "{} on agent {agent_id} (rule {:?})",
                                        crate::signals::describe(&name, &threshold, &change),
                                        rule.name
                                    );
                                    changes.push((
                                        subject,
                                        IncidentOp::Open {
                                            title: format!("{}: {}", rule.name, agent_id),
                                            dependent: false,
                                        },
                                        text,
                                    ));
                                }
                            }
                            Some(change @ ThresholdChange::Cleared { .. }) => {
                                if firing.remove(&subject) {
                                    let text = format!(
                                        "{} on agent {agent_id}",
                                        crate::signals::describe(&name, &threshold, &change)
                                    );
                                    changes.push((subject, IncidentOp::Resolve, text));
                                }
                            }
                            None => {
                                // An incident left open by an earlier run whose condition
                                // does not hold now.
                                if !tracker.is_firing()
                                    && !threshold.is_met_by(value)
                                    && firing.remove(&subject)
                                {
                                    changes.push((
                                        subject,
                                        IncidentOp::Resolve,
                                        format!("{name} {value:.1} on agent {agent_id} no longer {} {limit}", comparison.word()),
                                    ));
                                }
                            }
                        }
                    }
                    Condition::DiskFull { mount, within_h } => {
                        for disk in sample
                            .disks
                            .iter()
                            .filter(|d| mount.as_ref().is_none_or(|m| *m == d.mount))
                        {
                            let Some(history) = disks.get(&(agent_id.clone(), disk.mount.clone()))
                            else {
                                continue;
                            };
                            let points: Vec<(i64, f64)> = history.iter().copied().collect();
                            let forecast =
                                crate::signals::forecast_full(&points, disk.total_bytes as f64);
                            let horizon_s = f64::from(*within_h) * 3600.0;
                            let subject = format!("{rule_id}/{agent_id}{}", disk.mount);
                            let soon = forecast
                                .as_ref()
                                .filter(|f| f.seconds_until_full <= horizon_s);
                            match soon {
                                Some(forecast) if !quiet && !firing.contains(&subject) => {
                                    firing.insert(subject.clone());
                                    changes.push((
                                        subject,
                                        IncidentOp::Open {
                                            title: format!(
                                                "{}: {} on {agent_id} filling up",
                                                rule.name, disk.mount
                                            ),
                                            dependent: false,
                                        },
                                        format!(
                                            "{} on agent {agent_id}, within the rule's {within_h} h",
                                            crate::signals::describe_forecast(&disk.mount, forecast)
                                        ),
                                    ));
                                }
                                None if firing.remove(&subject) => {
                                    changes.push((
                                        subject,
                                        IncidentOp::Resolve,
                                        format!(
                                            "{} on agent {agent_id} is no longer forecast to fill within {within_h} h",
                                            disk.mount
                                        ),
                                    ));
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        drop(inner);
        for (subject, op, text) in changes {
            if let Err(error) = crate::incidents::rule_change(state, &subject, op, text).await {
                tracing::warn!(%subject, %error, "Cannot record a rule's incident");
                self.invalidate().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Application;
    use crate::settings::Settings;

    /// One host sample at `at_ms` with `/var` holding `used_bytes` of 100 GB.
    fn sample(seq: u64, at_ms: i64, used_bytes: u64) -> HostMetrics {
        HostMetrics {
            seq,
            measured_at_ms: at_ms,
            cpu_pct: 5.0,
            cores_pct: None,
            mem_total_bytes: 1 << 30,
            mem_used_bytes: 1 << 29,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            load1: 0.1,
            load5: 0.1,
            load15: 0.1,
            uptime_s: 1000,
            disks: vec![vantage_mqtt::DiskUsage {
                mount: "/var".into(),
                total_bytes: 100_000_000_000,
                used_bytes,
            }],
            nets: Vec::new(),
        }
    }

    /// The disk-full path end to end inside a real control plane (SQLite, real store): six
    /// hours of five-minute samples of a growing `/var` (generated, not waited for) open an
    /// incident that says when it will be full; a disk that stops growing resolves it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_filling_disk_opens_an_incident_and_a_flat_one_resolves_it() {
        let dir = tempfile::tempdir().unwrap();
        let app = Application::build(Settings::ephemeral(dir.path().to_owned()))
            .await
            .unwrap();
        let state = app.state().clone();
        let (_, secret) = state
            .store
            .create_enrollment_token("eu", &BTreeMap::new(), 1, 3600)
            .await
            .unwrap();
        let agent = state
            .store
            .enroll_agent(&secret, |grant| AgentRow {
                hostname: "db1".into(),
                cert_serial: "01".into(),
                cert_not_after_ms: now_ms() + 86_400_000,
                ..AgentRow::enrolled(
                    "ag-disk".into(),
                    grant.region.clone(),
                    crate::store::Labels(BTreeMap::from([("role".into(), "db".into())])),
                )
            })
            .await
            .unwrap()
            .unwrap();
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "id": "disk", "name": "disk filling", "selector": {"labels": {"role": "db"}},
            "condition": {"type": "disk_full", "mount": "/var", "within_h": 24}
        }))
        .unwrap();
        create(&state, rule).await.unwrap();
        // 60 GB used, growing 1 GB an hour: full in 40 h at the start, in ~34 h after six
        // hours, then inside the 24 h horizon once it reaches 76 GB.
        let start = now_ms() - 30 * 3_600_000;
        let gb = 1_000_000_000u64;
        let mut batch = Vec::new();
        for i in 0..=(30 * 12) {
            let at = start + i * DISK_SAMPLE_MS;
            let used = 60 * gb + (i as u64) * gb / 12;
            batch.push((
                agent.id.clone(),
                agent.region.clone(),
                sample(i as u64, at, used),
            ));
        }
        state.rules.observe(&state, &batch).await;
        let open = state
            .store
            .open_incident(IncidentSubject::Rule, "disk/ag-disk/var")
            .await
            .unwrap()
            .expect("an incident for /var");
        let events = state.store.incident_events(&open.id).await.unwrap();
        let text = &events[0].text;
        assert!(
            text.starts_with("/var full in ~")
                && text.contains("growing 24.0 GB/day")
                && text.contains("within the rule's 24 h"),
            "{text}"
        );
        // The disk stops growing (cleanup freed 30 GB and it stays there): resolved.
        let later = start + 31 * 3_600_000;
        let mut flat = Vec::new();
        for i in 0..=(8 * 12) {
            let at = later + i * DISK_SAMPLE_MS;
            flat.push((
                agent.id.clone(),
                agent.region.clone(),
                sample(1000 + i as u64, at, 60 * gb),
            ));
        }
        state.rules.observe(&state, &flat).await;
        assert!(
            state
                .store
                .open_incident(IncidentSubject::Rule, "disk/ag-disk/var")
                .await
                .unwrap()
                .is_none(),
            "still open after the disk stopped growing"
        );
    }

    #[test]
    fn rules_parse_and_bad_ones_name_their_field() {
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "name": "hot cpu", "selector": {"labels": {"role": "db"}},
            "condition": {"type": "threshold", "metric": "cpu_pct", "comparison": "above",
                          "limit": 90, "for_s": 300}
        }))
        .unwrap();
        validate(&rule).unwrap();
        let disk: Rule = serde_json::from_value(serde_json::json!({
            "name": "disk", "condition": {"type": "disk_full", "mount": "/var", "within_h": 72}
        }))
        .unwrap();
        validate(&disk).unwrap();
        let bad = |value: serde_json::Value| {
            let rule: Rule = serde_json::from_value(value).unwrap();
            match validate(&rule) {
                Err(RuleError::Invalid(message)) => message,
                other => panic!("{other:?}"),
            }
        };
        assert!(
            bad(
                serde_json::json!({"name": "x", "condition": {"type": "disk_full", "within_h": 0}})
            )
            .contains("within_h")
        );
        assert!(
            bad(serde_json::json!({"name": "", "condition": {"type": "disk_full", "within_h": 1}}))
                .contains("name")
        );
        assert!(
            bad(
                serde_json::json!({"name": "x", "selector": {"regions": ["A B"]},
            "condition": {"type": "disk_full", "within_h": 1}})
            )
            .contains("selector")
        );
        assert!(serde_json::from_value::<Rule>(serde_json::json!({"name": "x",
            "condition": {"type": "threshold", "metric": "temperature", "comparison": "above", "limit": 1, "for_s": 1}})).is_err());
    }
}
