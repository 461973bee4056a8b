//! NAT traversal (design §3): two nodes linked by a relay session try UDP hole punching with
//! the addresses their relays observe, and where it works a direct QUIC link replaces the
//! session (the node keeps the better link kind); where it does not, the relay path stays and
//! the status says why.
//!
//! Per peer, in rounds (Tailscale's and iroh's "call me maybe"):
//! 1. each side sends [`crate::proto::message::Message::CallMeMaybe`] with its observed
//!    addresses over the relay link, urgent;
//! 2. on receipt, each side punches the other's addresses (a few datagrams from its link
//!    socket open its NAT's mapping towards them), and the round's connector dials them over
//!    QUIC (no TCP fallback: a NAT that lets UDP through is the point);
//! 3. a direct link from that peer ends the rounds ("hole-punched"); after [`ROUNDS`] rounds of
//!    [`ROUND_MS`] without one, the relay path stays, and punching is tried again after
//!    [`RETRY_MS`] or when a relay sees us at a new address.
//!
//! The connector alternates (the larger dbid in odd rounds, the smaller in even ones), so a NAT
//! that only lets in what answers its own side's packets is tried from both ends. Two relays
//! seeing one IP at two ports mean our NAT maps per destination: punching cannot work and is
//! not tried. Only a `CallMeMaybe` arriving on the peer's relay link counts: one on any other
//! link, or replayed from a closed session, is ignored, so nobody can make a node spray packets
//! at addresses of their choosing.
//!
//! Sans-IO like the rest of the core: it decides, [`crate::proto::Node`] sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::id::DatabaseId;
use crate::proto::io::Time;

/// Length of one round.
pub const ROUND_MS: u64 = 3_000;
/// Rounds before giving up.
pub const ROUNDS: u32 = 3;
/// How long after giving up punching is tried again.
pub const RETRY_MS: u64 = 600_000;
/// Most candidate addresses taken from a peer.
pub const MAX_CANDIDATES: usize = 4;

/// Where punching with one peer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchState {
    /// Round `round` runs until `until`.
    Trying {
        /// 1-based.
        round: u32,
        /// When it is over.
        until: Time,
    },
    /// A direct link came up in round `round`.
    Punched {
        /// The round.
        round: u32,
    },
    /// No direct link after [`ROUNDS`] rounds; tried again at `retry_at`.
    Failed {
        /// When to try again.
        retry_at: Time,
        /// When it failed: a peer's call restarts punching only a whole run later.
        since: Time,
    },
}

/// What the node must do for the punching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchAction {
    /// Send `CallMeMaybe { round, addrs }` to `peer` over its relay link.
    CallMeMaybe {
        /// The peer.
        peer: DatabaseId,
        /// The round.
        round: u32,
    },
    /// Send punch datagrams to `to`.
    Punch {
        /// A candidate of the peer.
        to: SocketAddr,
    },
    /// Dial `to` over QUIC.
    Connect {
        /// A candidate of the peer.
        to: SocketAddr,
    },
}

#[derive(Debug, Clone)]
struct PeerPunch {
    state: PunchState,
    /// The peer's candidates from its latest `CallMeMaybe`.
    theirs: Vec<SocketAddr>,
    /// The last round whose call we acted on: a peer gets one answer per round.
    answered: u32,
}

/// Why the relay path is used with a peer, or how its direct link came about, as the status
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PunchStatus {
    /// `trying`, `punched`, `failed`; `off` (configured so) or `unavailable` (see `reason`).
    pub state: &'static str,
    /// Why punching is not tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current or last round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// The peer's addresses we punched.
    pub candidates: Vec<String>,
    /// Seconds until the next try (after a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
}

impl PunchStatus {
    /// Punching is not tried: `state` (`off`, `unavailable`) and why.
    pub fn unavailable(state: &'static str, reason: &str) -> PunchStatus {
        PunchStatus {
            state,
            reason: Some(reason.to_string()),
            round: None,
            candidates: Vec::new(),
            retry_in_secs: None,
        }
    }
}

/// The punching with every peer reached over a relay.
#[derive(Debug, Default)]
pub struct Punches {
    peers: BTreeMap<DatabaseId, PeerPunch>,
}

impl Punches {
    /// `peer` is linked over a relay and we have observed addresses: start round 1, unless a
    /// run is going on or failed lately.
    pub fn start(&mut self, now: Time, peer: DatabaseId, out: &mut Vec<PunchAction>) {
        let fresh = match self.peers.get(&peer).map(|p| &p.state) {
            None | Some(PunchState::Punched { .. }) => true,
            Some(PunchState::Failed { retry_at, .. }) => now >= *retry_at,
            Some(PunchState::Trying { .. }) => false,
        };
        if fresh {
            self.begin(now, peer, 1, out);
        }
    }

    fn begin(&mut self, now: Time, peer: DatabaseId, round: u32, out: &mut Vec<PunchAction>) {
        let state = PunchState::Trying { round, until: now.plus_millis(ROUND_MS) };
        let entry = self.peers.entry(peer).or_insert(PeerPunch {
            state: state.clone(),
            theirs: Vec::new(),
            answered: 0,
        });
        entry.state = state;
        out.push(PunchAction::CallMeMaybe { peer, round });
    }

    /// A `CallMeMaybe` from `peer` (over its relay link) for `round`, with its addresses: punch
    /// them, and dial them if we are this round's connector. `own` is our dbid.
    pub fn on_call_me_maybe(
        &mut self,
        now: Time,
        own: DatabaseId,
        peer: DatabaseId,
        round: u32,
        addrs: &[SocketAddr],
        out: &mut Vec<PunchAction>,
    ) {
        let theirs: Vec<SocketAddr> =
            addrs.iter().copied().filter(plausible).take(MAX_CANDIDATES).collect();
        if theirs.is_empty() || round == 0 || round > ROUNDS {
            return;
        }
        // A member could otherwise keep us sending to addresses of its choosing: one answer
        // per round, never back to an earlier round, and a failed run restarts only a whole
        // run after it failed.
        let ours = self.peers.get(&peer).map(|p| (p.state.clone(), p.answered));
        match ours {
            Some((PunchState::Trying { round: r, .. }, answered)) if r == round => {
                if answered == round {
                    return;
                }
            }
            Some((PunchState::Trying { round: r, .. }, _)) if round < r => return,
            Some((PunchState::Failed { since, .. }, _))
                if now < since.plus_millis(ROUND_MS * u64::from(ROUNDS)) =>
            {
                return
            }
            Some((PunchState::Punched { .. }, _)) => return,
            // The peer started (or restarted) before us, or is a round ahead: join its round.
            _ => self.begin(now, peer, round, out),
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.theirs = theirs.clone();
            p.answered = round;
        }
        out.extend(theirs.iter().map(|&to| PunchAction::Punch { to }));
        if connector(own, peer, round) {
            out.extend(theirs.iter().map(|&to| PunchAction::Connect { to }));
        }
    }

    /// A direct (not relay) link to `peer` is up: if punching was going on, it worked.
    pub fn direct_link_up(&mut self, peer: DatabaseId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if let PunchState::Trying { round, .. } = p.state {
                p.state = PunchState::Punched { round };
            }
        }
    }

    /// Whether a direct link to `peer` came from punching.
    pub fn punched(&self, peer: &DatabaseId) -> bool {
        matches!(self.peers.get(peer).map(|p| &p.state), Some(PunchState::Punched { .. }))
    }

    /// Next rounds and retries due at `now`, for the peers still reached over a relay
    /// (`relayed` says which); forgets peers that are neither.
    pub fn tick(
        &mut self,
        now: Time,
        relayed: impl Fn(&DatabaseId) -> bool,
        out: &mut Vec<PunchAction>,
    ) {
        // A peer neither relayed nor due for anything is forgotten (no timer stays in the past).
        self.peers.retain(|peer, p| {
            relayed(peer)
                || !matches!(p.state, PunchState::Failed { retry_at, .. } if now >= retry_at)
        });
        let mut next = Vec::new();
        for (peer, p) in &mut self.peers {
            if !relayed(peer) {
                // Punched (a direct link), or gone: a failure is kept for its retry time.
                if let PunchState::Trying { round, .. } = p.state {
                    p.state = PunchState::Failed {
                        retry_at: now.plus_millis(RETRY_MS.min(ROUND_MS * u64::from(round))),
                        since: now,
                    };
                }
                continue;
            }
            match p.state {
                PunchState::Trying { round, until } if now >= until => {
                    if round < ROUNDS {
                        next.push((*peer, round + 1));
                    } else {
                        p.state =
                            PunchState::Failed { retry_at: now.plus_millis(RETRY_MS), since: now };
                    }
                }
                PunchState::Failed { retry_at, .. } if now >= retry_at => next.push((*peer, 1)),
                PunchState::Punched { .. } => next.push((*peer, 1)),
                _ => {}
            }
        }
        for (peer, round) in next {
            self.begin(now, peer, round, out);
        }
    }

    /// Our observed address changed: failed peers are tried again now.
    pub fn address_changed(&mut self, now: Time) {
        for p in self.peers.values_mut() {
            if let PunchState::Failed { retry_at, .. } = &mut p.state {
                *retry_at = now;
            }
        }
    }

    /// The earliest time [`Punches::tick`] has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.peers
            .values()
            .filter_map(|p| match p.state {
                PunchState::Trying { until, .. } => Some(until),
                PunchState::Failed { retry_at, .. } => Some(retry_at),
                PunchState::Punched { .. } => None,
            })
            .min()
    }

    /// What the status shows for `peer`.
    pub fn status(&self, now: Time, peer: &DatabaseId) -> Option<PunchStatus> {
        let p = self.peers.get(peer)?;
        let candidates = p.theirs.iter().map(ToString::to_string).collect();
        Some(match p.state {
            PunchState::Trying { round, .. } => PunchStatus {
                state: "trying",
                reason: None,
                round: Some(round),
                candidates,
                retry_in_secs: None,
            },
            PunchState::Punched { round } => PunchStatus {
                state: "punched",
                reason: None,
                round: Some(round),
                candidates,
                retry_in_secs: None,
            },
            PunchState::Failed { retry_at, .. } => PunchStatus {
                state: "failed",
                reason: Some(format!("no direct link after {ROUNDS} rounds")),
                round: Some(ROUNDS),
                candidates,
                retry_in_secs: Some(retry_at.0.saturating_sub(now.0) / 1_000_000),
            },
        })
    }
}

/// An address worth punching: a unicast host and a port (not unspecified, loopback,
/// multicast or broadcast; a peer must not point our packets at ourselves or a whole LAN).
fn plausible(a: &SocketAddr) -> bool {
    let ip = a.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    a.port() != 0 && !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast() && !broadcast
}

/// Who dials in `round`: the larger dbid in odd rounds, the smaller in even ones.
pub fn connector(own: DatabaseId, peer: DatabaseId, round: u32) -> bool {
    (own > peer) == (round % 2 == 1)
}

/// Our candidate addresses from what the relays observe (`(relay, address)` of the relays that
/// are up), or why there are none: two relays seeing one IP at different ports mean the NAT
/// maps per destination, where punching cannot work.
pub fn candidates(observed: &[(u16, SocketAddr)]) -> Result<Vec<SocketAddr>, String> {
    if observed.is_empty() {
        return Err("no relay has told us our address".to_string());
    }
    for (i, (ra, a)) in observed.iter().enumerate() {
        for (rb, b) in &observed[i + 1..] {
            if a.ip() == b.ip() && a.port() != b.port() {
                return Err(format!(
                    "our NAT maps per destination: relay {ra} sees {a}, relay {rb} sees {b}"
                ));
            }
        }
    }
    let mut addrs: Vec<SocketAddr> = observed.iter().map(|(_, a)| *a).collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(MAX_CANDIDATES);
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbid(s: &str) -> DatabaseId {
        s.parse().unwrap()
    }

    const A: &str = "AAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBB";

    #[test]
    fn rounds_alternate_the_connector_then_give_up_and_retry() {
        let (a, b) = (dbid(A), dbid(B));
        assert!(a < b);
        assert!(connector(b, a, 1) && !connector(a, b, 1));
        assert!(connector(a, b, 2) && !connector(b, a, 2));
        let mut p = Punches::default();
        let mut out = Vec::new();
        let t0 = Time(1_000_000_000);
        p.start(t0, b, &mut out);
        assert_eq!(out, vec![PunchAction::CallMeMaybe { peer: b, round: 1 }]);
        out.clear();
        let theirs: SocketAddr = "203.0.113.9:7070".parse().unwrap();
        // We are `a`, the smaller: in round 1 we only punch.
        p.on_call_me_maybe(t0, a, b, 1, &[theirs], &mut out);
        assert_eq!(out, vec![PunchAction::Punch { to: theirs }]);
        out.clear();
        let mut t = t0;
        for round in 2..=ROUNDS {
            t = t.plus_millis(ROUND_MS);
            p.tick(t, |_| true, &mut out);
            assert_eq!(out, vec![PunchAction::CallMeMaybe { peer: b, round }]);
            out.clear();
            p.on_call_me_maybe(t, a, b, round, &[theirs], &mut out);
            let dials = out.iter().filter(|x| matches!(x, PunchAction::Connect { .. })).count();
            assert_eq!(dials, usize::from(round % 2 == 0), "round {round}: {out:?}");
            out.clear();
        }
        t = t.plus_millis(ROUND_MS);
        p.tick(t, |_| true, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.status(t, &b).unwrap().state, "failed");
        assert_eq!(p.poll_timeout(), Some(t.plus_millis(RETRY_MS)));
        // A call right after the failure (a replay, or a peer in a hurry) restarts nothing.
        p.on_call_me_maybe(t, a, b, 2, &[theirs], &mut out);
        p.on_call_me_maybe(t, a, b, 1, &[theirs], &mut out);
        assert!(out.is_empty(), "{out:?}");
        p.tick(t.plus_millis(RETRY_MS), |_| true, &mut out);
        assert_eq!(out, vec![PunchAction::CallMeMaybe { peer: b, round: 1 }]);
    }

    #[test]
    fn a_direct_link_ends_the_rounds() {
        let (a, b) = (dbid(A), dbid(B));
        let mut p = Punches::default();
        let mut out = Vec::new();
        let t0 = Time(1_000_000_000);
        p.start(t0, a, &mut out);
        out.clear();
        p.on_call_me_maybe(t0, b, a, 1, &["198.51.100.1:7070".parse().unwrap()], &mut out);
        assert!(out.iter().any(|x| matches!(x, PunchAction::Connect { .. })), "b dials in round 1");
        p.direct_link_up(a);
        assert!(p.punched(&a));
        out.clear();
        // While the direct link holds, nothing more happens.
        p.tick(t0.plus_millis(ROUND_MS * 10), |_| false, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.status(t0, &a).unwrap().state, "punched");
    }

    /// The node's timer follows `poll_timeout`: a deadline left in the past would spin it.
    #[test]
    fn no_deadline_stays_in_the_past() {
        let b = dbid(B);
        let mut p = Punches::default();
        let mut out = Vec::new();
        let mut t = Time(1_000_000_000);
        p.start(t, b, &mut out);
        // The peer leaves the relay (down) while a round runs, and for good.
        for _ in 0..5 {
            t = p.poll_timeout().map_or(t, |at| at.max(t));
            p.tick(t, |_| false, &mut out);
            assert!(p.poll_timeout().is_none_or(|at| at > t), "{:?} at {t:?}", p.poll_timeout());
        }
        assert_eq!(p.poll_timeout(), None, "forgotten once nothing is due");
    }

    /// A peer gets one answer per round, cannot send us back a round, and only plausible
    /// addresses are punched.
    #[test]
    fn calls_are_answered_once_per_round_and_never_backwards() {
        let (a, b) = (dbid(A), dbid(B));
        let mut p = Punches::default();
        let mut out = Vec::new();
        let t0 = Time(1_000_000_000);
        let theirs: SocketAddr = "203.0.113.9:7070".parse().unwrap();
        p.on_call_me_maybe(t0, a, b, 2, &[theirs], &mut out);
        assert!(out.contains(&PunchAction::CallMeMaybe { peer: b, round: 2 }), "joins round 2");
        out.clear();
        p.on_call_me_maybe(t0, a, b, 2, &[theirs], &mut out);
        p.on_call_me_maybe(t0, a, b, 1, &[theirs], &mut out);
        assert!(out.is_empty(), "{out:?}");
        let bad: Vec<SocketAddr> = [
            "127.0.0.1:7070",
            "0.0.0.0:7070",
            "224.0.0.1:7070",
            "255.255.255.255:7070",
            "203.0.113.9:0",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        p.on_call_me_maybe(t0, a, b, 3, &bad, &mut out);
        assert!(out.is_empty(), "nothing plausible: {out:?}");
    }

    #[test]
    fn junk_calls_are_ignored() {
        let (a, b) = (dbid(A), dbid(B));
        let mut p = Punches::default();
        let mut out = Vec::new();
        let t0 = Time(1_000_000_000);
        p.on_call_me_maybe(t0, a, b, 1, &[], &mut out);
        p.on_call_me_maybe(t0, a, b, 0, &["198.51.100.1:7070".parse().unwrap()], &mut out);
        p.on_call_me_maybe(t0, a, b, ROUNDS + 1, &["198.51.100.1:7070".parse().unwrap()], &mut out);
        assert!(out.is_empty());
        let many: Vec<SocketAddr> =
            (1..=20).map(|i| format!("198.51.100.{i}:7070").parse().unwrap()).collect();
        p.on_call_me_maybe(t0, a, b, 1, &many, &mut out);
        let punches = out.iter().filter(|x| matches!(x, PunchAction::Punch { .. })).count();
        assert_eq!(punches, MAX_CANDIDATES);
    }

    #[test]
    fn candidates_detect_a_per_destination_nat() {
        let a: SocketAddr = "203.0.113.9:7070".parse().unwrap();
        let b: SocketAddr = "203.0.113.9:40001".parse().unwrap();
        assert_eq!(candidates(&[(0, a), (1, a)]), Ok(vec![a]));
        let err = candidates(&[(0, a), (1, b)]).unwrap_err();
        assert!(err.contains("per destination") && err.contains("40001"), "{err}");
        assert!(candidates(&[]).is_err());
    }
}
