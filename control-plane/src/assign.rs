//! Assignment: which agent runs which check, and each agent's retained desired config.
//!
//! Each (check, region) goes to `agents_per_region` of the region's healthy (online,
//! unrevoked) agents, chosen by rendezvous hashing on (check id, agent id): every agent gets a
//! stable score per check and the highest scores win, so an agent leaving moves only the
//! checks it held and an agent arriving takes only its own share.
//!
//! The load is bounded: an agent whose config would grow past [`MAX_CONFIG_BYTES`] (what an
//! agent accepts) is passed over for the next agent in the check's ranking. Checks are placed
//! in id order, so the outcome is the same on every run with the same agents. Only a region
//! whose agents are all full sends a check to the fallback, counted in [`Plan::full`].
//!
//! A (check, region) with no healthy agent with room is on fallback: [`Plan::fallback`] lists
//! them for the control plane's own executor and for the regions view. Each online agent's
//! desired config (its checks, intervals and a revision that increases with every change) is
//! stored and published retained on `agents/{id}/config`; an agent that is offline keeps its
//! last config until it is back. Runs are serialised by a lock so two concurrent changes
//! cannot interleave their revisions.
//!
//! A config is stored and published only when its content changed: the run keeps a digest of
//! what each agent was last given ([`Published`]), so an unchanged agent costs no encode, no
//! write and no publish (the retained copy in the broker is still current; after a restart
//! the control plane republishes every stored config once). API changes and agents coming and
//! going only wake the [`worker`]; changes within 50 ms share one run.
//!
//! [`ConfigBudget`] answers, in time independent of the number of checks, whether a new or
//! changed check still fits into what its regions' enrolled agents can hold together.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use vantage_mqtt::{
    AgentTopic, CheckSpec, DesiredConfig, MAX_CONFIG_BYTES, decode_limited, encode, topic,
};

use crate::AppState;
use crate::store::{AgentRow, CheckRow, OnlineAgent, Store, StoreError};

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
    choose_with_room(check, candidates, n, |_| true)
}

/// The `n` agents of `candidates` with the highest scores for `check` among those `has_room`
/// accepts, best first: a full agent is passed over for the next in the ranking.
pub fn choose_with_room<'a>(
    check: &str,
    candidates: &[&'a str],
    n: usize,
    mut has_room: impl FnMut(&str) -> bool,
) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = candidates
        .iter()
        .map(|agent| (rendezvous_score(check, agent), *agent))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored
        .into_iter()
        .map(|(_, agent)| agent)
        .filter(|agent| has_room(agent))
        .take(n)
        .collect()
}

/// The bytes of a config around its checks: version, revision, region (up to 64 bytes),
/// intervals, with room to spare.
const CONFIG_ENVELOPE_BYTES: usize = 256;

/// The bytes of checks one agent's config can hold.
pub const AGENT_ROOM_BYTES: usize = MAX_CONFIG_BYTES - CONFIG_ENVELOPE_BYTES;

/// What the last run decided, for readers outside the assignment lock.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// (check, region) pairs with no healthy agent with room: served by the fallback
    /// executor.
    pub fallback: Vec<(CheckSpec, String)>,
    /// The same pairs as (check id, region), for lookups.
    fallback_keys: HashSet<(String, String)>,
    /// Per region, how many of its fallback pairs are there because every healthy agent of
    /// the region was full (the others have no healthy agent at all).
    pub full: HashMap<String, usize>,
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
        self.fallback_keys
            .contains(&(check.to_owned(), region.to_owned()))
    }

    fn push_fallback(&mut self, spec: &CheckSpec, region: &str) {
        self.fallback_keys
            .insert((spec.id.clone(), region.to_owned()));
        self.fallback.push((spec.clone(), region.to_owned()));
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

/// Assigns every enabled check's regions to their healthy agents, `online` (see the module
/// docs).
fn compute<'a>(online: &'a [OnlineAgent], checks: &[CheckRow]) -> Computed<'a> {
    let mut healthy: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut per_agent: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for agent in online {
        healthy
            .entry(agent.region.as_str())
            .or_default()
            .push(agent.id.as_str());
        per_agent.entry(agent.id.as_str()).or_default();
    }
    let mut specs: Vec<(CheckSpec, u64)> = Vec::new();
    let mut assignments: HashMap<(String, String), String> = HashMap::new();
    let mut plan = Plan::default();
    // Bytes of checks each agent holds so far.
    let mut used: HashMap<&str, usize> = HashMap::new();
    let mut sorted: Vec<&CheckRow> = checks.iter().filter(|c| c.enabled).collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    for check in sorted {
        let spec = check.spec();
        let index = specs.len();
        let encoded = encode(&spec);
        let digest = bytes_digest(&encoded);
        // The check's share of a config: its encoding and a comma.
        let share = encoded.len() + 1;
        for region in &check.regions {
            *plan.checks_per_region.entry(region.clone()).or_default() += 1;
            let candidates = healthy.get(region.as_str()).map_or(&[][..], Vec::as_slice);
            let chosen = choose_with_room(
                &check.id,
                candidates,
                check.agents_per_region as usize,
                |agent| used.get(agent).copied().unwrap_or(0) + share <= AGENT_ROOM_BYTES,
            );
            if chosen.is_empty() {
                plan.push_fallback(&spec, region);
                if !candidates.is_empty() {
                    *plan.full.entry(region.clone()).or_default() += 1;
                }
            }
            for agent in chosen {
                *used.entry(agent).or_default() += share;
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
    compute(&OnlineAgent::of(agents), checks).plan
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

/// Recomputes every assignment and republishes the configs that changed. A replica that does
/// not hold the scheduling lease only recomputes its [`Plan`] (its regions view and verdicts
/// read it); storing and publishing configs is the leader's.
///
/// # Errors
/// Store errors; nothing is published for a run that failed.
pub async fn reconcile(state: &AppState) -> Result<(), StoreError> {
    let mut published = state.assign_lock.lock().await;
    let leads = state.lease.is_leader();
    if !leads {
        // What the leader published is not known here: re-read it when this replica leads.
        published.loaded = false;
    }
    if leads && !published.loaded {
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
    let online = state.store.online_agents().await?;
    let checks = state.store.list_checks().await?;
    let Computed {
        specs,
        assignments,
        mut per_agent,
        plan,
    } = compute(&online, &checks);
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
    if !leads {
        return Ok(());
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
    for agent in &online {
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

/// What a region's checks need of its agents' configs, kept up to date by the check writes of
/// the API, so a new check is tested without reading every check. Lock it across the store
/// write it guards, so two writes cannot both take the last room.
///
/// A region holds as many bytes of checks as its enrolled (unrevoked) agents can hold
/// together, [`AGENT_ROOM_BYTES`] each (at least one agent's worth, for a region whose first
/// agent is still to come). A check with `agents_per_region` = k takes k agents' room, or
/// every agent's when the region has fewer. Assignment spreads the checks with a bounded load
/// (see the module docs); when agents are offline and the online ones are full, the rest run
/// on the fallback and the region shows it.
#[derive(Debug, Default)]
pub struct ConfigBudget {
    /// Filled from the store on first use.
    loaded: bool,
    /// Each enabled check's regions, its share of a config (encoded spec plus a comma) and
    /// its agents per region.
    per_check: HashMap<String, (Vec<String>, usize, u32)>,
    /// Per region: bytes of its checks by agents per region, and how many checks there are.
    per_region: HashMap<String, (BTreeMap<u32, usize>, usize)>,
}

/// Why a check does not fit: the first region short of room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub region: String,
    /// Bytes the region's checks would need, counted once per agent that holds them.
    pub needed: usize,
    /// Bytes the region's enrolled agents can hold together.
    pub room: usize,
    pub n_agents: usize,
    pub n_checks: usize,
}

impl ConfigBudget {
    fn share(row: &CheckRow) -> Option<(Vec<String>, usize, u32)> {
        if !row.enabled {
            return None;
        }
        Some((
            row.regions.clone(),
            encode(&row.spec()).len() + 1,
            row.agents_per_region.max(1),
        ))
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

    /// Whether `row` (new, or replacing the check of the same id) still fits every one of its
    /// regions; when not, the first region short of room.
    ///
    /// # Errors
    /// Store errors.
    pub async fn over_limit(
        &mut self,
        store: &Store,
        row: &CheckRow,
    ) -> Result<Option<OverBudget>, StoreError> {
        self.load(store).await?;
        let Some((regions, len, per_region)) = Self::share(row) else {
            return Ok(None);
        };
        let old = self.per_check.get(&row.id);
        for region in &regions {
            let n_agents = store.count_agents_in_region(region).await?.max(1);
            let (mut by_k, mut n) = self.per_region.get(region).cloned().unwrap_or_default();
            if let Some((old_regions, old_len, old_k)) = old
                && old_regions.contains(region)
            {
                *by_k.entry(*old_k).or_default() -= old_len;
                n -= 1;
            }
            *by_k.entry(per_region).or_default() += len;
            let needed = Self::needed(&by_k, n_agents);
            let room = n_agents.saturating_mul(AGENT_ROOM_BYTES);
            if len > AGENT_ROOM_BYTES || needed > room {
                return Ok(Some(OverBudget {
                    region: region.clone(),
                    needed,
                    room,
                    n_agents,
                    n_checks: n + 1,
                }));
            }
        }
        Ok(None)
    }

    /// Bytes needed of `n_agents` agents by checks of `by_k` (bytes per agents-per-region).
    fn needed(by_k: &BTreeMap<u32, usize>, n_agents: usize) -> usize {
        by_k.iter()
            .map(|(k, bytes)| bytes.saturating_mul((*k as usize).min(n_agents)))
            .sum()
    }

    /// Records `row` as stored (created or replaced).
    pub fn apply(&mut self, row: &CheckRow) {
        self.remove(&row.id);
        if let Some((regions, len, k)) = Self::share(row) {
            for region in &regions {
                let entry = self.per_region.entry(region.clone()).or_default();
                *entry.0.entry(k).or_default() += len;
                entry.1 += 1;
            }
            self.per_check.insert(row.id.clone(), (regions, len, k));
        }
    }

    /// Records the check `id` as deleted.
    pub fn remove(&mut self, id: &str) {
        if let Some((regions, len, k)) = self.per_check.remove(id) {
            for region in regions {
                if let Some(entry) = self.per_region.get_mut(&region) {
                    if let Some(bytes) = entry.0.get_mut(&k) {
                        *bytes -= len;
                    }
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.per_region.remove(&region);
                    }
                }
            }
        }
    }
}

/// How often a replica sharing its store with others re-runs [`reconcile`] unwoken: agents
/// and checks that other replicas changed are not announced in this process.
pub const SHARED_RESYNC: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs [`reconcile`] whenever agents come and go and when this replica starts or stops
/// leading; changes arriving within 50 ms of each other share one run, so a thousand agents
/// reconnecting do not cause a thousand runs. When a run takes longer than 50 ms (thousands
/// of agents in a login storm) the next waits as long as it took, so assignment keeps to
/// about half a core however fast agents come and go. On a shared store it also runs every
/// [`SHARED_RESYNC`].
pub async fn worker(state: AppState) {
    let mut leading = state.lease.subscribe();
    let mut last_run = std::time::Duration::ZERO;
    loop {
        tokio::select! {
            () = state.reassign.notified() => {}
            // The sender lives in `state`: this never reports a closed channel.
            _ = leading.changed() => {}
            () = tokio::time::sleep(SHARED_RESYNC), if state.lease.is_shared() => {}
        }
        tokio::time::sleep(last_run.clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(5),
        ))
        .await;
        let started = std::time::Instant::now();
        let result = reconcile(&state).await;
        last_run = started.elapsed();
        if let Err(error) = result {
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

    fn agent(id: &str, region: &str, online: bool) -> AgentRow {
        AgentRow {
            state: if online {
                vantage_mqtt::NodeState::Online
            } else {
                vantage_mqtt::NodeState::Offline
            },
            ..AgentRow::enrolled(id.into(), region.into(), crate::store::Labels::default())
        }
    }

    fn tcp_checks(n: usize, regions: &[&str], agents_per_region: u32) -> Vec<CheckRow> {
        (0..n)
            .map(|i| {
                let body: crate::checks::CheckDefinition = serde_json::from_value(serde_json::json!({
                    "name": format!("port {i}"), "kind": {"type": "tcp", "host": "127.0.0.1", "port": 9},
                    "interval_s": 60, "timeout_ms": 1000, "regions": regions,
                    "agents_per_region": agents_per_region
                }))
                .unwrap();
                crate::checks::to_row(format!("ck-{i:06}"), &body, 0)
            })
            .collect()
    }

    /// Bytes per agent of a computed assignment, as the config encodes them.
    fn loads(computed: &Computed) -> HashMap<String, usize> {
        computed
            .per_agent
            .iter()
            .map(|(agent, indexes)| {
                let config = DesiredConfig {
                    v: vantage_mqtt::PROTOCOL_VERSION,
                    revision: u64::MAX,
                    region: "r".repeat(64),
                    metrics_interval_s: 86_400,
                    heartbeat_interval_s: 86_400,
                    checks: indexes
                        .iter()
                        .map(|i| computed.specs[*i].0.clone())
                        .collect(),
                };
                ((*agent).to_owned(), encode(&config).len())
            })
            .collect()
    }

    #[test]
    fn a_full_agent_passes_its_checks_on_and_only_a_full_region_falls_back() {
        let share = encode(&tcp_checks(1, &["eu"], 1)[0].spec()).len() + 1;
        let per_agent = AGENT_ROOM_BYTES / share;
        // Two online agents and one offline in eu; more checks than two agents hold.
        let agents = vec![
            agent("a1", "eu", true),
            agent("a2", "eu", true),
            agent("a3", "eu", false),
        ];
        let checks = tcp_checks(per_agent * 2 + 500, &["eu"], 1);
        let online = OnlineAgent::of(&agents);
        let computed = compute(&online, &checks);
        for (agent, bytes) in loads(&computed) {
            assert!(bytes <= MAX_CONFIG_BYTES, "{agent}: {bytes}-byte config");
            // Rendezvous alone would give each about half; the bounded load fills both.
            assert!(
                bytes > MAX_CONFIG_BYTES - 2 * share,
                "{agent} left room: {bytes}"
            );
        }
        let placed = computed.assignments.len();
        let on_fallback = computed.plan.fallback.len();
        assert_eq!(placed + on_fallback, checks.len());
        assert!(
            (400..=600).contains(&on_fallback),
            "{on_fallback} on fallback"
        );
        assert_eq!(computed.plan.full.get("eu"), Some(&on_fallback));
        // A check on fallback is one the agents had no room for.
        let (spec, region) = &computed.plan.fallback[0];
        assert!(computed.plan.on_fallback(&spec.id, region));
        assert!(
            !computed
                .assignments
                .contains_key(&(spec.id.clone(), "a1".into()))
        );

        // The third agent back: everything fits, nothing on fallback.
        let agents: Vec<AgentRow> = ["a1", "a2", "a3"]
            .iter()
            .map(|a| agent(a, "eu", true))
            .collect();
        let online = OnlineAgent::of(&agents);
        let computed = compute(&online, &checks);
        assert!(computed.plan.fallback.is_empty());
        assert!(computed.plan.full.is_empty());
        assert_eq!(computed.assignments.len(), checks.len());

        // A region with no online agent falls back without counting as full.
        let agents = vec![agent("b1", "us", false)];
        let online = OnlineAgent::of(&agents);
        let computed = compute(&online, &tcp_checks(3, &["us"], 1));
        assert_eq!(computed.plan.fallback.len(), 3);
        assert!(computed.plan.full.is_empty());
    }

    #[test]
    fn below_the_bound_an_agent_leaving_moves_only_its_share() {
        let checks = tcp_checks(3000, &["eu", "us"], 2);
        let all: Vec<AgentRow> = (0..6)
            .map(|i| agent(&format!("a{i}"), if i < 3 { "eu" } else { "us" }, true))
            .collect();
        let online = OnlineAgent::of(&all);
        let before = compute(&online, &checks).assignments;
        let mut without = all.clone();
        without[1].state = vantage_mqtt::NodeState::Offline;
        let online = OnlineAgent::of(&without);
        let after = compute(&online, &checks).assignments;
        let lost: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        assert!(!lost.is_empty());
        assert!(lost.iter().all(|(_, agent)| agent == "a1"), "{lost:?}");
        assert_eq!(
            before.len(),
            after.len(),
            "a1's share went to eu's other agents"
        );
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
