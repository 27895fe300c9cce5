//! Maintenance windows: when checks, regions or agents are expected to be down, so they
//! neither open incidents nor notify anyone.
//!
//! A window is one-off (`starts_at_ms`..`ends_at_ms`) or weekly (days of the week, a start
//! time of day in UTC and a duration; a window may run past midnight). Its scope names checks,
//! check labels, regions and agent labels; a check is in maintenance when it is named or
//! carries every label of `check_labels` (state MAINTENANCE: judged, shown, never notified);
//! a region in maintenance does not count as failing for any check and raises no region
//! incident; an agent carrying every label of `agent_labels`, or in a region in maintenance,
//! raises no agent incident. [`Active`] is the set in force at one instant; the verdict worker
//! recomputes it every tick and re-judges when it changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vantage_mqtt::topic;

use crate::AppState;
use crate::store::{AgentRow, StoreError, now_ms, random_id};

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Days since Monday.
    fn index(self) -> i64 {
        match self {
            Weekday::Mon => 0,
            Weekday::Tue => 1,
            Weekday::Wed => 2,
            Weekday::Thu => 3,
            Weekday::Fri => 4,
            Weekday::Sat => 5,
            Weekday::Sun => 6,
        }
    }
}

/// When a window is in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    Once {
        starts_at_ms: i64,
        ends_at_ms: i64,
    },
    Weekly {
        days: Vec<Weekday>,
        /// Start time of day in UTC, `HH:MM`.
        start_utc: String,
        duration_min: u32,
    },
}

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-01 was a Thursday: days from the epoch's Monday.
const EPOCH_WEEKDAY: i64 = 3;

fn parse_hh_mm(text: &str) -> Option<i64> {
    let (hours, minutes) = text.split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    ((0..24).contains(&hours) && (0..60).contains(&minutes) && text.len() == 5)
        .then_some((hours * 60 + minutes) * 60_000)
}

impl Schedule {
    /// Whether the window is in force at `at_ms`.
    pub fn active_at(&self, at_ms: i64) -> bool {
        match self {
            Schedule::Once {
                starts_at_ms,
                ends_at_ms,
            } => (*starts_at_ms..*ends_at_ms).contains(&at_ms),
            Schedule::Weekly {
                days,
                start_utc,
                duration_min,
            } => {
                let Some(start_of_day) = parse_hh_mm(start_utc) else {
                    return false;
                };
                let duration = i64::from(*duration_min) * 60_000;
                // Milliseconds since the most recent Monday 00:00 UTC.
                let in_week = (at_ms + EPOCH_WEEKDAY * DAY_MS).rem_euclid(WEEK_MS);
                days.iter().any(|day| {
                    let start = day.index() * DAY_MS + start_of_day;
                    // This week's occurrence, or last week's running into this one.
                    let since = (in_week - start).rem_euclid(WEEK_MS);
                    since < duration
                })
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Schedule::Once {
                starts_at_ms,
                ends_at_ms,
            } => {
                if ends_at_ms <= starts_at_ms {
                    return Err("ends_at_ms must be after starts_at_ms".into());
                }
                if ends_at_ms - starts_at_ms > 366 * DAY_MS {
                    return Err("a one-off window lasts at most a year".into());
                }
                Ok(())
            }
            Schedule::Weekly {
                days,
                start_utc,
                duration_min,
            } => {
                if days.is_empty() || days.len() > 7 {
                    return Err("days must name 1 to 7 days".into());
                }
                if parse_hh_mm(start_utc).is_none() {
                    return Err(format!("start_utc {start_utc:?} must be HH:MM (UTC)"));
                }
                if !(1..=7 * 24 * 60).contains(duration_min) {
                    return Err("duration_min must be 1..=10080".into());
                }
                Ok(())
            }
        }
    }
}

/// What a window covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_labels: BTreeMap<String, String>,
}

fn has_labels(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Scope {
    /// Whether the window covers the check `id` with `labels` (by id or by label).
    pub fn covers_check(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.checks.iter().any(|c| c == id) || has_labels(labels, &self.check_labels)
    }

    fn covers_agent(&self, agent: &AgentRow) -> bool {
        self.regions.contains(&agent.region) || has_labels(&agent.labels.0, &self.agent_labels)
    }
}

/// A maintenance window as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub schedule: Schedule,
    pub scope: Scope,
}

/// Why a window could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("maintenance window {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a window.
///
/// # Errors
/// [`MaintenanceError::Invalid`] naming the field.
pub fn validate(window: &Window) -> Result<(), MaintenanceError> {
    let invalid = |m: String| Err(MaintenanceError::Invalid(m));
    if let Some(id) = &window.id
        && !topic::valid_id(id)
    {
        return invalid("id must be 1-64 of a-z 0-9 - _ .".into());
    }
    if window.name.trim().is_empty()
        || window.name.len() > 255
        || window.name.chars().any(char::is_control)
    {
        return invalid("name must be 1-255 printable characters".into());
    }
    window
        .schedule
        .validate()
        .map_err(MaintenanceError::Invalid)?;
    let scope = &window.scope;
    if scope.checks.is_empty()
        && scope.check_labels.is_empty()
        && scope.regions.is_empty()
        && scope.agent_labels.is_empty()
    {
        return invalid("scope must name checks, check_labels, regions or agent_labels".into());
    }
    let ids = scope.checks.iter().chain(&scope.regions);
    let keys = scope.check_labels.keys().chain(scope.agent_labels.keys());
    if scope.checks.len() + scope.regions.len() > 1000 {
        return invalid("scope may name at most 1000 checks and regions".into());
    }
    if let Some(bad) = ids.chain(keys).find(|id| !topic::valid_id(id)) {
        return invalid(format!("scope: {bad:?} is not a valid id"));
    }
    Ok(())
}

/// Stores a window (id generated when absent).
///
/// # Errors
/// Invalid, or the store.
pub async fn create(state: &AppState, mut window: Window) -> Result<Window, MaintenanceError> {
    validate(&window)?;
    let id = window.id.clone().unwrap_or_else(|| random_id("mw-", 6));
    window.id = Some(id.clone());
    let definition = serde_json::to_string(&window).unwrap_or_default();
    state
        .store
        .insert_maintenance(&id, &window.name, &definition, now_ms())
        .await?;
    state.rejudge.notify_one();
    Ok(window)
}

/// Every stored window that decodes (a corrupt one is logged and left out).
///
/// # Errors
/// The store.
pub async fn list(state: &AppState) -> Result<Vec<Window>, StoreError> {
    load(&state.store).await
}

/// [`list`] from a store.
///
/// # Errors
/// The store.
pub async fn list_from(store: &crate::store::Store) -> Result<Vec<Window>, StoreError> {
    load(store).await
}

async fn load(store: &crate::store::Store) -> Result<Vec<Window>, StoreError> {
    Ok(store
        .list_maintenance()
        .await?
        .into_iter()
        .filter_map(|(id, definition)| match serde_json::from_str::<Window>(&definition) {
            Ok(window) => Some(window),
            Err(error) => {
                tracing::error!(window = %id, %error, "Stored maintenance window does not decode; ignored");
                None
            }
        })
        .collect())
}

/// Deletes a window.
///
/// # Errors
/// Not found, or the store.
pub async fn delete(state: &AppState, id: &str) -> Result<(), MaintenanceError> {
    if !state.store.delete_maintenance(id).await? {
        return Err(MaintenanceError::NotFound(id.to_owned()));
    }
    state.rejudge.notify_one();
    Ok(())
}

/// The windows in force at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Active {
    windows: Vec<Window>,
}

impl Active {
    /// The windows of `all` in force at `at_ms`.
    pub fn at(all: Vec<Window>, at_ms: i64) -> Active {
        Active {
            windows: all
                .into_iter()
                .filter(|w| w.schedule.active_at(at_ms))
                .collect(),
        }
    }

    /// Reads the windows from the store and keeps those in force now.
    ///
    /// # Errors
    /// The store.
    pub async fn now(store: &crate::store::Store) -> Result<Active, StoreError> {
        Ok(Active::at(load(store).await?, now_ms()))
    }

    /// The name of a window that puts the check `id` with `labels` in maintenance.
    pub fn check(&self, id: &str, labels: &BTreeMap<String, String>) -> Option<&str> {
        self.windows
            .iter()
            .find(|w| w.scope.covers_check(id, labels))
            .map(|w| w.name.as_str())
    }

    /// Whether `region` is in maintenance.
    pub fn region(&self, region: &str) -> bool {
        self.windows
            .iter()
            .any(|w| w.scope.regions.iter().any(|r| r == region))
    }

    /// Whether `agent` is in maintenance (by its labels or its region).
    pub fn agent(&self, agent: &AgentRow) -> bool {
        self.windows.iter().any(|w| w.scope.covers_agent(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30 was a Monday.
    const MONDAY_MS: i64 = 1_795_996_800_000;

    #[test]
    fn the_epoch_monday_constant_is_right() {
        // 2026-11-30T00:00:00Z = 1795996800 s (date -u -d 2026-11-30 +%s).
        let in_week = (MONDAY_MS + EPOCH_WEEKDAY * DAY_MS).rem_euclid(WEEK_MS);
        assert_eq!(in_week, 0);
    }

    #[test]
    fn weekly_windows_recur_and_may_run_past_midnight() {
        let window = Schedule::Weekly {
            days: vec![Weekday::Sun],
            start_utc: "23:00".into(),
            duration_min: 120,
        };
        let sunday_2230 = MONDAY_MS + 6 * DAY_MS + (22 * 60 + 30) * 60_000;
        let sunday_2300 = MONDAY_MS + 6 * DAY_MS + 23 * 3_600_000;
        let monday_0059 = MONDAY_MS + 7 * DAY_MS + 59 * 60_000;
        let monday_0100 = MONDAY_MS + 7 * DAY_MS + 60 * 60_000;
        assert!(!window.active_at(sunday_2230));
        assert!(window.active_at(sunday_2300));
        assert!(window.active_at(monday_0059));
        assert!(!window.active_at(monday_0100));
        // A week later, the same.
        assert!(window.active_at(sunday_2300 + WEEK_MS));
        assert!(!window.active_at(sunday_2300 + DAY_MS));
        let once = Schedule::Once {
            starts_at_ms: 1000,
            ends_at_ms: 2000,
        };
        assert!(!once.active_at(999) && once.active_at(1000) && !once.active_at(2000));
    }

    #[test]
    fn bad_windows_name_their_field() {
        let window = |schedule: Schedule, scope: Scope| Window {
            id: None,
            name: "db upgrade".into(),
            schedule,
            scope,
        };
        let weekly = |start: &str, minutes: u32| Schedule::Weekly {
            days: vec![Weekday::Mon],
            start_utc: start.into(),
            duration_min: minutes,
        };
        let scope = Scope {
            checks: vec!["web".into()],
            ..Scope::default()
        };
        validate(&window(weekly("02:00", 30), scope.clone())).unwrap();
        let cases = [
            (window(weekly("24:00", 30), scope.clone()), "start_utc"),
            (window(weekly("2:00", 30), scope.clone()), "start_utc"),
            (window(weekly("02:00", 0), scope.clone()), "duration_min"),
            (
                window(
                    Schedule::Once {
                        starts_at_ms: 5,
                        ends_at_ms: 5,
                    },
                    scope.clone(),
                ),
                "ends_at_ms",
            ),
            (window(weekly("02:00", 30), Scope::default()), "scope"),
            (
                window(
                    weekly("02:00", 30),
                    Scope {
                        regions: vec!["Bad Region".into()],
                        ..Scope::default()
                    },
                ),
                "scope",
            ),
        ];
        for (window, field) in cases {
            match validate(&window) {
                Err(MaintenanceError::Invalid(message)) => {
                    assert!(message.contains(field), "{message:?} does not name {field}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
