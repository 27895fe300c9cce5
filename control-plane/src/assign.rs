//! Assignment: which agent runs which check, and each agent's retained desired config.
//!
//! Each (check, region) goes to `agents_per_region` of the region's healthy (online,
//! unrevoked) agents, chosen by rendezvous hashing on (check id, agent id): every agent gets a
//! stable score per check and the highest scores win, so an agent leaving moves only the
//! checks it held and an agent arriving takes only its own share. A (check, region) with no
//! healthy agent is on fallback: [`Plan::fallback`] lists them for the control plane's own
//! executor and for the regions view. Each online agent's desired config (its checks, intervals and a revision that increases
//! with every change) is stored and published retained on `agents/{id}/config`; an agent
//! that is offline keeps its last config until it is back. Runs are serialised by a lock so
//! two concurrent changes cannot interleave their revisions.
//!
//! A config is stored and published only when its content changed: the run keeps a digest of
//! what each agent was last given ([`Published`]), so an unchanged agent costs no encode, no
//! write and no publish (the retained copy in the broker is still current; after a restart
//! the control plane republishes every stored config once). API changes and agents coming and
//! going only wake the [`worker`]; changes within 50 ms share one run.
//!
//! [`ConfigBudget`] answers, in time independent of the number of checks, whether a new or
//! changed check still fits every region's config under [`MAX_CONFIG_BYTES`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use vantage_mqtt::{
    AgentTopic, CheckSpec, DesiredConfig, MAX_CONFIG_BYTES, decode_limited, encode, topic,
};

use crate::AppState;
use crate::store::{AgentRow, CheckRow, Store, StoreError};

/// A stable 64-bit score of (check, agent) for rendezvous hashing: FNV-1a over both ids,
/// then a SplitMix64 finaliser so nearby ids spread. Fixed here (not `DefaultHasher`), so the
/// choice survives a new Rust version and a restart.
pub fn rendezvous_score(check: &str, agent: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in check.bytes().chain([0xff]).chain(agent.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The `n` agents of `candidates` (ids) with the highest scores for `check`, best first.
pub fn choose<'a>(check: &str, candidates: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = candidates
        .iter()
        .map(|agent| (rendezvous_score(check, agent), *agent))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(n).map(|(_, agent)| agent).collect()
}

/// What the last run decided, for readers outside the assignment lock.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// (check, region) pairs with no healthy agent: served by the fallback executor.
    pub fallback: Vec<(CheckSpec, String)>,
    /// Per region, the enabled checks assigned there (to agents or to the fallback).
    pub checks_per_region: HashMap<String, usize>,
}

impl Plan {
    /// Whether `region` has a check on fallback.
    pub fn region_on_fallback(&self, region: &str) -> bool {
        self.fallback.iter().any(|(_, r)| r == region)
    }

    /// Whether (check, region) is on fallback.
    pub fn on_fallback(&self, check: &str, region: &str) -> bool {
        self.fallback
            .iter()
            .any(|(spec, r)| spec.id == check && r == region)
    }
}

/// What one assignment run decides from the agents and checks.
struct Computed<'a> {
    /// Each enabled check's spec and the digest of its encoding.
    specs: Vec<(CheckSpec, u64)>,
    /// (check, agent) → region.
    assignments: HashMap<(String, String), String>,
    /// Each online agent's checks, as indexes into `specs`.
    per_agent: BTreeMap<&'a str, Vec<usize>>,
    plan: Plan,
}

/// Assigns every enabled check's regions to their healthy agents (see the module docs).
fn compute<'a>(agents: &'a [AgentRow], checks: &[CheckRow]) -> Computed<'a> {
    let online = || {
        agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none() && a.state == vantage_mqtt::NodeState::Online)
    };
    let mut healthy: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut per_agent: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for agent in online() {
        healthy
            .entry(agent.region.as_str())
            .or_default()
            .push(agent.id.as_str());
        per_agent.entry(agent.id.as_str()).or_default();
    }
    let mut specs: Vec<(CheckSpec, u64)> = Vec::new();
    let mut assignments: HashMap<(String, String), String> = HashMap::new();
    let mut plan = Plan::default();
    for check in checks.iter().filter(|c| c.enabled) {
        let spec = check.spec();
        let index = specs.len();
        let digest = bytes_digest(&encode(&spec));
        for region in &check.regions {
            *plan.checks_per_region.entry(region.clone()).or_default() += 1;
            let candidates = healthy.get(region.as_str()).map_or(&[][..], Vec::as_slice);
            let chosen = choose(&check.id, candidates, check.agents_per_region as usize);
            if chosen.is_empty() {
                plan.fallback.push((spec.clone(), region.clone()));
            }
            for agent in chosen {
                assignments.insert((check.id.clone(), agent.to_owned()), region.clone());
                per_agent.entry(agent).or_default().push(index);
            }
        }
        specs.push((spec, digest));
    }
    Computed {
        specs,
        assignments,
        per_agent,
        plan,
    }
}

/// The plan the stored agents and checks give: which (check, region) pairs have no healthy
/// agent, and how many checks each region holds. The CLI reads it without a running
/// control plane; the control plane keeps the same plan in `AppState::plan`.
pub fn plan_of(agents: &[AgentRow], checks: &[CheckRow]) -> Plan {
    compute(agents, checks).plan
}

/// What the last run left, held by the assignment lock: digests of the configs last given to
/// each agent, and the stored assignments, so a run writes only what changed.
#[derive(Debug, Default)]
pub struct Published {
    /// Filled from the store on the first run.
    loaded: bool,
    by_agent: HashMap<String, u64>,
    /// (check, agent) → region, as stored.
    assignments: HashMap<(String, String), String>,
}

/// The digest of a config's content (everything but its revision).
fn config_digest(region: &str, metrics_s: u32, heartbeat_s: u32, check_digests: &[u64]) -> u64 {
    let mut hasher = DefaultHasher::new();
    (region, metrics_s, heartbeat_s, check_digests).hash(&mut hasher);
    hasher.finish()
}

fn bytes_digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn digest_of(config: &DesiredConfig) -> u64 {
    let checks: Vec<u64> = config
        .checks
        .iter()
        .map(|c| bytes_digest(&encode(c)))
        .collect();
    config_digest(
        &config.region,
        config.metrics_interval_s,
        config.heartbeat_interval_s,
        &checks,
    )
}

/// Recomputes every assignment and republishes the configs that changed.
///
/// # Errors
/// Store errors; nothing is published for a run that failed.
pub async fn reconcile(state: &AppState) -> Result<(), StoreError> {
    let mut published = state.assign_lock.lock().await;
    if !published.loaded {
        for stored in state.store.desired_configs().await? {
            if let Ok(config) =
                decode_limited::<DesiredConfig>(stored.config_json.as_bytes(), MAX_CONFIG_BYTES)
            {
                published
                    .by_agent
                    .insert(stored.agent_id, digest_of(&config));
            }
        }
        published.assignments = state
            .store
            .list_assignments()
            .await?
            .into_iter()
            .map(|row| ((row.check_id, row.agent_id), row.region))
            .collect();
        published.loaded = true;
    }
    let agents = state.store.list_agents(None).await?;
    let checks = state.store.list_checks().await?;
    let Computed {
        specs,
        assignments,
        mut per_agent,
        plan,
    } = compute(&agents, &checks);
    let online = || {
        agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none() && a.state == vantage_mqtt::NodeState::Online)
    };
    let n_fallback = plan.fallback.len();
    let old = state.plan.send_replace(std::sync::Arc::new(plan));
    let fallback_changed = {
        let new = state.plan.borrow();
        let pairs = |p: &Plan| {
            p.fallback
                .iter()
                .map(|(spec, region)| (spec.id.clone(), region.clone()))
                .collect::<Vec<_>>()
        };
        pairs(&old) != pairs(&new)
    };
    if fallback_changed {
        state.rejudge.notify_one();
    }
    if n_fallback > 0 {
        tracing::debug!(
            n_fallback,
            "Checks on fallback (regions without a healthy agent)"
        );
    }
    let added: Vec<(String, String, String)> = assignments
        .iter()
        .filter(|(key, region)| published.assignments.get(*key) != Some(*region))
        .map(|((check, agent), region)| (check.clone(), agent.clone(), region.clone()))
        .collect();
    let removed: Vec<(String, String)> = published
        .assignments
        .iter()
        .filter(|(key, region)| assignments.get(*key) != Some(*region))
        .map(|(key, _)| key.clone())
        .collect();
    state.store.change_assignments(&added, &removed).await?;
    published.assignments = assignments;

    let (metrics_s, heartbeat_s) = (
        state.settings.metrics_interval_s,
        state.settings.heartbeat_interval_s,
    );
    for agent in online() {
        let indexes = per_agent.remove(agent.id.as_str()).unwrap_or_default();
        let digests: Vec<u64> = indexes.iter().map(|i| specs[*i].1).collect();
        let digest = config_digest(&agent.region, metrics_s, heartbeat_s, &digests);
        if published.by_agent.get(&agent.id) == Some(&digest) {
            // Unchanged: the broker's retained copy is current.
            continue;
        }
        let mut config = DesiredConfig {
            v: vantage_mqtt::PROTOCOL_VERSION,
            revision: 0,
            region: agent.region.clone(),
            metrics_interval_s: metrics_s,
            heartbeat_interval_s: heartbeat_s,
            checks: indexes.iter().map(|i| specs[*i].0.clone()).collect(),
        };
        // Encoded once: stored and published as is. The API refuses checks that would
        // overflow a region's config; should one slip through (concurrent changes), the
        // agent keeps its last config rather than receive one it must refuse.
        let n_checks = config.checks.len();
        let mut size = 0;
        let bumped = state
            .store
            .bump_desired_config(&agent.id, |revision| {
                config.revision = revision as u64;
                let text = String::from_utf8(encode(&config)).unwrap_or_default();
                size = text.len();
                (size <= MAX_CONFIG_BYTES).then_some(text)
            })
            .await?;
        let Some((revision, text)) = bumped else {
            tracing::error!(agent = %agent.id, size, limit = MAX_CONFIG_BYTES, n_checks, "Desired config over the size limit; not published");
            state
                .counters
                .config_too_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        tracing::info!(agent = %agent.id, revision, n_checks, "Desired config changed");
        published.by_agent.insert(agent.id.clone(), digest);
        let _ = state
            .publisher
            .publish(
                &topic::agent(&agent.id, AgentTopic::Config),
                text.into_bytes(),
                true,
            )
            .await;
    }
    Ok(())
}

/// The bytes every region's config would hold, kept up to date by the check writes of the
/// API, so a new check is tested against [`MAX_CONFIG_BYTES`] without reading every check.
/// Lock it across the store write it guards, so two writes cannot both take the last room.
#[derive(Debug, Default)]
pub struct ConfigBudget {
    /// Filled from the store on first use.
    loaded: bool,
    /// Each enabled check's regions and its share of a config (encoded spec plus a comma).
    per_check: HashMap<String, (Vec<String>, usize)>,
    /// Per region: bytes of its checks and how many there are.
    per_region: HashMap<String, (usize, usize)>,
}

/// The envelope of a config: version, revision, region, intervals.
const CONFIG_ENVELOPE_BYTES: usize = 160;

impl ConfigBudget {
    fn share(row: &CheckRow) -> Option<(Vec<String>, usize)> {
        if !row.enabled {
            return None;
        }
        Some((row.regions.clone(), encode(&row.spec()).len() + 1))
    }

    async fn load(&mut self, store: &Store) -> Result<(), StoreError> {
        if self.loaded {
            return Ok(());
        }
        for row in store.list_checks().await? {
            self.apply(&row);
        }
        self.loaded = true;
        Ok(())
    }

    /// Whether `row` (new, or replacing the check of the same id) keeps every one of its
    /// regions' configs within [`MAX_CONFIG_BYTES`]; when not, the first region over it, its
    /// would-be size and number of checks.
    ///
    /// # Errors
    /// Store errors while loading.
    pub async fn over_limit(
        &mut self,
        store: &Store,
        row: &CheckRow,
    ) -> Result<Option<(String, usize, usize)>, StoreError> {
        self.load(store).await?;
        let Some((regions, len)) = Self::share(row) else {
            return Ok(None);
        };
        let old = self.per_check.get(&row.id);
        for region in &regions {
            let (mut size, mut n) = self.per_region.get(region).copied().unwrap_or((0, 0));
            if let Some((old_regions, old_len)) = old
                && old_regions.contains(region)
            {
                size -= old_len;
                n -= 1;
            }
            let (size, n) = (CONFIG_ENVELOPE_BYTES + size + len, n + 1);
            if size > MAX_CONFIG_BYTES {
                return Ok(Some((region.clone(), size, n)));
            }
        }
        Ok(None)
    }

    /// Records `row` as stored (created or replaced).
    pub fn apply(&mut self, row: &CheckRow) {
        self.remove(&row.id);
        if let Some((regions, len)) = Self::share(row) {
            for region in &regions {
                let entry = self.per_region.entry(region.clone()).or_default();
                entry.0 += len;
                entry.1 += 1;
            }
            self.per_check.insert(row.id.clone(), (regions, len));
        }
    }

    /// Records the check `id` as deleted.
    pub fn remove(&mut self, id: &str) {
        if let Some((regions, len)) = self.per_check.remove(id) {
            for region in regions {
                if let Some(entry) = self.per_region.get_mut(&region) {
                    entry.0 -= len;
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.per_region.remove(&region);
                    }
                }
            }
        }
    }
}

/// Runs [`reconcile`] whenever agents come and go; changes arriving within 50 ms of each
/// other share one run, so a thousand agents reconnecting do not cause a thousand runs.
pub async fn worker(state: AppState) {
    loop {
        state.reassign.notified().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if let Err(error) = reconcile(&state).await {
            tracing::warn!(%error, "Reassignment failed; retrying in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            state.reassign.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_leaving_agents_share() {
        let agents: Vec<String> = (0..10).map(|i| format!("agent-{i}")).collect();
        let all: Vec<&str> = agents.iter().map(String::as_str).collect();
        let without: Vec<&str> = all.iter().copied().filter(|a| *a != "agent-3").collect();
        let (mut moved, mut held_by_3) = (0, 0);
        let mut per_agent: HashMap<&str, usize> = HashMap::new();
        for c in 0..2000 {
            let check = format!("ck-{c}");
            let before = choose(&check, &all, 2);
            let after = choose(&check, &without, 2);
            for agent in &before {
                *per_agent.entry(agent).or_default() += 1;
            }
            if before.contains(&"agent-3") {
                held_by_3 += 1;
                // The survivor keeps its slot; agent-3's slot goes to the next best.
                let survivor: Vec<&&str> = before.iter().filter(|a| **a != "agent-3").collect();
                assert!(
                    after.contains(survivor[0]),
                    "{check}: {before:?} → {after:?}"
                );
                assert_eq!(after.len(), 2);
            } else {
                assert_eq!(before, after, "{check} moved though its agents stayed");
            }
            moved += before.iter().filter(|a| !after.contains(a)).count();
        }
        // Only agent-3's slots moved, and the load is spread: 2000 × 2 / 10 = 400 each.
        assert_eq!(moved, held_by_3);
        for (agent, n) in per_agent {
            assert!((300..=500).contains(&n), "{agent} holds {n} of 4000 slots");
        }
        // Asking for more agents than there are gives every one of them.
        assert_eq!(choose("ck", &["a", "b"], 5).len(), 2);
        assert!(choose("ck", &[], 1).is_empty());
    }

    #[test]
    fn scores_are_fixed_across_builds() {
        // Pinned: a change here would reshuffle every fleet's assignments on upgrade.
        assert_eq!(
            rendezvous_score("ck-1", "agent-1"),
            rendezvous_score("ck-1", "agent-1")
        );
        assert_ne!(
            rendezvous_score("ck-1", "agent-1"),
            rendezvous_score("ck-1", "agent-2")
        );
        assert_ne!(rendezvous_score("ab", "c"), rendezvous_score("a", "bc"));
    }
}
