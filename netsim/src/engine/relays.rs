//! Relays of the simulation: a relayed node's relay outputs, the posts and deliveries over
//! each relay's path, relays going down and up. A child of `engine` so it can reach the
//! simulation's fields. The relay itself is [`crate::relay::SimRelay`].
//!
//! A relayed node gets `RelayUp` one latency after it starts (and after a relay restarts),
//! `RelayDown` at once when a relay stops; posts and deliveries are datagrams on the relay's
//! path (lost, duplicated, reordered by its params). Posts arriving at a stopped relay are lost.

use std::net::SocketAddr;

use meshnode::proto::{Input, Protocol, RelayIndex, RelayOutput};
use meshnode::wire::relay::Mailbox;

use super::{Event, NodeFactory, Simulation};
use crate::network::{self, NodeId};
use crate::relay::Delivery;

impl<F: NodeFactory> Simulation<F> {
    /// Runs one relay output of node `id`.
    pub(super) fn execute_relay(&mut self, id: NodeId, out: RelayOutput) {
        match out {
            RelayOutput::Subscribe { relay, mailboxes } => {
                let incarnation = self.slots[id.0 as usize].incarnation;
                let Some(r) = self.relays.get_mut(usize::from(relay.0)) else { return };
                let waiting = r.subscribe(id, incarnation, mailboxes);
                self.deliver_all(relay.0, waiting);
            }
            RelayOutput::Post { relay, mailbox, broadcast, bytes, .. } => {
                let Some(spec) = self.relay_specs.get(usize::from(relay.0)) else { return };
                let arrivals =
                    network::datagram_arrivals(&spec.params, self.now, &mut self.rng_net);
                for at in arrivals.into_iter().flatten() {
                    let bytes = bytes.clone();
                    self.queue
                        .push(at, Event::RelayPost { relay: relay.0, mailbox, broadcast, bytes });
                }
            }
            _ => self.counters.unknown_outputs += 1,
        }
    }

    /// A post reaches relay `relay`.
    pub(super) fn on_relay_post(
        &mut self,
        relay: u16,
        mailbox: Mailbox,
        broadcast: bool,
        bytes: Vec<u8>,
    ) {
        let Some(r) = self.relays.get_mut(usize::from(relay)) else { return };
        let deliveries = r.post(mailbox, broadcast, bytes);
        self.deliver_all(relay, deliveries);
    }

    fn deliver_all(&mut self, relay: u16, deliveries: Vec<Delivery>) {
        let Some(spec) = self.relay_specs.get(usize::from(relay)) else { return };
        let params = spec.params.clone();
        for (node, incarnation, mailbox, bytes) in deliveries {
            let arrivals = network::datagram_arrivals(&params, self.now, &mut self.rng_net);
            for at in arrivals.into_iter().flatten() {
                let bytes = bytes.clone();
                self.queue
                    .push(at, Event::RelayDeliver { relay, node, incarnation, mailbox, bytes });
            }
        }
    }

    /// A delivery reaches a node (if it is the same process and the relay still runs).
    pub(super) fn on_relay_deliver(
        &mut self,
        relay: u16,
        node: NodeId,
        incarnation: u32,
        mailbox: Mailbox,
        bytes: &[u8],
    ) {
        let live = self.slots[node.0 as usize].incarnation == incarnation;
        if !live || !self.relays.get(usize::from(relay)).is_some_and(|r| r.up) {
            return;
        }
        let relay = RelayIndex(relay);
        self.feed(node, |n, t| n.handle(t, Input::RelayPayload { relay, mailbox, bytes }));
    }

    /// Node `id` (just started) connects to every running relay.
    pub(super) fn connect_relays(&mut self, id: NodeId) {
        if !self.specs[id.0 as usize].relayed {
            return;
        }
        for relay in 0..self.relays.len() {
            self.connect_relay(id, relay);
        }
    }

    fn connect_relay(&mut self, id: NodeId, relay: usize) {
        if !self.relays.get(relay).is_some_and(|r| r.up) {
            return;
        }
        let Ok(relay) = u16::try_from(relay) else { return };
        let latency = self.relay_specs[usize::from(relay)].params.latency_us;
        let incarnation = self.slots[id.0 as usize].incarnation;
        self.queue.push(
            self.now.saturating_add(2 * latency),
            Event::RelayUp { relay, node: id, incarnation },
        );
    }

    /// A node's connection to a relay is admitted.
    pub(super) fn on_relay_up(&mut self, relay: u16, node: NodeId, incarnation: u32) {
        let live = self.slots[node.0 as usize].incarnation == incarnation;
        if !live || !self.relays.get(usize::from(relay)).is_some_and(|r| r.up) {
            return;
        }
        let observed = self.specs[node.0 as usize]
            .addr()
            .unwrap_or_else(|| SocketAddr::from(([192, 0, 2, 1], 7000)));
        let relay = RelayIndex(relay);
        self.feed(node, |n, t| n.handle(t, Input::RelayUp { relay, observed }));
    }

    /// A crashed node's connections are gone.
    pub(super) fn disconnect_relays(&mut self, id: NodeId) {
        for r in &mut self.relays {
            r.disconnect(id);
        }
    }

    /// `Fault::RelayDown`.
    pub(super) fn relay_down(&mut self, relay: u16) {
        let Some(r) = self.relays.get_mut(usize::from(relay)) else { return };
        r.down();
        for i in 0..self.slots.len() {
            if self.specs[i].relayed && self.slots[i].node.is_some() {
                let index = RelayIndex(relay);
                self.feed(NodeId(i as u32), |n, t| n.handle(t, Input::RelayDown { relay: index }));
            }
        }
    }

    /// `Fault::RelayUp`.
    pub(super) fn relay_up(&mut self, relay: u16) {
        let Some(r) = self.relays.get_mut(usize::from(relay)) else { return };
        if r.up {
            return;
        }
        r.restart();
        for i in 0..self.slots.len() {
            if self.specs[i].relayed && self.slots[i].node.is_some() {
                self.connect_relay(NodeId(i as u32), usize::from(relay));
            }
        }
    }
}
