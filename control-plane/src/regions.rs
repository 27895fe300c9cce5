//! Regions as operators see them: each region's agents, how many are online, how many checks
//! are assigned there and whether some run on the control plane's fallback because no agent
//! of the region is online or its online agents are full. The API and the CLI call [`list`].

use serde::Serialize;
use vantage_mqtt::NodeState;

use crate::store::{Store, StoreError};

/// One agent of a region, briefly.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RegionAgent {
    pub id: String,
    pub state: NodeState,
    pub hostname: String,
    pub last_seen_ms: Option<i64>,
}

/// A region and what runs there.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RegionView {
    pub id: String,
    pub created_at_ms: i64,
    /// Unrevoked agents enrolled in the region.
    pub agents: Vec<RegionAgent>,
    pub n_online: usize,
    /// Enabled checks assigned to the region.
    pub n_checks: usize,
    /// Checks of the region the control plane runs itself (no agent online, or no room).
    pub n_fallback: usize,
    /// Of those, the checks the region's online agents had no room for.
    pub n_full: usize,
    /// `ok`, `degraded: fallback` (some checks run on the fallback), `degraded: fallback
    /// (agents full)` (some of them because the online agents had no room), or `empty` (no
    /// agent and no check).
    pub status: String,
}

/// Every region with its agents, online count, assigned checks and fallback standing, from
/// the store (the API and the CLI give the same answer).
///
/// # Errors
/// Store errors.
pub async fn list(store: &Store) -> Result<Vec<RegionView>, StoreError> {
    let regions = store.list_regions().await?;
    let agents = store.list_agents(None).await?;
    let checks = store.list_checks().await?;
    let plan = crate::assign::plan_of(&agents, &checks);
    Ok(regions
        .into_iter()
        .map(|region| {
            let members: Vec<RegionAgent> = agents
                .iter()
                .filter(|a| a.region == region.id && a.revoked_at_ms.is_none())
                .map(|a| RegionAgent {
                    id: a.id.clone(),
                    state: a.state,
                    hostname: a.hostname.clone(),
                    last_seen_ms: a.last_seen_ms,
                })
                .collect();
            let n_online = members
                .iter()
                .filter(|a| a.state == NodeState::Online)
                .count();
            let n_checks = plan.checks_per_region.get(&region.id).copied().unwrap_or(0);
            let n_fallback = plan
                .fallback
                .iter()
                .filter(|(_, r)| *r == region.id)
                .count();
            let n_full = plan.full.get(&region.id).copied().unwrap_or(0);
            let status = if n_full > 0 {
                "degraded: fallback (agents full)"
            } else if n_fallback > 0 {
                "degraded: fallback"
            } else if members.is_empty() && n_checks == 0 {
                "empty"
            } else {
                "ok"
            };
            RegionView {
                id: region.id,
                created_at_ms: region.created_at_ms,
                agents: members,
                n_online,
                n_checks,
                n_fallback,
                n_full,
                status: status.into(),
            }
        })
        .collect())
}
