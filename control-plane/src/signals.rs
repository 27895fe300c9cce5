//! Signals: the arithmetic behind host-metric alert rules, free of any I/O.
//!
//! This module owns three pure calculations and the plain-words sentences that describe their
//! results:
//! - [`ThresholdTracker`]: a [`Threshold`] such as "cpu above 90 for 5 minutes", judged on a
//!   time-ordered stream of samples, reporting when it fires and when it clears.
//! - [`forecast_full`]: an ordinary least-squares line through disk usage samples, answering
//!   how long until the disk is full at the current rate.
//! - [`Ewma`]: an exponentially weighted mean and variance per series, reporting a value whose
//!   z-score against the usual level is too large (a response-time anomaly).
//!
//! It does not own where samples come from, where rules and tracker state are stored, when
//! rules are evaluated, or what is done with a change (incidents, notifications): callers feed
//! values in and act on what comes out. Nothing here panics on input: non-finite numbers are
//! ignored or refused, as each item documents.

use serde::{Deserialize, Serialize};

/// Milliseconds in one second.
const MS_PER_SECOND: i64 = 1_000;

/// Seconds in one minute, hour and day.
const SECONDS_PER_MINUTE: i64 = 60;
const SECONDS_PER_HOUR: i64 = 3_600;
const SECONDS_PER_DAY: i64 = 86_400;

/// The share of the mean below which an [`Ewma`] never lets its standard deviation fall when
/// it scores a value (1 %), so a flat series followed by a tiny wiggle does not alarm.
pub const RELATIVE_STDDEV_FLOOR: f64 = 0.01;

/// Which side of the limit counts as a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    /// The condition holds while the value is strictly greater than the limit.
    Above,
    /// The condition holds while the value is strictly less than the limit.
    Below,
}

impl Comparison {
    /// The word used for this comparison in sentences ("above" or "below").
    pub fn word(self) -> &'static str {
        match self {
            Comparison::Above => "above",
            Comparison::Below => "below",
        }
    }
}

/// A rule such as "cpu_pct above 90 for 5 minutes", storable as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Which side of the limit counts as a breach.
    pub comparison: Comparison,
    /// The value the samples are compared with.
    pub limit: f64,
    /// How long the condition must hold on every sample before the rule fires; zero or less
    /// fires on the first sample that meets the condition.
    pub for_ms: i64,
}

impl Threshold {
    /// Whether one value meets the condition (strictly above or below the limit).
    ///
    /// A NaN value or a NaN limit never meets it.
    pub fn is_met_by(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.limit,
            Comparison::Below => value < self.limit,
        }
    }
}

/// A change of a [`ThresholdTracker`]'s standing.
#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdChange {
    /// The condition has held for at least `for_ms`, continuously since `since_ms`; `value` is
    /// the sample that completed the hold.
    Fired { since_ms: i64, value: f64 },
    /// The rule was firing and `value` no longer meets the condition.
    Cleared { value: f64 },
}

/// Judges one [`Threshold`] on a stream of samples in time order.
///
/// The rule fires when the condition has held on every sample from the first sample where it
/// started holding up to the current one, and that span is at least `for_ms`. It clears on the
/// first sample that does not meet the condition (no extra hysteresis). A sample at or before
/// the last accepted one is ignored, and so is a non-finite value (as if it never arrived). A
/// gap between samples longer than `max_gap_ms` restarts the "held since" clock, because
/// nothing says the condition held during the gap; a rule already firing stays fired across a
/// gap as long as the sample after it still meets the condition.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdTracker {
    /// The rule being judged.
    pub threshold: Threshold,
    /// The longest gap between two samples over which the hold is still counted as
    /// continuous (for example three sampling intervals).
    pub max_gap_ms: i64,
    last_sample_at_ms: Option<i64>,
    held_since_ms: Option<i64>,
    firing: bool,
}

impl ThresholdTracker {
    /// A tracker that has seen no sample yet and is not firing.
    pub fn new(threshold: Threshold, max_gap_ms: i64) -> ThresholdTracker {
        ThresholdTracker {
            threshold,
            max_gap_ms,
            last_sample_at_ms: None,
            held_since_ms: None,
            firing: false,
        }
    }

    /// Whether the rule is currently firing.
    pub fn is_firing(&self) -> bool {
        self.firing
    }

    /// The time of the first sample of the current unbroken run meeting the condition, if the
    /// condition holds now.
    pub fn held_since_ms(&self) -> Option<i64> {
        self.held_since_ms
    }

    /// The time of the last sample accepted, if any.
    pub fn last_sample_at_ms(&self) -> Option<i64> {
        self.last_sample_at_ms
    }

    /// Feeds one sample and returns the change it causes, if any.
    ///
    /// Samples at or before the last accepted one and non-finite values are ignored and
    /// return `None` without changing anything.
    pub fn observe(&mut self, at_ms: i64, value: f64) -> Option<ThresholdChange> {
        if !value.is_finite() {
            return None;
        }
        if let Some(last_at_ms) = self.last_sample_at_ms {
            if at_ms <= last_at_ms {
                return None;
            }
            let gap_ms = i128::from(at_ms) - i128::from(last_at_ms);
            if gap_ms > i128::from(self.max_gap_ms) {
                self.held_since_ms = None;
            }
        }
        self.last_sample_at_ms = Some(at_ms);

        if !self.threshold.is_met_by(value) {
            self.held_since_ms = None;
            if self.firing {
                self.firing = false;
                return Some(ThresholdChange::Cleared { value });
            }
            return None;
        }

        let since_ms = *self.held_since_ms.get_or_insert(at_ms);
        if self.firing {
            return None;
        }
        let held_ms = i128::from(at_ms) - i128::from(since_ms);
        if held_ms >= i128::from(self.threshold.for_ms) {
            self.firing = true;
            return Some(ThresholdChange::Fired { since_ms, value });
        }
        None
    }
}

/// Says in plain words what a threshold change means.
///
/// For example `"cpu_pct 93.5 above 90 for 5m 0s (since 12:00:00 UTC)"` when it fired, and
/// `"cpu_pct 42.0 no longer above 90"` when it cleared. The time of day is UTC, from the epoch
/// milliseconds, without the date.
pub fn describe(metric_name: &str, threshold: &Threshold, change: &ThresholdChange) -> String {
    let word = threshold.comparison.word();
    let limit = threshold.limit;
    match change {
        ThresholdChange::Fired { since_ms, value } => format!(
            "{metric_name} {} {word} {limit} for {} (since {} UTC)",
            format_measurement(*value),
            format_duration_ms(threshold.for_ms),
            format_utc_time_of_day(*since_ms),
        ),
        ThresholdChange::Cleared { value } => format!(
            "{metric_name} {} no longer {word} {limit}",
            format_measurement(*value),
        ),
    }
}

/// When a disk fills at the rate fitted through its usage samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// The fitted growth, in the samples' unit per second (bytes per second for bytes).
    pub slope_per_s: f64,
    /// Seconds from the latest sample until the fitted line reaches the capacity; zero when
    /// the fitted value at the latest sample has already reached it.
    pub seconds_until_full: f64,
    /// The coefficient of determination of the fit, between 0 and 1 (1 for a perfect line).
    pub r_squared: f64,
}

/// Fits a straight line through `(at_ms, used)` samples by ordinary least squares and says
/// when it reaches `capacity`.
///
/// Times are taken in seconds relative to the earliest sample, and the sums are centred on the
/// means, so epoch milliseconds lose no precision. The samples need not be sorted and may
/// share times; the forecast counts from the latest sample's time, using the fitted value
/// there (not the raw sample). Returns `None` when there are fewer than 3 distinct times, when
/// any value or the capacity is not finite, when the capacity is not positive, or when the
/// fitted slope is not positive (the disk is not filling). Returns a forecast with
/// `seconds_until_full` of zero when the fitted value at the latest sample is already at or
/// above the capacity.
pub fn forecast_full(samples: &[(i64, f64)], capacity: f64) -> Option<Forecast> {
    if !capacity.is_finite() || capacity <= 0.0 {
        return None;
    }
    if samples.iter().any(|(_, used)| !used.is_finite()) {
        return None;
    }
    let mut distinct_times_ms: Vec<i64> = samples.iter().map(|(at_ms, _)| *at_ms).collect();
    distinct_times_ms.sort_unstable();
    distinct_times_ms.dedup();
    if distinct_times_ms.len() < 3 {
        return None;
    }
    let first_at_ms = *distinct_times_ms.first()?;
    let last_at_ms = *distinct_times_ms.last()?;
    let seconds_after_first =
        |at_ms: i64| (i128::from(at_ms) - i128::from(first_at_ms)) as f64 / MS_PER_SECOND as f64;

    let count = samples.len() as f64;
    let mean_t_s = samples
        .iter()
        .map(|(at_ms, _)| seconds_after_first(*at_ms))
        .sum::<f64>()
        / count;
    let mean_used = samples.iter().map(|(_, used)| *used).sum::<f64>() / count;

    let mut sum_tt = 0.0;
    let mut sum_ty = 0.0;
    let mut sum_yy = 0.0;
    for (at_ms, used) in samples {
        let dt = seconds_after_first(*at_ms) - mean_t_s;
        let dy = used - mean_used;
        sum_tt += dt * dt;
        sum_ty += dt * dy;
        sum_yy += dy * dy;
    }
    if !(sum_tt > 0.0 && sum_tt.is_finite() && sum_ty.is_finite() && sum_yy.is_finite()) {
        return None;
    }

    let slope_per_s = sum_ty / sum_tt;
    if !(slope_per_s > 0.0 && slope_per_s.is_finite()) {
        return None;
    }
    // A positive slope implies sum_ty > 0 and so sum_yy > 0.
    let r_squared = ((sum_ty * sum_ty) / (sum_tt * sum_yy)).clamp(0.0, 1.0);

    let fitted_at_last = mean_used + slope_per_s * (seconds_after_first(last_at_ms) - mean_t_s);
    let seconds_until_full = if fitted_at_last >= capacity {
        0.0
    } else {
        (capacity - fitted_at_last) / slope_per_s
    };
    if !(seconds_until_full.is_finite() && r_squared.is_finite()) {
        return None;
    }
    Some(Forecast {
        slope_per_s,
        seconds_until_full,
        r_squared,
    })
}

/// Says in plain words when a mount fills, reading the forecast's values as bytes.
///
/// For example `"/var full in ~3 d (growing 1.2 GB/day, fit r²=0.98)"`. The time is rounded to
/// whole minutes below an hour, whole hours below 48 hours and whole days beyond; below a
/// minute it reads `"in < 1 m"` and at zero `"now"`. Sizes use decimal units (1 GB is 10⁹
/// bytes).
pub fn describe_forecast(mount: &str, f: &Forecast) -> String {
    format!(
        "{mount} full {} (growing {}/day, fit r²={:.2})",
        format_time_until(f.seconds_until_full),
        format_bytes(f.slope_per_s * SECONDS_PER_DAY as f64),
        f.r_squared,
    )
}

/// A value that stands out from its series' usual level.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// The value that stood out.
    pub value: f64,
    /// The series' weighted mean before this value.
    pub mean: f64,
    /// The standard deviation the value was scored against (after the floors).
    pub stddev: f64,
    /// `(value - mean) / stddev`: positive above the usual level, negative below.
    pub z: f64,
}

/// An exponentially weighted mean and variance of one series, scoring each new value against
/// them.
///
/// Each value is scored against the mean and variance from before it, then absorbed with the
/// West/Finch recurrence (`diff = x - mean; incr = alpha * diff; mean += incr; variance =
/// (1 - alpha) * (variance + diff * incr)`), so a lasting shift becomes the new usual level.
/// The first value sets the mean and leaves the variance at zero.
///
/// The standard deviation used for scoring is never below [`RELATIVE_STDDEV_FLOOR`] of the
/// mean's size nor below `stddev_floor`: a perfectly flat series has a variance of zero, and
/// without a floor any wiggle after it would score an infinite z. With the floor, 100, 100, …
/// then 100.5 scores 0.5 (no alarm) while 100, 100, … then 200 scores 100 (alarm). If both
/// floors and the variance are zero (a flat series at zero with a zero `stddev_floor`), the
/// value cannot be scored and never alarms.
#[derive(Debug, Clone, PartialEq)]
pub struct Ewma {
    /// The weight of each new value, in (0, 1]; outside that range (or NaN) every value is
    /// ignored.
    pub alpha: f64,
    /// How many values must have been absorbed before one can be an anomaly (at least one
    /// always is, whatever this says).
    pub warmup: u32,
    /// The size of z-score, in either direction, from which a value is an anomaly.
    pub z_limit: f64,
    /// The smallest standard deviation used for scoring, in the series' own unit (for example
    /// 0.5 for milliseconds).
    pub stddev_floor: f64,
    /// The weighted mean of the values absorbed.
    pub mean: f64,
    /// The weighted variance of the values absorbed.
    pub variance: f64,
    /// How many values have been absorbed (saturating).
    pub n: u32,
}

impl Ewma {
    /// A series that has absorbed nothing yet.
    pub fn new(alpha: f64, warmup: u32, z_limit: f64, stddev_floor: f64) -> Ewma {
        Ewma {
            alpha,
            warmup,
            z_limit,
            stddev_floor,
            mean: 0.0,
            variance: 0.0,
            n: 0,
        }
    }

    /// The standard deviation a value would be scored against now, after the floors.
    pub fn scoring_stddev(&self) -> f64 {
        let floor = if self.stddev_floor.is_finite() {
            self.stddev_floor
        } else {
            0.0
        };
        self.variance
            .sqrt()
            .max(RELATIVE_STDDEV_FLOOR * self.mean.abs())
            .max(floor)
    }

    /// Whether `alpha` is in (0, 1], the range in which values are absorbed.
    pub fn has_valid_alpha(&self) -> bool {
        self.alpha > 0.0 && self.alpha <= 1.0
    }

    /// Scores one value against the series so far, then absorbs it.
    ///
    /// Returns the anomaly when at least `warmup` values (and at least one) came before it and
    /// its z-score is at least `z_limit` in size. Non-finite values are ignored, as are all
    /// values while `alpha` is outside (0, 1]; a value whose absorption would overflow the
    /// mean or variance is ignored as well.
    pub fn observe(&mut self, value: f64) -> Option<Anomaly> {
        if !value.is_finite() || !self.has_valid_alpha() {
            return None;
        }
        if self.n == 0 {
            self.mean = value;
            self.variance = 0.0;
            self.n = 1;
            return None;
        }

        let anomaly = self.score(value);

        let diff = value - self.mean;
        let increment = self.alpha * diff;
        let next_mean = self.mean + increment;
        let next_variance = (1.0 - self.alpha) * (self.variance + diff * increment);
        if !(next_mean.is_finite() && next_variance.is_finite()) {
            return None;
        }
        self.mean = next_mean;
        self.variance = next_variance;
        self.n = self.n.saturating_add(1);
        anomaly
    }

    /// The anomaly `value` would be against the current mean and variance, if any, without
    /// absorbing it (a caller that keeps anomalies out of its baseline calls this first and
    /// [`Self::observe`] only for the values it absorbs).
    pub fn score(&self, value: f64) -> Option<Anomaly> {
        if !value.is_finite() || !self.has_valid_alpha() {
            return None;
        }
        if self.n < self.warmup.max(1) {
            return None;
        }
        let stddev = self.scoring_stddev();
        if !(stddev > 0.0 && stddev.is_finite()) {
            return None;
        }
        let z = (value - self.mean) / stddev;
        if z.is_finite() && z.abs() >= self.z_limit {
            Some(Anomaly {
                value,
                mean: self.mean,
                stddev,
                z,
            })
        } else {
            None
        }
    }
}

/// Says in plain words how far a value stands from its series' usual level.
///
/// For example `"total_ms 850.0 is 6.2σ above the usual 120.3 ± 15.1"`, or `"below"` for a
/// negative z.
pub fn describe_anomaly(series: &str, a: &Anomaly) -> String {
    let direction = if a.z < 0.0 { "below" } else { "above" };
    format!(
        "{series} {} is {:.1}σ {direction} the usual {} ± {}",
        format_measurement(a.value),
        a.z.abs(),
        format_measurement(a.mean),
        format_measurement(a.stddev),
    )
}

/// A measured value for a sentence: one decimal from 1 upwards (and for zero), three
/// significant digits below 1 so small values do not read as zero.
fn format_measurement(value: f64) -> String {
    let size = value.abs();
    if size >= 1.0 || size == 0.0 || !size.is_finite() {
        return format!("{value:.1}");
    }
    // size is in (0, 1), so the exponent is negative and the precision at least 3.
    let exponent = size.log10().floor();
    let decimals = (2.0 - exponent).clamp(1.0, 17.0) as usize;
    format!("{value:.decimals$}")
}

/// A duration as `"Xm Ys"` below an hour and `"Xh Ym"` from an hour up, truncated to whole
/// seconds or minutes; negative durations read as zero.
fn format_duration_ms(duration_ms: i64) -> String {
    let total_s = duration_ms.max(0) / MS_PER_SECOND;
    if total_s < SECONDS_PER_HOUR {
        format!(
            "{}m {}s",
            total_s / SECONDS_PER_MINUTE,
            total_s % SECONDS_PER_MINUTE
        )
    } else {
        format!(
            "{}h {}m",
            total_s / SECONDS_PER_HOUR,
            (total_s % SECONDS_PER_HOUR) / SECONDS_PER_MINUTE
        )
    }
}

/// The UTC time of day `HH:MM:SS` of an epoch-milliseconds instant (before 1970 included).
fn format_utc_time_of_day(at_ms: i64) -> String {
    let second_of_day = at_ms.div_euclid(MS_PER_SECOND).rem_euclid(SECONDS_PER_DAY);
    format!(
        "{:02}:{:02}:{:02}",
        second_of_day / SECONDS_PER_HOUR,
        (second_of_day % SECONDS_PER_HOUR) / SECONDS_PER_MINUTE,
        second_of_day % SECONDS_PER_MINUTE
    )
}

/// How long until something happens, rounded half away from zero in a sensible unit: `"now"`, `"in < 1 m"`,
/// `"in ~X m"` below an hour, `"in ~X h"` below 48 hours, `"in ~X d"` beyond.
fn format_time_until(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "never".to_owned();
    }
    if seconds <= 0.0 {
        "now".to_owned()
    } else if seconds < SECONDS_PER_MINUTE as f64 {
        "in < 1 m".to_owned()
    } else if seconds < SECONDS_PER_HOUR as f64 {
        format!("in ~{:.0} m", (seconds / SECONDS_PER_MINUTE as f64).round())
    } else if seconds < 48.0 * SECONDS_PER_HOUR as f64 {
        format!("in ~{:.0} h", (seconds / SECONDS_PER_HOUR as f64).round())
    } else {
        format!("in ~{:.0} d", (seconds / SECONDS_PER_DAY as f64).round())
    }
}

/// A byte count with one decimal in the largest decimal unit it reaches (B, kB, MB, GB, TB,
/// PB).
fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut scaled = bytes;
    let mut unit_index = 0;
    while scaled.abs() >= 1000.0 && unit_index + 1 < UNITS.len() {
        scaled /= 1000.0;
        unit_index += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit_index])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;
    const HOUR_MS: i64 = 3_600_000;
    const GB: f64 = 1e9;
    /// 2023-11-14 22:13:20 UTC.
    const EPOCH_BASE_MS: i64 = 1_700_000_000_000;
    /// 2023-11-15 12:00:00 UTC.
    const NOON_MS: i64 = 1_700_049_600_000;

    fn cpu_above_90_for_5m() -> Threshold {
        Threshold {
            comparison: Comparison::Above,
            limit: 90.0,
            for_ms: 5 * MINUTE_MS,
        }
    }

    fn relative_error(actual: f64, expected: f64) -> f64 {
        ((actual - expected) / expected).abs()
    }

    #[test]
    fn threshold_fires_exactly_when_the_hold_reaches_for_ms() {
        let mut tracker = ThresholdTracker::new(cpu_above_90_for_5m(), 3 * MINUTE_MS);
        assert_eq!(tracker.observe(NOON_MS - MINUTE_MS, 50.0), None);
        for minute in 0..5 {
            assert_eq!(
                tracker.observe(NOON_MS + minute * MINUTE_MS, 95.0),
                None,
                "minute {minute}"
            );
            assert!(!tracker.is_firing());
        }
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS));
        // 4m 59.999s of hold is not enough.
        let mut early = tracker.clone();
        assert_eq!(early.observe(NOON_MS + 5 * MINUTE_MS - 1, 95.0), None);
        assert_eq!(
            tracker.observe(NOON_MS + 5 * MINUTE_MS, 93.5),
            Some(ThresholdChange::Fired {
                since_ms: NOON_MS,
                value: 93.5
            })
        );
        assert!(tracker.is_firing());
        // Still firing: no second change.
        assert_eq!(tracker.observe(NOON_MS + 6 * MINUTE_MS, 99.0), None);
    }

    #[test]
    fn threshold_clears_on_the_first_sample_not_meeting_it() {
        let mut tracker = ThresholdTracker::new(cpu_above_90_for_5m(), 3 * MINUTE_MS);
        for minute in 0..=5 {
            tracker.observe(NOON_MS + minute * MINUTE_MS, 95.0);
        }
        assert!(tracker.is_firing());
        // Exactly at the limit is not above it.
        assert_eq!(
            tracker.observe(NOON_MS + 6 * MINUTE_MS, 90.0),
            Some(ThresholdChange::Cleared { value: 90.0 })
        );
        assert!(!tracker.is_firing());
        assert_eq!(tracker.held_since_ms(), None);
        assert_eq!(tracker.observe(NOON_MS + 7 * MINUTE_MS, 10.0), None);
        // The clock starts again from the next breach.
        assert_eq!(tracker.observe(NOON_MS + 8 * MINUTE_MS, 95.0), None);
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS + 8 * MINUTE_MS));
        for minute in 9..13 {
            assert_eq!(tracker.observe(NOON_MS + minute * MINUTE_MS, 95.0), None);
        }
        assert_eq!(
            tracker.observe(NOON_MS + 13 * MINUTE_MS, 95.0),
            Some(ThresholdChange::Fired {
                since_ms: NOON_MS + 8 * MINUTE_MS,
                value: 95.0
            })
        );
    }

    #[test]
    fn threshold_ignores_samples_at_or_before_the_last_one_and_non_finite_values() {
        let mut tracker = ThresholdTracker::new(cpu_above_90_for_5m(), 3 * MINUTE_MS);
        assert_eq!(tracker.observe(NOON_MS, 95.0), None);
        assert_eq!(tracker.observe(NOON_MS + MINUTE_MS, 95.0), None);
        // A late good sample and a duplicate time change nothing.
        assert_eq!(tracker.observe(NOON_MS + 30_000, 10.0), None);
        assert_eq!(tracker.observe(NOON_MS + MINUTE_MS, 10.0), None);
        assert_eq!(tracker.observe(NOON_MS + 2 * MINUTE_MS, f64::NAN), None);
        assert_eq!(
            tracker.observe(NOON_MS + 2 * MINUTE_MS, f64::INFINITY),
            None
        );
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS));
        assert_eq!(tracker.last_sample_at_ms(), Some(NOON_MS + MINUTE_MS));
        for minute in 2..5 {
            assert_eq!(tracker.observe(NOON_MS + minute * MINUTE_MS, 95.0), None);
        }
        assert_eq!(
            tracker.observe(NOON_MS + 5 * MINUTE_MS, 95.0),
            Some(ThresholdChange::Fired {
                since_ms: NOON_MS,
                value: 95.0
            })
        );
        // Out of order while firing does not clear.
        assert_eq!(tracker.observe(NOON_MS + 4 * MINUTE_MS, 10.0), None);
        assert!(tracker.is_firing());
    }

    #[test]
    fn threshold_gap_longer_than_max_gap_restarts_the_clock() {
        let mut tracker = ThresholdTracker::new(cpu_above_90_for_5m(), 3 * MINUTE_MS);
        tracker.observe(NOON_MS, 95.0);
        tracker.observe(NOON_MS + MINUTE_MS, 95.0);
        // A gap of exactly max_gap_ms keeps the clock.
        tracker.observe(NOON_MS + 4 * MINUTE_MS, 95.0);
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS));
        // A gap of 3m 0.001s restarts it, although 5 minutes have passed since NOON_MS.
        assert_eq!(tracker.observe(NOON_MS + 7 * MINUTE_MS + 1, 95.0), None);
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS + 7 * MINUTE_MS + 1));
        for minute in 8..12 {
            assert_eq!(
                tracker.observe(NOON_MS + minute * MINUTE_MS + 1, 95.0),
                None
            );
        }
        assert_eq!(
            tracker.observe(NOON_MS + 12 * MINUTE_MS + 1, 95.0),
            Some(ThresholdChange::Fired {
                since_ms: NOON_MS + 7 * MINUTE_MS + 1,
                value: 95.0
            })
        );
        // Firing survives a gap when the condition still holds after it.
        assert_eq!(tracker.observe(NOON_MS + 30 * MINUTE_MS, 95.0), None);
        assert!(tracker.is_firing());
        assert_eq!(tracker.held_since_ms(), Some(NOON_MS + 30 * MINUTE_MS));
    }

    #[test]
    fn threshold_below_fires_and_clears() {
        let free_below_10_for_1m = Threshold {
            comparison: Comparison::Below,
            limit: 10.0,
            for_ms: MINUTE_MS,
        };
        let mut tracker = ThresholdTracker::new(free_below_10_for_1m, MINUTE_MS);
        assert_eq!(tracker.observe(NOON_MS, 12.0), None);
        assert_eq!(tracker.observe(NOON_MS + 30_000, 9.0), None);
        assert_eq!(tracker.observe(NOON_MS + 60_000, 8.0), None);
        assert_eq!(
            tracker.observe(NOON_MS + 90_000, 7.5),
            Some(ThresholdChange::Fired {
                since_ms: NOON_MS + 30_000,
                value: 7.5
            })
        );
        assert_eq!(
            tracker.observe(NOON_MS + 120_000, 10.0),
            Some(ThresholdChange::Cleared { value: 10.0 })
        );
    }

    #[test]
    fn threshold_with_zero_for_ms_fires_on_the_first_breach() {
        let mut tracker = ThresholdTracker::new(
            Threshold {
                comparison: Comparison::Above,
                limit: 1.0,
                for_ms: 0,
            },
            0,
        );
        assert_eq!(
            tracker.observe(i64::MIN, 2.0),
            Some(ThresholdChange::Fired {
                since_ms: i64::MIN,
                value: 2.0
            })
        );
        assert_eq!(
            tracker.observe(i64::MAX, 0.0),
            Some(ThresholdChange::Cleared { value: 0.0 })
        );
    }

    #[test]
    fn describe_says_what_fired_and_what_cleared() {
        let threshold = cpu_above_90_for_5m();
        assert_eq!(
            describe(
                "cpu_pct",
                &threshold,
                &ThresholdChange::Fired {
                    since_ms: NOON_MS,
                    value: 93.5
                }
            ),
            "cpu_pct 93.5 above 90 for 5m 0s (since 12:00:00 UTC)"
        );
        assert_eq!(
            describe(
                "cpu_pct",
                &threshold,
                &ThresholdChange::Cleared { value: 42.0 }
            ),
            "cpu_pct 42.0 no longer above 90"
        );
        let long = Threshold {
            comparison: Comparison::Below,
            limit: 0.5,
            for_ms: 2 * HOUR_MS + 5 * MINUTE_MS + 30_000,
        };
        assert_eq!(
            describe(
                "load",
                &long,
                &ThresholdChange::Fired {
                    since_ms: EPOCH_BASE_MS,
                    value: 0.0123
                }
            ),
            "load 0.0123 below 0.5 for 2h 5m (since 22:13:20 UTC)"
        );
    }

    #[test]
    fn formatting_helpers_are_exact() {
        assert_eq!(format_duration_ms(0), "0m 0s");
        assert_eq!(format_duration_ms(-5), "0m 0s");
        assert_eq!(format_duration_ms(59_999), "0m 59s");
        assert_eq!(format_duration_ms(HOUR_MS - 1), "59m 59s");
        assert_eq!(format_duration_ms(HOUR_MS), "1h 0m");
        assert_eq!(format_duration_ms(26 * HOUR_MS + 61_000), "26h 1m");
        assert_eq!(format_duration_ms(i64::MAX), "2562047788015h 12m");
        assert_eq!(format_utc_time_of_day(0), "00:00:00");
        assert_eq!(format_utc_time_of_day(-1), "23:59:59");
        assert_eq!(format_utc_time_of_day(i64::MIN), "16:47:04");
        assert_eq!(format_bytes(999.0), "999.0 B");
        assert_eq!(format_bytes(1.2e9), "1.2 GB");
        assert_eq!(format_bytes(3e21), "3000000.0 PB");
        assert_eq!(format_time_until(0.0), "now");
        assert_eq!(format_time_until(30.0), "in < 1 m");
        assert_eq!(format_time_until(150.0), "in ~3 m");
        assert_eq!(format_time_until(47.0 * 3600.0), "in ~47 h");
        assert_eq!(format_time_until(3.0 * 86_400.0), "in ~3 d");
        assert_eq!(format_measurement(0.0), "0.0");
        assert_eq!(format_measurement(-0.5), "-0.500");
        assert_eq!(format_measurement(f64::MIN_POSITIVE), "0.00000000000000000");
    }

    #[test]
    fn threshold_round_trips_through_json() {
        let threshold = cpu_above_90_for_5m();
        let json = serde_json::to_string(&threshold).unwrap();
        assert_eq!(
            json,
            r#"{"comparison":"above","limit":90.0,"for_ms":300000}"#
        );
        assert_eq!(serde_json::from_str::<Threshold>(&json).unwrap(), threshold);
        assert_eq!(
            serde_json::from_str::<Comparison>(r#""below""#).unwrap(),
            Comparison::Below
        );
    }

    /// Used = 100 GB + 1 GB/h, sampled hourly for 10 hours, plus `noise_gb` per sample.
    fn hourly_usage(noise_gb: &[f64]) -> Vec<(i64, f64)> {
        noise_gb
            .iter()
            .enumerate()
            .map(|(hour, noise)| {
                let hour = hour as i64;
                (
                    EPOCH_BASE_MS + hour * HOUR_MS,
                    100.0 * GB + hour as f64 * GB + noise * GB,
                )
            })
            .collect()
    }

    #[test]
    fn forecast_of_a_perfect_line_is_exact() {
        let samples = hourly_usage(&[0.0; 11]);
        let forecast = forecast_full(&samples, 200.0 * GB).unwrap();
        assert!(relative_error(forecast.slope_per_s, GB / 3600.0) < 1e-9);
        assert!((forecast.r_squared - 1.0).abs() < 1e-12);
        assert!(relative_error(forecast.seconds_until_full, 90.0 * 3600.0) < 1e-9);
        assert_eq!(
            describe_forecast("/var", &forecast),
            "/var full in ~4 d (growing 24.0 GB/day, fit r²=1.00)"
        );
    }

    #[test]
    fn forecast_ignores_sample_order() {
        let mut samples = hourly_usage(&[0.0; 11]);
        samples.reverse();
        samples.swap(2, 7);
        let forecast = forecast_full(&samples, 200.0 * GB).unwrap();
        assert!(relative_error(forecast.seconds_until_full, 90.0 * 3600.0) < 1e-9);
    }

    #[test]
    fn forecast_of_a_noisy_line_matches_the_hand_computed_fit() {
        // The noise sums to zero and Σ(hour - 5)·noise = -0.8 GB·h, Σnoise² = 0.38 GB², over
        // Σ(hour - 5)² = 110 h². So slope = (110 - 0.8) / 110 = 273/275 GB/h and
        // r² = 109.2² / (110 · (110 - 1.6 + 0.38)).
        let noise_gb = [0.2, -0.1, -0.2, 0.1, 0.3, -0.3, 0.0, 0.2, -0.2, 0.1, -0.1];
        let samples = hourly_usage(&noise_gb);
        let forecast = forecast_full(&samples, 200.0 * GB).unwrap();
        let slope_gb_per_h = 273.0 / 275.0;
        assert!(relative_error(forecast.slope_per_s, slope_gb_per_h * GB / 3600.0) < 1e-9);
        let r_squared = 109.2 * 109.2 / (110.0 * 108.78);
        assert!((forecast.r_squared - r_squared).abs() < 1e-9);
        assert!(forecast.r_squared < 1.0);
        // The fitted line passes through (5 h, 105 GB); at 10 h it is at 105 + 5·slope.
        let fitted_at_last_gb = 105.0 + 5.0 * slope_gb_per_h;
        let hours_until_full = (200.0 - fitted_at_last_gb) / slope_gb_per_h;
        assert!(relative_error(forecast.seconds_until_full, hours_until_full * 3600.0) < 1e-9);
        assert_eq!(
            describe_forecast("/data", &forecast),
            "/data full in ~4 d (growing 23.8 GB/day, fit r²=1.00)"
        );
    }

    #[test]
    fn forecast_is_zero_when_the_fitted_line_already_reached_capacity() {
        let samples = hourly_usage(&[0.0; 11]);
        let forecast = forecast_full(&samples, 105.0 * GB).unwrap();
        assert_eq!(forecast.seconds_until_full, 0.0);
        assert_eq!(
            describe_forecast("/", &forecast),
            "/ full now (growing 24.0 GB/day, fit r²=1.00)"
        );
    }

    #[test]
    fn forecast_refuses_flat_shrinking_short_and_non_finite_input() {
        let flat: Vec<(i64, f64)> = (0..10)
            .map(|h| (EPOCH_BASE_MS + h * HOUR_MS, 50.0))
            .collect();
        assert_eq!(forecast_full(&flat, 100.0), None);
        let shrinking: Vec<(i64, f64)> = (0..10)
            .map(|h| (EPOCH_BASE_MS + h * HOUR_MS, 50.0 - h as f64))
            .collect();
        assert_eq!(forecast_full(&shrinking, 100.0), None);
        assert_eq!(forecast_full(&[], 100.0), None);
        let two_points = [(EPOCH_BASE_MS, 1.0), (EPOCH_BASE_MS + HOUR_MS, 2.0)];
        assert_eq!(forecast_full(&two_points, 100.0), None);
        // Four samples but only two distinct times.
        let two_times = [
            (EPOCH_BASE_MS, 1.0),
            (EPOCH_BASE_MS, 1.5),
            (EPOCH_BASE_MS + HOUR_MS, 2.0),
            (EPOCH_BASE_MS + HOUR_MS, 2.5),
        ];
        assert_eq!(forecast_full(&two_times, 100.0), None);
        let mut with_nan = hourly_usage(&[0.0; 11]);
        with_nan[4].1 = f64::NAN;
        assert_eq!(forecast_full(&with_nan, 200.0 * GB), None);
        let mut with_infinity = hourly_usage(&[0.0; 11]);
        with_infinity[4].1 = f64::INFINITY;
        assert_eq!(forecast_full(&with_infinity, 200.0 * GB), None);
        let good = hourly_usage(&[0.0; 11]);
        assert_eq!(forecast_full(&good, f64::NAN), None);
        assert_eq!(forecast_full(&good, f64::INFINITY), None);
        assert_eq!(forecast_full(&good, 0.0), None);
        let extreme_times = [(i64::MIN, 1.0), (0, 2.0), (i64::MAX, 3.0)];
        assert!(forecast_full(&extreme_times, 10.0).is_some());
        let huge_values = [(0, -f64::MAX), (1, 0.0), (2, f64::MAX)];
        assert_eq!(forecast_full(&huge_values, f64::MAX), None);
    }

    #[test]
    fn ewma_constant_series_then_the_same_value_is_no_anomaly() {
        let mut series = Ewma::new(0.1, 10, 4.0, 0.5);
        for _ in 0..50 {
            assert_eq!(series.observe(100.0), None);
        }
        assert_eq!(series.variance, 0.0);
        assert_eq!(series.observe(100.0), None);
        // The 1 % floor: a wiggle of 0.5 on a flat 100 scores 0.5σ.
        assert_eq!(series.scoring_stddev(), 1.0);
        assert_eq!(series.observe(100.5), None);
    }

    #[test]
    fn ewma_flat_series_then_a_doubling_is_an_anomaly_against_the_floor() {
        let mut series = Ewma::new(0.1, 10, 4.0, 0.5);
        for _ in 0..20 {
            series.observe(100.0);
        }
        let anomaly = series.observe(200.0).unwrap();
        assert_eq!(
            anomaly,
            Anomaly {
                value: 200.0,
                mean: 100.0,
                stddev: 1.0,
                z: 100.0
            }
        );
    }

    #[test]
    fn ewma_flat_series_at_zero_without_a_floor_never_alarms() {
        let mut series = Ewma::new(0.1, 2, 4.0, 0.0);
        for _ in 0..5 {
            series.observe(0.0);
        }
        assert_eq!(series.observe(1.0), None);
    }

    /// Alternating 95 and 105, starting with 95.
    fn alternating(count: usize) -> impl Iterator<Item = f64> {
        (0..count).map(|i| if i % 2 == 0 { 95.0 } else { 105.0 })
    }

    #[test]
    fn ewma_spike_after_alternating_series_scores_the_hand_computed_z() {
        let alpha = 0.1;
        let mut series = Ewma::new(alpha, 20, 4.0, 0.5);
        for value in alternating(50) {
            assert_eq!(series.observe(value), None);
        }
        // The same recurrence, written out independently.
        let mut mean = 95.0;
        let mut variance = 0.0;
        for value in alternating(50).skip(1) {
            let diff: f64 = value - mean;
            mean += alpha * diff;
            variance = (1.0 - alpha) * (variance + alpha * diff * diff);
        }
        let stddev = f64::sqrt(variance);
        let z = (200.0 - mean) / stddev;
        // Values from an independent calculation of the same series.
        assert!((mean - 100.236_032_762_066_73).abs() < 1e-9);
        assert!((stddev - 4.994_425_746_292_676).abs() < 1e-9);
        assert!((z - 19.975_062_661_005_08).abs() < 1e-9);

        let anomaly = series.observe(200.0).unwrap();
        assert!((anomaly.mean - mean).abs() < 1e-12);
        assert!((anomaly.stddev - stddev).abs() < 1e-12);
        assert!((anomaly.z - z).abs() < 1e-9);
        assert!(anomaly.z > series.z_limit);
        assert_eq!(
            describe_anomaly("total_ms", &anomaly),
            "total_ms 200.0 is 20.0σ above the usual 100.2 ± 5.0"
        );
        // The spike is absorbed into the mean afterwards.
        assert!((series.mean - (mean + alpha * (200.0 - mean))).abs() < 1e-9);
        assert_eq!(series.n, 51);
    }

    #[test]
    fn ewma_drop_is_an_anomaly_below() {
        let mut series = Ewma::new(0.1, 20, 4.0, 0.5);
        for value in alternating(50) {
            series.observe(value);
        }
        let anomaly = series.observe(40.0).unwrap();
        assert!(anomaly.z < -4.0);
        assert!(describe_anomaly("total_ms", &anomaly).starts_with("total_ms 40.0 is 12.1σ below"));
    }

    #[test]
    fn ewma_respects_warmup() {
        let mut series = Ewma::new(0.1, 10, 4.0, 0.5);
        for value in alternating(9) {
            series.observe(value);
        }
        assert_eq!(series.n, 9);
        assert_eq!(series.observe(200.0), None);

        let mut series = Ewma::new(0.1, 10, 4.0, 0.5);
        for value in alternating(10) {
            series.observe(value);
        }
        assert!(series.observe(200.0).is_some());
    }

    #[test]
    fn ewma_ignores_non_finite_values_and_invalid_alpha() {
        let mut series = Ewma::new(0.1, 10, 4.0, 0.5);
        for value in alternating(20) {
            series.observe(value);
        }
        let before = series.clone();
        assert_eq!(series.observe(f64::NAN), None);
        assert_eq!(series.observe(f64::INFINITY), None);
        assert_eq!(series.observe(f64::NEG_INFINITY), None);
        assert_eq!(series, before);

        for alpha in [0.0, -0.5, 1.5, f64::NAN] {
            let mut series = Ewma::new(alpha, 0, 4.0, 0.5);
            assert_eq!(series.observe(100.0), None);
            assert_eq!(series.observe(1e6), None);
            assert_eq!(series.n, 0);
        }

        let mut series = Ewma::new(1.0, 0, 4.0, 0.5);
        series.observe(-f64::MAX);
        assert_eq!(series.observe(f64::MAX), None);
        assert_eq!(series.n, 1);
    }
}
