//! Public status pages: a check is public on the page `p` when it carries the label
//! `status_page=p`; [`page`] gathers what the page shows of those checks and nothing else
//! (each one's name, state, 90 daily uptime bars, its incidents in generic words, and the
//! maintenance windows that cover it), and [`badge`] draws one check's state as an SVG.
//! Nothing here reads a check's target, headers, agents or reasons: a status page is served
//! without login.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use vantage_mqtt::CheckState;

use crate::maintenance::{Schedule, Window};
use crate::store::{CheckRow, Store, StoreError};

/// The check label that puts a check on a status page (its value names the page).
pub const LABEL: &str = "status_page";
/// Days of uptime bars a page draws.
pub const DAYS: i64 = 90;
/// Most incidents a page lists.
pub const MAX_INCIDENTS: i64 = 50;
const DAY_MS: i64 = 86_400_000;

/// One day's bar of a check.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DayBar {
    /// Midnight UTC that starts the day.
    pub day_ms: i64,
    pub results: i64,
    pub failures: i64,
    /// Share of results that succeeded, `None` without results.
    pub uptime: Option<f64>,
}

/// A public check as its page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PublicCheck {
    pub id: String,
    pub name: String,
    pub state: CheckState,
    /// When the check entered `state` (`None` before its first verdict).
    pub since_ms: Option<i64>,
    /// Over the last [`DAYS`] days, `None` without results.
    pub uptime: Option<f64>,
    /// [`DAYS`] bars, oldest first; the last is today so far.
    pub days: Vec<DayBar>,
}

/// An incident of a public check, in generic words.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PublicIncident {
    pub check_id: String,
    pub title: String,
    pub open: bool,
    pub opened_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
}

/// A maintenance window that covers a public check.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct PublicWindow {
    pub name: String,
    pub schedule: Schedule,
    pub active: bool,
    /// The public checks it covers.
    pub checks: Vec<String>,
}

/// What a status page shows.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Page {
    pub page: String,
    /// The worst state among the page's checks.
    pub state: CheckState,
    pub generated_at_ms: i64,
    pub checks: Vec<PublicCheck>,
    pub incidents: Vec<PublicIncident>,
    pub maintenance: Vec<PublicWindow>,
}

/// How bad a state looks on a page (higher is worse); paused checks count as up.
fn severity(state: CheckState) -> u8 {
    match state {
        CheckState::Up | CheckState::Paused => 0,
        CheckState::Pending => 1,
        CheckState::Maintenance => 2,
        CheckState::Degraded => 3,
        CheckState::Down => 4,
    }
}

/// The checks public on `page`, by name.
pub fn public_checks(all: Vec<CheckRow>, page: &str) -> Vec<CheckRow> {
    let mut checks: Vec<CheckRow> = all
        .into_iter()
        .filter(|c| c.labels.0.get(LABEL).map(String::as_str) == Some(page))
        .collect();
    checks.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    checks
}

/// The [`DAYS`] bars ending with the day of `now_ms`, from (day_ms, results, failures).
pub fn day_bars(counts: &[(i64, i64, i64)], now_ms: i64) -> Vec<DayBar> {
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let by_day: HashMap<i64, (i64, i64)> = counts.iter().map(|&(d, n, f)| (d, (n, f))).collect();
    (0..DAYS)
        .map(|back| {
            let day_ms = today - (DAYS - 1 - back) * DAY_MS;
            let (results, failures) = by_day.get(&day_ms).copied().unwrap_or((0, 0));
            DayBar {
                day_ms,
                results,
                failures,
                uptime: share_up(results, failures),
            }
        })
        .collect()
}

fn share_up(results: i64, failures: i64) -> Option<f64> {
    (results > 0).then(|| 1.0 - failures.clamp(0, results) as f64 / results as f64)
}

/// The page `page` at `now_ms`, or `None` when no check is public on it.
///
/// # Errors
/// The store.
pub async fn page(store: &Store, page: &str, now_ms: i64) -> Result<Option<Page>, StoreError> {
    let checks = public_checks(store.list_checks().await?, page);
    if checks.is_empty() {
        return Ok(None);
    }
    let ids: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
    let verdicts: HashMap<String, (CheckState, i64)> = store
        .list_verdicts()
        .await?
        .into_iter()
        .map(|v| (v.check_id, (v.state, v.since_ms)))
        .collect();
    let from_ms = (now_ms.div_euclid(DAY_MS) - (DAYS - 1)) * DAY_MS;
    let mut counts: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for (check, day_ms, n, f) in store.day_counts(&ids, from_ms).await? {
        counts.entry(check).or_default().push((day_ms, n, f));
    }
    let public: Vec<PublicCheck> = checks
        .iter()
        .map(|check| {
            let (state, since_ms) = match verdicts.get(&check.id) {
                Some(&(state, since)) => (state, Some(since)),
                None if !check.enabled => (CheckState::Paused, None),
                None => (CheckState::Pending, None),
            };
            let days = day_bars(
                counts.get(&check.id).map(Vec::as_slice).unwrap_or(&[]),
                now_ms,
            );
            let (n, f) = days
                .iter()
                .fold((0, 0), |(n, f), d| (n + d.results, f + d.failures));
            PublicCheck {
                id: check.id.clone(),
                name: check.name.clone(),
                state,
                since_ms,
                uptime: share_up(n, f),
                days,
            }
        })
        .collect();
    let names: HashMap<&str, &str> = checks
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    let incidents = store
        .check_incidents_since(&ids, from_ms, MAX_INCIDENTS)
        .await?
        .into_iter()
        .map(|row| {
            let name = names.get(row.subject_id.as_str()).copied().unwrap_or("");
            PublicIncident {
                title: if row.open {
                    format!("{name} is down")
                } else {
                    format!("{name} was down")
                },
                check_id: row.subject_id,
                open: row.open,
                opened_at_ms: row.opened_at_ms,
                resolved_at_ms: row.resolved_at_ms,
            }
        })
        .collect();
    let windows = crate::maintenance::list_from(store).await?;
    let maintenance = covering_windows(&windows, &checks, now_ms);
    let state = public
        .iter()
        .map(|c| c.state)
        .max_by_key(|s| severity(*s))
        .unwrap_or(CheckState::Pending);
    Ok(Some(Page {
        page: page.to_owned(),
        state,
        generated_at_ms: now_ms,
        checks: public,
        incidents,
        maintenance,
    }))
}

/// The windows that cover any of `checks` (by id, label or one of its regions), each with
/// the public checks it covers; others are left out.
pub fn covering_windows(windows: &[Window], checks: &[CheckRow], now_ms: i64) -> Vec<PublicWindow> {
    windows
        .iter()
        .filter_map(|window| {
            let covered: Vec<String> = checks
                .iter()
                .filter(|c| {
                    window.scope.covers_check(&c.id, &c.labels.0)
                        || c.regions.iter().any(|r| window.scope.regions.contains(r))
                })
                .map(|c| c.id.clone())
                .collect();
            (!covered.is_empty()).then(|| PublicWindow {
                name: window.name.clone(),
                schedule: window.schedule.clone(),
                active: window.schedule.active_at(now_ms),
                checks: covered,
            })
        })
        .collect()
}

/// Escapes text for SVG.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text at most `max` characters, with an ellipsis when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A flat two-part badge, `label | state`, coloured by the state.
pub fn badge(label: &str, state: CheckState) -> String {
    let label = bounded(label, 40);
    let message = state.as_str();
    let colour = match state {
        CheckState::Up => "#2e9e44",
        CheckState::Degraded => "#d9a400",
        CheckState::Down => "#d0342c",
        CheckState::Maintenance => "#3b73c4",
        CheckState::Pending | CheckState::Paused => "#8a8a8a",
    };
    // About 7 px a character at 11 px Verdana, plus 10 px of padding on each side.
    let width = |text: &str| 10 + 7 * u32::try_from(text.chars().count()).unwrap_or(40);
    let (left, right) = (width(&label), width(message));
    let total = left + right;
    let (label, message) = (xml_escape(&label), xml_escape(message));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {message}\"><title>{label}: {message}</title>\
         <rect width=\"{left}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"{colour}\"/>\
         <g fill=\"#fff\" font-family=\"Verdana,DejaVu Sans,sans-serif\" font-size=\"11\" \
         text-anchor=\"middle\"><text x=\"{lx}\" y=\"14\">{label}</text>\
         <text x=\"{mx}\" y=\"14\">{message}</text></g></svg>",
        lx = left / 2,
        mx = left + right / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_bars_end_today_and_fill_gaps_with_no_data() {
        let now = 100 * DAY_MS + 5_000;
        let bars = day_bars(&[(100 * DAY_MS, 10, 1), (20 * DAY_MS, 4, 4)], now);
        assert_eq!(bars.len(), 90);
        assert_eq!(bars[89].day_ms, 100 * DAY_MS);
        assert_eq!(bars[89].uptime, Some(0.9));
        assert_eq!(bars[0].day_ms, 11 * DAY_MS);
        assert_eq!(bars[9].uptime, Some(0.0));
        assert_eq!(bars[10].uptime, None);
        assert_eq!(bars.iter().filter(|b| b.results > 0).count(), 2);
    }

    #[test]
    fn badges_escape_and_bound_their_text() {
        let svg = badge("<script>&\"x\"", CheckState::Down);
        assert!(
            svg.contains("&lt;script&gt;&amp;&quot;x&quot;: down"),
            "{svg}"
        );
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("#d0342c"));
        let long = badge(&"a".repeat(500), CheckState::Up);
        assert!(long.len() < 1200, "{}", long.len());
        assert!(long.contains('…'));
    }

    #[test]
    fn the_worst_state_leads_and_paused_counts_as_up() {
        let worst = [CheckState::Up, CheckState::Paused, CheckState::Degraded]
            .into_iter()
            .max_by_key(|s| severity(*s));
        assert_eq!(worst, Some(CheckState::Degraded));
        assert!(severity(CheckState::Down) > severity(CheckState::Maintenance));
        assert_eq!(severity(CheckState::Paused), severity(CheckState::Up));
    }
}
