//! A profile harness for the receive path of issue 5 (not a test of behaviour): a node over a
//! real ledger (DATI logs and the sled store on a temp dir) takes the multicast datagrams of
//! 10,000 units of 256 bytes submitted at another node, in bursts as the driver hands them
//! over. Run it under callgrind to count the instructions a receiver spends per unit:
//!
//! ```text
//! cargo test --release --lib recv_profile -- --ignored --nocapture   # builds, checks
//! valgrind --tool=callgrind --toggle-collect='*recv_profile*receive*' \
//!     target/release/deps/meshnode-HASH recv_profile --ignored --test-threads=1
//! ```
//!
//! `receive` is the only collected function, so the sender's work and the setup are left out.

use crate::ledger::Submission;
use crate::proto::io::{DatagramDest, Input, Output, Protocol, ReceivedDatagram, Time};
use crate::proto::node::Node;
use crate::proto::peers::Role;
use crate::proto::tests::Harness;
use crate::store::{SledStore, Store};
use crate::unit::{FileScopes, UnitKind, Urgency};

const UNITS: usize = 10_000;
const PAYLOAD: usize = 256;
/// Submits per group commit at the sender (`control::server::MAX_BATCH`).
const SUBMIT_BATCH: usize = 4096;
/// Datagrams per `Input::Datagrams` at the receiver.
const BURST: usize = 32;

/// The datagrams node 0 of a two-node LAN multicasts for [`UNITS`] submits.
fn datagrams(h: &mut Harness) -> Vec<ReceivedDatagram> {
    h.run_until(h.now.plus_millis(3_000));
    let now = h.now;
    let mut out = Vec::new();
    let mut i = 0;
    while i < UNITS {
        let n = SUBMIT_BATCH.min(UNITS - i);
        let batch = (i..i + n)
            .map(|j| Submission {
                kind: UnitKind::Tubt,
                urgency: Urgency::Normal,
                scopes: FileScopes::NONE,
                physkey: None,
                payload: vec![j as u8; PAYLOAD],
                sensitive: Vec::new(),
            })
            .collect();
        h.nodes[0].handle(now, Input::SubmitBatch(batch));
        while let Some(o) = h.nodes[0].poll_output() {
            if let Output::Datagram { to: to @ DatagramDest::Group(_), bytes } = o {
                out.push(ReceivedDatagram { from: "10.0.0.1:7000".parse().unwrap(), to, bytes });
            }
        }
        i += n;
    }
    out
}

/// The collected part: every burst handed to the receiver and its outputs drained.
#[inline(never)]
fn receive(node: &mut Node<SledStore>, now: Time, datagrams: Vec<ReceivedDatagram>) -> usize {
    let mut delivered = 0;
    let mut datagrams = datagrams.into_iter().peekable();
    while datagrams.peek().is_some() {
        let burst: Vec<ReceivedDatagram> = datagrams.by_ref().take(BURST).collect();
        node.handle(now, Input::Datagrams(burst));
        while let Some(o) = node.poll_output() {
            delivered += usize::from(matches!(o, Output::Deliver(_)));
        }
    }
    delivered
}

#[test]
#[ignore = "a profile harness: run under callgrind (see the module doc)"]
fn recv_profile() {
    let mut h = Harness::new(&[Role::Lane, Role::Lane], &[true, true], &[]);
    let datagrams = datagrams(&mut h);
    let now = h.now;
    let root = tempfile::tempdir().unwrap();
    let mut node = crate::proto::tests::node_on_disk(root.path());
    let count = datagrams.len();
    let delivered = receive(&mut node, now, datagrams);
    assert_eq!(delivered, UNITS, "every unit delivered once");
    assert_eq!(node.ledger().store().units_total(), UNITS as u64);
    println!("{count} datagrams, {UNITS} units delivered");
}
