//! How long the logs' fdatasyncs take, counted where they run (the node's loop, or the log sync
//! thread). Every unit's path holds one at its origin and one at each receiver, so a slow or
//! stalling device shows here first; `--status` puts it in front of the operator (on a virtual
//! machine's disk, stalls of 10-240 ms were measured: docs/PERFORMANCE.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Histogram buckets per doubling of the duration: a bucket's bound is 2^(1/4) = 1.19 times the
/// one below, so a percentile read from it is within 19 % of the true one.
const BUCKETS_PER_DOUBLING: f64 = 4.0;
/// Buckets: the first holds syncs up to 1 µs, the last everything from 2^24 µs (16.8 s) on.
const BUCKETS: usize = 97;

/// Counters shared by a writer and the sync jobs it hands out.
#[derive(Debug)]
pub struct SyncTimes {
    syncs: AtomicU64,
    over_10ms: AtomicU64,
    over_100ms: AtomicU64,
    slowest_ns: AtomicU64,
    /// Syncs by duration, log-scale (see [`bucket`]): a stall shows as over 10 ms, a slow
    /// device that never stalls (a unit's path holds its origin's sync) in the percentiles.
    histogram: [AtomicU64; BUCKETS],
}

impl Default for SyncTimes {
    fn default() -> SyncTimes {
        SyncTimes {
            syncs: AtomicU64::new(0),
            over_10ms: AtomicU64::new(0),
            over_100ms: AtomicU64::new(0),
            slowest_ns: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The histogram bucket of a sync that took `ns`.
fn bucket(ns: u64) -> usize {
    let us = ns as f64 / 1e3;
    if us <= 1.0 {
        return 0;
    }
    ((us.log2() * BUCKETS_PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in ms.
fn bucket_bound_ms(i: usize) -> f64 {
    (i as f64 / BUCKETS_PER_DOUBLING).exp2() / 1e3
}

/// What [`SyncTimes`] counted since the logs were opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiskSyncs {
    /// Group commits made durable (one fdatasync of each file they touched, in parallel).
    pub log_syncs: u64,
    /// Of those, the ones that took over 10 ms.
    pub over_10ms: u64,
    /// Of those, the ones that took over 100 ms (the device stalled).
    pub over_100ms: u64,
    /// The slowest, in ms.
    pub slowest_ms: f64,
    /// Half of them took at most this long, in ms (within 19 %; 0 with no sync yet).
    pub p50_ms: f64,
    /// 99 % of them took at most this long, in ms (within 19 %; 0 with no sync yet).
    pub p99_ms: f64,
}

impl SyncTimes {
    /// Counts one sync that took `took`.
    pub fn record(&self, took: Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if took > Duration::from_millis(10) {
            self.over_10ms.fetch_add(1, Ordering::Relaxed);
        }
        if took > Duration::from_millis(100) {
            self.over_100ms.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.slowest_ns.fetch_max(ns, Ordering::Relaxed);
        self.histogram[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bound in ms that a fraction `q` of the recorded syncs stayed within, never above the
    /// slowest (0 with none).
    fn percentile_ms(&self, counts: &[u64], q: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let slowest = self.slowest_ns.load(Ordering::Relaxed) as f64 / 1e6;
                return bucket_bound_ms(i).min(slowest);
            }
        }
        self.slowest_ns.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The counts so far.
    pub fn snapshot(&self) -> DiskSyncs {
        let counts: Vec<u64> = self.histogram.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        DiskSyncs {
            p50_ms: self.percentile_ms(&counts, 0.5),
            p99_ms: self.percentile_ms(&counts, 0.99),
            log_syncs: self.syncs.load(Ordering::Relaxed),
            over_10ms: self.over_10ms.load(Ordering::Relaxed),
            over_100ms: self.over_100ms.load(Ordering::Relaxed),
            slowest_ms: self.slowest_ns.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_counted_by_how_long_they_took() {
        let times = SyncTimes::default();
        assert_eq!(times.snapshot(), DiskSyncs::default());
        for ms in [1, 10, 11, 100, 240, 3] {
            times.record(Duration::from_millis(ms));
        }
        let got = times.snapshot();
        let counts = DiskSyncs { p50_ms: 0.0, p99_ms: 0.0, ..got };
        let expected = DiskSyncs {
            log_syncs: 6,
            over_10ms: 3,
            over_100ms: 1,
            slowest_ms: 240.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
        };
        assert_eq!(counts, expected);
        // The third of six is 10 ms; the 99th percentile is the slowest.
        assert!((10.0..=10.0 * 1.19).contains(&got.p50_ms), "{got:?}");
        assert_eq!(got.p99_ms, 240.0, "{got:?}");
    }

    /// Percentiles from the histogram stay within a bucket (19 %) of the true ones, over the
    /// range a disk shows (50 µs to seconds).
    #[test]
    fn percentiles_are_within_a_bucket_of_the_true_ones() {
        let times = SyncTimes::default();
        assert_eq!((times.snapshot().p50_ms, times.snapshot().p99_ms), (0.0, 0.0));
        // 1,000 syncs: 0.05 ms, 0.10 ms, ... 50 ms.
        let all: Vec<Duration> = (1..=1_000).map(|i| Duration::from_micros(50 * i)).collect();
        for took in &all {
            times.record(*took);
        }
        let got = times.snapshot();
        for (q, estimate) in [(0.5, got.p50_ms), (0.99, got.p99_ms)] {
            let truth = all[(all.len() as f64 * q) as usize - 1].as_secs_f64() * 1e3;
            assert!(
                estimate >= truth && estimate <= truth * 1.19 + 1e-9,
                "q {q}: {estimate} ms against {truth} ms"
            );
        }
        // A sync over the last bucket's bound is counted there, and the slowest still caps it.
        times.record(Duration::from_secs(40));
        assert!(times.snapshot().slowest_ms >= 40_000.0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(0), 0);
    }
}
