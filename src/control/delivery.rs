//! What the subscriber has been sent and what the application acknowledged: the bridge between
//! the core's once-per-run `Output::Deliver` and a subscriber that may come and go.
//!
//! The core hands each unit behind the durable cursor once per run, in per-origin order, and
//! moves the cursor only with `Input::Acknowledge`. So this keeps, per origin, three numbers:
//! `acked` (the cursor), `handed` (the highest seq the core delivered; every seq between
//! `acked` and `handed` is held) and, for the subscriber, `next` (the next seq to send). Bodies
//! are not kept: the sender reads them from the store when it sends. Memory is O(origins) plus
//! the subscriber's window (at most [`WINDOW_UNITS`] entries), however slow the subscriber.
//!
//! A (re)connecting subscriber starts again at `acked + 1`, so whatever a previous one was sent
//! and did not acknowledge is sent again. No IO here.

use std::collections::{BTreeMap, VecDeque};

use crate::id::DatabaseId;

/// Units sent to the subscriber and not yet acknowledged, at most.
pub const WINDOW_UNITS: usize = 1000;
/// Payload bytes sent to the subscriber and not yet acknowledged, at most (at least one unit is
/// always allowed).
pub const WINDOW_BYTES: usize = 16 << 20;

/// Who is connected to the control socket: an id chosen by the server, unique per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The unit was never sent to a subscriber in this run: acknowledging it would skip units
    /// the application has not seen.
    #[error("unit {origin}/{seq} was not delivered yet (highest sent of that origin: {sent}); acknowledge only units you received")]
    NotDelivered {
        /// The origin.
        origin: DatabaseId,
        /// The seq asked for.
        seq: u64,
        /// The highest seq sent of that origin.
        sent: u64,
    },
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The cursor moves to `seq`: feed `Input::Acknowledge`.
    Moved,
    /// Already acknowledged: nothing to do.
    Already,
}

/// Another subscriber is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("another subscriber is connected (the node keeps one delivery cursor, so one subscriber at a time); stop it first")]
pub struct Busy;

#[derive(Debug)]
struct Subscription {
    client: ClientId,
    /// Per origin, the next seq to send (absent: `acked + 1`).
    next: BTreeMap<DatabaseId, u64>,
    /// Sent and not acknowledged, in sending order: (origin, seq, payload bytes).
    outstanding: VecDeque<(DatabaseId, u64, usize)>,
    bytes: usize,
    /// Round robin over origins: the last one sent from.
    last: Option<DatabaseId>,
}

/// The delivery state of one node run.
#[derive(Debug, Default)]
pub struct Deliveries {
    acked: BTreeMap<DatabaseId, u64>,
    handed: BTreeMap<DatabaseId, u64>,
    /// Per origin, the highest seq ever sent to a subscriber in this run.
    sent: BTreeMap<DatabaseId, u64>,
    sub: Option<Subscription>,
}

impl Deliveries {
    /// Starts from the durable cursor.
    pub fn new(cursor: BTreeMap<DatabaseId, u64>) -> Deliveries {
        Deliveries { handed: cursor.clone(), acked: cursor, ..Deliveries::default() }
    }

    /// The core delivered `(origin, seq)` (it does so in per-origin order, without gaps).
    pub fn handle_deliver(&mut self, origin: DatabaseId, seq: u64) {
        let handed = self.handed.entry(origin).or_insert(0);
        *handed = (*handed).max(seq);
    }

    /// Units handed by the core and not acknowledged.
    pub fn pending(&self) -> u64 {
        self.handed.iter().map(|(o, h)| h.saturating_sub(self.acked_of(o))).sum()
    }

    /// The connected subscriber, if any.
    pub fn subscriber(&self) -> Option<ClientId> {
        self.sub.as_ref().map(|s| s.client)
    }

    /// `client` subscribes. With `from_start`, every origin is replayed from seq 1 (gaps are
    /// skipped by the sender); else from the first unacknowledged seq.
    pub fn subscribe(&mut self, client: ClientId, from_start: bool) -> Result<(), Busy> {
        if self.sub.is_some() {
            return Err(Busy);
        }
        let next = if from_start {
            self.handed.keys().map(|o| (*o, 1)).collect()
        } else {
            BTreeMap::new()
        };
        self.sub =
            Some(Subscription { client, next, outstanding: VecDeque::new(), bytes: 0, last: None });
        Ok(())
    }

    /// `client` went away; what it was sent and did not acknowledge is sent to the next one.
    pub fn unsubscribe(&mut self, client: ClientId) {
        if self.sub.as_ref().is_some_and(|s| s.client == client) {
            self.sub = None;
        }
    }

    /// The next unit to send to the subscriber, if its window allows one. The caller loads it
    /// and calls [`Deliveries::mark_sent`] (or [`Deliveries::skip`] if the store lacks it).
    pub fn poll_send(&self) -> Option<(ClientId, DatabaseId, u64)> {
        let sub = self.sub.as_ref()?;
        if sub.outstanding.len() >= WINDOW_UNITS
            || (!sub.outstanding.is_empty() && sub.bytes >= WINDOW_BYTES)
        {
            return None;
        }
        let ready = |(origin, handed): (&DatabaseId, &u64)| {
            let next = self.next_of(sub, origin);
            (next <= *handed).then_some((sub.client, *origin, next))
        };
        let after = match sub.last {
            Some(last) => {
                self.handed.range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
            }
            None => self.handed.range(..),
        };
        after.filter_map(ready).next().or_else(|| self.handed.iter().filter_map(ready).next())
    }

    /// `(origin, seq)` with `bytes` of payload went to the subscriber.
    pub fn mark_sent(&mut self, origin: DatabaseId, seq: u64, bytes: usize) {
        let Some(sub) = self.sub.as_mut() else { return };
        sub.next.insert(origin, seq + 1);
        sub.outstanding.push_back((origin, seq, bytes));
        sub.bytes = sub.bytes.saturating_add(bytes);
        sub.last = Some(origin);
        let sent = self.sent.entry(origin).or_insert(0);
        *sent = (*sent).max(seq);
        // Replayed units (from_start) below the cursor need no acknowledgement.
        if seq <= self.acked.get(&origin).copied().unwrap_or(0) {
            Self::trim(sub, &origin, seq);
        }
    }

    /// The node does not hold `(origin, seq)`. Below the cursor (a gap in a replay from the
    /// start) that is nothing to send: move on, and return true. Above it the unit was handed
    /// over as held and is gone (its log sync failed, and the node refuses writes until it is
    /// restarted): skipping it would let an acknowledgement of a later unit pass it for good,
    /// so nothing more of that origin is sent in this run; returns false.
    pub fn skip(&mut self, origin: DatabaseId, seq: u64) -> bool {
        if seq > self.acked_of(&origin) {
            return false;
        }
        if let Some(sub) = self.sub.as_mut() {
            sub.next.insert(origin, seq + 1);
            sub.last = Some(origin);
        }
        true
    }

    /// The application acknowledges every unit of `origin` up to `seq`.
    pub fn acknowledge(&mut self, origin: DatabaseId, seq: u64) -> Result<AckOutcome, AckError> {
        let acked = self.acked_of(&origin);
        let outcome = if seq <= acked {
            AckOutcome::Already
        } else {
            let sent = self.sent.get(&origin).copied().unwrap_or(0);
            if seq > sent {
                return Err(AckError::NotDelivered { origin, seq, sent });
            }
            self.acked.insert(origin, seq);
            AckOutcome::Moved
        };
        if let Some(sub) = self.sub.as_mut() {
            Self::trim(sub, &origin, seq);
        }
        Ok(outcome)
    }

    fn trim(sub: &mut Subscription, origin: &DatabaseId, seq: u64) {
        let mut freed = 0;
        sub.outstanding.retain(|(o, s, b)| {
            let done = o == origin && *s <= seq;
            if done {
                freed += b;
            }
            !done
        });
        sub.bytes = sub.bytes.saturating_sub(freed);
    }

    fn acked_of(&self, origin: &DatabaseId) -> u64 {
        self.acked.get(origin).copied().unwrap_or(0)
    }

    fn next_of(&self, sub: &Subscription, origin: &DatabaseId) -> u64 {
        sub.next.get(origin).copied().unwrap_or_else(|| self.acked_of(origin) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(n: u8) -> DatabaseId {
        let mut b = [b'A'; DatabaseId::LEN];
        b[0] = b'A' + n;
        DatabaseId::from_bytes(&b).unwrap()
    }

    /// Sends everything the window allows; returns what was sent.
    fn drain(d: &mut Deliveries) -> Vec<(DatabaseId, u64)> {
        let mut out = Vec::new();
        while let Some((_, o, s)) = d.poll_send() {
            d.mark_sent(o, s, 10);
            out.push((o, s));
        }
        out
    }

    /// A unit the node no longer holds is skipped only below the cursor (a gap in a replay from
    /// the start); one handed over as held and gone (a failed log sync) is never skipped, so no
    /// acknowledgement of a later unit can pass it.
    #[test]
    fn only_a_gap_below_the_cursor_is_skipped() {
        let a = origin(0);
        let mut d = Deliveries::new(BTreeMap::from([(a, 3)]));
        d.handle_deliver(a, 4);
        d.handle_deliver(a, 5);
        d.subscribe(ClientId(1), true).unwrap();
        assert_eq!(d.poll_send().map(|(_, o, s)| (o, s)), Some((a, 1)), "from the start");
        assert!(d.skip(a, 1), "below the cursor: a gap");
        assert_eq!(d.poll_send().map(|(_, o, s)| (o, s)), Some((a, 2)));
        d.mark_sent(a, 2, 10);
        d.mark_sent(a, 3, 10);
        assert_eq!(d.poll_send().map(|(_, o, s)| (o, s)), Some((a, 4)));
        assert!(!d.skip(a, 4), "handed over as held: not skipped");
        assert_eq!(d.poll_send().map(|(_, o, s)| (o, s)), Some((a, 4)), "still next");
        assert!(matches!(d.acknowledge(a, 5), Err(AckError::NotDelivered { .. })));
    }

    #[test]
    fn sends_in_per_origin_order_and_resends_what_was_not_acknowledged() {
        let (a, b) = (origin(0), origin(1));
        let mut d = Deliveries::new(BTreeMap::from([(a, 2)]));
        for s in 3..=5 {
            d.handle_deliver(a, s);
        }
        d.handle_deliver(b, 1);
        assert!(d.poll_send().is_none(), "no subscriber");
        d.subscribe(ClientId(1), false).unwrap();
        assert_eq!(d.subscribe(ClientId(2), false), Err(Busy));
        let sent = drain(&mut d);
        let of_a: Vec<u64> = sent.iter().filter(|(o, _)| *o == a).map(|(_, s)| *s).collect();
        assert_eq!(of_a, [3, 4, 5]);
        assert!(sent.contains(&(b, 1)));
        assert_eq!(d.acknowledge(a, 4), Ok(AckOutcome::Moved));
        assert_eq!(d.acknowledge(a, 3), Ok(AckOutcome::Already));
        assert!(matches!(d.acknowledge(a, 9), Err(AckError::NotDelivered { sent: 5, .. })));
        d.unsubscribe(ClientId(1));
        d.subscribe(ClientId(3), false).unwrap();
        let again = drain(&mut d);
        assert_eq!(again.len(), 2);
        assert!(again.contains(&(a, 5)) && again.contains(&(b, 1)));
        assert_eq!(d.pending(), 2);
    }

    #[test]
    fn the_window_bounds_what_is_outstanding() {
        let a = origin(0);
        let mut d = Deliveries::new(BTreeMap::new());
        d.handle_deliver(a, 5000);
        d.subscribe(ClientId(1), false).unwrap();
        assert_eq!(drain(&mut d).len(), WINDOW_UNITS);
        assert_eq!(d.acknowledge(a, 10), Ok(AckOutcome::Moved));
        assert_eq!(drain(&mut d), (1001..=1010).map(|s| (a, s)).collect::<Vec<_>>());
        // Large units: the byte window applies, but one unit always goes.
        let mut d = Deliveries::new(BTreeMap::new());
        d.handle_deliver(a, 3);
        d.subscribe(ClientId(1), false).unwrap();
        let (_, o, s) = d.poll_send().unwrap();
        d.mark_sent(o, s, WINDOW_BYTES);
        assert!(d.poll_send().is_none());
        d.acknowledge(a, 1).unwrap();
        assert_eq!(d.poll_send(), Some((ClientId(1), a, 2)));
    }

    #[test]
    fn from_start_replays_acknowledged_units_without_moving_the_cursor_back() {
        let a = origin(0);
        let mut d = Deliveries::new(BTreeMap::from([(a, 3)]));
        d.handle_deliver(a, 4);
        d.subscribe(ClientId(1), true).unwrap();
        let sent = drain(&mut d);
        assert_eq!(sent, (1..=4).map(|s| (a, s)).collect::<Vec<_>>());
        assert_eq!(d.acknowledge(a, 2), Ok(AckOutcome::Already));
        assert_eq!(d.acknowledge(a, 4), Ok(AckOutcome::Moved));
        assert_eq!(d.pending(), 0);
    }
}
