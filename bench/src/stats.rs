//! Percentiles for the benchmarks that report latency distributions.

use std::time::Duration;

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `sorted`, which must be
/// sorted and not empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
