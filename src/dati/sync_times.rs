//! How long the logs' fdatasyncs take, counted where they run (the node's loop, or the log sync
//! thread). Every unit's path holds one at its origin (a receiver delivers before its own), so a
//! slow or stalling device shows here first; `--status` puts it in front of the operator (on a
//! virtual machine's disk, stalls of 10-240 ms were measured: docs/PERFORMANCE.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Histogram buckets per doubling of the duration: a bucket's bound is 2^(1/4) = 1.19 times the
/// one below, so a percentile read from it is within 19 % of the true one.
const BUCKETS_PER_DOUBLING: f64 = 4.0;
/// Buckets: the first holds syncs up to 1 µs, the last everything from 2^24 µs (16.8 s) on.
const BUCKETS: usize = 97;

/// The recent figures cover the current window of this length and the one before it (5 to 10
/// minutes): "is the disk slow now", which a lifetime's percentiles stop showing after a day.
const RECENT_WINDOW: Duration = Duration::from_secs(300);

/// Syncs of the last one or two [`RECENT_WINDOW`]s, by duration.
#[derive(Debug)]
struct Recent {
    /// When the current window started.
    started: Instant,
    current: [u64; BUCKETS],
    previous: [u64; BUCKETS],
    current_slowest_ns: u64,
    previous_slowest_ns: u64,
}

impl Recent {
    fn new(now: Instant) -> Recent {
        Recent {
            started: now,
            current: [0; BUCKETS],
            previous: [0; BUCKETS],
            current_slowest_ns: 0,
            previous_slowest_ns: 0,
        }
    }

    /// Moves on to the window `now` falls in: the current one becomes the previous one, or
    /// both are dropped when `now` is two windows on.
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < RECENT_WINDOW {
            return;
        }
        if age < 2 * RECENT_WINDOW {
            self.previous = self.current;
            self.previous_slowest_ns = self.current_slowest_ns;
        } else {
            *self = Recent::new(now);
            return;
        }
        self.current = [0; BUCKETS];
        self.current_slowest_ns = 0;
        self.started += RECENT_WINDOW;
    }
}

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
    /// The same, for the last 5 to 10 minutes (a lock taken once per sync and per snapshot).
    recent: Mutex<Recent>,
}

impl Default for SyncTimes {
    fn default() -> SyncTimes {
        SyncTimes {
            syncs: AtomicU64::new(0),
            over_10ms: AtomicU64::new(0),
            over_100ms: AtomicU64::new(0),
            slowest_ns: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
            recent: Mutex::new(Recent::new(Instant::now())),
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
    /// The same for the last 5 to 10 minutes: how the disk does now.
    pub recent: RecentSyncs,
}

/// Log syncs of the last 5 to 10 minutes ([`DiskSyncs::recent`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RecentSyncs {
    /// How many.
    pub log_syncs: u64,
    /// Half took at most this long, in ms (within 19 %; 0 with none).
    pub p50_ms: f64,
    /// 99 % took at most this long, in ms (within 19 %; 0 with none).
    pub p99_ms: f64,
    /// The slowest, in ms.
    pub slowest_ms: f64,
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
        self.record_recent(ns, Instant::now());
    }

    fn record_recent(&self, ns: u64, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.roll(now);
        recent.current[bucket(ns)] += 1;
        recent.current_slowest_ns = recent.current_slowest_ns.max(ns);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> DiskSyncs {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> DiskSyncs {
        let counts: Vec<u64> = self.histogram.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let slowest_ms = self.slowest_ns.load(Ordering::Relaxed) as f64 / 1e6;
        let recent = {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.roll(now);
            let counts: Vec<u64> =
                recent.current.iter().zip(&recent.previous).map(|(a, b)| a + b).collect();
            let slowest = recent.current_slowest_ns.max(recent.previous_slowest_ns) as f64 / 1e6;
            RecentSyncs {
                log_syncs: counts.iter().sum(),
                p50_ms: percentile_ms(&counts, 0.5, slowest),
                p99_ms: percentile_ms(&counts, 0.99, slowest),
                slowest_ms: slowest,
            }
        };
        DiskSyncs {
            p50_ms: percentile_ms(&counts, 0.5, slowest_ms),
            p99_ms: percentile_ms(&counts, 0.99, slowest_ms),
            log_syncs: self.syncs.load(Ordering::Relaxed),
            over_10ms: self.over_10ms.load(Ordering::Relaxed),
            over_100ms: self.over_100ms.load(Ordering::Relaxed),
            slowest_ms,
            recent,
        }
    }
}

/// The bound in ms that a fraction `q` of the syncs counted in `counts` stayed within, never
/// above `slowest_ms` (0 with none).
fn percentile_ms(counts: &[u64], q: f64, slowest_ms: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_bound_ms(i).min(slowest_ms);
        }
    }
    slowest_ms
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
        let counts = DiskSyncs { p50_ms: 0.0, p99_ms: 0.0, recent: Default::default(), ..got };
        let expected = DiskSyncs {
            log_syncs: 6,
            over_10ms: 3,
            over_100ms: 1,
            slowest_ms: 240.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            recent: Default::default(),
        };
        assert_eq!((got.recent.log_syncs, got.recent.slowest_ms), (6, 240.0), "all recent");
        assert_eq!((got.recent.p50_ms, got.recent.p99_ms), (got.p50_ms, got.p99_ms));
        assert_eq!(counts, expected);
        // The third of six is 10 ms; the 99th percentile is the slowest.
        assert!((10.0..=10.0 * 1.19).contains(&got.p50_ms), "{got:?}");
        assert_eq!(got.p99_ms, 240.0, "{got:?}");
    }

    /// The recent figures forget a slow spell once it is two windows old, and keep the window
    /// before the current one, so they always cover 5 to 10 minutes of syncs.
    #[test]
    fn recent_figures_cover_the_last_five_to_ten_minutes() {
        let times = SyncTimes::default();
        let t0 = times.recent.lock().unwrap().started;
        let record = |ms: u64, at: Duration| {
            let took = Duration::from_millis(ms);
            times.record_recent(u64::try_from(took.as_nanos()).unwrap(), t0 + at);
        };
        // A slow spell in the first window...
        for _ in 0..10 {
            record(50, Duration::from_secs(10));
        }
        // ...then a fast disk in the second.
        for _ in 0..90 {
            record(1, RECENT_WINDOW + Duration::from_secs(10));
        }
        let second = times.snapshot_at(t0 + RECENT_WINDOW + Duration::from_secs(20));
        assert_eq!(second.recent.log_syncs, 100, "this window and the one before");
        assert_eq!(second.recent.slowest_ms, 50.0);
        assert!(second.recent.p99_ms >= 50.0 * 0.84, "{second:?}");
        // In the third window the slow spell is gone; the fast syncs are still there.
        let third = times.snapshot_at(t0 + 2 * RECENT_WINDOW + Duration::from_secs(20));
        assert_eq!(third.recent.log_syncs, 90);
        assert_eq!(third.recent.slowest_ms, 1.0);
        assert!(third.recent.p99_ms <= 1.0, "{third:?}");
        // Long idle: nothing recent at all.
        let idle = times.snapshot_at(t0 + 10 * RECENT_WINDOW);
        assert_eq!(idle.recent, RecentSyncs::default());
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
