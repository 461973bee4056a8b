//! What the core tells `--status`: one snapshot a driver serialises as it is (JSON) or renders
//! as the operator's table. Every counter and reason the core keeps is here, so "why is this
//! peer down" and "why was this refused" have an answer without a debugger.

use std::borrow::Cow;

use serde::Serialize;

use crate::id::DatabaseId;
use crate::proto::io::LinkKind;
use crate::proto::node::NodeStats;
use crate::proto::peers::{DownReason, PeerState, Role};
use crate::proto::relaypath::{RelayPathStats, RelayStatus, SessionStatus};
use crate::store::{OriginRange, VersionVector};

/// The node as the core sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// This node's dbid.
    pub dbid: String,
    /// This process.
    pub instance_id: String,
    /// Its role.
    pub role: Role,
    /// Where it accepts links (announced in discovery).
    pub listen: Vec<String>,
    /// The shared discovery group.
    pub discovery_group: String,
    /// The environment's group, where units are multicast.
    pub env_group: String,
    /// Seconds since the core started (by the time the driver passes in).
    pub uptime_secs: u64,
    /// Units held (all origins).
    pub units_total: u64,
    /// How long the daily logs' fdatasyncs took since start (each unit waits for one at its
    /// origin before it leaves; a receiver delivers before its own); `null` without daily logs
    /// (the simulator).
    pub disk: Option<crate::dati::DiskSyncs>,
    /// Own units no main server is known to hold yet (seed 001: not yet "safe").
    pub unsafe_backlog: u64,
    /// Peers, by dbid.
    pub peers: Vec<PeerStatus>,
    /// Queue lengths.
    pub queues: Queues,
    /// Counters, including rejections by reason.
    pub counters: NodeStats,
    /// The configured relays (design §2.7), in `[[relay]]` order.
    pub relays: Vec<RelayStatus>,
    /// Counters of the relay path.
    pub relay_path: RelayPathStats,
    /// A warning for the operator about the relays ("one observer sees every payload").
    pub relay_warning: Option<String>,
    /// The last time own units were seen held elsewhere beyond this node's head, since start
    /// (a data directory rolled back in place, or in use on two machines).
    pub own_conflict: Option<crate::proto::OwnConflict>,
    /// Origins of other nodes whose delivery waits on a seq this node lacks while it holds
    /// later ones (units are delivered in per-origin order), most units held beyond first; at
    /// most [`GAPS_SHOWN`]. Short-lived after a lost datagram (anti-entropy fetches it); one
    /// that stays, with no peer holding the seq, is stuck.
    pub gaps: Vec<GapStatus>,
    /// How many origins have such a gap (`gaps` lists at most [`GAPS_SHOWN`]).
    pub origins_with_gaps: usize,
}

/// Most origins [`NodeStatus::gaps`] lists.
pub const GAPS_SHOWN: usize = 16;

/// An origin whose delivery waits on a seq this node lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapStatus {
    /// The origin's dbid.
    pub origin: String,
    /// The first seq lacked: delivery of the origin's units waits here.
    pub waiting_for: u64,
    /// Units of the origin held beyond it, waiting.
    pub held_beyond: u64,
    /// Peers linked now whose last `Have` shows that seq (anti-entropy asks one of them). 0:
    /// none does, either because their `Have`s have not come yet (just after a start), or
    /// because the unit exists only on machines out of reach, or nowhere (lost with a machine
    /// that was rolled back or replaced).
    pub held_by: usize,
}

/// The gaps in what this node holds of other origins than `own`: `held` (the store's vector)
/// together with `receiving` (units logged and waiting for their sync, which delivery already
/// serves), with how many of `linked` (the vectors of the peers linked now) hold each first
/// missing seq. At most [`GAPS_SHOWN`], most units waiting first, and how many origins have one.
pub fn gaps<'a>(
    held: &VersionVector,
    receiving: &VersionVector,
    own: &DatabaseId,
    linked: impl Iterator<Item = &'a VersionVector> + Clone,
) -> (Vec<GapStatus>, usize) {
    let merged = |origin: &DatabaseId| -> Cow<'_, OriginRange> {
        let ours = held.get(origin);
        match receiving.get(origin) {
            None => ours.map_or_else(|| Cow::Owned(OriginRange::default()), Cow::Borrowed),
            Some(more) => {
                let mut range = ours.cloned().unwrap_or_default();
                for (start, end) in more.held_ranges() {
                    for seq in start..=end {
                        range.insert(seq);
                    }
                }
                Cow::Owned(range)
            }
        }
    };
    // Every origin once: the store's, then those only being received.
    let only_receiving = receiving.origins().filter(|origin| held.get(origin).is_none());
    // (units waiting, origin, the seq they wait behind); the peers are asked for the shown
    // ones only.
    let mut found: Vec<(u64, &DatabaseId, u64)> = held
        .origins()
        .chain(only_receiving)
        .filter(|origin| *origin != own)
        .filter_map(|origin| {
            let range = merged(origin);
            let beyond = range.count() - range.contiguous();
            (beyond > 0).then(|| (beyond, origin, range.contiguous() + 1))
        })
        .collect();
    let total = found.len();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    found.truncate(GAPS_SHOWN);
    let shown = found
        .into_iter()
        .map(|(held_beyond, origin, waiting_for)| GapStatus {
            origin: origin.to_string(),
            waiting_for,
            held_beyond,
            held_by: linked.clone().filter(|v| v.contains(origin, waiting_for)).count(),
        })
        .collect();
    (shown, total)
}

/// One peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Its dbid.
    pub dbid: String,
    /// Its role, as announced.
    pub role: Role,
    /// Where it accepts links.
    pub addrs: Vec<String>,
    /// Found by discovery on our LAN (multicast reaches it).
    pub lan: bool,
    /// Priority if it is a configured peer (lower is preferred).
    pub configured_priority: Option<u32>,
    /// Where it is in its life.
    pub state: PeerState,
    /// What carries our traffic with it.
    pub link: LinkStatus,
    /// Smoothed round-trip time of its link in milliseconds (absent until measured).
    pub rtt_ms: Option<f64>,
    /// Why it is not up (absent when up).
    pub reason: Option<DownReason>,
    /// Milliseconds since we last heard from it.
    pub last_seen_ms_ago: u64,
    /// Units it holds that we lack, per its last report.
    pub we_lack: u64,
    /// Units we hold that it lacks, per its last report.
    pub it_lacks: u64,
    /// Own units it is known to hold, compared with ours (`crate::proto::node::own_origin`):
    /// kept with checkpoints, it bounds what a rollback of this data directory can reopen.
    pub own_confirmed: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    /// A `Want` to it is in flight.
    pub asking: bool,
    /// Its relay session, when `link` is `relay`: round trip, resends, duplicates.
    pub relay_session: Option<SessionStatus>,
    /// Hole punching: why a relay carries its traffic, or that a direct link was punched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub punch: Option<crate::proto::punch::PunchStatus>,
    /// One-time pads with it, and sensitive units waiting for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pads: Option<PadsStatus>,
}

/// The one-time pads shared with a peer ([`crate::proto::pads`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PadsStatus {
    /// Pad bytes left for sensitive parts we send it over a relay.
    pub out_left: u64,
    /// A new pad is offered to it and not confirmed yet.
    pub out_offered: bool,
    /// Bytes of the pads it gave us.
    pub in_bytes: u64,
    /// Units with a sensitive part it holds and will not send us over the relay (no pad
    /// left): they wait for a direct link or a new pad, and hold back later units of their
    /// origin.
    pub withheld_from_us: u64,
    /// Units with a sensitive part we did not send it over the relay, for want of a pad.
    pub withheld_by_us: u64,
}

/// What carries traffic with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkStatus {
    /// A relay session (design §2): through relay mailboxes, no direct link.
    Relay,
    /// A QUIC link.
    Quic,
    /// A TCP link (UDP failed on the path; QUIC is tried again later).
    Tcp,
    /// A simulated link (netsim).
    Sim,
    /// No link, but it shares our LAN: units arrive and leave by multicast (the ring keeps
    /// links to a few LAN peers only).
    MulticastOnly,
    /// Nothing.
    None,
}

impl From<LinkKind> for LinkStatus {
    fn from(kind: LinkKind) -> LinkStatus {
        match kind {
            LinkKind::Relay => LinkStatus::Relay,
            LinkKind::Quic => LinkStatus::Quic,
            LinkKind::Tcp => LinkStatus::Tcp,
            LinkKind::Simulated => LinkStatus::Sim,
        }
    }
}

/// Queue lengths (all bounded: outputs are drained after every input, a link has at most one
/// `Want` in flight).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Queues {
    /// Outputs not yet drained by the driver.
    pub outputs: usize,
    /// Links up.
    pub links: usize,
    /// Link attempts under way.
    pub connecting: usize,
    /// `Want` requests in flight.
    pub wants_in_flight: usize,
    /// Group commits of local submits written and waiting for their log sync, with refusals
    /// queued behind them (the driver stops taking submits at two; a number that stays up
    /// means the disk does not finish its fdatasyncs).
    pub submits_syncing: usize,
    /// Units received from peers, logged and waiting for their log sync (already delivered
    /// and sent on; a number that stays up means the disk does not finish its fdatasyncs).
    pub received_syncing: u64,
}

impl PeerStatus {
    /// Whether the peer is usable now.
    pub fn is_up(&self) -> bool {
        matches!(self.state, PeerState::Up | PeerState::Suspect)
    }
}

#[cfg(test)]
mod tests {
    use super::{gaps, GapStatus, GAPS_SHOWN};
    use crate::id::DatabaseId;
    use crate::store::VersionVector;

    fn id(name: &str) -> DatabaseId {
        DatabaseId::from_bytes(format!("{name:0<15}").as_bytes()).unwrap()
    }

    fn vector(held: &[(&str, &[u64])]) -> VersionVector {
        let mut v = VersionVector::new();
        for (origin, seqs) in held {
            for seq in *seqs {
                v.insert(id(origin), *seq);
            }
        }
        v
    }

    #[test]
    fn a_gap_is_listed_with_how_many_peers_hold_its_seq() {
        let ours = vector(&[
            ("OWN", &[1, 2, 4]),
            ("A", &[1, 2, 3]),
            ("B", &[1, 2, 5, 6, 7]),
            ("C", &[2, 3]),
        ]);
        let peers = [vector(&[("B", &[1, 2, 3, 4, 5, 6, 7])]), vector(&[("B", &[1, 2])])];
        let (found, total) = gaps(&ours, &VersionVector::new(), &id("OWN"), peers.iter());
        assert_eq!(total, 2, "no gap of A, and our own origin's is not delivery's: {found:?}");
        assert_eq!(
            found,
            [
                GapStatus {
                    origin: id("B").to_string(),
                    waiting_for: 3,
                    held_beyond: 3,
                    held_by: 1
                },
                GapStatus {
                    origin: id("C").to_string(),
                    waiting_for: 1,
                    held_beyond: 2,
                    held_by: 0
                },
            ]
        );
    }

    /// Units logged and waiting for their sync are held for delivery: they fill a gap of the
    /// store's vector, and may have one of their own.
    #[test]
    fn units_waiting_for_their_sync_count_as_held() {
        let held = vector(&[("A", &[1, 2, 4]), ("B", &[1])]);
        let receiving = vector(&[("A", &[3]), ("B", &[3, 4]), ("C", &[2])]);
        let (found, total) = gaps(&held, &receiving, &id("OWN"), std::iter::empty());
        let waiting: Vec<(String, u64, u64)> =
            found.into_iter().map(|g| (g.origin, g.waiting_for, g.held_beyond)).collect();
        assert_eq!(total, 2);
        assert_eq!(waiting, [(id("B").to_string(), 2, 2), (id("C").to_string(), 1, 1)]);
    }

    #[test]
    fn at_most_gaps_shown_are_listed_and_every_one_is_counted() {
        let names: Vec<String> = (0..GAPS_SHOWN + 4).map(|i| format!("O{i:02}")).collect();
        let held: Vec<(&str, &[u64])> = names.iter().map(|n| (n.as_str(), &[2u64][..])).collect();
        let none = VersionVector::new();
        let (found, total) = gaps(&vector(&held), &none, &id("OWN"), std::iter::empty());
        assert_eq!((found.len(), total), (GAPS_SHOWN, GAPS_SHOWN + 4));
    }
}
