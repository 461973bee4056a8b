//! A rendezvous relay of the simulation (design §5.3): mailboxes of payloads, subscribers, and
//! going down and up again. It stands for `meshnode::relay::RelayCore` without admission
//! (every simulated node is a member) and without quotas or TTLs.
//!
//! - A post is stored in its mailbox and handed to the mailbox's subscribers; a payload handed
//!   to a subscriber counts as taken (deleted), unless it is a broadcast (presence), which stays
//!   (at most [`MAX_BROADCASTS`], the oldest evicted), as the real relay does.
//! - A subscription replaces the node's set and hands over what is stored for it (what was
//!   posted while nobody listened).
//! - Down: every connection (subscription) is gone, the store stays; up again, nodes
//!   subscribe again and get what waited.
//!
//! Delivery times, loss and duplication are the engine's (`engine/relays.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use meshnode::wire::relay::Mailbox;

use crate::network::NodeId;

/// Broadcasts kept, as the real relay does.
pub const MAX_BROADCASTS: usize = 256;

/// One relay's state.
#[derive(Debug, Default)]
pub struct SimRelay {
    /// Running.
    pub up: bool,
    stored: BTreeMap<Mailbox, VecDeque<Vec<u8>>>,
    broadcasts: VecDeque<(Mailbox, Vec<u8>)>,
    /// Node -> (incarnation, mailboxes).
    subscribers: BTreeMap<NodeId, (u32, BTreeSet<Mailbox>)>,
    /// Counters.
    pub stats: SimRelayStats,
}

/// What a relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimRelayStats {
    /// Posts stored.
    pub posted: u64,
    /// Payloads handed to subscribers.
    pub delivered: u64,
    /// Posts that arrived while it was down.
    pub lost_while_down: u64,
}

/// A payload to hand to a node: (node, incarnation, mailbox, bytes).
pub type Delivery = (NodeId, u32, Mailbox, Vec<u8>);

impl SimRelay {
    /// A running relay with an empty store.
    pub fn new() -> SimRelay {
        SimRelay { up: true, ..SimRelay::default() }
    }

    /// Payloads stored and not taken (broadcasts apart).
    pub fn stored(&self) -> usize {
        self.stored.values().map(VecDeque::len).sum()
    }

    /// `node` subscribes `mailboxes`; returns what waits for it.
    pub fn subscribe(
        &mut self,
        node: NodeId,
        incarnation: u32,
        mailboxes: Vec<Mailbox>,
    ) -> Vec<Delivery> {
        if !self.up {
            return Vec::new();
        }
        let set: BTreeSet<Mailbox> = mailboxes.into_iter().collect();
        let mut out = Vec::new();
        for mb in &set {
            if let Some(queue) = self.stored.remove(mb) {
                out.extend(queue.into_iter().map(|b| (node, incarnation, *mb, b)));
            }
        }
        for (mb, bytes) in &self.broadcasts {
            if set.contains(mb) {
                out.push((node, incarnation, *mb, bytes.clone()));
            }
        }
        self.stats.delivered += out.len() as u64;
        self.subscribers.insert(node, (incarnation, set));
        out
    }

    /// A post arrives; returns the deliveries to subscribers.
    pub fn post(&mut self, mailbox: Mailbox, broadcast: bool, bytes: Vec<u8>) -> Vec<Delivery> {
        if !self.up {
            self.stats.lost_while_down += 1;
            return Vec::new();
        }
        self.stats.posted += 1;
        let out: Vec<Delivery> = self
            .subscribers
            .iter()
            .filter(|(_, (_, set))| set.contains(&mailbox))
            .map(|(node, (inc, _))| (*node, *inc, mailbox, bytes.clone()))
            .collect();
        self.stats.delivered += out.len() as u64;
        if broadcast {
            self.broadcasts.push_back((mailbox, bytes));
            if self.broadcasts.len() > MAX_BROADCASTS {
                self.broadcasts.pop_front();
            }
        } else if out.is_empty() {
            self.stored.entry(mailbox).or_default().push_back(bytes);
        }
        out
    }

    /// The connection of `node` is gone (crash).
    pub fn disconnect(&mut self, node: NodeId) {
        self.subscribers.remove(&node);
    }

    /// Stops: every connection drops, the store stays.
    pub fn down(&mut self) {
        self.up = false;
        self.subscribers.clear();
    }

    /// Runs again.
    pub fn restart(&mut self) {
        self.up = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_until_subscribed_and_keeps_broadcasts() {
        let mut r = SimRelay::new();
        let (a, b) = (Mailbox([1; 16]), Mailbox([2; 16]));
        assert!(r.post(a, false, vec![1]).is_empty());
        assert_eq!(r.stored(), 1);
        let got = r.subscribe(NodeId(0), 0, vec![a]);
        assert_eq!(got, vec![(NodeId(0), 0, a, vec![1])]);
        assert_eq!(r.stored(), 0, "taken");
        assert_eq!(r.post(a, false, vec![2]).len(), 1, "forwarded at once");
        assert_eq!(r.stored(), 0);
        r.post(b, true, vec![3]);
        assert_eq!(r.subscribe(NodeId(1), 0, vec![b]).len(), 1);
        assert_eq!(r.subscribe(NodeId(1), 0, vec![b]).len(), 1, "a broadcast stays");
        r.down();
        assert!(r.post(a, false, vec![4]).is_empty());
        assert_eq!(r.stats.lost_while_down, 1);
        assert!(r.subscribe(NodeId(0), 0, vec![a]).is_empty(), "down");
        r.restart();
        r.post(a, false, vec![5]);
        assert_eq!(r.stored(), 1, "no subscriber after the restart until it subscribes");
    }
}
