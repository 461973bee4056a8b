//! Anti-entropy (see [`crate::proto::sync`]): `Have`s on every up link, `Want`s planned from
//! the model of each peer's vector, and the answers streamed from the store.

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, LinkKind};
use crate::proto::message::{HaveEntry, Message};
use crate::proto::peers::{DownReason, PeerState, Role};
use crate::proto::sync::{plan_want, Outstanding};
use crate::store::{Store, VersionVector};
use crate::unit::{TransferUnit, Urgency};
use crate::wire::{RejectReason, Tag};

use super::{batches, Node, RELAY_ANSWER_BYTES};

impl<S: Store> Node<S> {
    /// Sends `link` what changed in our vector since the last `Have` on it (all of it the first
    /// time); with `always`, an empty one when nothing changed (a keepalive).
    pub(super) fn send_have(&mut self, link: LinkId, always: bool) {
        let Some(info) = self.links.get_mut(&link) else { return };
        let frames =
            info.sync.have(&self.changes, self.ledger.store().version_vector(), &self.safe, always);
        for frame in frames {
            self.send_frame(link, Tag::Tubs, &frame);
        }
    }

    pub(super) fn on_have(
        &mut self,
        link: LinkId,
        dbid: DatabaseId,
        full: bool,
        entries: Vec<HaveEntry>,
        total: Option<u64>,
    ) {
        let (Some(info), Some(peer)) = (self.links.get_mut(&link), self.peers.get_mut(&dbid))
        else {
            return;
        };
        let applied = info.sync.apply_have(full, entries, &mut peer.vector);
        let consistent = total.is_none_or(|t| t == peer.vector.total());
        let own = peer.vector.get(&self.ledger.own_dbid()).map(|r| (r.contiguous(), r.highest()));
        let main = peer.role == Role::MainServer;
        let (mut reported_safe, ok) = match applied {
            Ok(safe) => (safe, consistent),
            Err(_) => (Vec::new(), false),
        };
        if main {
            // What a main server holds is safe.
            for (origin, safe) in &mut reported_safe {
                let held = peer.vector.get(origin).map_or(0, |r| r.contiguous());
                *safe = (*safe).max(held);
            }
        }
        if !ok {
            self.stats.resyncs += 1;
            self.send_frame(link, Tag::Tubs, &Message::Resync);
        }
        let changed: Vec<DatabaseId> = reported_safe.iter().map(|(o, _)| *o).collect();
        for (origin, n) in reported_safe {
            self.raise_safe(origin, n);
        }
        if let Some((contiguous, highest)) = own.filter(|_| ok) {
            self.own_origin_seen(link, dbid, contiguous, highest);
        }
        // A full `Have` may follow a reconnect after anything: look at every origin.
        self.plan(link, (!full).then_some(changed.as_slice()));
    }

    /// Asks the peer on `link` for a batch of what it holds and we lack, unless a `Want` is in
    /// flight there already; ranges asked of other peers are left out.
    pub(super) fn plan(&mut self, link: LinkId, only: Option<&[DatabaseId]>) {
        let Some(info) = self.links.get(&link) else { return };
        if info.sync.want.is_some() || !info.sync.heard() {
            return;
        }
        let Some(peer) = info.peer.and_then(|d| self.peers.get(&d)).filter(|p| p.linked()) else {
            return;
        };
        let mut exclude: Vec<&VersionVector> = self
            .links
            .iter()
            .filter(|(l, _)| **l != link)
            .filter_map(|(_, i)| i.sync.want.as_ref().map(|w| &w.ranges))
            .collect();
        if !info.withheld.is_empty() {
            exclude.push(&info.withheld);
        }
        // Held already, waiting for the log sync before they enter the store's vector.
        if !self.ledger.receiving().is_empty() {
            exclude.push(self.ledger.receiving());
        }
        let limit = self.want_limit(link);
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_mul(2);
        let ours = self.ledger.store().version_vector();
        let planned = plan_want(&peer.vector, ours, &exclude, cap, only);
        if planned.is_empty() {
            return;
        }
        let Some(info) = self.links.get_mut(&link) else { return };
        let mut ranges = VersionVector::new();
        let mut wire = Vec::with_capacity(planned.len());
        for (origin, start, end) in planned {
            // The peer named every origin it holds in a `Have`, so it has an index.
            let Some(i) = info.sync.their_index(&origin) else { continue };
            wire.push((i, start, end));
            // Bounded by `cap` seqs in total.
            for seq in start..=end {
                ranges.insert(origin, seq);
            }
        }
        if wire.is_empty() {
            return;
        }
        let deadline = self.now.plus_millis(self.cfg.want_timeout_ms);
        info.sync.want = Some(Outstanding { ranges, deadline });
        self.stats.wants_sent += 1;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.send_frame(link, Tag::Tubs, &Message::Want { ranges: wire, limit });
    }

    /// Units asked for in one `Want` on `link`. A relay link is slow to answer (a round trip
    /// through the relay and the mixing delays, hundreds of ms), so one `Want` there asks for
    /// as much as one answer may carry ([`RELAY_ANSWER_BYTES`] of small units) rather than a
    /// LAN batch: at 512 units a round trip, catching up through a relay crawled.
    fn want_limit(&self, link: LinkId) -> usize {
        let batch = self.cfg.batch_units.max(1);
        if link.is_relay() {
            batch.max(RELAY_ANSWER_BYTES / 256)
        } else {
            batch
        }
    }

    pub(super) fn plan_all(&mut self) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.plan(link, None);
        }
    }

    /// Answers a `Want`: up to `limit` of the asked units we hold, urgent first (stable, so
    /// per-origin order is kept within an urgency), the last frame marked `end`.
    pub(super) fn on_want(&mut self, link: LinkId, ranges: &[(u32, u64, u64)], limit: u32) {
        let Some(info) = self.links.get(&link) else { return };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(self.want_limit(link) * 4);
        let mut candidates: Vec<TransferUnit> = Vec::new();
        for &(i, start, end) in ranges {
            let Ok(origin) = info.sync.our_origin(i) else {
                self.stats.rejects.record_reason(RejectReason::Malformed);
                continue;
            };
            let want = limit.saturating_mul(2).saturating_sub(candidates.len());
            if want == 0 || end < start {
                continue;
            }
            let span = usize::try_from(end - start).unwrap_or(usize::MAX).saturating_add(1);
            let Ok(units) = self.ledger.store().range(&origin, start, want.min(span)) else {
                continue;
            };
            candidates.extend(units.into_iter().take_while(|u| u.seq <= end));
        }
        candidates.sort_by_key(|u| match u.urgency {
            Urgency::Urgent => 0,
            Urgency::Normal => 1,
            _ => 2,
        });
        candidates.truncate(limit);
        if link.is_relay() {
            // A relay session holds at most `MAX_UNACKED_BYTES` in flight: answer with what
            // fits it; the asker asks for the next batch when this one ends.
            let (room, slots) = self.relay.send_room(link);
            // Frames of up to `batch_bytes`, a few more for `Withheld` and the end.
            let by_slots = slots.saturating_sub(4).saturating_mul(self.cfg.batch_bytes.max(1));
            let budget = RELAY_ANSWER_BYTES.min(room / 4 * 3).min(by_slots);
            let size = |u: &TransferUnit| {
                let padded = if u.sensitive.is_empty() { 0 } else { u.sensitive.len() + 64 };
                u.payload.len() + 80 + padded
            };
            let mut bytes = 0;
            let fit = candidates
                .iter()
                .take_while(|u| {
                    bytes += size(u);
                    bytes <= budget
                })
                .count();
            // One large unit goes alone if the session has room for it; with no room the
            // answer is empty and the asker asks again next round.
            let first_fits =
                slots > 4 && candidates.first().is_some_and(|u| size(u) + (64 << 10) <= room);
            candidates.truncate(if fit == 0 && first_fits { 1 } else { fit });
        }
        self.stats.wants_served += 1;
        self.send_units(link, Tag::Tuda, &candidates, true);
    }

    /// Sends `units` on `link` in frames of at most `batch_bytes`; with `end`, the last frame
    /// (an empty one if there are no units) is marked as the end of a `Want` answer.
    /// On a relay link, units with a sensitive part go under a one-time pad first, or are
    /// withheld (see `padding`); they are never sent there in the clear.
    /// A unit with a sensitive part goes to a peer only once its `Pads` showed it knows them
    /// (an older build refuses a whole `Units` frame with a version 2 unit); until then it is
    /// left out (the peer asks for it later).
    pub(super) fn send_units(&mut self, link: LinkId, tag: Tag, units: &[TransferUnit], end: bool) {
        if !units.iter().any(|u| !u.sensitive.is_empty()) {
            return self.send_unit_frames(link, tag, units, end);
        }
        let heard = self.links.get(&link).is_some_and(|l| l.pads_heard);
        let plain: Vec<TransferUnit> = if !heard {
            units.iter().filter(|u| u.sensitive.is_empty()).cloned().collect()
        } else if link.is_relay() {
            self.send_sensitive_on_relay(link, tag, units).into_iter().cloned().collect()
        } else {
            return self.send_unit_frames(link, tag, units, end);
        };
        self.send_unit_frames(link, tag, &plain, end);
    }

    fn send_unit_frames(&mut self, link: LinkId, tag: Tag, units: &[TransferUnit], end: bool) {
        if units.is_empty() {
            if end {
                self.send_frame(link, tag, &Message::units(&[], true));
            }
            return;
        }
        let mut batches = batches(units, self.cfg.batch_bytes).peekable();
        while let Some(batch) = batches.next() {
            let last = batches.peek().is_none();
            let urgency = batch.iter().map(|u| u.urgency).min().unwrap_or(Urgency::Normal);
            self.send_frame_urgent(link, tag, &Message::units(batch, end && last), urgency);
        }
    }

    pub(super) fn anti_entropy_round(&mut self) {
        let now = self.now;
        let mut silent = Vec::new();
        let mut expired = false;
        let up: Vec<(LinkId, DatabaseId)> = self
            .peers
            .values()
            .filter(|p| p.linked())
            .filter_map(|p| p.link.map(|l| (l, p.dbid)))
            .collect();
        for (link, dbid) in up {
            let Some(info) = self.links.get_mut(&link) else { continue };
            // Relay links are metered: a slower keepalive (design §2.4).
            let keepalive = match info.kind {
                LinkKind::Relay => self.cfg.relay_path.keepalive_ms,
                _ => self.cfg.keepalive_ms,
            };
            if info.sync.want.as_ref().is_some_and(|w| w.deadline <= now) {
                info.sync.want = None;
                self.stats.wants_expired += 1;
                expired = true;
            }
            let quiet_ms = now.0.saturating_sub(info.sync.last_heard.0) / 1000;
            let idle = now.0.saturating_sub(info.sync.last_sent.0) / 1000 >= keepalive;
            if quiet_ms >= 6 * keepalive {
                silent.push(dbid);
                continue;
            }
            if quiet_ms >= 3 * keepalive {
                if let Some(p) = self.peers.get_mut(&dbid) {
                    p.state = PeerState::Suspect;
                }
            }
            let ping_due = now.0.saturating_sub(info.last_ping.0) / 1000 >= keepalive;
            if info.sync.have_due(&self.changes) || idle {
                self.send_have(link, idle);
            }
            if ping_due {
                self.send_ping(link);
            }
        }
        for dbid in silent {
            self.stats.links_silent += 1;
            self.close_peer(dbid, DownReason::Silent);
        }
        self.expire_withheld(now);
        self.pads_round();
        if expired || std::mem::take(&mut self.replan) {
            self.plan_all();
        }
        self.fail_back();
        self.prune_lan_links();
        // Cursor moves and index state become durable at least once a round.
        if self.ledger.checkpoint().is_err() {
            self.stats.checkpoint_failures += 1;
        }
    }
}
