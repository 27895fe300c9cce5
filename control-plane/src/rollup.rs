//! Rollups: what a committed batch adds to the per-minute and per-hour aggregates, and the
//! uptime, latency and host metric answers read back from them.
//!
//! The aggregates are merged in the same transaction as the raw rows they summarise (only
//! rows that were new: a replayed row counts once), so they are exact at every commit and
//! survive any restart without a catch-up pass. Raw rows may then expire (see
//! [`crate::retention`]) without changing any answer that reads the rollups.

use std::collections::BTreeMap;

use serde::Serialize;
use vantage_mqtt::{CheckResult, DiskUsage, HostMetrics};

use crate::store::MetricsRow;

use crate::sketch::{CheckAggregate, GaugeAggregate};
use crate::store::{Store, StoreError};

/// The width of a rollup bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Minute,
    Hour,
}

impl Resolution {
    pub const ALL: [Resolution; 2] = [Resolution::Minute, Resolution::Hour];

    pub fn ms(self) -> i64 {
        match self {
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    /// The start of the bucket holding `at_ms`.
    pub fn bucket_of(self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.ms()) * self.ms()
    }
}

/// One (check, region, bucket) of a rollup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckBucket {
    pub check_id: String,
    pub region: String,
    pub bucket_ms: i64,
}

/// A host metric kept in rollups, stored as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMetric {
    CpuPct,
    MemUsedPct,
    Load1,
    NetRxBytesPerS,
    NetTxBytesPerS,
    /// The fullest disk's used share: the one that fills first is the one that matters.
    DiskUsedPct,
}

impl HostMetric {
    pub const ALL: [HostMetric; 6] = [
        HostMetric::CpuPct,
        HostMetric::MemUsedPct,
        HostMetric::Load1,
        HostMetric::NetRxBytesPerS,
        HostMetric::NetTxBytesPerS,
        HostMetric::DiskUsedPct,
    ];

    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<HostMetric> {
        HostMetric::ALL.into_iter().find(|m| m.code() == code)
    }

    /// This metric's value in a sample; `None` when the sample lacks it (no memory total).
    pub fn value(self, m: &HostMetrics) -> Option<f64> {
        match self {
            HostMetric::CpuPct => Some(f64::from(m.cpu_pct)),
            HostMetric::MemUsedPct => (m.mem_total_bytes > 0)
                .then(|| m.mem_used_bytes as f64 * 100.0 / m.mem_total_bytes as f64),
            HostMetric::Load1 => Some(m.load1),
            HostMetric::NetRxBytesPerS => Some(m.nets.iter().map(|n| n.rx_bytes_per_s).sum()),
            HostMetric::NetTxBytesPerS => Some(m.nets.iter().map(|n| n.tx_bytes_per_s).sum()),
            HostMetric::DiskUsedPct => fullest_disk_pct(&m.disks),
        }
    }

    /// This metric's value in a stored sample, the same number [`HostMetric::value`] gives
    /// the sample it was stored from.
    pub fn value_of_row(self, row: &MetricsRow, disks: &[DiskUsage]) -> Option<f64> {
        match self {
            HostMetric::CpuPct => Some(row.cpu_pct),
            HostMetric::MemUsedPct => (row.mem_total_bytes > 0)
                .then(|| row.mem_used_bytes as f64 * 100.0 / row.mem_total_bytes as f64),
            HostMetric::Load1 => Some(row.load1),
            HostMetric::NetRxBytesPerS => Some(row.net_rx_bytes_per_s),
            HostMetric::NetTxBytesPerS => Some(row.net_tx_bytes_per_s),
            HostMetric::DiskUsedPct => fullest_disk_pct(disks),
        }
    }
}

/// The used share of the fullest disk with a size.
fn fullest_disk_pct(disks: &[DiskUsage]) -> Option<f64> {
    disks
        .iter()
        .filter(|d| d.total_bytes > 0)
        .map(|d| d.used_bytes as f64 * 100.0 / d.total_bytes as f64)
        .reduce(f64::max)
}

/// One (agent, metric, bucket) of a rollup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricBucket {
    pub agent_id: String,
    pub metric: HostMetric,
    pub bucket_ms: i64,
}

/// What a set of results adds to the rollup at `resolution`.
pub fn check_rollups<'a>(
    results: impl Iterator<Item = (&'a str, &'a CheckResult)>,
    resolution: Resolution,
) -> BTreeMap<CheckBucket, CheckAggregate> {
    // Keyed by borrowed names while summing (a batch has many rows per bucket), owned once
    // per bucket at the end.
    let mut sums: BTreeMap<(&str, &str, i64), CheckAggregate> = BTreeMap::new();
    // The bucket of the previous row: rows of one check, region and bucket that follow each
    // other (an agent with one check, or a message of one check's rows) cost one map lookup
    // per run, not per row.
    let mut run: Option<((&str, &str, i64), &mut CheckAggregate)> = None;
    for (region, r) in results {
        let key = (
            r.check_id.as_str(),
            region,
            resolution.bucket_of(r.measured_at_ms),
        );
        // To the microsecond, as the raw row is kept, so a rollup equals the rows it sums.
        let total_ms = crate::store::micros(r.timings.total_ms) as f64 / 1000.0;
        match &mut run {
            Some((run_key, aggregate)) if *run_key == key => aggregate.add(r.ok, total_ms),
            _ => {
                let aggregate = sums.entry(key).or_default();
                aggregate.add(r.ok, total_ms);
                run = Some((key, aggregate));
            }
        }
    }
    sums.into_iter()
        .map(|((check_id, region, bucket_ms), aggregate)| {
            let bucket = CheckBucket {
                check_id: check_id.to_owned(),
                region: region.to_owned(),
                bucket_ms,
            };
            (bucket, aggregate)
        })
        .collect()
}

/// Per-day (check, region) result and failure counts of an hour rollup's additions.
pub fn day_counts(
    hours: &BTreeMap<CheckBucket, CheckAggregate>,
) -> BTreeMap<CheckBucket, (u64, u64)> {
    let mut days: BTreeMap<CheckBucket, (u64, u64)> = BTreeMap::new();
    for (hour, aggregate) in hours {
        let day = CheckBucket {
            check_id: hour.check_id.clone(),
            region: hour.region.clone(),
            bucket_ms: hour.bucket_ms.div_euclid(CountSource::Day.ms()) * CountSource::Day.ms(),
        };
        let sum = days.entry(day).or_default();
        sum.0 += aggregate.count;
        sum.1 += aggregate.failures;
    }
    days
}

/// What a set of host metric samples adds to the rollup at `resolution`.
pub fn metric_rollups<'a>(
    samples: impl Iterator<Item = (&'a str, &'a HostMetrics)>,
    resolution: Resolution,
) -> BTreeMap<MetricBucket, GaugeAggregate> {
    let mut out: BTreeMap<MetricBucket, GaugeAggregate> = BTreeMap::new();
    for (agent, m) in samples {
        for metric in HostMetric::ALL {
            let Some(value) = metric.value(m).filter(|v| v.is_finite()) else {
                continue;
            };
            let key = MetricBucket {
                agent_id: agent.to_owned(),
                metric,
                bucket_ms: resolution.bucket_of(m.measured_at_ms),
            };
            out.entry(key).or_default().add(value);
        }
    }
    out
}

/// Availability over a window: the share of results that succeeded.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Availability {
    pub results: u64,
    pub failures: u64,
    /// Percent of results that succeeded; `None` without results.
    pub uptime_pct: Option<f64>,
}

impl Availability {
    pub fn of(results: u64, failures: u64) -> Availability {
        Availability {
            results,
            failures,
            uptime_pct: (results > 0).then(|| (results - failures) as f64 * 100.0 / results as f64),
        }
    }
}

/// The rollup a window's counts are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountSource {
    Hour,
    Day,
}

impl CountSource {
    pub fn ms(self) -> i64 {
        match self {
            CountSource::Hour => 3_600_000,
            CountSource::Day => 86_400_000,
        }
    }
}

/// An uptime window: the last `buckets` hours or UTC days, the current one included
/// (rollups are current at every commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UptimeWindow {
    pub name: &'static str,
    pub source: CountSource,
    pub buckets: i64,
}

impl UptimeWindow {
    /// The first bucket of the window that ends now.
    pub fn from_ms(&self, now_ms: i64) -> i64 {
        let size = self.source.ms();
        now_ms.div_euclid(size) * size - (self.buckets - 1) * size
    }
}

/// The windows uptime is answered for: 24 hours, 7, 30 and 90 days.
pub const UPTIME_WINDOWS: [UptimeWindow; 4] = [
    UptimeWindow {
        name: "24h",
        source: CountSource::Hour,
        buckets: 24,
    },
    UptimeWindow {
        name: "7d",
        source: CountSource::Day,
        buckets: 7,
    },
    UptimeWindow {
        name: "30d",
        source: CountSource::Day,
        buckets: 30,
    },
    UptimeWindow {
        name: "90d",
        source: CountSource::Day,
        buckets: 90,
    },
];

/// Result and failure counts of one (check, region) over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCount {
    pub check_id: String,
    pub region: String,
    pub results: u64,
    pub failures: u64,
}

/// One check's uptime per window, overall and per region.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct CheckUptime {
    pub check_id: String,
    pub windows: BTreeMap<String, WindowUptime>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct WindowUptime {
    #[serde(flatten)]
    pub overall: Availability,
    pub regions: BTreeMap<String, Availability>,
}

/// Uptime of each of `check_ids` from each window's (check, region) counts.
pub fn uptime_from_counts(
    check_ids: &[String],
    windows: &[(&'static str, Vec<WindowCount>)],
) -> Vec<CheckUptime> {
    let mut by_check: BTreeMap<&str, BTreeMap<&str, BTreeMap<String, Availability>>> =
        BTreeMap::new();
    for (name, counts) in windows {
        for count in counts {
            by_check
                .entry(count.check_id.as_str())
                .or_default()
                .entry(name)
                .or_default()
                .insert(
                    count.region.clone(),
                    Availability::of(count.results, count.failures),
                );
        }
    }
    check_ids
        .iter()
        .map(|check_id| {
            let mut mine = by_check.remove(check_id.as_str()).unwrap_or_default();
            let windows = windows
                .iter()
                .map(|(name, _)| {
                    let regions = mine.remove(name).unwrap_or_default();
                    let (n, f) = regions
                        .values()
                        .fold((0, 0), |(n, f), a| (n + a.results, f + a.failures));
                    (
                        (*name).to_owned(),
                        WindowUptime {
                            overall: Availability::of(n, f),
                            regions,
                        },
                    )
                })
                .collect();
            CheckUptime {
                check_id: check_id.clone(),
                windows,
            }
        })
        .collect()
}

/// One point of a latency series: a step's aggregate for one region.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct SeriesPoint {
    pub t_ms: i64,
    pub results: u64,
    pub failures: u64,
    pub min_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A check's latency series over a range.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Series {
    pub check_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    /// Where the points came from: `raw`, `minute` or `hour`.
    pub source: &'static str,
    pub regions: BTreeMap<String, Vec<SeriesPoint>>,
}

/// Where a series over `range_ms` is read from, given what is kept: raw rows while the range
/// lies inside their retention and needs at most a few thousand rows per region, then
/// minute rollups, then hour rollups.
pub fn series_source(
    from_ms: i64,
    now_ms: i64,
    step_ms: i64,
    keep: &Retention,
) -> Option<Resolution> {
    let age = now_ms - from_ms;
    if age <= keep.raw_ms && step_ms < Resolution::Minute.ms() && age <= 6 * 3_600_000 {
        None
    } else if age <= keep.minute_ms && step_ms < Resolution::Hour.ms() {
        Some(Resolution::Minute)
    } else {
        Some(Resolution::Hour)
    }
}

/// The name of where a series was read from: `raw`, `minute` or `hour`.
fn source_name(source: Option<Resolution>) -> &'static str {
    match source {
        None => "raw",
        Some(Resolution::Minute) => "minute",
        Some(Resolution::Hour) => "hour",
    }
}

/// How long each kind of row is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minute_ms: i64,
    pub hour_ms: i64,
}

/// Folds aggregates of (region, t) into steps of `step_ms` aligned on `from_ms`, as points.
pub fn fold_series(
    rows: impl Iterator<Item = (String, i64, CheckAggregate)>,
    from_ms: i64,
    step_ms: i64,
) -> BTreeMap<String, Vec<SeriesPoint>> {
    let step_ms = step_ms.max(1);
    let mut steps: BTreeMap<(String, i64), CheckAggregate> = BTreeMap::new();
    for (region, t, aggregate) in rows {
        let t = from_ms + (t - from_ms).div_euclid(step_ms) * step_ms;
        steps.entry((region, t)).or_default().merge(&aggregate);
    }
    let mut out: BTreeMap<String, Vec<SeriesPoint>> = BTreeMap::new();
    for ((region, t_ms), a) in steps {
        out.entry(region).or_default().push(SeriesPoint {
            t_ms,
            results: a.count,
            failures: a.failures,
            min_ms: a.min_ms,
            avg_ms: a.avg_ms(),
            max_ms: a.max_ms,
            p50_ms: a.quantile_ms(0.5),
            p95_ms: a.quantile_ms(0.95),
            p99_ms: a.quantile_ms(0.99),
        });
    }
    out
}

/// Most points a series answers per region.
pub const MAX_SERIES_POINTS: i64 = 10_000;

/// Why a rollup question was refused.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("{0}")]
    Invalid(String),
    #[error("check {0:?} not found")]
    NotFound(String),
    #[error("agent {0:?} not found")]
    AgentNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Uptime of `check_ids` (every check when `None`) over the named windows (every one of
/// [`UPTIME_WINDOWS`] when `None`): per window one grouped query over the hour or day counts.
///
/// # Errors
/// Unknown checks (when named) or windows, and store errors.
pub async fn uptime(
    store: &Store,
    check_ids: Option<Vec<String>>,
    window_names: Option<Vec<String>>,
    now_ms: i64,
) -> Result<Vec<CheckUptime>, RollupError> {
    let windows: Vec<UptimeWindow> = match window_names {
        None => UPTIME_WINDOWS.to_vec(),
        Some(names) => names
            .iter()
            .map(|name| {
                UPTIME_WINDOWS
                    .iter()
                    .find(|w| w.name == name)
                    .copied()
                    .ok_or_else(|| {
                        RollupError::Invalid(format!(
                            "window {name:?} is not one of 24h, 7d, 30d, 90d"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let (ids, filter) = match check_ids {
        Some(ids) => {
            let known = store
                .get_checks(&ids.iter().map(String::as_str).collect::<Vec<_>>())
                .await?;
            if let Some(missing) = ids.iter().find(|id| !known.iter().any(|c| &c.id == *id)) {
                return Err(RollupError::NotFound(missing.clone()));
            }
            (ids.clone(), Some(ids))
        }
        None => (store.check_ids().await?, None),
    };
    let mut counts = Vec::new();
    for window in windows {
        let rows = store
            .window_counts(window.source, window.from_ms(now_ms), filter.as_deref())
            .await?;
        counts.push((window.name, rows));
    }
    Ok(uptime_from_counts(&ids, &counts))
}

/// The step of a series over `[from_ms, to_ms)`: the one asked for, or the range in about
/// 200 steps; refused when the range is empty, the step under a second or the points too many.
fn series_step(from_ms: i64, to_ms: i64, step_ms: Option<i64>) -> Result<i64, RollupError> {
    if from_ms >= to_ms {
        return Err(RollupError::Invalid("from_ms must be before to_ms".into()));
    }
    let range = to_ms.saturating_sub(from_ms);
    let step_ms = step_ms.unwrap_or((range / 200).max(1000));
    if step_ms < 1000 {
        return Err(RollupError::Invalid("step_ms must be at least 1000".into()));
    }
    if range / step_ms > MAX_SERIES_POINTS {
        return Err(RollupError::Invalid(format!(
            "{} points asked; at most {MAX_SERIES_POINTS}: make step_ms larger",
            range / step_ms
        )));
    }
    Ok(step_ms)
}

/// A check's latency series over `[from_ms, to_ms)` in steps of `step_ms` (default: the range
/// in about 200 steps), read from raw rows, minute or hour rollups as [`series_source`] picks.
///
/// # Errors
/// A bad range or step, an unknown check, store errors.
pub async fn series(
    store: &Store,
    keep: &Retention,
    check_id: &str,
    from_ms: i64,
    to_ms: i64,
    step_ms: Option<i64>,
    now_ms: i64,
) -> Result<Series, RollupError> {
    let step_ms = series_step(from_ms, to_ms, step_ms)?;
    if store.get_checks(&[check_id]).await?.is_empty() {
        return Err(RollupError::NotFound(check_id.to_owned()));
    }
    let source = series_source(from_ms, now_ms, step_ms, keep);
    let (step_ms, regions) = match source {
        None => {
            let rows = store.raw_latencies(check_id, from_ms, to_ms).await?;
            let points = rows.into_iter().map(|(region, t, ok, ms)| {
                let mut a = CheckAggregate::default();
                a.add(ok, ms);
                (region, t, a)
            });
            (step_ms, fold_series(points, from_ms, step_ms))
        }
        Some(resolution) => {
            // A step is whole buckets of the source.
            let step_ms = (step_ms / resolution.ms()).max(1) * resolution.ms();
            let from = resolution.bucket_of(from_ms);
            let rows = store
                .check_rollups(resolution, &[check_id.to_owned()], from, to_ms)
                .await?;
            let points = rows.into_iter().map(|(b, a)| (b.region, b.bucket_ms, a));
            (step_ms, fold_series(points, from, step_ms))
        }
    };
    Ok(Series {
        check_id: check_id.to_owned(),
        from_ms,
        to_ms,
        step_ms,
        source: source_name(source),
        regions,
    })
}

/// One step of a host metric series.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct GaugePoint {
    pub t_ms: i64,
    pub samples: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// An agent's host metrics over a range, per metric.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct MetricSeries {
    pub agent_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    /// Where the points came from: `raw`, `minute` or `hour`.
    pub source: &'static str,
    pub metrics: BTreeMap<HostMetric, Vec<GaugePoint>>,
}

/// Most raw samples one metric series reads (six hours at one a second, with room).
const MAX_RAW_SAMPLES: i64 = 50_000;

/// Folds gauge aggregates of (metric, t) into steps of `step_ms` aligned on `from_ms`.
pub fn fold_gauges(
    rows: impl Iterator<Item = (HostMetric, i64, GaugeAggregate)>,
    from_ms: i64,
    step_ms: i64,
) -> BTreeMap<HostMetric, Vec<GaugePoint>> {
    let step_ms = step_ms.max(1);
    let mut steps: BTreeMap<(HostMetric, i64), GaugeAggregate> = BTreeMap::new();
    for (metric, t, aggregate) in rows {
        let t = from_ms + (t - from_ms).div_euclid(step_ms) * step_ms;
        steps.entry((metric, t)).or_default().merge(&aggregate);
    }
    let mut out: BTreeMap<HostMetric, Vec<GaugePoint>> = BTreeMap::new();
    for ((metric, t_ms), a) in steps {
        out.entry(metric).or_default().push(GaugePoint {
            t_ms,
            samples: a.count,
            min: a.min,
            avg: a.sum / a.count.max(1) as f64,
            max: a.max,
        });
    }
    out
}

/// An agent's host metric series over `[from_ms, to_ms)` in steps of `step_ms` (default: the
/// range in about 200 steps), from raw samples, minute or hour rollups as [`series_source`]
/// picks, exactly as for a check's latency.
///
/// # Errors
/// A bad range or step, an unknown agent, store errors.
pub async fn metric_series(
    store: &Store,
    keep: &Retention,
    agent_id: &str,
    from_ms: i64,
    to_ms: i64,
    step_ms: Option<i64>,
    now_ms: i64,
) -> Result<MetricSeries, RollupError> {
    let step_ms = series_step(from_ms, to_ms, step_ms)?;
    if store.get_agent(agent_id).await?.is_none() {
        return Err(RollupError::AgentNotFound(agent_id.to_owned()));
    }
    let source = series_source(from_ms, now_ms, step_ms, keep);
    let (step_ms, metrics) = match source {
        None => {
            let rows = store
                .query_metrics(&crate::store::SeriesFilter {
                    agent: Some(agent_id.to_owned()),
                    check: None,
                    region: None,
                    from_ms,
                    // The filter's end is inclusive; a series' is not.
                    to_ms: to_ms - 1,
                    limit: MAX_RAW_SAMPLES,
                })
                .await?;
            let mut points = Vec::with_capacity(rows.len() * HostMetric::ALL.len());
            for row in &rows {
                let disks = stored_disks(&row.detail);
                for metric in HostMetric::ALL {
                    if let Some(v) = metric.value_of_row(row, &disks).filter(|v| v.is_finite()) {
                        let mut a = GaugeAggregate::default();
                        a.add(v);
                        points.push((metric, row.measured_at_ms, a));
                    }
                }
            }
            (step_ms, fold_gauges(points.into_iter(), from_ms, step_ms))
        }
        Some(resolution) => {
            let step_ms = (step_ms / resolution.ms()).max(1) * resolution.ms();
            let from = resolution.bucket_of(from_ms);
            let rows = store
                .metric_rollups(resolution, agent_id, from, to_ms)
                .await?;
            let points = rows.into_iter().map(|(b, a)| (b.metric, b.bucket_ms, a));
            (step_ms, fold_gauges(points, from, step_ms))
        }
    };
    Ok(MetricSeries {
        agent_id: agent_id.to_owned(),
        from_ms,
        to_ms,
        step_ms,
        source: source_name(source),
        metrics,
    })
}

/// The disks of a stored sample's detail (none when it has no readable list).
fn stored_disks(detail: &str) -> Vec<DiskUsage> {
    #[derive(serde::Deserialize)]
    struct Detail {
        #[serde(default)]
        disks: Vec<DiskUsage>,
    }
    serde_json::from_str::<Detail>(detail)
        .map(|d| d.disks)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_metrics_roll_up_the_fullest_disk_and_skip_what_a_sample_lacks() {
        let mut m: HostMetrics = serde_json::from_value(serde_json::json!({
            "seq": 1, "measured_at_ms": 90_000, "cpu_pct": 12.5, "mem_total_bytes": 0,
            "mem_used_bytes": 0, "swap_total_bytes": 0, "swap_used_bytes": 0, "load1": 0.5,
            "load5": 0.5, "load15": 0.5, "uptime_s": 1,
            "disks": [
                {"mount": "/", "total_bytes": 1000, "used_bytes": 250},
                {"mount": "/var", "total_bytes": 200, "used_bytes": 180},
                {"mount": "/empty", "total_bytes": 0, "used_bytes": 0}
            ],
            "nets": []
        }))
        .expect("a sample");
        assert_eq!(HostMetric::DiskUsedPct.value(&m), Some(90.0));
        assert_eq!(HostMetric::MemUsedPct.value(&m), None);
        let rolled = metric_rollups([("ag", &m)].into_iter(), Resolution::Minute);
        let metrics: Vec<HostMetric> = rolled.keys().map(|k| k.metric).collect();
        assert!(metrics.contains(&HostMetric::DiskUsedPct));
        assert!(!metrics.contains(&HostMetric::MemUsedPct));
        m.disks.clear();
        assert_eq!(HostMetric::DiskUsedPct.value(&m), None);
        for metric in HostMetric::ALL {
            assert_eq!(HostMetric::from_code(metric.code()), Some(metric));
        }
    }

    fn count(check: &str, region: &str, results: u64, failures: u64) -> WindowCount {
        WindowCount {
            check_id: check.into(),
            region: region.into(),
            results,
            failures,
        }
    }

    #[test]
    fn uptime_sums_regions_per_window_and_names_every_check() {
        let windows = vec![
            (
                "24h",
                vec![count("a", "eu", 120, 60), count("a", "us", 60, 6)],
            ),
            (
                "90d",
                vec![count("a", "eu", 200, 70), count("b", "eu", 1, 0)],
            ),
        ];
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let uptime = uptime_from_counts(&ids, &windows);
        let day = &uptime[0].windows["24h"];
        assert_eq!((day.overall.results, day.overall.failures), (180, 66));
        assert_eq!(day.regions["us"].uptime_pct, Some(90.0));
        assert_eq!(uptime[0].windows["90d"].overall.uptime_pct, Some(65.0));
        assert_eq!(uptime[1].windows["24h"].overall.uptime_pct, None);
        assert_eq!(uptime[1].windows["90d"].overall.uptime_pct, Some(100.0));
        assert!(uptime[2].windows["90d"].regions.is_empty());
        assert_eq!(uptime[2].windows.len(), 2);
    }

    #[test]
    fn windows_start_whole_hours_or_days_back() {
        let now = 100 * 86_400_000 + 5 * 3_600_000 + 7;
        assert_eq!(
            UPTIME_WINDOWS[0].from_ms(now),
            100 * 86_400_000 + 5 * 3_600_000 - 23 * 3_600_000
        );
        assert_eq!(UPTIME_WINDOWS[2].from_ms(now), 71 * 86_400_000);
    }

    #[test]
    fn series_come_from_raw_minutes_or_hours_as_the_range_demands() {
        let keep = Retention {
            raw_ms: 7 * 86_400_000,
            minute_ms: 14 * 86_400_000,
            hour_ms: 400 * 86_400_000,
        };
        let now = 100 * 86_400_000;
        assert_eq!(series_source(now - 3_600_000, now, 10_000, &keep), None);
        assert_eq!(
            series_source(now - 3_600_000, now, 60_000, &keep),
            Some(Resolution::Minute)
        );
        assert_eq!(
            series_source(now - 3 * 86_400_000, now, 300_000, &keep),
            Some(Resolution::Minute)
        );
        assert_eq!(
            series_source(now - 30 * 86_400_000, now, 300_000, &keep),
            Some(Resolution::Hour)
        );
    }

    #[test]
    fn folding_merges_buckets_into_steps() {
        let mut a = CheckAggregate::default();
        a.add(true, 10.0);
        let mut b = CheckAggregate::default();
        b.add(true, 30.0);
        b.add(false, 0.0);
        let rows = vec![
            ("eu".to_owned(), 0, a.clone()),
            ("eu".to_owned(), 60_000, b),
            ("eu".to_owned(), 120_000, a),
        ];
        let series = fold_series(rows.into_iter(), 0, 120_000);
        let points = &series["eu"];
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].results, points[0].failures), (3, 1));
        assert_eq!(points[0].avg_ms, Some(20.0));
        assert_eq!((points[1].t_ms, points[1].max_ms), (120_000, Some(10.0)));
    }
}
