//! NAT traversal: hole punching to peers reached through a relay (candidates are what the
//! relays observe; see [`crate::proto::punch`]).

use std::net::SocketAddr;

use crate::id::DatabaseId;
use crate::proto::io::{LinkId, LinkKind, Output};
use crate::proto::message::Message;
use crate::proto::peers::Peer;
use crate::proto::punch::{self, PunchAction, PunchStatus};
use crate::store::Store;
use crate::wire::Tag;

use super::Node;

impl<S: Store> Node<S> {
    /// Our punching candidates: what the relays that are up observe.
    pub(super) fn punch_candidates(&self) -> Result<Vec<SocketAddr>, String> {
        punch::candidates(&self.relay.observed())
    }

    pub(super) fn punch_actions(&mut self, actions: Vec<PunchAction>) {
        for action in actions {
            match action {
                PunchAction::CallMeMaybe { peer, round } => {
                    let Ok(addrs) = self.punch_candidates() else { continue };
                    let link = self.peers.get(&peer).filter(|p| p.linked()).and_then(|p| p.link);
                    if let Some(link) = link.filter(|l| l.is_relay()) {
                        self.stats.punch_rounds += 1;
                        self.send_frame(link, Tag::Tubs, &Message::CallMeMaybe { round, addrs });
                    }
                }
                PunchAction::Punch { to } => self.out.push_back(Output::Punch { to }),
                PunchAction::Connect { to } => self.out.push_back(Output::ConnectPunched { to }),
            }
        }
    }

    /// A `CallMeMaybe` from `dbid` on `link`: heeded only on its current relay link.
    pub(super) fn on_call_me_maybe(
        &mut self,
        link: LinkId,
        dbid: DatabaseId,
        round: u32,
        addrs: &[SocketAddr],
    ) {
        let current = self.peers.get(&dbid).is_some_and(|p| p.link == Some(link) && p.linked());
        if !self.cfg.hole_punch || !link.is_relay() || !current {
            self.stats.punch_calls_ignored += 1;
            return;
        }
        let mut actions = Vec::new();
        self.punches.on_call_me_maybe(self.now, self.dbid(), dbid, round, addrs, &mut actions);
        self.punch_actions(actions);
    }

    /// Next punching rounds and retries.
    pub(super) fn punch_timeout(&mut self) {
        if !self.cfg.hole_punch {
            return;
        }
        let mut actions = Vec::new();
        let (peers, links) = (&self.peers, &self.links);
        let relayed = |d: &DatabaseId| {
            peers.get(d).is_some_and(|p| {
                p.linked()
                    && p.link.and_then(|l| links.get(&l)).is_some_and(|l| l.kind == LinkKind::Relay)
            })
        };
        // Rounds advance whether or not we have candidates now (a `CallMeMaybe` is only sent
        // with some), so no deadline stays in the past.
        self.punches.tick(self.now, relayed, &mut actions);
        self.punch_actions(actions);
    }

    /// The punching status of `p` while a relay carries its traffic, or after punching gave a
    /// direct link.
    pub(super) fn punch_status(&self, p: &Peer) -> Option<PunchStatus> {
        let kind = p.link.filter(|_| p.linked()).and_then(|l| self.links.get(&l)).map(|l| l.kind);
        match kind {
            Some(LinkKind::Relay) => {
                if !self.cfg.hole_punch {
                    return Some(PunchStatus::unavailable(
                        "off",
                        "hole_punch = false under [relay_path], or quic = false under [links]",
                    ));
                }
                if let Err(reason) = self.punch_candidates() {
                    return Some(PunchStatus::unavailable("unavailable", &reason));
                }
                self.punches.status(self.now, &p.dbid)
            }
            Some(_) if self.punches.punched(&p.dbid) => self.punches.status(self.now, &p.dbid),
            _ => None,
        }
    }
}
