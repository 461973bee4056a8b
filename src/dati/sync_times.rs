//! How long the logs' fdatasyncs take, counted where they run (the node's loop, or the log sync
//! thread). Every unit's path holds one at its origin and one at each receiver, so a slow or
//! stalling device shows here first; `--status` puts it in front of the operator (on a virtual
//! machine's disk, stalls of 10-240 ms were measured: docs/PERFORMANCE.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Counters shared by a writer and the sync jobs it hands out.
#[derive(Debug, Default)]
pub struct SyncTimes {
    syncs: AtomicU64,
    over_10ms: AtomicU64,
    over_100ms: AtomicU64,
    slowest_ns: AtomicU64,
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
    }

    /// The counts so far.
    pub fn snapshot(&self) -> DiskSyncs {
        DiskSyncs {
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
        let expected = DiskSyncs { log_syncs: 6, over_10ms: 3, over_100ms: 1, slowest_ms: 240.0 };
        assert_eq!(times.snapshot(), expected);
    }
}
