//! Percentiles for the benchmarks that report latency distributions.
// (each benchmark uses part of it)
#![allow(dead_code)]

use std::time::Duration;

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `sorted`, which must be
/// sorted and not empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `percentile` in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).as_secs_f64() * 1000.0
}
