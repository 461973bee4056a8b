//! The relays as the relay path sees them: their connections coming and going, their
//! refusals and backoff, our subscriptions, and posting payloads through them ([`RelayPath`]'s
//! methods; the state is `RelayState` in the parent module).
//!
//! This module does not compose payloads or decide which peers get a session (see `mixer`
//! and the parent), and never sees a socket: subscriptions and posts are [`RelayOutput`]s.

use std::net::SocketAddr;

use rand::Rng;

use super::envelope::{
    mailbox, mailbox_day, presence_mailbox, Record, RelayPlain, MAILBOX_DAY_SECS,
};
use super::{RelayPath, POST_BACKOFF_MAX_MS, POST_BACKOFF_MS, POST_TAKEN_MS, SUBSCRIBED_DAYS};
use crate::proto::io::{RelayIndex, RelayOutput, Time};
use crate::wire::relay::{Mailbox, PostRefuseReason, RefuseReason};

impl RelayPath {
    /// Our address as each relay that is up sees it.
    pub fn observed(&self) -> Vec<(u16, SocketAddr)> {
        self.relays
            .iter()
            .zip(0u16..)
            .filter(|(r, _)| r.up)
            .filter_map(|(r, i)| r.observed.map(|a| (i, a)))
            .collect()
    }

    /// The driver's connection to `relay` is admitted.
    pub fn relay_up<R: Rng>(
        &mut self,
        now: Time,
        rng: &mut R,
        relay: RelayIndex,
        observed: SocketAddr,
    ) {
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else { return };
        r.up = true;
        r.refused = None;
        r.observed = Some(observed);
        self.subscribe(now, Some(relay.0));
        self.post_presence(now, Some(relay.0));
        // Whatever waited for a relay goes now. (Nothing is resent: what was posted through a
        // relay that went down was queued again at `relay_down`, and nothing is composed while
        // no relay is up.)
        for p in self.sessions.values_mut() {
            if p.session.wants_to_send() {
                p.flush_at = Some(now);
            }
        }
        self.service(now, rng);
    }

    /// The connection to `relay` is gone: what went through it lately is sent again (through
    /// the others, or through it once it is back).
    pub fn relay_down<R: Rng>(&mut self, now: Time, rng: &mut R, relay: RelayIndex) {
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else { return };
        r.up = false;
        self.resend_everything(now);
        self.service(now, rng);
    }

    /// `relay` refused us.
    pub fn relay_refused(&mut self, relay: RelayIndex, reason: RefuseReason) {
        if let Some(r) = self.relays.get_mut(usize::from(relay.0)) {
            r.up = false;
            r.refused = Some(reason);
        }
    }

    /// `relay` refused a post: it is not used for a while (30 s doubling to 10 min) and what
    /// is unacknowledged is sent again. The backoff starts again at 30 s once a post through
    /// the relay went unrefused for [`POST_TAKEN_MS`] (see `RelayPath::post`).
    pub fn post_refused<R: Rng>(
        &mut self,
        now: Time,
        rng: &mut R,
        relay: RelayIndex,
        _reason: PostRefuseReason,
    ) {
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else { return };
        r.post_refusals += 1;
        r.backoff_ms = (r.backoff_ms * 2).clamp(POST_BACKOFF_MS, POST_BACKOFF_MAX_MS);
        r.backoff_until = now.plus_millis(r.backoff_ms);
        r.posting_since = None;
        self.resend_everything(now);
        self.service(now, rng);
    }

    pub(super) fn resend_everything(&mut self, now: Time) {
        for p in self.sessions.values_mut() {
            p.session.resend_all();
            if p.session.wants_to_send() {
                p.flush_at = Some(now);
            }
        }
    }

    /// Subscribes our mailboxes and the presence mailboxes of days -2..=+2 (clock skew).
    pub(super) fn subscribe(&mut self, now: Time, only: Option<u16>) {
        let day = mailbox_day(now.as_secs());
        self.subscribed_day = Some(day);
        let keys = self.envelope.keys();
        let days = day.saturating_sub(SUBSCRIBED_DAYS)..=day.saturating_add(SUBSCRIBED_DAYS);
        let mut mailboxes: Vec<Mailbox> =
            days.clone().map(|d| mailbox(keys, &self.own, d)).collect();
        mailboxes.extend(days.map(|d| presence_mailbox(keys, d)));
        let targets: Vec<u16> = match only {
            Some(r) => vec![r],
            None => (0u16..).take(self.relays.len()).filter(|r| self.relay_is_up(*r)).collect(),
        };
        for r in targets {
            let mailboxes = mailboxes.clone();
            self.out.push_back(RelayOutput::Subscribe { relay: RelayIndex(r), mailboxes });
        }
    }

    pub(super) fn relay_is_up(&self, r: u16) -> bool {
        self.relays.get(usize::from(r)).is_some_and(|s| s.up)
    }

    pub(super) fn post_presence(&mut self, now: Time, only: Option<u16>) {
        let plain = RelayPlain {
            sender: self.own,
            recipient: self.own,
            sent_ms: now.as_millis(),
            records: vec![Record::Presence { role: self.role, instance: self.instance }],
        };
        let mb = self.envelope.presence_mailbox(mailbox_day(now.as_secs()));
        let targets: Vec<u16> = match only {
            Some(r) => vec![r],
            None => (0u16..).take(self.relays.len()).filter(|r| self.relay_is_up(*r)).collect(),
        };
        self.post(now, mb, &plain, &targets, self.cfg.presence_ttl_secs, true);
        self.next_presence = now.plus_millis(self.cfg.presence_every_ms);
    }

    /// The TTL asked of a relay for a session payload: the configured one, but no longer than
    /// the recipient can still open the payload. It subscribes the mailboxes of
    /// [`SUBSCRIBED_DAYS`] days back and accepts keys of `epoch_window` epochs back, so a
    /// payload sealed at the end of a day or epoch is usable for that long after sealing and
    /// no longer; a relay keeping it longer (7 days, the first default) only stores what
    /// nobody can read, and a late redelivery is dropped as undecryptable anyway.
    pub fn payload_ttl_secs(&self) -> u32 {
        let keys = self.envelope.keys();
        let epochs = keys.epoch_window().saturating_mul(keys.period_secs());
        let days = SUBSCRIBED_DAYS * MAILBOX_DAY_SECS;
        let usable = u32::try_from(epochs.min(days)).unwrap_or(u32::MAX);
        self.cfg.payload_ttl_secs.min(usable)
    }

    /// Seals `plain` for `mailbox` once and posts it through each of `relays` with `ttl_secs`:
    /// the one way a payload leaves. A payload never fails to seal for size (see
    /// [`compose`](crate::proto::relaypath::mixer::compose)); a failure (a nonce counter run out) is counted and logged.
    ///
    /// Backoff: when an earlier post through a relay that was backed off has gone unrefused
    /// for [`POST_TAKEN_MS`], that post was taken, and the relay's backoff starts over.
    pub(super) fn post(
        &mut self,
        now: Time,
        mailbox: Mailbox,
        plain: &RelayPlain,
        relays: &[u16],
        ttl_secs: u32,
        broadcast: bool,
    ) {
        let bytes = match self.envelope.seal(now.as_secs(), &mailbox, plain) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.stats.seal_failures += 1;
                tracing::warn!(%error, records = plain.records.len(), "relay payload not sealed");
                return;
            }
        };
        for &relay in relays {
            if let Some(r) = self.relays.get_mut(usize::from(relay)) {
                r.posted += 1;
                if r.backoff_ms > 0 {
                    match r.posting_since {
                        None => r.posting_since = Some(now),
                        Some(since) if now >= since.plus_millis(POST_TAKEN_MS) => {
                            r.backoff_ms = 0;
                            r.posting_since = None;
                        }
                        Some(_) => {}
                    }
                }
            }
            self.stats.payloads_sent += 1;
            self.out.push_back(RelayOutput::Post {
                relay: RelayIndex(relay),
                mailbox,
                ttl_secs,
                broadcast,
                bytes: bytes.clone(),
            });
        }
    }
}
