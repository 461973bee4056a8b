//! The real binary in network namespaces (a `netsim::netns` lab per test: its own namespaces
//! and bridge, removed also on failure; nothing leaves them). Needs root, `ip` and `nft`;
//! without them each test says why and passes (CI runs as root and installs both).
//!
//! - five nodes on one bridge, no configuration beyond the join file, converge on 10,000
//!   units submitted across them (half before they start, half while they run), every node
//!   knowing the four others and with its ring of peers up;
//! - a node cut off while linked neither gets nor gives units, its peers see it go quiet;
//!   after the heal everyone converges and it is up again;
//! - a node killed with -9 in the middle of a sync (its link throttled, so the kill lands
//!   with part of the units in) restarts and catches up, losing nothing it held;
//! - a node that comes back with a changed IP address is found and linked again;
//! - a store server with two LAN interfaces named by `--discovery-if` (twice) finds the lanes
//!   on both, and carries units between LANs that multicast never joins.

#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{lab_or_skip, ok, s, submit_sales as submit_many};
use netsim::netns::{Lab, LabChild};

fn member_dirs(root: &Path, n: usize) -> Vec<PathBuf> {
    let first = common::init(root, "n0", &["--system", "1,2,3,4"]);
    let join = root.join("join.key");
    ok(&["key", "export", "--data-dir", s(&first), "--out", s(&join)]);
    let mut dirs = vec![first];
    for i in 1..n {
        dirs.push(common::init(root, &format!("n{i}"), &["--join", s(&join)]));
    }
    dirs
}

/// Starts `meshnode run` in `node` with default discovery (the namespace's only private
/// interface) and a fixed link port. The namespaces share the host's /etc/machine-id, so the
/// device id is the one `init` saw and the dbid stays.
fn start(lab: &Lab, node: &str, dir: &Path) -> LabChild {
    start_with(lab, node, dir, &[])
}

/// [`start`] with more arguments for `meshnode run`.
fn start_with(lab: &Lab, node: &str, dir: &Path, extra: &[&str]) -> LabChild {
    let mut c = Command::new(common::bin());
    c.args(["run", "--data-dir", s(dir), "--listen", "0.0.0.0:7070"])
        .args(extra)
        .env("MESHNODE_LOG", "meshnode=info");
    lab.spawn(node, c).expect("spawn meshnode in the lab")
}

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["--status", "--json", "--data-dir", s(dir)])).unwrap()
}

fn units(dir: &Path) -> u64 {
    status(dir)["units_total"].as_u64().unwrap_or(0)
}

fn up_peers(dir: &Path) -> usize {
    peer_states(dir).iter().filter(|s| *s == "up").count()
}

/// The state of each peer `dir` knows, as its status shows it.
fn peer_states(dir: &Path) -> Vec<String> {
    let st = status(dir);
    let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
    peers.iter().map(|p| p["state"].as_str().unwrap_or("?").to_string()).collect()
}

fn wait_for(what: &str, nodes: &[&LabChild], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check() {
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}:\n{}", n.node(), n.log().unwrap_or_default()))
                .collect();
            panic!("timed out waiting for {what}; logs:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &LabChild) {
    child.terminate().unwrap();
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{} did not stop cleanly", child.node());
}

fn lan(lab: &mut Lab, subnet: u8, n: usize) -> Vec<String> {
    lab.segment("lan").unwrap();
    (0..n)
        .map(|i| {
            let name = format!("n{i}");
            lab.node(&name, &[("lan", &format!("10.77.{subnet}.{}/24", 10 + i))]).unwrap();
            name
        })
        .collect()
}

#[test]
fn five_nodes_on_a_bridge_converge_on_10000_units() {
    let Some(mut lab) = lab_or_skip("mfive") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 5);
    let names = lan(&mut lab, 31, 5);
    for (i, d) in dirs.iter().enumerate() {
        submit_many(d, 1_000, &format!("n{i}"));
    }
    let nodes: Vec<LabChild> = names.iter().zip(&dirs).map(|(n, d)| start(&lab, n, d)).collect();
    let refs: Vec<&LabChild> = nodes.iter().collect();
    // Every node discovers the four others; LAN links form a ring (each node linked to at
    // least its two neighbours; the others idle, multicast carries the units).
    wait_for("each node to know the four others, with its ring neighbours up", &refs, || {
        dirs.iter().all(|d| peer_states(d).len() == 4 && up_peers(d) >= 2)
    });
    // The second half goes in through the running nodes, so it travels as live pushes.
    for (i, d) in dirs.iter().enumerate() {
        submit_many(d, 1_000, &format!("live-n{i}"));
    }
    wait_for("all five to hold 10,000 units", &refs, || dirs.iter().all(|d| units(d) == 10_000));
    for n in &nodes {
        stop(n);
    }
}

#[test]
fn a_partitioned_node_catches_up_after_the_heal() {
    let Some(mut lab) = lab_or_skip("mpart") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 3);
    let names = lan(&mut lab, 32, 3);
    for (i, d) in dirs.iter().enumerate() {
        submit_many(d, 100, &format!("n{i}"));
    }
    let nodes: Vec<LabChild> = names.iter().zip(&dirs).map(|(n, d)| start(&lab, n, d)).collect();
    let refs: Vec<&LabChild> = nodes.iter().collect();
    wait_for("all three linked and holding 300", &refs, || {
        dirs.iter().all(|d| units(d) == 300 && up_peers(d) == 2)
    });
    // Cut n2 off with its links up; both sides keep selling.
    lab.partition("n2").unwrap();
    submit_many(&dirs[0], 100, "n0-cut");
    submit_many(&dirs[2], 100, "n2-cut");
    wait_for("n1 to get n0's sales of the partition", &refs, || units(&dirs[1]) == 400);
    // Nothing crosses: n2's links fail (QUIC's idle timeout) and its peers no longer count it
    // up, while it holds only its own new sales.
    let n2 = status(&dirs[2])["dbid"].as_str().unwrap().to_string();
    let n2_up_at = |d: &Path| {
        let st = status(d);
        let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
        peers.iter().any(|p| p["dbid"] == n2.as_str() && p["state"] == "up")
    };
    wait_for("n0 and n1 to see n2 down, and n2 to see both down", &refs, || {
        [&dirs[0], &dirs[1]].iter().all(|d| up_peers(d) == 1 && !n2_up_at(d))
            && up_peers(&dirs[2]) == 0
    });
    assert_eq!(units(&dirs[2]), 400, "the partitioned node got nothing and kept its own");
    assert_eq!(units(&dirs[0]), 400, "n0 got nothing from the partitioned node");
    lab.heal("n2").unwrap();
    wait_for("everyone to hold 500 after the heal, with n2 up again", &refs, || {
        dirs.iter().all(|d| units(d) == 500 && up_peers(d) == 2)
    });
    for n in &nodes {
        stop(n);
    }
}

#[test]
fn kill_9_mid_sync_then_restart_loses_nothing() {
    let Some(mut lab) = lab_or_skip("mkill") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 2);
    let names = lan(&mut lab, 33, 2);
    submit_many(&dirs[0], 20_000, "n0");
    // The sink takes at most 200 kB/s after a 16 kB burst (the units are about 2 MB on the
    // wire), so the kill below lands in the middle of the sync on any machine.
    lab.nft(&names[1], THROTTLE).unwrap();
    let source = start(&lab, &names[0], &dirs[0]);
    let sink = start(&lab, &names[1], &dirs[1]);
    wait_for("n1 to start receiving", &[&source, &sink], || units(&dirs[1]) > 0);
    sink.kill().unwrap();
    // Read from its store with the node dead: what it had made durable.
    let held = common::units(&dirs[1]);
    assert!(
        !held.is_empty() && held.len() < 20_000,
        "the kill should land mid-sync, with {} of 20,000 held",
        held.len()
    );
    lab.heal(&names[1]).unwrap();
    let sink = start(&lab, &names[1], &dirs[1]);
    wait_for("n1 to hold all 20,000 after the restart", &[&source, &sink], || {
        units(&dirs[1]) == 20_000
    });
    stop(&sink);
    stop(&source);
    let after: std::collections::HashSet<String> =
        common::units(&dirs[1]).iter().map(|u| u["physkey"].to_string()).collect();
    assert!(
        held.iter().all(|u| after.contains(&u["physkey"].to_string())),
        "a unit held at the kill is gone after the restart"
    );
    let verify = common::run(&["log", "verify", "--data-dir", s(&dirs[1])]);
    assert!(verify.status.success(), "{}", common::text(&verify.stderr));
}

/// A node's input limited to 200 kB/s after a 16 kB burst (in `table inet lab`, so
/// `Lab::heal` removes it).
const THROTTLE: &str = "table inet lab {
  chain input { type filter hook input priority 0; policy accept; iifname \"lo\" accept; limit rate over 200 kbytes/second burst 16 kbytes counter drop; };
}
";

#[test]
fn a_node_back_with_a_new_address_is_linked_again() {
    let Some(mut lab) = lab_or_skip("maddr") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 2);
    let names = lan(&mut lab, 34, 2);
    let a = start(&lab, &names[0], &dirs[0]);
    let b = start(&lab, &names[1], &dirs[1]);
    wait_for("the two to link", &[&a, &b], || up_peers(&dirs[0]) == 1);
    stop(&b);
    // n1 moves to another address on the same LAN (DHCP gave it a new lease).
    let ns = lab.namespace("n1").unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(["-n", &ns]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", common::text(&out.stderr));
    };
    run(&["addr", "flush", "dev", "lan"]);
    run(&["addr", "add", "10.77.34.99/24", "dev", "lan"]);
    submit_many(&dirs[1], 50, "moved");
    let b = start(&lab, &names[1], &dirs[1]);
    wait_for("n0 to link n1 at its new address and get its units", &[&a, &b], || {
        let st = status(&dirs[0]);
        let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
        units(&dirs[0]) == 50
            && peers.iter().any(|p| {
                p["state"] == "up"
                    && p["addrs"].as_array().is_some_and(|a| {
                        a.iter().any(|x| x.as_str().is_some_and(|x| x.starts_with("10.77.34.99")))
                    })
            })
    });
    stop(&a);
    stop(&b);
}

/// The link kind each peer of `dir` is reached by, as its status shows it.
fn peer_links(dir: &Path) -> Vec<String> {
    let st = status(dir);
    let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .filter(|p| p["state"] == "up")
        .map(|p| p["link"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Sets `[links] quic_retry_secs` in the member's config (the template has the key).
fn set_quic_retry(dir: &Path, secs: u64) {
    let path = dir.join("meshnode.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("quic_retry_secs = 60"), "template changed: {text}");
    let text = text.replace("quic_retry_secs = 60", &format!("quic_retry_secs = {secs}"));
    std::fs::write(&path, text).unwrap();
}

#[test]
fn udp_blocked_node_links_over_tcp_and_returns_to_quic() {
    let Some(mut lab) = lab_or_skip("mudp") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 3);
    let names = lan(&mut lab, 35, 3);
    for (i, d) in dirs.iter().enumerate() {
        set_quic_retry(d, 2);
        submit_many(d, 300, &format!("n{i}"));
    }
    // n2's firewall drops unicast UDP (QUIC) both ways; multicast discovery still flows.
    lab.drop_udp_unicast("n2").unwrap();
    let nodes: Vec<LabChild> = names.iter().zip(&dirs).map(|(n, d)| start(&lab, n, d)).collect();
    let refs: Vec<&LabChild> = nodes.iter().collect();
    wait_for("n2 linked over tcp, n0 and n1 over quic, all converged", &refs, || {
        let n2 = peer_links(&dirs[2]);
        let n0 = peer_links(&dirs[0]);
        dirs.iter().all(|d| units(d) == 900)
            && n2.len() == 2
            && n2.iter().all(|l| l == "tcp")
            && n0.iter().filter(|l| *l == "quic").count() == 1
            && n0.iter().filter(|l| *l == "tcp").count() == 1
    });
    assert!(lab.dropped("n2").unwrap() > 0, "the UDP drop rule never hit");
    lab.heal("n2").unwrap();
    submit_many(&dirs[2], 100, "after-heal");
    wait_for("n2 back on quic with both peers, everything converged", &refs, || {
        let n2 = peer_links(&dirs[2]);
        dirs.iter().all(|d| units(d) == 1_000)
            && n2.len() == 2
            && n2.iter().all(|l| l == "quic")
            && dirs.iter().all(|d| peer_links(d).iter().all(|l| l == "quic"))
    });
    let st = status(&dirs[0]);
    let rtts: Vec<f64> = st["node"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["rtt_ms"].as_f64())
        .collect();
    assert!(!rtts.is_empty() && rtts.iter().all(|ms| *ms < 1_000.0), "rtt per peer: {rtts:?}");
    for n in &nodes {
        stop(n);
    }
}

#[test]
fn a_server_with_two_discovery_interfaces_joins_two_lans() {
    let Some(mut lab) = lab_or_skip("mtwo") else { return };
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), 3);
    lab.segment("lan1").unwrap();
    lab.segment("lan2").unwrap();
    lab.node("srv", &[("lan1", "10.77.36.10/24"), ("lan2", "10.77.37.10/24")]).unwrap();
    lab.node("a", &[("lan1", "10.77.36.11/24")]).unwrap();
    lab.node("b", &[("lan2", "10.77.37.11/24")]).unwrap();
    submit_many(&dirs[1], 30, "a");
    submit_many(&dirs[2], 20, "b");
    let discover = ["--discovery-if", "10.77.36.10", "--discovery-if", "10.77.37.10"];
    let srv = start_with(&lab, "srv", &dirs[0], &discover);
    let a = start(&lab, "a", &dirs[1]);
    let b = start(&lab, "b", &dirs[2]);
    wait_for("the server to peer both lanes, and everyone to hold 50", &[&srv, &a, &b], || {
        up_peers(&dirs[0]) == 2
            && dirs[1..].iter().all(|d| up_peers(d) == 1)
            && dirs.iter().all(|d| units(d) == 50)
    });
    // The lanes' LANs never meet: each lane knows the server alone.
    for d in &dirs[1..] {
        assert_eq!(peer_states(d), ["up"], "a lane knows only the server");
    }
    for n in [&srv, &a, &b] {
        stop(n);
    }
}
