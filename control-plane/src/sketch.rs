//! Mergeable aggregates for rollups: a fixed log-bucket latency sketch and the per-bucket
//! aggregate of a check's results (count, failures, min/avg/max, percentiles).
//!
//! The sketch's buckets are fixed for all time (bucket `i ≥ 1` holds values in
//! `(MIN_MS·γ^(i-1), MIN_MS·γ^i]`, γ = [`GAMMA`]), so two sketches merge by adding counts and
//! hours merge into days exactly. A quantile is answered with its bucket's estimate
//! `MIN_MS·2γ^i/(γ+1)`, within [`RELATIVE_ERROR`] (≈ 1.96 %) of the true value for values in
//! `[MIN_MS, MAX_MS]`; smaller values read as 0, larger ones as `MAX_MS`.

use std::collections::BTreeMap;

/// The ratio between a bucket's bounds.
pub const GAMMA: f64 = 1.04;
/// The bound on a quantile's relative error, (γ−1)/(γ+1).
pub const RELATIVE_ERROR: f64 = (GAMMA - 1.0) / (GAMMA + 1.0);
/// Values at or below this (milliseconds) fall into bucket 0, read as 0.
pub const MIN_MS: f64 = 0.01;
/// Values above this (one hour) fall into the last bucket.
pub const MAX_MS: f64 = 3_600_000.0;
/// Number of buckets: bucket 0 plus those up to `MAX_MS`.
pub const N_BUCKETS: u16 = 504;
/// Most bytes an encoded sketch may take (a varint pair per bucket).
pub const MAX_ENCODED_BYTES: usize = N_BUCKETS as usize * 13;

/// Why stored sketch bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    #[error("sketch of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("sketch ends inside a number")]
    Truncated,
    #[error("sketch bucket {0} is out of range")]
    Bucket(u64),
    #[error("sketch count overflows")]
    Overflow,
}

/// A sparse histogram of latencies over fixed log buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    counts: BTreeMap<u16, u64>,
}

fn bucket_of(ms: f64) -> u16 {
    if ms.is_nan() || ms <= MIN_MS {
        return 0;
    }
    let index = ((ms / MIN_MS).ln() / GAMMA.ln()).ceil();
    (index.max(1.0) as u64).min(u64::from(N_BUCKETS - 1)) as u16
}

fn estimate_of(bucket: u16) -> f64 {
    if bucket == 0 {
        return 0.0;
    }
    (MIN_MS * 2.0 * GAMMA.powi(i32::from(bucket)) / (GAMMA + 1.0)).min(MAX_MS)
}

impl Sketch {
    pub fn add(&mut self, ms: f64) {
        *self.counts.entry(bucket_of(ms)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (bucket, count) in &other.counts {
            *self.counts.entry(*bucket).or_default() += count;
        }
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) by the nearest-rank rule; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(estimate_of(*bucket));
            }
        }
        self.counts.keys().next_back().map(|b| estimate_of(*b))
    }

    /// Compact bytes: per non-empty bucket, the bucket's distance from the previous one and
    /// its count, both as LEB128 varints.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.counts.len() * 3);
        let mut previous = 0u16;
        for (bucket, count) in &self.counts {
            put_varint(&mut out, u64::from(bucket - previous));
            put_varint(&mut out, *count);
            previous = *bucket;
        }
        out
    }

    /// Reads bytes written by [`Sketch::encode`].
    ///
    /// # Errors
    /// Over-long, truncated or out-of-range input.
    pub fn decode(bytes: &[u8]) -> Result<Sketch, SketchError> {
        if bytes.len() > MAX_ENCODED_BYTES {
            return Err(SketchError::TooLong(bytes.len()));
        }
        let mut counts = BTreeMap::new();
        let mut at = 0;
        let mut bucket = 0u64;
        while at < bytes.len() {
            let delta = get_varint(bytes, &mut at)?;
            let count = get_varint(bytes, &mut at)?;
            bucket = bucket.checked_add(delta).ok_or(SketchError::Overflow)?;
            if bucket >= u64::from(N_BUCKETS) {
                return Err(SketchError::Bucket(bucket));
            }
            let slot: &mut u64 = counts.entry(bucket as u16).or_default();
            *slot = slot.checked_add(count).ok_or(SketchError::Overflow)?;
        }
        Ok(Sketch { counts })
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, SketchError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(SketchError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SketchError::Overflow)
}

/// The aggregate of a (check, region)'s results over one bucket of time. Latency figures
/// cover the successful results only (a failure's time is mostly its timeout).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckAggregate {
    pub count: u64,
    pub failures: u64,
    pub sum_ms: f64,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub sketch: Sketch,
}

impl CheckAggregate {
    pub fn add(&mut self, ok: bool, total_ms: f64) {
        self.count += 1;
        if !ok {
            self.failures += 1;
            return;
        }
        self.sum_ms += total_ms;
        self.min_ms = Some(self.min_ms.map_or(total_ms, |m| m.min(total_ms)));
        self.max_ms = Some(self.max_ms.map_or(total_ms, |m| m.max(total_ms)));
        self.sketch.add(total_ms);
    }

    pub fn merge(&mut self, other: &CheckAggregate) {
        self.count += other.count;
        self.failures += other.failures;
        self.sum_ms += other.sum_ms;
        self.min_ms = min_of(self.min_ms, other.min_ms, f64::min);
        self.max_ms = min_of(self.max_ms, other.max_ms, f64::max);
        self.sketch.merge(&other.sketch);
    }

    /// Successful results.
    pub fn successes(&self) -> u64 {
        self.count - self.failures
    }

    /// Mean latency of the successful results.
    pub fn avg_ms(&self) -> Option<f64> {
        (self.successes() > 0).then(|| self.sum_ms / self.successes() as f64)
    }

    /// A latency quantile, kept within the exact min and max (which q = 0 and q = 1 answer).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if q >= 1.0 {
            return self.max_ms;
        }
        if q <= 0.0 {
            return self.min_ms;
        }
        let estimate = self.sketch.quantile(q)?;
        Some(estimate.clamp(self.min_ms.unwrap_or(0.0), self.max_ms.unwrap_or(MAX_MS)))
    }
}

fn min_of(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// The aggregate of one host metric over one bucket of time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GaugeAggregate {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl GaugeAggregate {
    pub fn add(&mut self, value: f64) {
        self.merge(&GaugeAggregate {
            count: 1,
            sum: value,
            min: value,
            max: value,
        });
    }

    pub fn merge(&mut self, other: &GaugeAggregate) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank quantile of sorted values.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn quantiles_stay_within_the_stated_error() {
        // A skewed spread from 0.05 ms to 20 s, generated deterministically.
        let mut values: Vec<f64> = (0..20_000u64)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) % 10_007) as f64 / 10_007.0;
                0.05 * (400_000f64).powf(x * x)
            })
            .collect();
        let mut sketch = Sketch::default();
        for v in &values {
            sketch.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&values, q);
            let got = sketch.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= want * RELATIVE_ERROR + 1e-9,
                "q={q}: {got} vs {want}"
            );
        }
        assert_eq!(sketch.count(), 20_000);
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let mut whole = Sketch::default();
        let mut parts = vec![Sketch::default(); 24];
        for i in 0..5_000u32 {
            let v = f64::from(i % 997) * 1.7 + 0.3;
            whole.add(v);
            parts[(i % 24) as usize].add(v);
        }
        let mut merged = Sketch::default();
        for part in &parts {
            merged.merge(part);
        }
        assert_eq!(merged, whole);
        assert_eq!(Sketch::decode(&merged.encode()).unwrap(), whole);
    }

    #[test]
    fn edges_and_bad_bytes() {
        let mut sketch = Sketch::default();
        for v in [0.0, -3.0, f64::NAN, 1e12, MIN_MS, MAX_MS] {
            sketch.add(v);
        }
        assert_eq!(sketch.quantile(0.1), Some(0.0));
        assert_eq!(sketch.quantile(1.0), Some(MAX_MS));
        assert_eq!(Sketch::default().quantile(0.5), None);
        assert_eq!(Sketch::decode(&[0x80]), Err(SketchError::Truncated));
        assert_eq!(Sketch::decode(&[5]), Err(SketchError::Truncated));
        let mut far = Vec::new();
        put_varint(&mut far, 600);
        put_varint(&mut far, 1);
        assert_eq!(Sketch::decode(&far), Err(SketchError::Bucket(600)));
        assert!(matches!(
            Sketch::decode(&vec![0; MAX_ENCODED_BYTES + 1]),
            Err(SketchError::TooLong(_))
        ));
        assert_eq!(Sketch::decode(&[0xff; 11]), Err(SketchError::Overflow));
        // The last bucket reaches MAX_MS.
        assert_eq!(bucket_of(MAX_MS), N_BUCKETS - 1);
        assert!(estimate_of(N_BUCKETS - 2) < MAX_MS);
    }

    #[test]
    fn check_aggregates_merge_exactly_and_keep_latency_to_successes() {
        let mut whole = CheckAggregate::default();
        let mut a = CheckAggregate::default();
        let mut b = CheckAggregate::default();
        for i in 0..100u32 {
            let (ok, ms) = (i % 10 != 0, f64::from(i) + 1.0);
            whole.add(ok, ms);
            if i < 37 { &mut a } else { &mut b }.add(ok, ms);
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!((whole.count, whole.failures), (100, 10));
        assert_eq!(whole.min_ms, Some(2.0));
        assert_eq!(whole.max_ms, Some(100.0));
        let avg = whole.avg_ms().unwrap();
        assert!((avg - (5050.0 - 460.0) / 90.0).abs() < 1e-9, "{avg}");
        // The extremes are exact; the others within the stated error.
        assert_eq!(whole.quantile_ms(1.0), Some(100.0));
        assert_eq!(whole.quantile_ms(0.0), Some(2.0));
        let median = whole.quantile_ms(0.5).unwrap();
        assert!((median - 50.0).abs() <= 50.0 * RELATIVE_ERROR, "{median}");
        let mut all_failed = CheckAggregate::default();
        all_failed.add(false, 5000.0);
        assert_eq!(
            (all_failed.avg_ms(), all_failed.quantile_ms(0.5)),
            (None, None)
        );
    }

    #[test]
    fn gauges_merge() {
        let mut g = GaugeAggregate::default();
        g.merge(&GaugeAggregate::default());
        assert_eq!(g.count, 0);
        for v in [3.0, -1.0, 7.5] {
            g.add(v);
        }
        assert_eq!((g.count, g.sum, g.min, g.max), (3, 9.5, -1.0, 7.5));
    }
}
