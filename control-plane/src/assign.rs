//! Assignment: which agent runs which check, and each agent's retained desired config.
//!
//! A check with regions [..] is assigned to every online, unrevoked agent of those regions.
//! Each online agent's desired config (its checks, intervals and a revision that increases
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
    AgentTopic, CheckKind, CheckSpec, DesiredConfig, MAX_CONFIG_BYTES, decode_limited, encode,
    topic,
};

use crate::AppState;
use crate::store::{CheckRow, Store, StoreError};

/// The wire spec of a stored check, if its stored JSON is readable.
pub fn check_spec(check: &CheckRow) -> Option<CheckSpec> {
    let kind: CheckKind = serde_json::from_str(&check.spec).ok()?;
    Some(CheckSpec {
        id: check.id.clone(),
        interval_s: u32::try_from(check.interval_s).ok()?,
        timeout_ms: u32::try_from(check.timeout_ms).ok()?,
        kind,
    })
}

/// The regions of a stored check.
pub fn check_regions(check: &CheckRow) -> Vec<String> {
    serde_json::from_str(&check.regions).unwrap_or_default()
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
    let online = || {
        agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none() && a.state == vantage_mqtt::NodeState::Online)
    };

    // Each check's spec and digest, once per run.
    let mut per_agent: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for agent in online() {
        per_agent.entry(agent.id.as_str()).or_default();
    }
    let mut specs: Vec<(CheckSpec, u64)> = Vec::new();
    let mut assignments: HashMap<(String, String), String> = HashMap::new();
    for check in checks.iter().filter(|c| c.enabled) {
        let Some(spec) = check_spec(check) else {
            tracing::warn!(check = %check.id, "Stored check does not parse; not assigned");
            continue;
        };
        let regions = check_regions(check);
        let index = specs.len();
        let digest = bytes_digest(&encode(&spec));
        specs.push((spec, digest));
        for agent in online().filter(|a| regions.contains(&a.region)) {
            assignments.insert((check.id.clone(), agent.id.clone()), agent.region.clone());
            per_agent.entry(agent.id.as_str()).or_default().push(index);
        }
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
        let spec = check_spec(row)?;
        Some((check_regions(row), encode(&spec).len() + 1))
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
