//! The relay session (design §2.4): a reliable, ordered stream of messages between two peers,
//! made of records that travel in payloads through relay mailboxes, which lose, duplicate,
//! reorder and redeliver them.
//!
//! - Opening: the opener sends `Syn` (resent with backoff) and waits ([`State::ExpectSynAck`]);
//!   the other side answers `SynAck` ([`State::ExpectConfirm`]) and resends it until the first
//!   `Fragment` or `Ack` of the session confirms ([`State::Open`]). Only an open session sends
//!   fragments, so a replayed `Syn` costs one `SynAck` and opens nothing.
//! - Sending: messages are numbered from 1 and split ([`super::fragment`]); fragments of the
//!   queued messages go out round-robin (mixing), urgent messages first.
//! - Acks: cumulative, SACK ranges of complete messages beyond it, and the fragment ranges
//!   held of incomplete ones (each at most 8, and at most [`MAX_ACK_BYTES`] in all: what does
//!   not fit goes in the next ack). Per message an RTO of
//!   `clamp(2 srtt + delay bound, 0.5 s, 60 s)`, doubling; on expiry only the fragments not
//!   reported held are queued again.
//! - Receiving: messages are handed out strictly in order, each once; duplicates below the
//!   cumulative point are dropped and counted.
//! - Bounds: at most [`MAX_UNACKED_MESSAGES`] messages and [`MAX_UNACKED_BYTES`] bytes sent
//!   and not acknowledged (more is an overflow: the caller closes the session), at most
//!   [`MAX_REASSEMBLY_BYTES`] held for reassembly, piece tables included (fragments beyond
//!   are dropped; the sender resends them).
//!
//! The session is at-least-once towards the relay and exactly-once, in-order towards the
//! caller within its life; unit dedup does the rest across sessions. It does not seal, pick
//! relays, or decide when a payload leaves (see `mixer`), and reads no clock.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::envelope::Record;
use super::fragment::{self, split, Reassembly};
use crate::proto::io::Time;

/// Most messages sent and not acknowledged.
pub const MAX_UNACKED_MESSAGES: usize = 256;

/// Most bytes of messages sent and not acknowledged.
pub const MAX_UNACKED_BYTES: usize = 4 << 20;

/// Most bytes held for reassembly beyond the cumulative point.
pub const MAX_REASSEMBLY_BYTES: usize = 4 << 20;

/// Most SACK ranges and partial messages in one `Ack`.
pub const MAX_ACK_ITEMS: usize = 8;

/// Most bytes of one encoded `Ack`. The fragment ranges held of incomplete messages can be
/// far more (up to 2,100 ranges of a 4,200-piece message): an ack reports what fits and the
/// next one goes on from there, so an ack never makes its payload outgrow the largest class.
/// It leaves most of a payload to fragments ([`super::mixer::RECORD_ROOM`] is ~16 KB).
pub const MAX_ACK_BYTES: usize = 2_048;

/// Upper bounds of the postcard encoding of an `Ack`'s parts (varints: u64 at most 10
/// bytes, u16 and lengths below 2^21 at most 3): the record's variant, session and cumulative
/// point and the two list lengths; one SACK range; one partial message and its list length;
/// one fragment range.
const ACK_FIXED_MAX: usize = 1 + 10 + 10 + 3 + 3;
const ACK_SACK_MAX: usize = 10 + 10;
const ACK_PARTIAL_MAX: usize = 10 + 3;
const ACK_RANGE_MAX: usize = 3 + 3;

/// RTO bounds, ms.
pub const RTO_MIN_MS: u64 = 500;
/// See [`RTO_MIN_MS`].
pub const RTO_MAX_MS: u64 = 60_000;

/// First `Syn`/`SynAck` resend interval, ms (doubling to [`HANDSHAKE_MAX_MS`]).
pub const HANDSHAKE_RETRY_MS: u64 = 1_000;
/// Longest `Syn`/`SynAck` resend interval, ms.
pub const HANDSHAKE_MAX_MS: u64 = 30_000;
/// `Syn`s (or unconfirmed `SynAck`s) sent before the session is given up.
pub const SYN_ATTEMPTS: u32 = 10;

/// How long after its first `Syn` an unanswered opener gives up: the [`SYN_ATTEMPTS`] resend
/// intervals added up (181 s). A `Syn` sealed longer ago than this (plus clock skew) is a
/// replay: its opener has stopped waiting.
pub const HANDSHAKE_LIFETIME_MS: u64 = handshake_lifetime_ms();

const fn handshake_lifetime_ms() -> u64 {
    let (mut total, mut every, mut sent) = (0, HANDSHAKE_RETRY_MS, 0);
    while sent < SYN_ATTEMPTS {
        total += every;
        every = if every * 2 < HANDSHAKE_MAX_MS { every * 2 } else { HANDSHAKE_MAX_MS };
        sent += 1;
    }
    total
}

/// Where a session is in its life; each waits for what it is named after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Opener: waits for the `SynAck`.
    ExpectSynAck,
    /// Answerer: waits for the first `Fragment` or `Ack`.
    ExpectConfirm,
    /// Both sides know the session: data flows.
    Open,
    /// Ended (`Fin` sent or received, the opener gave up, or an overflow).
    Closed,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Over [`MAX_UNACKED_MESSAGES`] or [`MAX_UNACKED_BYTES`], or a message too large to split.
    #[error("relay session overflow")]
    Overflow,
    /// The session is closed.
    #[error("relay session closed")]
    Closed,
}

/// Counters of one session (shown per peer by status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionStats {
    /// Fragments queued again after an RTO.
    pub retransmits: u64,
    /// Fragments or messages received again (dropped).
    pub duplicates: u64,
    /// Fragments dropped: beyond the reassembly bound, or inconsistent.
    pub dropped: u64,
    /// Messages handed out.
    pub delivered: u64,
}

#[derive(Debug)]
struct OutMessage {
    urgency: u8,
    fragments: Vec<Vec<u8>>,
    acked: Vec<bool>,
    bytes: usize,
    /// When a fragment first went out (for RTT, unless it was resent).
    first_sent: Option<Time>,
    resent: bool,
    /// RTO expiry, set when a fragment goes out.
    deadline: Option<Time>,
    rto_ms: u64,
}

/// One relay session with one peer.
#[derive(Debug)]
pub struct Session {
    id: u64,
    state: State,
    /// Next `Syn`/`SynAck` resend, and the interval.
    handshake_at: Option<Time>,
    handshake_every_ms: u64,
    syns_sent: u32,
    control_due: bool,
    fin_due: bool,
    delay_bound_ms: u64,
    srtt_ms: Option<u64>,
    // Sending.
    next_message: u64,
    out: BTreeMap<u64, OutMessage>,
    out_bytes: usize,
    /// Fragments waiting to go out, per (urgency, message).
    pending: BTreeMap<(u8, u64), VecDeque<u16>>,
    /// The last (urgency, message) a fragment was taken from (round-robin).
    cursor: Option<(u8, u64)>,
    // Receiving.
    cumulative: u64,
    incoming: BTreeMap<u64, Reassembly>,
    complete: BTreeSet<u64>,
    incoming_bytes: usize,
    delivered: VecDeque<Vec<u8>>,
    ack_wanted: bool,
    /// Where the next ack's partial report starts (message, index of its first held range):
    /// what did not fit one ack goes in the next.
    ack_from: (u64, usize),
    stats: SessionStats,
}

impl Session {
    /// A session this side opens with id `id` (random, from the core's RNG).
    pub fn open(id: u64, now: Time, delay_bound_ms: u64) -> Session {
        let mut s = Session::new(id, State::ExpectSynAck, delay_bound_ms);
        s.control_due = true;
        s.handshake_at = Some(now);
        s
    }

    /// A session the peer opened with `Syn{id}`; answers with `SynAck`.
    pub fn answer(id: u64, now: Time, delay_bound_ms: u64) -> Session {
        let mut s = Session::new(id, State::ExpectConfirm, delay_bound_ms);
        s.control_due = true;
        s.handshake_at = Some(now);
        s
    }

    fn new(id: u64, state: State, delay_bound_ms: u64) -> Session {
        Session {
            id,
            state,
            handshake_at: None,
            handshake_every_ms: HANDSHAKE_RETRY_MS,
            syns_sent: 0,
            control_due: false,
            fin_due: false,
            delay_bound_ms,
            srtt_ms: None,
            next_message: 1,
            out: BTreeMap::new(),
            out_bytes: 0,
            pending: BTreeMap::new(),
            cursor: None,
            cumulative: 0,
            incoming: BTreeMap::new(),
            complete: BTreeSet::new(),
            incoming_bytes: 0,
            delivered: VecDeque::new(),
            ack_wanted: false,
            ack_from: (0, 0),
            stats: SessionStats::default(),
        }
    }

    /// The session id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where it is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Smoothed round trip in ms, once measured.
    pub fn srtt_ms(&self) -> Option<u64> {
        self.srtt_ms
    }

    /// Bytes held: sent and unacknowledged, and held for reassembly (for the bounds).
    pub fn memory(&self) -> usize {
        self.out_bytes + self.incoming_bytes
    }

    /// Bytes of the messages sent and not acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Messages sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.out.len()
    }

    /// Queues `message`; `urgency` 0 is the most urgent.
    pub fn send(&mut self, message: &[u8], urgency: u8) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        if self.out.len() >= MAX_UNACKED_MESSAGES
            || self.out_bytes + message.len() > MAX_UNACKED_BYTES
        {
            return Err(SessionError::Overflow);
        }
        let fragments = split(message).ok_or(SessionError::Overflow)?;
        let n = self.next_message;
        self.next_message += 1;
        let count = u16::try_from(fragments.len()).map_err(|_| SessionError::Overflow)?;
        self.pending.insert((urgency, n), (0..count).collect());
        self.out_bytes += message.len();
        self.out.insert(
            n,
            OutMessage {
                urgency,
                acked: vec![false; fragments.len()],
                fragments,
                bytes: message.len(),
                first_sent: None,
                resent: false,
                deadline: None,
                rto_ms: self.rto_ms(),
            },
        );
        Ok(())
    }

    fn rto_ms(&self) -> u64 {
        let srtt = self.srtt_ms.unwrap_or(RTO_MIN_MS);
        (2 * srtt + self.delay_bound_ms).clamp(RTO_MIN_MS, RTO_MAX_MS)
    }

    /// Ends the session: a `Fin` is due, nothing else is sent.
    pub fn close(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.fin_due = true;
        }
        self.pending.clear();
        // A closed session sends no ack: an owed one would keep it wanting to send for ever.
        self.ack_wanted = false;
    }

    /// Takes one record of the peer at `now`.
    pub fn on_record(&mut self, now: Time, record: &Record) {
        match record {
            // Our SynAck was lost (or the Syn redelivered): answer again.
            Record::Syn { session }
                if *session == self.id && self.state == State::ExpectConfirm =>
            {
                self.control_due = true;
            }
            Record::SynAck { session } if *session == self.id => match self.state {
                State::ExpectSynAck => {
                    self.state = State::Open;
                    self.handshake_at = None;
                    self.ack_wanted = true;
                }
                // Our confirming Ack was lost: confirm again.
                State::Open => self.ack_wanted = true,
                _ => {}
            },
            Record::Fragment { session, message, index, count, bytes, .. }
                if *session == self.id =>
            {
                self.confirmed();
                self.on_fragment(*message, *index, *count, bytes);
            }
            Record::Ack { session, cumulative, sacks, partial } if *session == self.id => {
                self.confirmed();
                self.on_ack(now, *cumulative, sacks, partial);
            }
            Record::Fin { session } if *session == self.id => {
                self.state = State::Closed;
                self.pending.clear();
                self.ack_wanted = false;
            }
            _ => {}
        }
    }

    fn confirmed(&mut self) {
        if self.state == State::ExpectConfirm {
            self.state = State::Open;
            self.handshake_at = None;
        }
    }

    fn on_fragment(&mut self, message: u64, index: u16, count: u16, bytes: &[u8]) {
        if self.state != State::Open {
            return;
        }
        self.ack_wanted = true;
        if message <= self.cumulative || self.complete.contains(&message) {
            self.stats.duplicates += 1;
            return;
        }
        // Everything is checked before anything is allocated: a new message costs its piece
        // table (`count` slots, a peer's number), counted with the pieces against the bound.
        let ahead = usize::try_from(message - self.cumulative).unwrap_or(usize::MAX);
        let table =
            if self.incoming.contains_key(&message) { 0 } else { Reassembly::table_bytes(count) };
        if fragment::check(index, count, bytes.len()).is_err()
            || ahead > MAX_UNACKED_MESSAGES
            || self.incoming_bytes.saturating_add(table).saturating_add(bytes.len())
                > MAX_REASSEMBLY_BYTES
        {
            self.stats.dropped += 1;
            return;
        }
        let reassembly = match self.incoming.entry(message) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match Reassembly::new(count) {
                Ok(r) => {
                    self.incoming_bytes += r.memory();
                    e.insert(r)
                }
                Err(_) => {
                    self.stats.dropped += 1;
                    return;
                }
            },
        };
        match reassembly.insert(index, count, bytes) {
            Ok(0) => self.stats.duplicates += 1,
            Ok(added) => self.incoming_bytes += added,
            Err(_) => self.stats.dropped += 1,
        }
        if reassembly.is_complete() {
            self.complete.insert(message);
        }
        while self.complete.remove(&(self.cumulative + 1)) {
            self.cumulative += 1;
            if let Some(r) = self.incoming.remove(&self.cumulative) {
                self.incoming_bytes = self.incoming_bytes.saturating_sub(r.memory());
                if let Some(m) = r.into_message() {
                    self.delivered.push_back(m);
                    self.stats.delivered += 1;
                }
            }
        }
    }

    fn on_ack(
        &mut self,
        now: Time,
        cumulative: u64,
        sacks: &[(u64, u64)],
        partial: &[(u64, Vec<(u16, u16)>)],
    ) {
        let mut done: Vec<u64> = self.out.range(..=cumulative).map(|(n, _)| *n).collect();
        for &(first, last) in sacks.iter().take(MAX_ACK_ITEMS) {
            done.extend(self.out.range(first..=last.max(first)).map(|(n, _)| *n));
        }
        for n in done {
            if let Some(m) = self.out.remove(&n) {
                self.out_bytes -= m.bytes;
                self.pending.remove(&(m.urgency, n));
                if let (false, Some(sent)) = (m.resent, m.first_sent) {
                    let sample = now.0.saturating_sub(sent.0) / 1000;
                    self.srtt_ms = Some(match self.srtt_ms {
                        Some(s) => (s * 7 + sample) / 8,
                        None => sample,
                    });
                }
            }
        }
        for (n, ranges) in partial.iter().take(MAX_ACK_ITEMS) {
            let Some(m) = self.out.get_mut(n) else { continue };
            // Clamped to the message's fragments: a peer's range costs at most that many steps.
            for &(first, last) in ranges.iter().take(m.acked.len()) {
                let end = usize::from(last).saturating_add(1).min(m.acked.len());
                for a in m.acked.get_mut(usize::from(first)..end).into_iter().flatten() {
                    *a = true;
                }
            }
            if let Some(q) = self.pending.get_mut(&(m.urgency, *n)) {
                q.retain(|i| !m.acked.get(usize::from(*i)).copied().unwrap_or(true));
            }
        }
    }

    /// Runs the timers due at `now`: handshake resends, RTO expiry.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(at) = self.handshake_at.filter(|at| *at <= now) {
            match self.state {
                // An unanswered opener, or an answerer never confirmed (a replayed `Syn`).
                State::ExpectSynAck | State::ExpectConfirm if self.syns_sent >= SYN_ATTEMPTS => {
                    self.close();
                    self.fin_due = false;
                    self.handshake_at = None;
                }
                State::ExpectSynAck | State::ExpectConfirm => self.control_due = true,
                _ => self.handshake_at = None,
            }
            if self.handshake_at.is_some() {
                self.handshake_at = Some(at.max(now).plus_millis(self.handshake_every_ms));
                self.handshake_every_ms = (self.handshake_every_ms * 2).min(HANDSHAKE_MAX_MS);
            }
        }
        if self.state != State::Open {
            return;
        }
        for (n, m) in &mut self.out {
            if m.deadline.is_none_or(|d| d > now) {
                continue;
            }
            m.deadline = None;
            m.resent = true;
            m.rto_ms = (m.rto_ms * 2).min(RTO_MAX_MS);
            self.stats.retransmits += requeue_unacked(&mut self.pending, *n, m);
        }
    }

    /// When [`Session::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Time> {
        let rto = if self.state == State::Open {
            self.out.values().filter_map(|m| m.deadline).min()
        } else {
            None
        };
        match (self.handshake_at, rto) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether records are waiting: control, an ack, or fragments.
    pub fn wants_to_send(&self) -> bool {
        self.control_due || self.fin_due || self.ack_wanted || self.has_fragments()
    }

    /// Whether fragments are waiting (only an open session sends them).
    pub fn has_fragments(&self) -> bool {
        self.state == State::Open && self.pending.values().any(|q| !q.is_empty())
    }

    /// The most urgent urgency waiting (0 for control and acks).
    pub fn urgency(&self) -> u8 {
        if self.control_due || self.fin_due || self.ack_wanted {
            return 0;
        }
        self.pending.iter().find(|(_, q)| !q.is_empty()).map_or(2, |((u, _), _)| *u)
    }

    /// The handshake record due, if any (`Syn`, `SynAck` or `Fin`).
    pub fn poll_control(&mut self) -> Option<Record> {
        let session = self.id;
        if std::mem::take(&mut self.fin_due) {
            return Some(Record::Fin { session });
        }
        if !std::mem::take(&mut self.control_due) {
            return None;
        }
        match self.state {
            State::ExpectSynAck => {
                self.syns_sent += 1;
                Some(Record::Syn { session })
            }
            State::ExpectConfirm => {
                self.syns_sent += 1;
                Some(Record::SynAck { session })
            }
            _ => None,
        }
    }

    /// The `Ack` to send (piggybacked, or alone when `ack_wanted`); clears the want.
    pub fn take_ack(&mut self) -> Option<Record> {
        self.ack_wanted = false;
        if self.state != State::Open {
            return None;
        }
        let mut sacks: Vec<(u64, u64)> = Vec::new();
        for &n in &self.complete {
            let full = sacks.len() >= MAX_ACK_ITEMS;
            match sacks.last_mut() {
                Some((_, end)) if *end + 1 == n => *end = n,
                _ if full => break,
                _ => sacks.push((n, n)),
            }
        }
        let partial = self.partial_report(ACK_SACK_MAX * sacks.len());
        Some(Record::Ack { session: self.id, cumulative: self.cumulative, sacks, partial })
    }

    /// The held fragment ranges of incomplete messages for one ack: at most
    /// [`MAX_ACK_ITEMS`] messages and what fits [`MAX_ACK_BYTES`] besides `used` bytes of
    /// SACKs, starting where the last report stopped and going round, so every range is
    /// reported in turn (the peer adds them up).
    fn partial_report(&mut self, used: usize) -> Vec<(u64, Vec<(u16, u16)>)> {
        let mut budget = MAX_ACK_BYTES.saturating_sub(ACK_FIXED_MAX + used);
        let (from, skip) = self.ack_from;
        let complete = &self.complete;
        let incomplete = self
            .incoming
            .range(from..)
            .chain(self.incoming.range(..from))
            .filter(|(n, r)| !r.is_complete() && !complete.contains(n));
        let mut partial = Vec::new();
        let mut next = (0, 0);
        for (n, r) in incomplete {
            if partial.len() == MAX_ACK_ITEMS || budget < ACK_PARTIAL_MAX + ACK_RANGE_MAX {
                next = (*n, 0);
                break;
            }
            budget -= ACK_PARTIAL_MAX;
            let held = r.held_ranges();
            let start = if *n == from { skip.min(held.len()) } else { 0 };
            let take = (held.len() - start).min(budget / ACK_RANGE_MAX);
            budget -= take * ACK_RANGE_MAX;
            partial.push((*n, held.iter().skip(start).take(take).copied().collect()));
            if start + take < held.len() {
                next = (*n, start + take);
                break;
            }
        }
        self.ack_from = next;
        partial
    }

    /// Whether an ack is wanted (a fragment arrived, or the session must be confirmed).
    pub fn ack_wanted(&self) -> bool {
        self.ack_wanted
    }

    /// The next fragment record round-robin across the queued messages of the most urgent
    /// urgency, if its encoding fits `room` bytes; it then counts as sent at `now`.
    pub fn next_fragment(&mut self, now: Time, room: usize) -> Option<Record> {
        if self.state != State::Open {
            return None;
        }
        let urgency = self.pending.iter().find(|(_, q)| !q.is_empty()).map(|((u, _), _)| *u)?;
        // Round-robin: the first message of that urgency after the cursor, else the first.
        let after = self.cursor.filter(|(u, _)| *u == urgency).map_or(0, |(_, n)| n + 1);
        let pick = self
            .pending
            .range((urgency, after)..(urgency, u64::MAX))
            .chain(self.pending.range((urgency, 0)..(urgency, after)))
            .find(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)?;
        let (_, n) = pick;
        let index = *self.pending.get(&pick)?.front()?;
        let m = self.out.get(&n)?;
        let bytes = m.fragments.get(usize::from(index))?.clone();
        let count = u16::try_from(m.fragments.len()).ok()?;
        let record =
            Record::Fragment { session: self.id, message: n, urgency, index, count, bytes };
        if record_len(&record) > room {
            return None;
        }
        if let Some(q) = self.pending.get_mut(&pick) {
            q.pop_front();
            if q.is_empty() {
                self.pending.remove(&pick);
            }
        }
        self.cursor = Some(pick);
        let rto = self.rto_ms();
        if let Some(m) = self.out.get_mut(&n) {
            m.first_sent.get_or_insert(now);
            m.rto_ms = m.rto_ms.max(rto);
            m.deadline = Some(now.plus_millis(m.rto_ms));
        }
        Some(record)
    }

    /// The next message handed out, in order.
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        self.delivered.pop_front()
    }

    /// Queues every unacknowledged fragment again at once (the relay it went through is down).
    pub fn resend_all(&mut self) {
        for (n, m) in &mut self.out {
            if m.deadline.is_none() {
                continue; // nothing of it went out yet, or it is queued again already
            }
            m.deadline = None;
            m.resent = true;
            self.stats.retransmits += requeue_unacked(&mut self.pending, *n, m);
        }
    }
}

/// Queues again the fragments of message `n` that the peer has not reported held (and that are
/// not queued already); returns how many. Linear in the message's fragments.
fn requeue_unacked(
    pending: &mut BTreeMap<(u8, u64), VecDeque<u16>>,
    n: u64,
    m: &OutMessage,
) -> u64 {
    let queue = pending.entry((m.urgency, n)).or_default();
    let mut skip = m.acked.clone();
    for i in queue.iter() {
        if let Some(s) = skip.get_mut(usize::from(*i)) {
            *s = true;
        }
    }
    let mut queued = 0;
    for (i, skip) in skip.into_iter().enumerate() {
        let Ok(i) = u16::try_from(i) else { break };
        if !skip {
            queue.push_back(i);
            queued += 1;
        }
    }
    queued
}

/// The encoded length of one record inside a [`super::envelope::RelayPlain`] (postcard).
pub fn record_len(record: &Record) -> usize {
    postcard::experimental::serialized_size(record).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A payload's worth of records from `s`, as the mixer composes them (without sealing).
    fn compose(s: &mut Session, now: Time, room: usize) -> Vec<Record> {
        let mut records = Vec::new();
        let mut used = 0;
        while let Some(r) = s.poll_control() {
            used += record_len(&r);
            records.push(r);
        }
        let ack = s.take_ack();
        if let Some(a) = ack {
            used += record_len(&a);
            records.push(a);
        }
        while let Some(f) = s.next_fragment(now, room.saturating_sub(used)) {
            used += record_len(&f);
            records.push(f);
        }
        records
    }

    struct Channel {
        rng: StdRng,
        loss: f64,
        dup: f64,
        /// Payloads in flight: (arrival, records).
        flight: Vec<(Time, Vec<Record>)>,
    }

    impl Channel {
        fn post(&mut self, now: Time, records: Vec<Record>) {
            if records.is_empty() || self.rng.gen_bool(self.loss) {
                return;
            }
            let copies = if self.rng.gen_bool(self.dup) { 2 } else { 1 };
            for _ in 0..copies {
                // Reordering: a random delay of up to 400 ms.
                let at = now.plus_millis(self.rng.gen_range(1..400));
                self.flight.push((at, records.clone()));
            }
        }

        fn due(&mut self, now: Time) -> Vec<Vec<Record>> {
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.flight).into_iter().partition(|(at, _)| *at <= now);
            self.flight = rest;
            due.into_iter().map(|(_, r)| r).collect()
        }
    }

    /// Runs messages from `a` to `b` (and a few back) over a lossy channel each way; returns
    /// what each side received and the most memory either held.
    /// What was sent a->b, received by b, received back by a, and the most memory held.
    type Outcome = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>, usize);

    fn run(seed: u64, loss: f64, dup: f64, sizes: &[usize]) -> Outcome {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut a = Session::open(42, Time(0), 200);
        let mut b: Option<Session> = None;
        let mut ab = Channel { rng: StdRng::seed_from_u64(seed ^ 1), loss, dup, flight: vec![] };
        let mut ba = Channel { rng: StdRng::seed_from_u64(seed ^ 2), loss, dup, flight: vec![] };
        let messages: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut to_send = messages.iter();
        let (mut got_b, mut got_a) = (Vec::new(), Vec::new());
        let mut max_memory = 0;
        let mut replied = false;
        let mut now = Time(0);
        let deadline = Time::from_millis(3_600_000);
        while now < deadline {
            now = now.plus_millis(10);
            // Feed a, keeping under its bounds as the node's links do.
            while a.unacked() < 32 {
                let Some(m) = to_send.next() else { break };
                a.send(m, rng.gen_range(0..3)).unwrap();
            }
            for records in ab.due(now) {
                let s = match &mut b {
                    Some(s) => s,
                    None => {
                        let Some(Record::Syn { session }) = records.first() else { continue };
                        b.insert(Session::answer(*session, now, 200))
                    }
                };
                for r in &records {
                    s.on_record(now, r);
                }
            }
            for records in ba.due(now) {
                for r in &records {
                    a.on_record(now, r);
                }
            }
            a.handle_timeout(now);
            if let Some(s) = &mut b {
                s.handle_timeout(now);
                if !replied && got_b.len() >= messages.len().min(3) && s.state() == State::Open {
                    s.send(b"reply", 0).unwrap();
                    replied = true;
                }
            }
            let room = 4_096 - super::super::envelope::OVERHEAD - 40;
            while a.wants_to_send() {
                let records = compose(&mut a, now, room);
                if records.is_empty() {
                    break;
                }
                ab.post(now, records);
            }
            if let Some(s) = &mut b {
                while s.wants_to_send() {
                    let records = compose(s, now, room);
                    if records.is_empty() {
                        break;
                    }
                    ba.post(now, records);
                }
                while let Some(m) = s.poll_message() {
                    got_b.push(m);
                }
                max_memory = max_memory.max(s.memory());
            }
            while let Some(m) = a.poll_message() {
                got_a.push(m);
            }
            max_memory = max_memory.max(a.memory());
            if got_b.len() == messages.len() && a.unacked() == 0 && !got_a.is_empty() {
                break;
            }
        }
        (messages, got_b, got_a, max_memory)
    }

    #[test]
    fn a_clean_channel_delivers_in_order() {
        let (sent, got, back, _) = run(1, 0.0, 0.0, &[10, 5_000, 200, 0, 70_000]);
        assert_eq!(got, sent);
        assert_eq!(back, vec![b"reply".to_vec()]);
    }

    #[test]
    fn only_missing_fragments_are_resent() {
        let mut a = Session::open(1, Time(0), 0);
        a.on_record(Time(0), &Record::SynAck { session: 1 });
        a.send(&[7u8; 3_000], 1).unwrap();
        let mut sent = 0;
        while a.next_fragment(Time(0), 2_000).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 3);
        let ack = Record::Ack {
            session: 1,
            cumulative: 0,
            sacks: vec![],
            partial: vec![(1, vec![(0, 0), (2, 2)])],
        };
        a.on_record(Time(0), &ack);
        a.handle_timeout(Time::from_millis(RTO_MAX_MS));
        let Some(Record::Fragment { index, .. }) = a.next_fragment(Time(0), 2_000) else {
            panic!("a resend")
        };
        assert_eq!(index, 1);
        assert!(a.next_fragment(Time(0), 2_000).is_none());
        assert_eq!(a.stats().retransmits, 1);
        a.on_record(
            Time(0),
            &Record::Ack { session: 1, cumulative: 1, sacks: vec![], partial: vec![] },
        );
        assert_eq!(a.unacked(), 0);
        assert_eq!(a.memory(), 0);
    }

    #[test]
    fn bounds_refuse_overflow_and_a_replayed_syn_opens_nothing() {
        let mut a = Session::open(1, Time(0), 0);
        for _ in 0..MAX_UNACKED_MESSAGES {
            a.send(b"x", 0).unwrap();
        }
        assert_eq!(a.send(b"x", 0), Err(SessionError::Overflow));
        let mut b = Session::open(2, Time(0), 0);
        assert_eq!(b.send(&vec![0; MAX_UNACKED_BYTES + 1], 0), Err(SessionError::Overflow));
        // An answerer never sends data before it is confirmed.
        let mut c = Session::answer(3, Time(0), 0);
        c.send(b"data", 0).unwrap();
        assert_eq!(c.poll_control(), Some(Record::SynAck { session: 3 }));
        assert!(c.next_fragment(Time(0), 5_000).is_none());
        assert!(c.take_ack().is_none());
        c.on_record(
            Time(0),
            &Record::Ack { session: 3, cumulative: 0, sacks: vec![], partial: vec![] },
        );
        assert_eq!(c.state(), State::Open);
        assert!(c.next_fragment(Time(0), 5_000).is_some());
        // Records of another session are ignored.
        c.on_record(Time(0), &Record::Fin { session: 4 });
        assert_eq!(c.state(), State::Open);
        c.on_record(Time(0), &Record::Fin { session: 3 });
        assert_eq!(c.state(), State::Closed);
    }

    /// A session closed (by us or by the peer's `Fin`) while an ack is owed stops wanting to
    /// send once its `Fin` is out: the owed ack used to keep it due for ever.
    #[test]
    fn a_session_closed_with_an_ack_owed_goes_quiet() {
        for by_peer in [false, true] {
            let mut c = Session::answer(3, Time(0), 0);
            assert_eq!(c.poll_control(), Some(Record::SynAck { session: 3 }));
            let fragment = Record::Fragment {
                session: 3,
                message: 0,
                urgency: 0,
                index: 0,
                count: 1,
                bytes: b"x".to_vec(),
            };
            c.on_record(Time(0), &fragment);
            assert!(c.ack_wanted() && c.wants_to_send());
            if by_peer {
                c.on_record(Time(0), &Record::Fin { session: 3 });
            } else {
                c.close();
                assert_eq!(c.poll_control(), Some(Record::Fin { session: 3 }));
            }
            assert!(c.take_ack().is_none());
            assert!(!c.wants_to_send(), "closed by peer: {by_peer}");
        }
    }

    /// A peer's ack ranges are clamped to the message's fragments.
    #[test]
    fn ack_ranges_beyond_the_message_are_ignored() {
        let mut a = Session::open(1, Time(0), 0);
        a.on_record(Time(0), &Record::SynAck { session: 1 });
        a.send(&vec![7; 3_000], 0).unwrap();
        let partial = vec![(0, vec![(2, u16::MAX), (u16::MAX, 0), (1, 1)])];
        a.on_record(Time(0), &Record::Ack { session: 1, cumulative: 0, sacks: vec![], partial });
        assert_eq!(a.unacked(), 1, "fragment 0 is still missing");
    }

    /// An answerer confirmed by an empty ack: open, receiving.
    fn open_answerer() -> Session {
        let mut b = Session::answer(1, Time(0), 0);
        let confirm = Record::Ack { session: 1, cumulative: 0, sacks: vec![], partial: vec![] };
        b.on_record(Time(0), &confirm);
        assert_eq!(b.state(), State::Open);
        b
    }

    fn one_byte(message: u64, index: u16, count: u16) -> Record {
        Record::Fragment { session: 1, message, urgency: 0, index, count, bytes: vec![1] }
    }

    /// A fragment's count is the peer's number: it is checked before the piece table is
    /// allocated, and the table counts against the reassembly bound.
    #[test]
    fn reassembly_tables_are_checked_and_counted() {
        use super::super::fragment::MAX_COUNT;
        let mut b = open_answerer();
        b.on_record(Time(0), &one_byte(2, 5, 5));
        b.on_record(Time(0), &one_byte(2, 0, MAX_COUNT + 1));
        b.on_record(Time(0), &one_byte(2, u16::MAX, u16::MAX));
        assert!(b.incoming.is_empty(), "nothing allocated");
        assert_eq!((b.memory(), b.stats().dropped), (0, 3));
        // Messages that each claim the most pieces and send one.
        for message in 2..=u64::try_from(MAX_UNACKED_MESSAGES).unwrap() {
            b.on_record(Time(0), &one_byte(message, 0, MAX_COUNT));
        }
        let each = Reassembly::table_bytes(MAX_COUNT) + 1;
        assert_eq!(b.memory(), b.incoming.len() * each, "the tables are counted");
        assert!(b.memory() <= MAX_REASSEMBLY_BYTES);
        assert_eq!(b.incoming.len(), MAX_REASSEMBLY_BYTES / each, "the bound stops them");
        // Message 1 completes and is handed out; the held ones stay counted.
        b.on_record(Time(0), &one_byte(1, 0, 1));
        assert_eq!(b.poll_message(), Some(vec![1]));
        assert_eq!(b.memory(), b.incoming.len() * each);
    }

    /// An ack of many incomplete messages with scattered pieces stays under
    /// `MAX_ACK_BYTES` (so its payload always seals), and successive acks report every held
    /// range of every message in turn.
    #[test]
    fn an_ack_stays_bounded_and_reports_everything_in_turn() {
        use super::super::fragment::MAX_COUNT;
        let mut b = open_answerer();
        let messages = 2..2 + u64::try_from(MAX_ACK_ITEMS).unwrap() + 2;
        for message in messages.clone() {
            for index in (0..MAX_COUNT).step_by(2) {
                b.on_record(Time(0), &one_byte(message, index, MAX_COUNT));
            }
        }
        let mut reported: BTreeMap<u64, BTreeSet<u16>> = BTreeMap::new();
        for _ in 0..100 {
            let Some(ack) = b.take_ack() else { panic!("an open session acks") };
            assert!(record_len(&ack) <= MAX_ACK_BYTES, "{} bytes", record_len(&ack));
            let Record::Ack { partial, .. } = ack else { panic!("an ack") };
            assert!(partial.len() <= MAX_ACK_ITEMS);
            for (n, ranges) in partial {
                for (first, last) in ranges {
                    reported.entry(n).or_default().extend(first..=last);
                }
            }
        }
        let held: BTreeSet<u16> = (0..MAX_COUNT).step_by(2).collect();
        for message in messages {
            assert_eq!(reported.get(&message), Some(&held), "message {message}");
        }
    }

    /// Requeueing skips what is acknowledged and what is queued already, each fragment once.
    #[test]
    fn requeue_queues_each_missing_fragment_once() {
        let mut a = Session::open(1, Time(0), 0);
        a.on_record(Time(0), &Record::SynAck { session: 1 });
        a.send(&[7u8; 10_000], 1).unwrap();
        for _ in 0..4 {
            assert!(a.next_fragment(Time(0), 2_000).is_some());
        }
        let partial = vec![(1, vec![(1, 2)])];
        a.on_record(Time(0), &Record::Ack { session: 1, cumulative: 0, sacks: vec![], partial });
        a.resend_all();
        a.resend_all();
        let mut queued = Vec::new();
        while let Some(Record::Fragment { index, .. }) = a.next_fragment(Time(0), 2_000) {
            queued.push(index);
        }
        assert_eq!(queued, vec![4, 5, 6, 7, 8, 9, 0, 3]);
        assert_eq!(a.stats().retransmits, 2);
    }

    #[test]
    fn an_unanswered_opener_gives_up_after_the_handshake_lifetime() {
        assert_eq!(HANDSHAKE_LIFETIME_MS, 181_000);
        let mut a = Session::open(1, Time(0), 0);
        let mut now = Time(0);
        while now < Time::from_millis(HANDSHAKE_LIFETIME_MS) {
            a.handle_timeout(now);
            let _ = a.poll_control();
            assert_ne!(a.state(), State::Closed, "at {now:?}");
            now = now.plus_millis(100);
        }
        a.handle_timeout(now);
        assert_eq!(a.state(), State::Closed);
    }

    #[test]
    fn an_unanswered_opener_gives_up() {
        let mut a = Session::open(1, Time(0), 0);
        let mut now = Time(0);
        for _ in 0..100 {
            a.handle_timeout(now);
            let _ = a.poll_control();
            now = now.plus_millis(HANDSHAKE_MAX_MS);
        }
        assert_eq!(a.state(), State::Closed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Design §5.1: over a channel with loss, duplication and reordering the messages come
        /// out exactly once and in order, and memory stays under the bounds.
        #[test]
        fn lossy_channel_delivers_exactly_once_in_order(
            seed in any::<u64>(),
            loss in 0.0f64..0.3,
            dup in 0.0f64..0.3,
            sizes in proptest::collection::vec(0usize..20_000, 1..40),
        ) {
            let (sent, got, back, memory) = run(seed, loss, dup, &sizes);
            prop_assert_eq!(got.len(), sent.len(), "all delivered");
            prop_assert!(got == sent, "exactly once, in order");
            prop_assert_eq!(back, vec![b"reply".to_vec()]);
            prop_assert!(memory <= MAX_UNACKED_BYTES + MAX_REASSEMBLY_BYTES);
        }
    }
}
