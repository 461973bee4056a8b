//! The internet mesh with the real binary in network namespaces (a `netsim::netns` lab per
//! test, removed also on failure; nothing leaves it). Needs root, `ip` and `nft`; without them
//! each test says why and passes.
//!
//! Topology: segment `inet` holds the relay and the WAN side of two NAT routers (nftables
//! masquerade); behind each router a store LAN with a store server and a lane. The stores have
//! no route to each other's LAN and no configured peer: the only way between them is the relay.
//!
//! - two NATed stores converge through the relay: units of each lane reach the other store's
//!   lane over LAN, relay and LAN; the store servers show each other as `relay` peers, and the
//!   relay holds no key and reads nothing (the marker test checks that part).

#![cfg(target_os = "linux")]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{lab_or_skip, ok, s, submit_sales as submit};
use netsim::netns::{Lab, LabChild};
use serde_json::Value;

/// Where every node accepts links in these tests.
const LINK_PORT: u16 = 7070;
/// Where the relay listens.
const RELAY_PORT: u16 = 7740;
/// Logs: info, plus the relay client's debug lines.
const LOG: &str = "meshnode=info,meshnode::net::relay_task=debug";
/// How long one test may wait for its nodes in all.
const BUDGET: Duration = Duration::from_secs(90);
/// Short relay delays (the template's `[relay_path]` lines changed), so the test is not slowed
/// by the mixing delays of production.
const FAST_RELAY_PATH: [(&str, &str); 3] = [
    ("delay_ms_urgent = 20\n", "delay_ms_urgent = 5\n"),
    ("delay_ms_normal = 200\n", "delay_ms_normal = 20\n"),
    ("delay_ms_background = 2000\n", "delay_ms_background = 50\n"),
];

/// A new system: `root/first` plus members joined with its join file.
fn system(root: &Path, rmsystem: &str, names: &[&str]) -> Vec<PathBuf> {
    let first = common::init(root, names[0], &["--system", rmsystem]);
    let join = root.join(format!("{}.join", names[0]));
    ok(&["key", "export", "--data-dir", s(&first), "--out", s(&join)]);
    let mut dirs = vec![first];
    for name in &names[1..] {
        dirs.push(common::init(root, name, &["--join", s(&join)]));
    }
    dirs
}

/// Replaces each `(line, by)` in `dir`'s meshnode.toml (each must be there) and appends `tail`.
fn edit_config(dir: &Path, replace: &[(&str, &str)], tail: &str) {
    let path = dir.join("meshnode.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    for (line, by) in replace {
        assert!(config.contains(line), "{line:?} in {}", path.display());
        config = config.replace(line, by);
    }
    config.push_str(tail);
    std::fs::write(&path, config).unwrap();
}

/// `[[relay]]` tables for `relays` (address and key).
fn relay_tables(relays: &[(SocketAddr, String)]) -> String {
    relays
        .iter()
        .map(|(addr, key)| format!("\n[[relay]]\naddr = \"{addr}\"\nkey = \"{key}\"\n"))
        .collect()
}

/// Starts `meshnode run` in `node` with links on [`LINK_PORT`] and `extra` arguments.
fn start(lab: &Lab, node: &str, dir: &Path, extra: &[&str]) -> LabChild {
    let listen = format!("0.0.0.0:{LINK_PORT}");
    let mut c = Command::new(common::bin());
    c.args(["run", "--data-dir", s(dir), "--listen", &listen]).args(extra).env("MESHNODE_LOG", LOG);
    lab.spawn(node, c).expect("spawn meshnode in the lab")
}

/// Starts `meshnode relay` in `node`.
fn start_relay(lab: &Lab, node: &str, dir: &Path, listen: SocketAddr) -> LabChild {
    let mut c = Command::new(common::bin());
    c.args(["relay", "--data-dir", s(dir), "--listen", &listen.to_string()])
        .env("MESHNODE_LOG", "meshnode=debug");
    lab.spawn(node, c).expect("spawn meshnode relay in the lab")
}

fn relay_status(dir: &Path) -> Value {
    let out = ok(&["relay", "--data-dir", s(dir), "--status", "--json"]);
    serde_json::from_str(&out).expect("relay status json")
}

/// Admits the system of member `member` at the relay in `relay_dir`.
fn admit(relay_dir: &Path, member: &Path) {
    let line = ok(&["key", "relay-verifier", "--data-dir", s(member)]);
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|w| if w == "RELAY_DIR" { s(relay_dir).to_string() } else { w.to_string() })
        .collect();
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn status(dir: &Path) -> Value {
    common::status(dir)
}

fn units(dir: &Path) -> u64 {
    status(dir)["units_total"].as_u64().unwrap_or(0)
}

fn dbid(dir: &Path) -> String {
    status(dir)["dbid"].as_str().unwrap().to_string()
}

fn peer<'a>(st: &'a Value, dbid: &str) -> Option<&'a Value> {
    st["node"]["peers"].as_array()?.iter().find(|p| p["dbid"] == dbid)
}

/// Polls `check` every 100 ms until it holds; past `deadline` fails with every process's log
/// and every node's status.
fn wait_for(
    what: &str,
    deadline: Instant,
    nodes: &[(&LabChild, &Path)],
    mut check: impl FnMut() -> bool,
) {
    while !check() {
        if Instant::now() > deadline {
            let report: Vec<String> = nodes
                .iter()
                .map(|(n, d)| {
                    let st = common::run(&["--status", "--json", "--data-dir", s(d)]);
                    format!(
                        "{} (running: {:?}):\n{}\nstatus:\n{}",
                        n.node(),
                        n.try_wait().ok().map(|w| w.is_none()),
                        n.log().unwrap_or_default(),
                        common::text(&st.stdout)
                    )
                })
                .collect();
            panic!("timed out waiting for {what}; nodes:\n{}", report.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &LabChild) {
    child.terminate().unwrap();
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{} did not stop cleanly", child.node());
}

/// The lab: `inet` (relay 10.77.70.1, nat1 .11, nat2 .12), `store1` behind nat1
/// (server1 10.77.71.10, lane1 .20), `store2` behind nat2 (server2 10.77.72.10, lane2 .20).
struct Internet {
    lab: Lab,
    relay_addr: SocketAddr,
}

impl Internet {
    fn build(prefix: &str) -> Option<Internet> {
        let mut lab = lab_or_skip(prefix)?;
        for seg in ["inet", "store1", "store2"] {
            lab.segment(seg).unwrap();
        }
        lab.node("relay", &[("inet", "10.77.70.1/24")]).unwrap();
        for (i, store) in [(1, "store1"), (2, "store2")] {
            let nat = format!("nat{i}");
            lab.node(
                &nat,
                &[
                    ("inet", &format!("10.77.70.{}/24", 10 + i)),
                    (store, &format!("10.77.7{i}.1/24")),
                ],
            )
            .unwrap();
            lab.masquerade(&nat, "inet").unwrap();
            for (host, last) in [("server", 10), ("lane", 20)] {
                let name = format!("{host}{i}");
                lab.node(&name, &[(store, &format!("10.77.7{i}.{last}/24"))]).unwrap();
                lab.route(&name, "default", Ipv4Addr::new(10, 77, 70 + i, 1)).unwrap();
            }
        }
        let relay_addr =
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 77, 70, 1), RELAY_PORT));
        Some(Internet { lab, relay_addr })
    }
}

#[test]
fn two_nated_stores_converge_through_the_relay() {
    let Some(net) = Internet::build("rstores") else { return };
    let lab = &net.lab;
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    let names = ["server1", "lane1", "server2", "lane2"];
    let dirs = system(root.path(), "1,2,3,4", &names);
    let relay_dir = root.path().join("relay");
    let relay = start_relay(lab, "relay", &relay_dir, net.relay_addr);
    let relay_up = Instant::now() + Duration::from_secs(30);
    let running = |dir: &Path| {
        let out = common::run(&["relay", "--data-dir", s(dir), "--status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|st| st["running"] == true)
    };
    while !running(&relay_dir) {
        assert!(Instant::now() < relay_up, "relay did not start:\n{}", relay.log().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    admit(&relay_dir, &dirs[0]);
    // A running relay reads the admission within a second; a node refused before that would
    // wait out a minute's backoff.
    while relay_status(&relay_dir)["systems"].as_array().is_none_or(Vec::is_empty) {
        assert!(Instant::now() < relay_up, "relay did not admit:\n{}", relay.log().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = relay_status(&relay_dir)["key"].as_str().unwrap().to_string();
    for server in [&dirs[0], &dirs[2]] {
        edit_config(server, &FAST_RELAY_PATH, &relay_tables(&[(net.relay_addr, key.clone())]));
    }

    submit(&dirs[1], 20, "lane1-before");
    submit(&dirs[3], 30, "lane2-before");
    let if_of = |node: &str, seg: &str| lab.addr(node, seg).unwrap().to_string();
    let (s1_if, s2_if) = (if_of("server1", "store1"), if_of("server2", "store2"));
    let nodes = [
        start(lab, "server1", &dirs[0], &["--role", "store-server", "--discovery-if", &s1_if]),
        start(lab, "lane1", &dirs[1], &[]),
        start(lab, "server2", &dirs[2], &["--role", "store-server", "--discovery-if", &s2_if]),
        start(lab, "lane2", &dirs[3], &[]),
    ];
    let all: Vec<(&LabChild, &Path)> = nodes
        .iter()
        .zip(dirs.iter().map(PathBuf::as_path))
        .chain([(&relay, relay_dir.as_path())])
        .collect();
    let ids: Vec<String> = dirs.iter().map(|d| dbid(d)).collect();

    wait_for("every unit everywhere", deadline, &all, || dirs.iter().all(|d| units(d) == 50));
    submit(&dirs[1], 10, "lane1-live");
    wait_for("the live units everywhere", deadline, &all, || dirs.iter().all(|d| units(d) == 60));

    // The servers reached each other through the relay only, and the relay saw them behind
    // their NATs.
    let s1 = status(&dirs[0]);
    let s2_at_s1 = peer(&s1, &ids[2]).unwrap_or_else(|| panic!("server2 at server1: {s1:#}"));
    assert_eq!(s2_at_s1["link"], "relay", "{s1:#}");
    let relays = s1["node"]["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{s1:#}");
    assert_eq!(relays[0]["state"], "up", "{s1:#}");
    assert_eq!(relays[0]["observed"].as_str().unwrap().split(':').next(), Some("10.77.70.11"));
    assert!(s1["node"]["relay_path"]["payloads_received"].as_u64().unwrap() > 0, "{s1:#}");
    assert!(s1["node"]["relay_warning"].as_str().is_some_and(|w| w.contains("one")), "{s1:#}");
    // The lanes never met anyone of the other store.
    let lane2 = status(&dirs[3]);
    assert!(peer(&lane2, &ids[0]).is_none() && peer(&lane2, &ids[1]).is_none(), "{lane2:#}");
    for n in &nodes {
        stop(n);
    }
}
