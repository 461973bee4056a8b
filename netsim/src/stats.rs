//! What a run measured, and the one JSON object the CLI prints.
//!
//! Every field of [`Report`] comes from simulated time and counts, so one seed gives the same
//! report byte for byte. Wall-clock figures (events per second) are the CLI's and are not in
//! here.

use serde::Serialize;

use crate::checks::{CheckCounts, Verdict};

/// Counters the engine keeps while it runs.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) events: u64,
    pub(crate) datagrams_sent: u64,
    pub(crate) datagram_bytes: u64,
    pub(crate) multicasts_sent: u64,
    pub(crate) datagrams_delivered: u64,
    pub(crate) datagrams_dropped: u64,
    pub(crate) frames_sent: u64,
    pub(crate) frame_bytes: u64,
    pub(crate) frames_delivered: u64,
    pub(crate) frames_dropped: u64,
    pub(crate) connects: u64,
    pub(crate) connects_failed: u64,
    pub(crate) links_up: u64,
    pub(crate) links_down: u64,
    pub(crate) crashes: u64,
    pub(crate) restarts: u64,
    pub(crate) submits: u64,
    pub(crate) submits_skipped: u64,
    pub(crate) submits_unanswered: u64,
    pub(crate) submits_refused: u64,
    pub(crate) timer_spins: u64,
    pub(crate) unknown_outputs: u64,
    pub(crate) pads_generated: u64,
    pub(crate) first_submit_us: Option<u64>,
    pub(crate) last_submit_us: Option<u64>,
    pub(crate) last_fault_us: Option<u64>,
}

/// The result of one run. Times are simulated milliseconds since the run's start.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Which protocol ran (`toy` until the real core plugs in).
    pub protocol: String,
    /// Scenario name.
    pub scenario: String,
    /// The seed that replays this run.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Whether every node delivered every acknowledged unit by the end.
    pub converged: bool,
    /// The checks all hold (see [`Report::passed`]).
    pub passed: bool,
    /// Acknowledged units that at least one node did not hold at the end.
    pub lost: u64,
    /// (node, acknowledged unit) pairs missing at the end.
    pub missing_copies: u64,
    /// Second deliveries that are not replays after a crash.
    pub duplicates_delivered: u64,
    /// Deliveries that skipped or went back in an origin's seq order.
    pub out_of_order_delivered: u64,
    /// Replays after a crash of units whose acknowledgement was not yet durable.
    pub redelivered_after_crash: u64,
    /// Deliveries whose physkey differs from the acknowledged unit's.
    pub mismatched_delivered: u64,
    /// Units delivered somewhere that their origin never acknowledged.
    pub delivered_unacknowledged: u64,
    /// Acknowledged (origin, seq) acknowledged again for another unit.
    pub reused_seq: u64,
    /// Units the application submitted.
    pub units_submitted: u64,
    /// Units acknowledged (`Accepted`, not `existing`).
    pub units_acknowledged: u64,
    /// Submissions skipped because their node was down.
    pub submits_skipped: u64,
    /// Submissions never answered (lost in a crash before the answer).
    pub submits_unanswered: u64,
    /// Submissions answered with `Refused` (the store refused the write: disk full).
    pub submits_refused: u64,
    /// First-time deliveries (node, unit).
    pub delivered_copies: u64,
    /// Time from the last submission until the last node held everything (null if not).
    pub sim_ms_to_converge: Option<u64>,
    /// Time from the last fault or heal until the last node held everything.
    pub sim_ms_after_last_fault: Option<u64>,
    /// Per node, time from the last submission until it held everything: 50th percentile.
    pub node_converge_ms_p50: Option<u64>,
    /// 90th percentile.
    pub node_converge_ms_p90: Option<u64>,
    /// Simulated time when the run ended.
    pub sim_ms_end: u64,
    /// Last submission.
    pub last_submit_ms: Option<u64>,
    /// Last fault or heal.
    pub last_fault_ms: Option<u64>,
    /// Datagrams plus frames sent (a multicast datagram counts once).
    pub messages_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Of which multicast.
    pub multicasts_sent: u64,
    /// Datagram bytes.
    pub datagram_bytes: u64,
    /// Datagram copies lost, or dropped on arrival (partition, node down).
    pub datagrams_dropped: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frame bytes.
    pub frame_bytes: u64,
    /// Frames dropped (link broken or closed, unknown link).
    pub frames_dropped: u64,
    /// Mean encoded size of a delivered unit (`TransferUnit::encode`).
    pub unit_bytes: f64,
    /// `bytes_sent / delivered_copies`.
    pub bytes_per_unit_copy: f64,
    /// Longest serialization queue (messages) any node's message joined.
    pub max_queue_len: u64,
    /// The node of that queue.
    pub max_queue_node: Option<String>,
    /// Connects asked for.
    pub connects: u64,
    /// Connects answered with `ConnectFailed`.
    pub connects_failed: u64,
    /// `LinkUp` pairs.
    pub links_up: u64,
    /// `LinkDown` inputs.
    pub links_down: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Timers that asked to fire again at the same instant (a core bug if many).
    pub timer_spins: u64,
    /// Outputs of a kind this engine does not know (the enum is non-exhaustive): ignored.
    pub unknown_outputs: u64,
    /// One-time pads made for nodes (`Output::GeneratePad`).
    pub pads_generated: u64,
    /// Events processed.
    pub events: u64,
    /// Hash of the event trace (time, kind, node of every event): equal runs, equal hash.
    pub trace_hash: String,
}

impl Report {
    /// Every check holds: converged, nothing lost, no duplicate, no out-of-order or mismatched
    /// delivery, nothing delivered that was not acknowledged, no seq reused.
    pub fn passed(&self) -> bool {
        self.converged
            && self.lost == 0
            && self.duplicates_delivered == 0
            && self.out_of_order_delivered == 0
            && self.mismatched_delivered == 0
            && self.delivered_unacknowledged == 0
            && self.reused_seq == 0
    }
}

/// Inputs of [`build`] that are not counters.
pub(crate) struct RunInfo<'a> {
    pub(crate) protocol: &'a str,
    pub(crate) scenario: &'a str,
    pub(crate) seed: u64,
    pub(crate) names: &'a [String],
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) max_queue: &'a [usize],
    pub(crate) trace_hash: u64,
}

pub(crate) fn build(info: RunInfo<'_>, c: &Counters, checks: &CheckCounts, v: &Verdict) -> Report {
    let ms = |t: u64| t.saturating_sub(info.start_us) / 1000;
    let converged = v.lost == 0 && v.converged_at.iter().all(Option::is_some);
    let done_at = v.converged_at.iter().flatten().max().copied().unwrap_or(info.start_us);
    let since = |from: Option<u64>| {
        converged.then(|| done_at.saturating_sub(from.unwrap_or(info.start_us)) / 1000)
    };
    let mut per_node: Vec<u64> = v
        .converged_at
        .iter()
        .flatten()
        .map(|&t| t.saturating_sub(c.last_submit_us.unwrap_or(info.start_us)) / 1000)
        .collect();
    per_node.sort_unstable();
    let pct = |p: usize| (!per_node.is_empty()).then(|| per_node[(per_node.len() - 1) * p / 100]);
    let (max_node, max_queue) = info
        .max_queue
        .iter()
        .enumerate()
        .max_by_key(|&(i, q)| (*q, std::cmp::Reverse(i)))
        .map_or((None, 0), |(i, q)| (info.names.get(i).cloned(), *q as u64));
    let messages = c.datagrams_sent + c.frames_sent;
    let bytes = c.datagram_bytes + c.frame_bytes;
    let mut report = Report {
        protocol: info.protocol.to_string(),
        scenario: info.scenario.to_string(),
        seed: info.seed,
        nodes: info.names.len(),
        converged,
        passed: false,
        lost: v.lost,
        missing_copies: v.missing_copies,
        duplicates_delivered: checks.duplicates,
        out_of_order_delivered: checks.out_of_order,
        redelivered_after_crash: checks.redelivered_after_crash,
        mismatched_delivered: checks.mismatched,
        delivered_unacknowledged: v.delivered_unacknowledged,
        reused_seq: checks.reused_seq,
        units_submitted: c.submits,
        units_acknowledged: checks.acknowledged,
        submits_skipped: c.submits_skipped,
        submits_unanswered: c.submits_unanswered,
        submits_refused: c.submits_refused,
        delivered_copies: checks.delivered_copies,
        sim_ms_to_converge: since(c.last_submit_us),
        sim_ms_after_last_fault: c.last_fault_us.and_then(|f| since(Some(f))),
        node_converge_ms_p50: pct(50),
        node_converge_ms_p90: pct(90),
        sim_ms_end: ms(info.end_us),
        last_submit_ms: c.last_submit_us.map(ms),
        last_fault_ms: c.last_fault_us.map(ms),
        messages_sent: messages,
        bytes_sent: bytes,
        datagrams_sent: c.datagrams_sent,
        multicasts_sent: c.multicasts_sent,
        datagram_bytes: c.datagram_bytes,
        datagrams_dropped: c.datagrams_dropped,
        frames_sent: c.frames_sent,
        frame_bytes: c.frame_bytes,
        frames_dropped: c.frames_dropped,
        unit_bytes: ratio(checks.sized_bytes, checks.sized_units),
        bytes_per_unit_copy: ratio(bytes, checks.delivered_copies),
        max_queue_len: max_queue,
        max_queue_node: max_node.filter(|_| max_queue > 0),
        connects: c.connects,
        connects_failed: c.connects_failed,
        links_up: c.links_up,
        links_down: c.links_down,
        crashes: c.crashes,
        restarts: c.restarts,
        timer_spins: c.timer_spins,
        unknown_outputs: c.unknown_outputs,
        pads_generated: c.pads_generated,
        events: c.events,
        trace_hash: format!("{:016x}", info.trace_hash),
    };
    report.passed = report.passed();
    report
}

/// `a / b` rounded to 0.01, 0 when `b` is 0 (rounded so the JSON stays short and stable).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        return 0.0;
    }
    (a as f64 / b as f64 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rounds_and_survives_zero() {
        assert_eq!(ratio(1, 3), 0.33);
        assert_eq!(ratio(5, 0), 0.0);
    }
}
