//! Verdicts: each check's overall state, judged across its regions from the results ingest
//! has committed.
//!
//! Per (check, region) a [`RegionTrack`] counts consecutive failures and successes: the region
//! counts as failing after `retries` failures in a row and as up again after `recovery`
//! successes in a row (between the two it keeps its last standing, so one odd result changes
//! nothing). Results older than the newest one judged (a spool replay after a reconnect) are
//! ignored. [`judge`] turns the regions into a state: PAUSED when the check is disabled, DOWN
//! when at least the quorum of regions fail, DEGRADED when some but fewer fail (shown, never
//! silent), UP when none fail, PENDING before any result. The reason says in words which
//! regions fail against what quorum and why.
//!
//! [`Judge`] holds the tracks in memory. A check's track is built on first use from its stored
//! verdict and a replay of its latest stored results, so a restart (or a crash between a
//! commit and its verdict) loses no transition; the tracks a batch lacks are built together
//! in a few statements, not a query per check. The transitions of one judged batch are
//! written with their evidence by [`crate::incidents::record_verdicts`], in one transaction
//! with the incident and outbox rows they cause; only then do the tracks keep the new states.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::Mutex;
use vantage_mqtt::{CheckResult, CheckState, CheckVerdictView, EvidenceResult, RegionEvidence};

use crate::AppState;
use crate::store::{CheckRow, StoreError, now_ms};

/// The rules a check is judged by, from its stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The check's name, for incident titles.
    pub name: String,
    pub regions: Vec<String>,
    pub quorum: u32,
    pub retries: u32,
    pub recovery: u32,
    pub enabled: bool,
    pub depends_on: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Response-time anomaly alerts: the z-score that counts (0: off).
    pub anomaly_z: f64,
}

impl Policy {
    pub fn of(row: &CheckRow) -> Policy {
        Policy {
            name: row.name.clone(),
            regions: row.regions.clone(),
            quorum: row.effective_quorum(),
            retries: row.retries.max(1),
            recovery: row.recovery.max(1),
            enabled: row.enabled,
            depends_on: row.depends_on.clone(),
            labels: row.labels.0.clone(),
            anomaly_z: row.anomaly_z,
        }
    }
}

/// Anomalous response times in a row that raise a latency alert, and normal ones that clear it.
const ANOMALY_RAISE: u32 = 3;
const ANOMALY_CLEAR: u32 = 5;
/// Anomalous results in a row after which they become the new baseline.
const ANOMALY_REBASE: u32 = 30;

/// A region's response times: an EWMA of successful results' total time and whether they
/// are anomalous now.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyTrack {
    pub ewma: crate::signals::Ewma,
    pub anomalous: bool,
    anomalous_streak: u32,
    normal_streak: u32,
}

/// A region's latency alert being raised (with what crossed) or cleared.
#[derive(Debug, Clone, PartialEq)]
pub enum LatencyFlip {
    Raised(crate::signals::Anomaly),
    Cleared { total_ms: f64 },
}

impl LatencyTrack {
    fn new(z_limit: f64) -> LatencyTrack {
        LatencyTrack {
            // alpha 0.1: about the last 20 results; 20 results before judging; a floor of
            // 1 ms (and 1 % of the mean) so a flat series does not alarm on a wiggle.
            ewma: crate::signals::Ewma::new(0.1, 20, z_limit, 1.0),
            anomalous: false,
            anomalous_streak: 0,
            normal_streak: 0,
        }
    }

    /// Counts one successful result's total time; returns a flip of the alert. Anomalous
    /// times stay out of the baseline (a lasting slowdown stays an alert) until they have
    /// lasted [`ANOMALY_REBASE`] results, after which they are the new usual.
    pub fn observe(&mut self, total_ms: f64) -> Option<LatencyFlip> {
        let anomaly = self.ewma.score(total_ms);
        if anomaly.is_none() || self.anomalous_streak >= ANOMALY_REBASE {
            self.ewma.observe(total_ms);
        }
        match anomaly {
            Some(anomaly) => {
                self.anomalous_streak += 1;
                self.normal_streak = 0;
                if !self.anomalous && self.anomalous_streak >= ANOMALY_RAISE {
                    self.anomalous = true;
                    return Some(LatencyFlip::Raised(anomaly));
                }
            }
            None => {
                self.normal_streak += 1;
                self.anomalous_streak = 0;
                if self.anomalous && self.normal_streak >= ANOMALY_CLEAR {
                    self.anomalous = false;
                    return Some(LatencyFlip::Cleared { total_ms });
                }
            }
        }
        None
    }
}

/// The order of results within a region: measured time, then agent and seq.
type ResultKey = (i64, String, u64);

/// One region's standing for one check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionTrack {
    pub failing: bool,
    pub fail_streak: u32,
    pub ok_streak: u32,
    pub last: Option<EvidenceResult>,
    last_key: Option<ResultKey>,
    /// Response times, when the check asks for anomaly alerts.
    pub latency: Option<LatencyTrack>,
}

impl RegionTrack {
    /// Counts one result; returns false when it is not newer than the last one counted.
    pub fn observe(
        &mut self,
        key: ResultKey,
        result: EvidenceResult,
        retries: u32,
        recovery: u32,
    ) -> bool {
        if self.last_key.as_ref().is_some_and(|last| &key <= last) {
            return false;
        }
        if result.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if self.failing && self.ok_streak >= recovery {
                self.failing = false;
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if !self.failing && self.fail_streak >= retries {
                self.failing = true;
            }
        }
        self.last = Some(result);
        self.last_key = Some(key);
        true
    }

    fn streak(&self) -> u32 {
        if self.last.as_ref().is_some_and(|l| l.ok) {
            self.ok_streak
        } else {
            self.fail_streak
        }
    }
}

/// What is in maintenance while a check is judged.
pub struct Maintenance<'a> {
    /// The window that puts the whole check in maintenance, if any.
    pub check_window: Option<&'a str>,
    /// Whether a region is in maintenance (it does not count as failing).
    pub region: &'a dyn Fn(&str) -> bool,
}

/// Judges a check from its regions' tracks: its state and the reason in words.
pub fn judge(
    policy: &Policy,
    regions: &BTreeMap<String, RegionTrack>,
    fallback: &dyn Fn(&str) -> bool,
    maintenance: &Maintenance<'_>,
) -> (CheckState, String, Vec<RegionEvidence>) {
    let evidence: Vec<RegionEvidence> = policy
        .regions
        .iter()
        .map(|region| {
            let track = regions.get(region).cloned().unwrap_or_default();
            RegionEvidence {
                region: region.clone(),
                failing: track.failing,
                fallback: fallback(region),
                maintenance: (maintenance.region)(region),
                streak: track.streak(),
                last: track.last,
            }
        })
        .collect();
    if !policy.enabled {
        return (CheckState::Paused, "the check is paused".into(), evidence);
    }
    let failing: Vec<&RegionEvidence> = evidence
        .iter()
        .filter(|r| r.failing && !r.maintenance)
        .collect();
    let n_regions = evidence.len();
    let why = |r: &RegionEvidence| {
        let reason = r.last.as_ref().map_or("no result", |l| l.reason.as_str());
        let reason = if reason.is_empty() { "failed" } else { reason };
        format!("{}: {reason} ({} in a row)", r.region, r.streak)
    };
    let list = failing
        .iter()
        .map(|r| why(r))
        .collect::<Vec<_>>()
        .join("; ");
    let on_fallback: Vec<&str> = evidence
        .iter()
        .filter(|r| r.fallback)
        .map(|r| r.region.as_str())
        .collect();
    let fallback_note = if on_fallback.is_empty() {
        String::new()
    } else {
        format!(
            "; degraded: fallback (the control plane runs it) in {}",
            on_fallback.join(", ")
        )
    };
    let n_failing = failing.len() as u32;
    let (state, reason) = if n_failing >= policy.quorum {
        (
            CheckState::Down,
            format!(
                "{n_failing} of {n_regions} regions failing (quorum {}): {list}",
                policy.quorum
            ),
        )
    } else if n_failing > 0 {
        (
            CheckState::Degraded,
            format!(
                "{n_failing} of {n_regions} regions failing, below the quorum of {}: {list}",
                policy.quorum
            ),
        )
    } else if evidence.iter().all(|r| r.last.is_none()) {
        (CheckState::Pending, "no region has reported yet".into())
    } else {
        (
            CheckState::Up,
            format!("no region failing ({n_regions} regions)"),
        )
    };
    let in_maintenance: Vec<&str> = evidence
        .iter()
        .filter(|r| r.maintenance)
        .map(|r| r.region.as_str())
        .collect();
    let maintenance_note = if in_maintenance.is_empty() {
        String::new()
    } else {
        format!(
            "; in maintenance (not counted): {}",
            in_maintenance.join(", ")
        )
    };
    let reason = format!("{reason}{fallback_note}{maintenance_note}");
    match maintenance.check_window {
        Some(window) => (
            CheckState::Maintenance,
            format!("in maintenance window {window:?}; underneath: {reason}"),
            evidence,
        ),
        None => (state, reason, evidence),
    }
}

/// One check's judged state in memory.
#[derive(Debug, Clone)]
pub struct CheckTrack {
    pub policy: Policy,
    pub regions: BTreeMap<String, RegionTrack>,
    /// The last verdict written to the store.
    pub view: CheckVerdictView,
}

impl CheckTrack {
    fn failing_set(view: &CheckVerdictView) -> Vec<&str> {
        view.regions
            .iter()
            .filter(|r| r.failing)
            .map(|r| r.region.as_str())
            .collect()
    }

    /// The verdict now, if it differs from the stored one in state, failing regions or
    /// fallback regions.
    pub fn rejudge(
        &self,
        check_id: &str,
        fallback: &dyn Fn(&str) -> bool,
        maintenance: &Maintenance<'_>,
    ) -> Option<CheckVerdictView> {
        let (state, reason, regions) = judge(&self.policy, &self.regions, fallback, maintenance);
        let mut next = CheckVerdictView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            check_id: check_id.to_owned(),
            state,
            previous: self.view.previous,
            since_ms: self.view.since_ms,
            quorum: self.policy.quorum,
            reason,
            regions,
        };
        if state != self.view.state {
            next.previous = self.view.state;
            next.since_ms = now_ms();
        }
        let fallbacks = |v: &CheckVerdictView| {
            v.regions
                .iter()
                .filter(|r| r.fallback || r.maintenance)
                .map(|r| (r.region.clone(), r.fallback, r.maintenance))
                .collect::<Vec<_>>()
        };
        let changed = state != self.view.state
            || Self::failing_set(&next) != Self::failing_set(&self.view)
            || fallbacks(&next) != fallbacks(&self.view)
            || next.quorum != self.view.quorum;
        changed.then_some(next)
    }
}

/// A track judged in this run, with the verdict change to store (if any).
type Judgement = (String, CheckTrack, Option<crate::incidents::VerdictChange>);

/// The verdicts of every check, in memory; see the module docs.
#[derive(Debug, Default)]
pub struct Judge {
    tracks: Mutex<HashMap<String, CheckTrack>>,
    /// The maintenance windows in force, as of the worker's last tick.
    maintenance: std::sync::RwLock<crate::maintenance::Active>,
}

/// Results replayed per region when a track is built: enough for the longest streak rule.
const REPLAY_CAP: u32 = 20;

impl Judge {
    /// Builds the tracks of `ids` from the store in a few statements whatever their number:
    /// each check's policy, its stored verdict and a replay of its latest results per region
    /// (up to the longest streak rule, among those measured within that many intervals plus
    /// two, and five minutes for late clocks). Checks that no longer exist are left out.
    async fn load_many(
        state: &AppState,
        ids: &[&str],
    ) -> Result<HashMap<String, CheckTrack>, StoreError> {
        let rows = state.store.get_checks(ids).await?;
        let mut stored = state.store.get_verdicts(ids).await?;
        let replay_n =
            |policy: &Policy| policy.retries.max(policy.recovery).min(REPLAY_CAP) as usize;
        let policies: HashMap<&str, Policy> = rows
            .iter()
            .map(|row| (row.id.as_str(), Policy::of(row)))
            .collect();
        // Checks grouped by how far back their replay reaches, so a daily check does not
        // make a frequent one read a day of results.
        let mut by_window: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
        for row in &rows {
            let n = replay_n(&policies[row.id.as_str()]) as i64;
            let window_ms = (n + 2) * i64::from(row.interval_s) * 1000 + 300_000;
            by_window
                .entry(window_ms)
                .or_default()
                .push(row.id.as_str());
        }
        let now = now_ms();
        let mut recent: HashMap<(String, String), Vec<crate::store::ResultRow>> = HashMap::new();
        for (window_ms, ids) in by_window {
            // Newest first: the first n of each (check, region) are its latest.
            for row in state.store.results_since(&ids, now - window_ms).await? {
                let n = policies.get(row.check_id.as_str()).map_or(0, replay_n);
                let kept = recent
                    .entry((row.check_id.clone(), row.region.clone()))
                    .or_default();
                if kept.len() < n {
                    kept.push(row);
                }
            }
        }
        let mut tracks = HashMap::with_capacity(rows.len());
        for row in &rows {
            let policy = policies[row.id.as_str()].clone();
            let view = stored.remove(&row.id).unwrap_or_else(|| CheckVerdictView {
                v: vantage_mqtt::PROTOCOL_VERSION,
                check_id: row.id.clone(),
                state: CheckState::Pending,
                previous: CheckState::Pending,
                since_ms: now_ms(),
                quorum: policy.quorum,
                reason: "no region has reported yet".into(),
                regions: Vec::new(),
            });
            let mut regions = BTreeMap::new();
            for region in &policy.regions {
                let mut track = RegionTrack {
                    failing: view
                        .regions
                        .iter()
                        .any(|r| &r.region == region && r.failing),
                    ..RegionTrack::default()
                };
                let replay = recent
                    .remove(&(row.id.clone(), region.clone()))
                    .unwrap_or_default();
                for result in replay.into_iter().rev() {
                    track.observe(
                        (
                            result.measured_at_ms,
                            result.agent_id.clone(),
                            result.seq as u64,
                        ),
                        EvidenceResult {
                            agent_id: result.agent_id,
                            ok: result.ok,
                            reason: result.reason,
                            total_ms: result.total_ms,
                            measured_at_ms: result.measured_at_ms,
                        },
                        policy.retries,
                        policy.recovery,
                    );
                }
                regions.insert(region.clone(), track);
            }
            tracks.insert(
                row.id.clone(),
                CheckTrack {
                    policy,
                    regions,
                    view,
                },
            );
        }
        Ok(tracks)
    }

    /// Judges the results of a committed batch; writes and announces every changed verdict.
    pub async fn observe(&self, state: &AppState, results: &[(String, String, CheckResult)]) {
        let mut by_check: BTreeMap<&str, Vec<&(String, String, CheckResult)>> = BTreeMap::new();
        for row in results {
            by_check
                .entry(row.2.check_id.as_str())
                .or_default()
                .push(row);
        }
        let mut tracks = self.tracks.lock().await;
        let missing: Vec<&str> = by_check
            .keys()
            .copied()
            .filter(|id| !tracks.contains_key(*id))
            .collect();
        let mut loaded = if missing.is_empty() {
            HashMap::new()
        } else {
            match Self::load_many(state, &missing).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::warn!(n_checks = missing.len(), %error, "Cannot load checks' verdicts; judged with their next results");
                    HashMap::new()
                }
            }
        };
        let mut channels = crate::incidents::Channels::default();
        let mut judged = Vec::new();
        let plan = state.plan.borrow().clone();
        for (check_id, rows) in by_check {
            let in_memory = tracks.contains_key(check_id);
            let Some(mut track) = tracks.remove(check_id).or_else(|| loaded.remove(check_id))
            else {
                // Deleted, or its load failed: judged with its next results.
                continue;
            };
            let failing_before: Vec<bool> = track.regions.values().map(|r| r.failing).collect();
            let mut rows = rows;
            rows.sort_by_key(|(agent, _, r)| (r.measured_at_ms, agent.clone(), r.seq));
            let mut flips = Vec::new();
            for (agent, region, result) in rows {
                let policy = &track.policy;
                if let Some(region_track) = track.regions.get_mut(region) {
                    let counted = region_track.observe(
                        (result.measured_at_ms, agent.clone(), result.seq),
                        EvidenceResult {
                            agent_id: agent.clone(),
                            ok: result.ok,
                            reason: result.reason.clone(),
                            total_ms: result.timings.total_ms,
                            measured_at_ms: result.measured_at_ms,
                        },
                        policy.retries,
                        policy.recovery,
                    );
                    if counted && result.ok && policy.anomaly_z > 0.0 {
                        let latency = region_track
                            .latency
                            .get_or_insert_with(|| LatencyTrack::new(policy.anomaly_z));
                        if let Some(flip) = latency.observe(result.timings.total_ms) {
                            flips.push((region.clone(), flip));
                        }
                    }
                }
            }
            for (region, flip) in flips {
                if let Err(error) = latency_flip(state, check_id, &region, flip).await {
                    tracing::warn!(check = check_id, %region, %error, "Cannot record a response-time alert");
                }
            }
            state
                .counters
                .verdict_results
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Results move a verdict only by flipping a region between failing and not, by
            // being a PENDING check's first, or by arriving while a region's fallback differs
            // from the verdict's (the plan changed and `rejudge_all` has not run yet); the
            // other inputs (maintenance, policy) are re-judged by `rejudge_all`. A track just
            // built from the store is judged in any case.
            let moved = !in_memory
                || track.view.state == CheckState::Pending
                || track
                    .regions
                    .values()
                    .map(|r| r.failing)
                    .ne(failing_before.iter().copied())
                || track
                    .view
                    .regions
                    .iter()
                    .any(|r| r.fallback != plan.on_fallback(check_id, &r.region));
            if !moved {
                judged.push((check_id.to_owned(), track, None));
                continue;
            }
            match Self::decide(state, &tracks, &judged, check_id, &track, &mut channels).await {
                Ok(change) => judged.push((check_id.to_owned(), track, change)),
                Err(error) => {
                    tracing::warn!(check = check_id, %error, "Cannot judge a check; judged again with its next results");
                }
            }
        }
        Self::flush(state, &mut tracks, judged).await;
    }

    /// Re-judges one track: the verdict change to store, if its verdict changed. Parents are
    /// looked up among the tracks judged earlier in this run (with their new states) and the
    /// others.
    async fn decide(
        state: &AppState,
        tracks: &HashMap<String, CheckTrack>,
        judged: &[Judgement],
        check_id: &str,
        track: &CheckTrack,
        channels: &mut crate::incidents::Channels,
    ) -> Result<Option<crate::incidents::VerdictChange>, StoreError> {
        let next = {
            let plan = state.plan.borrow().clone();
            let fallback = |region: &str| plan.on_fallback(check_id, region);
            let active = state.judge.active_maintenance();
            let region = |region: &str| active.region(region);
            let maintenance = Maintenance {
                check_window: active.check(check_id, &track.policy.labels),
                region: &region,
            };
            track.rejudge(check_id, &fallback, &maintenance)
        };
        let Some(next) = next else {
            return Ok(None);
        };
        let mut parent_down = track
            .policy
            .depends_on
            .iter()
            .find(|parent| {
                let earlier =
                    judged
                        .iter()
                        .find(|(id, _, _)| id == *parent)
                        .map(|(_, track, change)| {
                            change.as_ref().map_or(track.view.state, |c| c.next.state)
                        });
                earlier.or_else(|| tracks.get(parent.as_str()).map(|p| p.view.state))
                    == Some(CheckState::Down)
            })
            .cloned();
        if parent_down.is_none() && next.state == CheckState::Down {
            for parent in &track.policy.depends_on {
                let Some(agent) = parent.strip_prefix("agent:") else {
                    continue;
                };
                if state
                    .store
                    .get_agent(agent)
                    .await?
                    .is_some_and(|row| row.state == vantage_mqtt::NodeState::Offline)
                {
                    parent_down = Some(parent.clone());
                    break;
                }
            }
        }
        let change = crate::incidents::verdict_change(
            state,
            track.view.clone(),
            next,
            &track.policy.name,
            parent_down,
            channels,
        )
        .await?;
        Ok(Some(change))
    }

    /// Stores the changed verdicts of `judged` tracks in one transaction and puts the tracks
    /// back with their new views. When the write fails, the changed tracks are dropped: the
    /// next use rebuilds them from the store and judges again.
    async fn flush(
        state: &AppState,
        tracks: &mut HashMap<String, CheckTrack>,
        judged: Vec<Judgement>,
    ) {
        let changes: Vec<crate::incidents::VerdictChange> =
            judged.iter().filter_map(|(_, _, c)| c.clone()).collect();
        let stored = match crate::incidents::record_verdicts(state, &changes).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(n_checks = changes.len(), %error, "Cannot store verdicts; they are judged again with the next results");
                false
            }
        };
        for (check_id, mut track, change) in judged {
            match change {
                Some(change) if stored => {
                    track.view = change.next;
                    tracks.insert(check_id, track);
                }
                Some(_) => {}
                None => {
                    tracks.insert(check_id, track);
                }
            }
        }
    }

    /// Re-judges every known check (after a check changed, or agents came and went): new
    /// policies, fallback regions and pauses take effect without waiting for results.
    pub async fn rejudge_all(&self, state: &AppState) -> Result<(), StoreError> {
        let checks = state.store.list_checks().await?;
        let mut channels = crate::incidents::Channels::default();
        let mut tracks = self.tracks.lock().await;
        let ids: std::collections::HashSet<&str> = checks.iter().map(|c| c.id.as_str()).collect();
        tracks.retain(|id, _| ids.contains(id.as_str()));
        let missing: Vec<&str> = checks
            .iter()
            .map(|c| c.id.as_str())
            .filter(|id| !tracks.contains_key(*id))
            .collect();
        let mut loaded = if missing.is_empty() {
            HashMap::new()
        } else {
            Self::load_many(state, &missing).await?
        };
        let mut judged = Vec::new();
        for row in &checks {
            let Some(mut track) = tracks.remove(&row.id).or_else(|| loaded.remove(&row.id)) else {
                continue;
            };
            let policy = Policy::of(row);
            if policy.anomaly_z != track.policy.anomaly_z {
                for region in track.regions.values_mut() {
                    region.latency = None;
                }
            }
            if policy != track.policy {
                for region in &policy.regions {
                    track.regions.entry(region.clone()).or_default();
                }
                track.regions.retain(|r, _| policy.regions.contains(r));
                track.policy = policy;
            }
            let change =
                Self::decide(state, &tracks, &judged, &row.id, &track, &mut channels).await?;
            judged.push((row.id.clone(), track, change));
        }
        Self::flush(state, &mut tracks, judged).await;
        Ok(())
    }

    /// The maintenance windows in force.
    pub fn active_maintenance(&self) -> crate::maintenance::Active {
        self.maintenance
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the windows in force; returns whether they changed.
    pub fn set_maintenance(&self, active: crate::maintenance::Active) -> bool {
        let mut current = self
            .maintenance
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *current != active;
        *current = active;
        changed
    }

    /// The state of every check judged so far.
    pub async fn states(&self) -> HashMap<String, (CheckState, i64)> {
        self.tracks
            .lock()
            .await
            .iter()
            .map(|(id, t)| (id.clone(), (t.view.state, t.view.since_ms)))
            .collect()
    }

    /// Forgets every track: each is rebuilt from its stored verdict and latest stored
    /// results on next use (a replica that starts to lead judged nothing while it followed).
    pub async fn forget_all(&self) {
        self.tracks.lock().await.clear();
    }

    /// Forgets a deleted check.
    pub async fn forget(&self, check_id: &str) {
        self.tracks.lock().await.remove(check_id);
    }
}

/// Opens or resolves a check's response-time alert in one region (subject `rule`, id
/// `latency/{check}/{region}`), saying which numbers crossed what.
///
/// # Errors
/// Store errors.
pub async fn latency_flip(
    state: &AppState,
    check_id: &str,
    region: &str,
    flip: LatencyFlip,
) -> Result<(), StoreError> {
    let subject_id = format!("latency/{check_id}/{region}");
    let series = format!("{check_id} total_ms in {region}");
    let (op, text) = match flip {
        LatencyFlip::Raised(anomaly) => (
            crate::store::IncidentOp::Open {
                title: format!("{check_id} responds unusually slowly in {region}"),
                dependent: false,
            },
            format!(
                "{} (3 results in a row)",
                crate::signals::describe_anomaly(&series, &anomaly)
            ),
        ),
        LatencyFlip::Cleared { total_ms } => (
            crate::store::IncidentOp::Resolve,
            format!("{series} back to usual ({total_ms:.1} ms, 5 results in a row)"),
        ),
    };
    crate::incidents::rule_change(state, &subject_id, op, text).await
}

/// A committed batch's rows, on their way to judging.
#[derive(Debug)]
pub struct Judged {
    pub results: Vec<(String, String, CheckResult)>,
    pub metrics: Vec<(String, String, vantage_mqtt::HostMetrics)>,
}

/// Committed batches waiting to be judged, at most.
pub const JUDGE_QUEUE_BATCHES: usize = 16;

/// Judges committed batches in commit order: verdicts from results, host-metric rules from
/// metrics. Ingest hands batches over after each commit and goes on with the next; on
/// PostgreSQL the replica that leads also gets, through the live relay
/// ([`crate::livesync`]), what the other replicas committed. While another replica leads,
/// this one judges nothing ([`crate::lease::Lease::judges`]): with agents' rows spread
/// over replicas (a broker cluster's shared ingest), a check's regions meet in one place, and
/// one replica writes its transitions. A replica that starts to judge again forgets its
/// tracks first.
pub async fn judge_worker(state: AppState, mut queue: tokio::sync::mpsc::Receiver<Judged>) {
    let mut judged_last = state.lease.judges();
    while let Some(batch) = queue.recv().await {
        let judges = state.lease.judges();
        if judges && !judged_last {
            // What this replica judged before it stopped judging is stale: every track is
            // rebuilt from the store (stored verdict, latest stored results) on next use.
            state.judge.forget_all().await;
        }
        judged_last = judges;
        if !judges {
            continue;
        }
        if !batch.results.is_empty() {
            state.judge.observe(&state, &batch.results).await;
        }
        if !batch.metrics.is_empty() {
            state.rules.observe(&state, &batch.metrics).await;
        }
    }
}

/// Every 2 s (or at once when woken: check changes, agents coming and going): refreshes the
/// maintenance windows in force; on the replica that judges ([`crate::lease::Lease::judges`]),
/// re-judges every check when they changed or it was woken; on the leader, resolves the incidents of checks that stayed UP
/// long enough and queues reminders ([`crate::incidents::settle`]).
pub async fn worker(state: AppState) {
    loop {
        let woken =
            tokio::time::timeout(std::time::Duration::from_secs(2), state.rejudge.notified())
                .await
                .is_ok();
        if woken {
            // Changes arriving together share one run.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let changed = match crate::maintenance::Active::now(&state.store).await {
            Ok(active) => state.judge.set_maintenance(active),
            Err(error) => {
                tracing::warn!(%error, "Cannot read the maintenance windows");
                false
            }
        };
        if (woken || changed)
            && state.lease.judges()
            && let Err(error) = state.judge.rejudge_all(&state).await
        {
            tracing::warn!(%error, "Cannot re-judge the checks; retrying");
            state.rejudge.notify_one();
        }
        if state.lease.is_leader()
            && let Err(error) = crate::incidents::settle(&state).await
        {
            tracing::warn!(%error, "Cannot settle incidents; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(regions: &[&str], quorum: u32, retries: u32, recovery: u32) -> Policy {
        Policy {
            name: "check".into(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            quorum,
            retries,
            recovery,
            enabled: true,
            depends_on: Vec::new(),
            labels: BTreeMap::new(),
            anomaly_z: 0.0,
        }
    }

    fn result(ok: bool, at: i64) -> EvidenceResult {
        EvidenceResult {
            agent_id: "a1".into(),
            ok,
            reason: if ok {
                String::new()
            } else {
                "connection refused".into()
            },
            total_ms: 1.0,
            measured_at_ms: at,
        }
    }

    /// Feeds `outcomes` (true = ok) to a track under retries/recovery; returns `failing`
    /// after each.
    fn feed(outcomes: &[bool], retries: u32, recovery: u32) -> Vec<bool> {
        let mut track = RegionTrack::default();
        outcomes
            .iter()
            .enumerate()
            .map(|(i, ok)| {
                let at = i as i64 * 1000;
                assert!(track.observe(
                    (at, "a1".into(), i as u64),
                    result(*ok, at),
                    retries,
                    recovery
                ));
                track.failing
            })
            .collect()
    }

    #[test]
    fn a_region_fails_after_retries_and_recovers_after_recovery() {
        // retries 3: the third failure in a row makes it failing; a success in between resets.
        assert_eq!(
            feed(&[false, false, true, false, false, false], 3, 2),
            [false, false, false, false, false, true]
        );
        // recovery 2: one success is not enough, a failure resets the count.
        assert_eq!(
            feed(&[false, true, false, true, true], 1, 2),
            [true, true, true, true, false]
        );
        // Flapping every interval under retries 2 never fails.
        assert_eq!(
            feed(&[false, true, false, true, false, true], 2, 2),
            [false; 6]
        );
    }

    #[test]
    fn old_and_repeated_results_are_not_counted_twice() {
        let mut track = RegionTrack::default();
        assert!(track.observe((2000, "a1".into(), 5), result(false, 2000), 2, 1));
        // The same result again (a replay that overlaps) and an older one: ignored.
        assert!(!track.observe((2000, "a1".into(), 5), result(false, 2000), 2, 1));
        assert!(!track.observe((1000, "a1".into(), 4), result(false, 1000), 2, 1));
        assert_eq!(track.fail_streak, 1);
        assert!(!track.failing);
        // A second agent at the same millisecond still counts.
        assert!(track.observe((2000, "a2".into(), 1), result(false, 2000), 2, 1));
        assert!(track.failing);
    }

    fn tracks(failing: &[(&str, bool)]) -> BTreeMap<String, RegionTrack> {
        failing
            .iter()
            .map(|(region, failing)| {
                let mut track = RegionTrack::default();
                track.observe((1, "a".into(), 1), result(!failing, 1), 1, 1);
                ((*region).to_owned(), track)
            })
            .collect()
    }

    #[test]
    fn quorum_decides_down_and_fewer_failures_are_degraded_with_reasons() {
        let none = |_: &str| false;
        let no_maintenance = Maintenance {
            check_window: None,
            region: &none,
        };
        let judge = |p: &Policy, t: &BTreeMap<String, RegionTrack>, f: &dyn Fn(&str) -> bool| {
            judge(p, t, f, &no_maintenance)
        };
        let p = policy(&["eu", "us", "ap"], 2, 1, 1);
        let (state, reason, evidence) = judge(
            &p,
            &tracks(&[("eu", false), ("us", false), ("ap", false)]),
            &none,
        );
        assert_eq!(state, CheckState::Up);
        assert_eq!(reason, "no region failing (3 regions)");
        assert_eq!(evidence.len(), 3);
        let (state, reason, _) = judge(
            &p,
            &tracks(&[("eu", true), ("us", false), ("ap", false)]),
            &none,
        );
        assert_eq!(state, CheckState::Degraded);
        assert_eq!(
            reason,
            "1 of 3 regions failing, below the quorum of 2: eu: connection refused (1 in a row)"
        );
        let (state, reason, _) = judge(
            &p,
            &tracks(&[("eu", true), ("us", true), ("ap", false)]),
            &none,
        );
        assert_eq!(state, CheckState::Down);
        assert!(
            reason.starts_with("2 of 3 regions failing (quorum 2): eu: "),
            "{reason}"
        );
        assert!(reason.contains("us: connection refused"), "{reason}");
        // No result anywhere yet: pending. Paused wins over everything.
        let (state, _, _) = judge(&p, &BTreeMap::new(), &none);
        assert_eq!(state, CheckState::Pending);
        let paused = Policy {
            enabled: false,
            ..p.clone()
        };
        let (state, _, _) = judge(&paused, &tracks(&[("eu", true), ("us", true)]), &none);
        assert_eq!(state, CheckState::Paused);
        // A region on fallback is named.
        let (_, reason, evidence) = judge(&p, &tracks(&[("eu", false)]), &|r: &str| r == "ap");
        assert!(
            reason.ends_with("; degraded: fallback (the control plane runs it) in ap"),
            "{reason}"
        );
        assert!(evidence.iter().any(|e| e.region == "ap" && e.fallback));
    }

    #[test]
    fn maintenance_hides_a_region_or_the_whole_check() {
        let p = policy(&["eu", "us", "ap"], 2, 1, 1);
        let t = tracks(&[("eu", true), ("us", true), ("ap", false)]);
        let none = |_: &str| false;
        let eu = |r: &str| r == "eu";
        // eu in maintenance: only us counts, below the quorum.
        let (state, reason, evidence) = judge(
            &p,
            &t,
            &none,
            &Maintenance {
                check_window: None,
                region: &eu,
            },
        );
        assert_eq!(state, CheckState::Degraded, "{reason}");
        assert!(
            reason.ends_with("; in maintenance (not counted): eu"),
            "{reason}"
        );
        assert!(
            evidence
                .iter()
                .any(|e| e.region == "eu" && e.maintenance && e.failing)
        );
        // The whole check: MAINTENANCE, with what is underneath.
        let (state, reason, _) = judge(
            &p,
            &t,
            &none,
            &Maintenance {
                check_window: Some("db upgrade"),
                region: &none,
            },
        );
        assert_eq!(state, CheckState::Maintenance);
        assert!(
            reason.starts_with(
                "in maintenance window \"db upgrade\"; underneath: 2 of 3 regions failing"
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_latency_alert_needs_three_anomalies_in_a_row_and_five_normal_results_to_clear() {
        let mut track = LatencyTrack::new(6.0);
        let mut flips = Vec::new();
        // 30 results around 100 ms, then one spike (no alert), normal again, then three
        // spikes in a row (alert), then five normal results (cleared).
        let mut series: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 95.0 } else { 105.0 })
            .collect();
        series.extend([900.0, 100.0, 900.0, 950.0, 1000.0]);
        series.extend([100.0; 5]);
        for (i, total_ms) in series.iter().enumerate() {
            if let Some(flip) = track.observe(*total_ms) {
                flips.push((i, flip));
            }
        }
        assert_eq!(flips.len(), 2, "{flips:?}");
        assert_eq!(flips[0].0, 34);
        let LatencyFlip::Raised(anomaly) = &flips[0].1 else {
            panic!("{flips:?}")
        };
        assert!(anomaly.z >= 6.0 && anomaly.value == 1000.0, "{anomaly:?}");
        assert_eq!(flips[1], (39, LatencyFlip::Cleared { total_ms: 100.0 }));
    }

    #[test]
    fn majority_is_the_default_quorum() {
        let row = |n: usize, quorum: u32| CheckRow {
            id: "c".into(),
            name: "c".into(),
            kind: vantage_mqtt::CheckKind::Tcp(vantage_mqtt::TcpCheck::connect("h", 1)),
            interval_s: 60,
            timeout_ms: 1000,
            regions: (0..n).map(|i| format!("r{i}")).collect(),
            quorum,
            retries: 2,
            recovery: 2,
            agents_per_region: 1,
            depends_on: Vec::new(),
            labels: Default::default(),
            anomaly_z: 0.0,
            enabled: true,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let majority: Vec<u32> = (1..=5).map(|n| row(n, 0).effective_quorum()).collect();
        assert_eq!(majority, [1, 2, 2, 3, 3]);
        assert_eq!(row(3, 1).effective_quorum(), 1);
    }
}
