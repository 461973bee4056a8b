//! Links of the simulation: connect and handshake, frames in order, close, and the failures a
//! fault causes. A child of `engine` so it can reach the simulation's fields.
//!
//! A link has side 0 (the initiator) and side 1 (the acceptor). `Close` tells the closer at
//! once and the other end after the frames already sent (a FIN); a partition or a crash breaks
//! the link, drops what is in flight, and tells the live ends after `failure_detect_us`.

use std::net::SocketAddr;

use meshnode::proto::{Input, LinkId, Protocol};
use rand::Rng;

use super::{Event, NodeFactory, Simulation, Slot};
use crate::network::{self, Link, LinkEnd, LinkKey, LinkState, NodeId, Resolved};

impl<F: NodeFactory> Simulation<F> {
    /// `Output::Connect`: a handshake of one round trip if the address is reachable, else
    /// `ConnectFailed` after the connect timeout.
    pub(super) fn connect(&mut self, from: NodeId, to: SocketAddr) {
        self.counters.connects += 1;
        let now = self.now;
        match self.net.resolve(from, to) {
            Resolved::Route { to: target, route, src } if target != from => {
                let p = self.net.params(route);
                let mut rtt = 2 * p.latency_us;
                if p.jitter_us > 0 {
                    rtt += self.rng_net.gen_range(0..=2 * p.jitter_us);
                }
                let back = self.net.reverse(route, target);
                let end = |node: NodeId, addr, slots: &[Slot<F::Node>]| LinkEnd {
                    node,
                    incarnation: slots[node.0 as usize].incarnation,
                    local: None,
                    addr,
                    open: true,
                    down_sent: false,
                };
                let link = Link {
                    ends: [end(from, src, &self.slots), end(target, to, &self.slots)],
                    routes: [route, back],
                    state: LinkState::Handshaking,
                    last_arrival: [0, 0],
                };
                let key = self.links.insert(link);
                self.queue.push(now.saturating_add(rtt), Event::Handshake { link: key });
            }
            _ => {
                let incarnation = self.slots[from.0 as usize].incarnation;
                let at = now.saturating_add(self.config.connect_timeout_us);
                self.queue.push(at, Event::ConnectFailed { node: from, incarnation, to });
            }
        }
    }

    /// The handshake is done: `LinkUp` at both ends if both processes and the route are still
    /// there, else `ConnectFailed` at the initiator.
    pub(super) fn on_handshake(&mut self, key: LinkKey) {
        let Some(link) = self.links.get(key) else { return };
        if link.state != LinkState::Handshaking {
            return;
        }
        let ok = self.alive(&link.ends[0])
            && self.alive(&link.ends[1])
            && self.net.reachable(link.ends[0].node, link.ends[1].node, link.routes[0]);
        let initiator = link.ends[0].node;
        if !ok {
            let to = link.ends[1].addr;
            let initiator_alive = self.alive(&link.ends[0]);
            self.links.close(key);
            if initiator_alive {
                self.counters.connects_failed += 1;
                self.feed(initiator, |n, t| n.handle(t, Input::ConnectFailed { to }));
            }
            return;
        }
        let mut locals = [LinkId(0); 2];
        for (side, local) in locals.iter_mut().enumerate() {
            let node = self.links.get(key).map_or(initiator, |l| l.ends[side].node);
            let slot = &mut self.slots[node.0 as usize];
            *local = LinkId(slot.next_link);
            slot.next_link += 1;
            slot.links.insert(*local, key);
        }
        let Some(link) = self.links.get_mut(key) else { return };
        link.state = LinkState::Open;
        link.ends[0].local = Some(locals[0]);
        link.ends[1].local = Some(locals[1]);
        let (acceptor, a_addr, b_addr) = (link.ends[1].node, link.ends[0].addr, link.ends[1].addr);
        self.counters.links_up += 1;
        let up = |link, remote, outbound| Input::LinkUp {
            link,
            remote,
            outbound,
            kind: meshnode::proto::LinkKind::Simulated,
        };
        self.feed(initiator, |n, t| n.handle(t, up(locals[0], b_addr, true)));
        self.feed(acceptor, |n, t| n.handle(t, up(locals[1], a_addr, false)));
    }

    /// The side of `key` that `node` holds as `local`.
    fn side_of(&self, key: LinkKey, node: NodeId, local: LinkId) -> Option<usize> {
        let link = self.links.get(key)?;
        (0..2).find(|&s| link.ends[s].node == node && link.ends[s].local == Some(local))
    }

    /// `Output::Frame`: serialized on the route, delayed by latency and retransmissions, and
    /// never before the link's previous frame.
    pub(super) fn send_frame(&mut self, from: NodeId, local: LinkId, bytes: Vec<u8>) {
        let len = bytes.len();
        self.counters.frames_sent += 1;
        self.counters.frame_bytes += len as u64;
        let found = self.slots[from.0 as usize].links.get(&local).copied();
        let Some((key, side)) = found.and_then(|k| Some((k, self.side_of(k, from, local)?))) else {
            self.counters.frames_dropped += 1;
            return;
        };
        let other = 1 - side;
        let now = self.now;
        let Some(link) = self.links.get(key) else { return };
        // In `Closing` nobody sends: the closer has closed, and the closer would drop it.
        if link.state != LinkState::Open || !link.ends[side].open || !link.ends[other].open {
            self.counters.frames_dropped += 1;
            return;
        }
        let route = link.routes[side];
        let depart = self.net.enqueue(from, route, len, now);
        let arrival = network::frame_arrival(
            self.net.params(route),
            depart,
            self.config.min_rto_us,
            &mut self.rng_net,
        );
        let Some(link) = self.links.get_mut(key) else { return };
        let at = arrival.max(link.last_arrival[other]);
        link.last_arrival[other] = at;
        self.queue.push(at, Event::Frame { link: key, side: other as u8, bytes });
    }

    pub(super) fn on_frame(&mut self, key: LinkKey, side: u8, bytes: &[u8]) {
        let Some(link) = self.links.get(key) else { return };
        let end = &link.ends[usize::from(side)];
        let usable = matches!(link.state, LinkState::Open | LinkState::Closing);
        let Some(local) = end.local.filter(|_| usable && end.open && self.alive(end)) else {
            self.counters.frames_dropped += 1;
            return;
        };
        self.counters.frames_delivered += 1;
        let node = end.node;
        self.feed(node, |n, t| n.handle(t, Input::Frame { link: local, bytes }));
    }

    /// `Output::Close`: the closer learns at once; the other end gets what was already sent,
    /// then its `LinkDown` (a FIN).
    pub(super) fn close(&mut self, from: NodeId, local: LinkId) {
        let Some(key) = self.slots[from.0 as usize].links.get(&local).copied() else { return };
        let Some(side) = self.side_of(key, from, local) else { return };
        let other = 1 - side;
        let now = self.now;
        let latency = self.links.get(key).map_or(0, |l| self.net.params(l.routes[side]).latency_us);
        let Some(link) = self.links.get_mut(key) else { return };
        match link.state {
            LinkState::Open => {
                link.state = LinkState::Closing;
                link.ends[side].open = false;
                let fin = now.saturating_add(latency).max(link.last_arrival[other]);
                self.queue.push(fin, Event::Fin { link: key, side: other as u8 });
            }
            LinkState::Closing => link.ends[side].open = false,
            _ => return,
        }
        self.queue.push(now, Event::LinkDown { link: key, side: side as u8 });
    }

    /// Tells one end its link is down (once), and retires the link when both ends know.
    pub(super) fn on_link_down(&mut self, key: LinkKey, side: u8) {
        let side = usize::from(side);
        let Some(link) = self.links.get(key) else { return };
        let end = &link.ends[side];
        let notify = !end.down_sent && self.alive(end);
        let (node, local) = (end.node, end.local);
        if let Some(link) = self.links.get_mut(key) {
            link.ends[side].down_sent = true;
            link.ends[side].open = false;
        }
        if let (true, Some(local)) = (notify, local) {
            self.slots[node.0 as usize].links.remove(&local);
            self.counters.links_down += 1;
            self.feed(node, |n, t| n.handle(t, Input::LinkDown { link: local }));
        }
        let Some(link) = self.links.get(key) else { return };
        let other = &link.ends[1 - side];
        if other.down_sent || !self.alive(other) {
            self.links.close(key);
        }
    }

    /// After a fault: every open link whose route no longer works breaks; its live ends learn
    /// after the failure-detection delay. Frames in flight on it are lost.
    pub(super) fn break_links(&mut self) {
        let at = self.now.saturating_add(self.config.failure_detect_us);
        for key in self.links.live() {
            let Some(link) = self.links.get(key) else { continue };
            if !matches!(link.state, LinkState::Open | LinkState::Closing) {
                continue;
            }
            let (a, b) = (link.ends[0].node, link.ends[1].node);
            if self.net.reachable(a, b, link.routes[0]) {
                continue;
            }
            if let Some(link) = self.links.get_mut(key) {
                link.state = LinkState::Broken;
                for side in 0..2u8 {
                    link.ends[usize::from(side)].open = false;
                    self.queue.push(at, Event::LinkDown { link: key, side });
                }
            }
        }
    }

    fn alive(&self, end: &LinkEnd) -> bool {
        let slot = &self.slots[end.node.0 as usize];
        slot.node.is_some() && slot.incarnation == end.incarnation
    }
}
