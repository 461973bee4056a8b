//! `meshnode run` on loopback: real processes find each other by multicast on 127.0.0.1,
//! link over TCP with the membership handshake and converge; a node of another system is
//! never peered and is counted. Each test uses its own discovery port, so tests run in
//! parallel; nothing leaves loopback.

mod common;

use std::path::{Path, PathBuf};

use common::{free_port, ok, s, wait_for, wait_within, Running};

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["--status", "--json", "--data-dir", s(dir)])).unwrap()
}

fn submit_many(dir: &Path, n: usize) {
    let lines: String =
        (0..n).map(|i| format!("{{\"kind\":\"TUBT\",\"body\":{{\"sale\":{i}}}}}\n")).collect();
    let out =
        common::run_with_input(&["submit", "--data-dir", s(dir), "--jsonl", "-"], lines.as_bytes());
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

fn member_dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    let first = common::init(root, names[0], &["--system", "1,2,3,4"]);
    let join = root.join("join.key");
    ok(&["key", "export", "--data-dir", s(&first), "--out", s(&join)]);
    let mut dirs = vec![first];
    for name in &names[1..] {
        dirs.push(common::init(root, name, &["--join", s(&join)]));
    }
    dirs
}

#[test]
fn three_nodes_on_loopback_find_each_other_and_converge() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a", "b", "c"]);
    submit_many(&dirs[0], 300);
    submit_many(&dirs[1], 20);
    let port = free_port();
    let nodes: Vec<Running> = dirs.iter().map(|d| Running::start(d, port)).collect();
    let refs: Vec<&Running> = nodes.iter().collect();
    wait_for("every node to hold all 320 units with both peers up", &refs, || {
        dirs.iter().all(|d| {
            let st = status(d);
            let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
            st["running"] == true
                && st["units_total"] == 320
                && peers.iter().filter(|p| p["state"] == "up").count() == 2
        })
    });
    // The operator's table says who is up and what the node listens on.
    let table = ok(&["--status", "--data-dir", s(&dirs[0])]);
    assert!(table.contains("peers     2 known, 2 up"), "{table}");
    assert!(table.contains("links on 127.0.0.1:"), "{table}");
    // And how its disk's log syncs go: every unit here waited for one (each node synced the
    // units it received, at least once).
    assert!(
        table.contains("disk      last 5-10 min: ")
            && table.contains("since start: ")
            && table.contains(" over 100 ms; slowest "),
        "{table}"
    );
    let node = &status(&dirs[0])["node"];
    assert!(node["discovery_group"].as_str().is_some_and(|g| g.starts_with("239.192.6.83:")));
    assert!(node["uptime_secs"].as_u64().is_some());
    // Converged, every peer says so both ways (the Haves after the last unit may lag the units).
    wait_for("each peer to show nothing lacking either way", &refs, || {
        dirs.iter().all(|d| {
            let peers = status(d)["node"]["peers"].as_array().cloned().unwrap_or_default();
            peers.iter().all(|p| p["we_lack"] == 0 && p["it_lacks"] == 0)
        })
    });
    for d in &dirs {
        shows_what_the_issue_asks(&status(d));
    }
    // Lanes with no main server: every own unit is unsafe, and the table says so.
    assert_eq!(status(&dirs[0])["node"]["unsafe_backlog"], 300);
    assert!(table.contains("UNSAFE    300 own units no main server holds yet"), "{table}");
    assert!(table.contains("we lack it lacks"), "{table}");
    for d in &dirs {
        let disk = &status(d)["node"]["disk"];
        assert!(disk["log_syncs"].as_u64().is_some_and(|n| n >= 1), "{disk}");
        assert!(disk["slowest_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{disk}");
        let (p50, p99) = (disk["p50_ms"].as_f64().unwrap(), disk["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99, "{disk}");
        // The syncs of this short run are recent too.
        let recent = disk["recent"]["log_syncs"].as_u64().unwrap();
        assert!(recent >= 1 && recent <= disk["log_syncs"].as_u64().unwrap(), "{disk}");
        assert!(disk["recent"]["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{disk}");
    }
    for node in nodes {
        node.stop();
    }
    // Stopped cleanly: the stores say the same without a running node.
    for d in &dirs {
        let st = status(d);
        assert_eq!(st["running"], false);
        assert_eq!(st["units_total"], 320);
    }
}

/// The status fields issue 5 names, on a running node linked to two peers: instance id,
/// groups, listen addresses, each peer's dbid, addresses, link, state, role, rtt and last seen,
/// the queues, and a rejection counter for every reason.
fn shows_what_the_issue_asks(st: &serde_json::Value) {
    let node = &st["node"];
    let hex32 = |v: &serde_json::Value| {
        v.as_str().is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(hex32(&node["instance_id"]), "{node}");
    let env_group = node["env_group"].as_str().unwrap_or_default();
    assert!(env_group.starts_with("239.192.6.") && !env_group.starts_with("239.192.6.83:"));
    let listen = node["listen"].as_array().cloned().unwrap_or_default();
    assert!(listen.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with("127.0.0.1:"))));
    let peers = node["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 2, "{node}");
    for p in &peers {
        assert_eq!(p["dbid"].as_str().map(str::len), Some(15), "{p}");
        assert!(p["addrs"].as_array().is_some_and(|a| !a.is_empty()), "{p}");
        assert!(p["link"] == "quic" || p["link"] == "tcp", "{p}");
        assert_eq!((&p["state"], &p["role"]), (&"up".into(), &"lane".into()), "{p}");
        assert!(p["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{p}");
        // Links keep alive every 10 s, so a linked peer was heard from within a minute.
        assert!(p["last_seen_ms_ago"].as_u64().is_some_and(|ms| ms < 60_000), "{p}");
    }
    for q in ["outputs", "links", "connecting", "wants_in_flight", "submits_syncing"] {
        assert!(node["queues"][q].as_u64().is_some(), "queue {q}: {node}");
    }
    let rejects = &node["counters"]["rejects"];
    for reason in [
        "foreign_system",
        "bad_tag",
        "decrypt_failure",
        "replay",
        "malformed",
        "unknown_type",
        "non_member_link",
    ] {
        assert!(rejects[reason].as_u64().is_some(), "reason {reason}: {rejects}");
    }
}

/// Ctrl-C (SIGINT) stops a node cleanly, and it closes its links on the way out: its peer
/// sees the link go down within 3 s of the exit, where a peer that just vanished is found
/// only by QUIC's idle timeout (6 s after the last packet, which was at most 2 s before:
/// keep-alives), or by the keepalive silence (a minute).
#[test]
fn sigint_stops_a_node_cleanly_and_its_peer_sees_the_link_closed() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a", "b"]);
    let port = free_port();
    let a = Running::start(&dirs[0], port);
    let b = Running::start(&dirs[1], port);
    let peer_of_a = || status(&dirs[0])["node"]["peers"][0].clone();
    wait_for("the two to link", &[&a, &b], || peer_of_a()["state"] == "up");
    submit_many(&dirs[1], 5);
    b.stop_with(libc::SIGINT);
    // The peer's state is read first: the status command below opens b's store.
    let soon = std::time::Duration::from_secs(3);
    wait_within("a to see b down within 3 s of its clean stop", soon, &[&a], || {
        peer_of_a()["state"] != "up"
    });
    assert_eq!(status(&dirs[1])["units_total"], 5, "flushed at the stop");
    assert_eq!(status(&dirs[0])["node"]["counters"]["links_silent"], 0);
    a.stop();
}

#[test]
fn a_node_of_another_system_is_never_peered_and_is_counted() {
    a_stranger_is_never_peered_and_is_counted(&["--system", "9,9,9,9"], "foreign_system");
}

/// The test environment of the same RmSystem (its own `init --env test`) on the same LAN as
/// live: its units go to another group, its announcements are refused by what differs.
#[test]
fn the_test_environment_of_the_same_system_never_meets_live() {
    a_stranger_is_never_peered_and_is_counted(
        &["--system", "1,2,3,4", "--env", "test"],
        "foreign_environment",
    );
}

/// Two members and a stranger made by `init <stranger>` on one discovery port: the members
/// converge, count the stranger's datagrams under `reason`, and none of them peers it.
fn a_stranger_is_never_peered_and_is_counted(stranger: &[&str], reason: &str) {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["m1", "m2"]);
    let stranger = common::init(root.path(), "stranger", stranger);
    submit_many(&dirs[0], 10);
    submit_many(&stranger, 10);
    let port = free_port();
    let nodes: Vec<Running> =
        dirs.iter().chain([&stranger]).map(|d| Running::start(d, port)).collect();
    let refs: Vec<&Running> = nodes.iter().collect();
    wait_for("the members to converge and count the stranger", &refs, || {
        let a = status(&dirs[0]);
        let b = status(&dirs[1]);
        let rejects = a["node"]["counters"]["rejects"][reason].as_u64().unwrap_or(0);
        a["units_total"] == 10 && b["units_total"] == 10 && rejects > 0
    });
    let st = status(&stranger);
    assert_eq!(st["units_total"], 10, "the stranger got nothing of ours");
    assert_eq!(st["node"]["peers"].as_array().map(Vec::len), Some(0), "and no peer");
    for d in &dirs {
        let peers = status(d)["node"]["peers"].as_array().cloned().unwrap_or_default();
        assert_eq!(peers.len(), 1, "members list only each other: {peers:?}");
    }
    for node in nodes {
        node.stop();
    }
}

/// Seed 001: a configured direct peer (head office) is linked without LAN discovery: the two
/// nodes use different discovery ports, so multicast never joins them.
#[test]
fn a_configured_peer_links_without_discovery() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["office", "store"]);
    let office_port =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dirs[1].join("meshnode.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\naddress = \"127.0.0.1:{office_port}\"\npriority = 0\nrole = \"main-server\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    submit_many(&dirs[0], 15);
    submit_many(&dirs[1], 25);
    let listen = format!("127.0.0.1:{office_port}");
    let office = Running::start_as(&dirs[0], free_port(), &listen, "main-server");
    let store = Running::start(&dirs[1], free_port());
    wait_for("office and store to converge over the configured link", &[&office, &store], || {
        dirs.iter().all(|d| status(d)["units_total"] == 40)
            && status(&dirs[1])["node"]["unsafe_backlog"] == 0
    });
    let st = status(&dirs[1]);
    let peers = st["node"]["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["configured_priority"], 0);
    assert_eq!(peers[0]["lan"], false);
    assert_eq!(peers[0]["role"], "main-server");
    office.stop();
    store.stop();
}
