//! The dashboard's overview in one compact answer: every check's name, labels, regions and
//! state, and each (check, region)'s failing and maintenance flags and latest outcome, in a
//! fraction of the bytes of the three lists it replaces (checks, verdicts, latest results).
//!
//! Each check is one array, `[id, name, enabled, labels, state, reason, cells]`, and each of
//! its regions one cell `[region index, flags, measured_at_ms]` with the flags
//! [`FAILING`], [`MAINTENANCE`], [`HAS_LATEST`] and [`LATEST_OK`]; `measured_at_ms` is 0
//! when there is no latest result.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use vantage_mqtt::{CheckState, CheckVerdictView};

use crate::store::{Labels, Store, StoreError};

/// The region counts as failing in the verdict.
pub const FAILING: u8 = 1;
/// The region is in a maintenance window.
pub const MAINTENANCE: u8 = 2;
/// The (check, region) has a latest result.
pub const HAS_LATEST: u8 = 4;
/// ... and it succeeded.
pub const LATEST_OK: u8 = 8;

/// One region of a check: `[region index, flags, measured_at_ms]`.
pub type Cell = (u16, u8, i64);

/// One check: `[id, name, enabled, labels, state, reason, cells]` (`state` is `pending` before
/// the first verdict, `reason` then empty).
pub type Row = (String, String, bool, Labels, CheckState, String, Vec<Cell>);

/// The overview.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Overview {
    pub v: u32,
    /// Every region: those stored and those checks name, sorted.
    pub regions: Vec<String>,
    /// The layout of a row and of a cell, for readers of the raw answer.
    pub layout: [&'static str; 2],
    pub checks: Vec<Row>,
}

/// Builds the overview from the store. `scrub` is applied to each verdict's reason (viewers
/// get URLs without credentials).
///
/// # Errors
/// Store errors.
pub async fn build(store: &Store, scrub: impl Fn(&str) -> String) -> Result<Overview, StoreError> {
    let checks = store.list_checks().await?;
    let verdicts: HashMap<String, CheckVerdictView> = store
        .list_verdicts()
        .await?
        .into_iter()
        .map(|v| (v.check_id.clone(), v))
        .collect();
    let mut latest: HashMap<(String, String), (bool, i64)> = HashMap::new();
    for row in store.list_check_status().await? {
        latest.insert((row.check_id, row.region), (row.ok, row.measured_at_ms));
    }
    let mut names: BTreeSet<String> = store
        .list_regions()
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    for check in &checks {
        names.extend(check.regions.iter().cloned());
    }
    let regions: Vec<String> = names.into_iter().collect();
    let index: HashMap<&str, u16> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), u16::try_from(i).unwrap_or(u16::MAX)))
        .collect();
    let mut rows = Vec::with_capacity(checks.len());
    for check in checks {
        let verdict = verdicts.get(&check.id);
        let cells = check
            .regions
            .iter()
            .map(|region| {
                let evidence = verdict.and_then(|v| v.regions.iter().find(|e| &e.region == region));
                let mut flags = 0;
                if evidence.is_some_and(|e| e.failing) {
                    flags |= FAILING;
                }
                if evidence.is_some_and(|e| e.maintenance) {
                    flags |= MAINTENANCE;
                }
                // The latest stored result, else the one the verdict last saw.
                let last = latest
                    .get(&(check.id.clone(), region.clone()))
                    .copied()
                    .or_else(|| {
                        evidence
                            .and_then(|e| e.last.as_ref())
                            .map(|l| (l.ok, l.measured_at_ms))
                    });
                let at = match last {
                    Some((ok, at)) => {
                        flags |= HAS_LATEST | if ok { LATEST_OK } else { 0 };
                        at
                    }
                    None => 0,
                };
                (index.get(region.as_str()).copied().unwrap_or(0), flags, at)
            })
            .collect();
        let (state, reason) = match verdict {
            Some(v) => (v.state, scrub(&v.reason)),
            None => (CheckState::Pending, String::new()),
        };
        rows.push((
            check.id,
            check.name,
            check.enabled,
            check.labels,
            state,
            reason,
            cells,
        ));
    }
    Ok(Overview {
        v: vantage_mqtt::PROTOCOL_VERSION,
        regions,
        layout: [
            "check: [id, name, enabled, labels, state, reason, cells]",
            "cell: [region index, flags (1 failing, 2 maintenance, 4 has latest, 8 latest ok), measured_at_ms]",
        ],
        checks: rows,
    })
}
