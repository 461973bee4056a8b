//! Discovery: IDQY on the discovery group at start and on an interval, IDRP unicast to the
//! asker; announcements of other systems and forgeries refused by the opener and counted.

use std::net::SocketAddr;

use crate::proto::io::{DatagramDest, Output};
use crate::proto::message::Announce;
use crate::proto::peers::{Peer, PeerState};
use crate::store::Store;
use crate::wire::Tag;

use super::Node;

impl<S: Store> Node<S> {
    fn announce(&self, reply: bool) -> Announce {
        Announce {
            dbid: self.dbid(),
            device: self.cfg.device,
            instance: self.cfg.instance,
            role: self.cfg.role,
            addrs: self.cfg.advertise.clone(),
            reply,
        }
    }

    pub(super) fn send_announce(&mut self, to: DatagramDest, reply: bool) {
        let tag = if reply { Tag::Idrp } else { Tag::Idqy };
        let body = self.announce(reply).encode();
        if let Ok(bytes) = self.lan_seal.seal_visible(tag, self.now.as_secs(), &body) {
            self.stats.datagram_bytes_sent += bytes.len() as u64;
            self.out.push_back(Output::Datagram { to, bytes });
        }
    }

    pub(super) fn on_announce(&mut self, from: SocketAddr, a: Announce) {
        if a.dbid == self.dbid() {
            return;
        }
        let now = self.now;
        let addrs = if a.addrs.is_empty() { vec![from] } else { a.addrs.clone() };
        let known = self.peers.contains_key(&a.dbid);
        let peer = self
            .peers
            .entry(a.dbid)
            .or_insert_with(|| Peer::new(a.dbid, a.role, addrs.clone(), true, now));
        if peer.addrs != addrs || (peer.state == PeerState::Down && peer.lan) {
            // A changed address (DHCP, a moved machine), or a lost peer heard again (a healed
            // partition, a restart): try it now rather than at the offline-ping interval.
            peer.failures = 0;
            peer.next_attempt = now;
        }
        peer.addrs = addrs;
        peer.role = a.role;
        peer.lan = true;
        peer.last_seen = now;
        // A linked peer knows us already; anyone else gets an answer.
        let answer = !a.reply && !peer.linked();
        if !known {
            self.discovery_changed();
        }
        if answer {
            self.send_announce(DatagramDest::Unicast(from), true);
        }
        self.connect_due();
    }

    /// Something changed on the LAN: query at the base interval again.
    pub(super) fn discovery_changed(&mut self) {
        if self.started && self.discovery_every_ms > self.cfg.discovery_interval_ms {
            self.discovery_every_ms = self.cfg.discovery_interval_ms;
            let next = self.now.plus_millis(self.discovery_every_ms);
            self.next_discovery = self.next_discovery.min(next);
        }
    }
}
