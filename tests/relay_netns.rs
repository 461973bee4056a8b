//! The internet mesh with the real binary in network namespaces (a `netsim::netns` lab per
//! test, removed also on failure; nothing leaves it). Needs root, `ip` and `nft`; without them
//! each test says why and passes.
//!
//! Topology: segment `inet` holds the relay, head office and the WAN side of two NAT routers
//! (nftables masquerade); behind each router a store LAN with a store server and a lane. The
//! stores have no route to each other's LAN: besides head office, the only way between them is
//! the relay.
//!
//! - two NATed stores converge through the relay: with head office up, then stopped, units of
//!   each lane reach the other store's lane over LAN, relay and LAN; the store servers show
//!   each other as `relay` peers, and one shows the other down as soon as it stops cleanly;
//! - the relay never sees a unit's content (its files, a capture of its interface, its memory);
//! - outsiders (another system, a pretender of an admitted RmSystem) are refused and counted;
//! - a relay killed mid-transfer and restarted, with a second relay down: nothing lost, nothing
//!   delivered twice.

#![cfg(target_os = "linux")]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    lab_or_skip, lab_stop as stop, lab_wait_for as wait_for, ok, s, submit_sales as submit,
};
use netsim::netns::{Lab, LabChild};
use serde_json::Value;

/// Where every node accepts links in these tests.
const LINK_PORT: u16 = 7070;
/// Where the relay listens.
const RELAY_PORT: u16 = 7740;
/// Head office, on the internet segment.
const HEAD_OFFICE: Ipv4Addr = Ipv4Addr::new(10, 77, 70, 2);
/// Logs: info, plus the relay client's debug lines.
const LOG: &str = "meshnode=info,meshnode::net::relay_task=debug,meshnode::net::driver=debug";
/// How long one test may wait for its nodes in all.
const BUDGET: Duration = Duration::from_secs(90);
/// How soon a peer must show a relay peer's clean stop (its session's `Fin`); without the
/// `Fin` the link goes quiet and the peer turns suspect after three relay keepalives (180 s).
const CLEAN_STOP_SEEN: Duration = Duration::from_secs(20);
/// Short relay delays (the template's `[relay_path]` lines changed), so the test is not slowed
/// by the mixing delays of production.
const FAST_RELAY_PATH: [(&str, &str); 3] = [
    ("delay_ms_urgent = 20\n", "delay_ms_urgent = 5\n"),
    ("delay_ms_normal = 200\n", "delay_ms_normal = 20\n"),
    ("delay_ms_background = 2000\n", "delay_ms_background = 50\n"),
];
/// [`FAST_RELAY_PATH`], and no hole punching: the data stays on the relay path (the NATs of
/// this lab allow punching).
const RELAY_ONLY: [(&str, &str); 4] = [
    FAST_RELAY_PATH[0],
    FAST_RELAY_PATH[1],
    FAST_RELAY_PATH[2],
    ("hole_punch = true\n", "hole_punch = false\n"),
];

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

use common::{dbid, status, units_total as units};

fn peer<'a>(st: &'a Value, dbid: &str) -> Option<&'a Value> {
    st["node"]["peers"].as_array()?.iter().find(|p| p["dbid"] == dbid)
}

/// The lab: `inet` (relay 10.77.70.1, head office .2, nat1 .11, nat2 .12), `store1` behind nat1
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
        lab.node("ho", &[("inet", "10.77.70.2/24")]).unwrap();
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
            // Like a home router: nothing new gets in from the internet. (Without it, a punch
            // that arrives before the other side punched is taken by the router itself, and
            // its conntrack entry makes masquerade move our own mapping to another port.)
            lab.nft(
                &nat,
                "table inet natfw {\n chain input {\n type filter hook input priority 0; policy accept;\n iifname \"inet\" ct state new drop\n }\n}\n",
            )
            .unwrap();
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
    let names = ["server1", "lane1", "server2", "lane2", "ho"];
    let dirs = common::new_system(root.path(), "1,2,3,4", &names).0;
    let relay_dir = root.path().join("relay");
    let relay = relay_for(lab, "relay", &relay_dir, net.relay_addr, &dirs[0]);
    let key = relay_status(&relay_dir)["key"].as_str().unwrap().to_string();
    // Head office is on the internet segment, reachable from both stores.
    let ho_addr = SocketAddr::V4(SocketAddrV4::new(HEAD_OFFICE, LINK_PORT));
    for server in [&dirs[0], &dirs[2]] {
        let ho = format!("\n[[peer]]\naddress = \"{ho_addr}\"\nrole = \"main-server\"\n");
        let tables = relay_tables(&[(net.relay_addr, key.clone())]) + &ho;
        edit_config(server, &RELAY_ONLY, &tables);
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
        start(
            lab,
            "ho",
            &dirs[4],
            &["--role", "main-server", "--discovery-if", &HEAD_OFFICE.to_string()],
        ),
    ];
    let all: Vec<(&LabChild, &Path)> = nodes
        .iter()
        .zip(dirs.iter().map(PathBuf::as_path))
        .chain([(&relay, relay_dir.as_path())])
        .collect();
    let ids: Vec<String> = dirs.iter().map(|d| dbid(d)).collect();
    let link_at = |i: usize, j: usize| {
        peer(&status(&dirs[i]), &ids[j]).map(|p| (p["state"].clone(), p["link"].clone()))
    };
    let relay_up = |i: usize, j: usize| link_at(i, j) == Some(("up".into(), "relay".into()));

    wait_for("every unit everywhere, the stores linked by the relay", deadline, &all, || {
        dirs.iter().all(|d| units(d) == 50) && relay_up(0, 2) && relay_up(2, 0)
    });
    // From here the relay is the only way between the stores.
    stop(&nodes[4]);
    submit(&dirs[1], 10, "lane1-live");
    submit(&dirs[3], 5, "lane2-live");
    let stores = &dirs[..4];
    wait_for("the live units in both stores", deadline, &all, || {
        stores.iter().all(|d| units(d) == 65)
    });

    // The servers reached each other through the relay, and the relay saw them behind their
    // NATs.
    let s1 = status(&dirs[0]);
    assert!(relay_up(0, 2), "{s1:#}");
    let relays = s1["node"]["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{s1:#}");
    assert_eq!(relays[0]["state"], "up", "{s1:#}");
    assert_eq!(relays[0]["observed"].as_str().unwrap().split(':').next(), Some("10.77.70.11"));
    assert!(s1["node"]["relay_path"]["payloads_received"].as_u64().unwrap() > 0, "{s1:#}");
    assert!(s1["node"]["relay_warning"].as_str().is_some_and(|w| w.contains("one")), "{s1:#}");
    // The lanes never met anyone of the other store.
    let lane2 = status(&dirs[3]);
    assert!(peer(&lane2, &ids[0]).is_none() && peer(&lane2, &ids[1]).is_none(), "{lane2:#}");

    // server2 stops cleanly: its relay session ends with a `Fin`, so server1 shows it down at
    // once. Silence alone would take three relay keepalives (3 minutes) to make it suspect.
    stop(&nodes[2]);
    let soon = Instant::now() + CLEAN_STOP_SEEN;
    wait_for("server1 to see server2's clean stop", soon.min(deadline), &all, || {
        link_at(0, 2).is_some_and(|(state, _)| state == "down")
    });
    for n in [&nodes[0], &nodes[1], &nodes[3]] {
        stop(n);
    }
}

/// Two store servers of a new system, one behind each NAT, running, with the relay (admitting
/// the system) first in their `[[relay]]` list, then `more_relays`; `replace` is applied to
/// their config.
struct Stores {
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    ids: Vec<String>,
    relay_dir: PathBuf,
    relay: LabChild,
    nodes: Vec<LabChild>,
}

impl Stores {
    fn start(
        net: &Internet,
        rmsystem: &str,
        replace: &[(&str, &str)],
        more_relays: &[(SocketAddr, String)],
    ) -> Stores {
        let root = tempfile::tempdir().unwrap();
        let dirs = common::new_system(root.path(), rmsystem, &["server1", "server2"]).0;
        let relay_dir = root.path().join("relay");
        let relay = relay_for(&net.lab, "relay", &relay_dir, net.relay_addr, &dirs[0]);
        let key = relay_status(&relay_dir)["key"].as_str().unwrap().to_string();
        let relays: Vec<(SocketAddr, String)> =
            [(net.relay_addr, key)].into_iter().chain(more_relays.iter().cloned()).collect();
        for server in &dirs {
            edit_config(server, replace, &relay_tables(&relays));
        }
        let nodes = vec![
            start(&net.lab, "server1", &dirs[0], &["--role", "store-server"]),
            start(&net.lab, "server2", &dirs[1], &["--role", "store-server"]),
        ];
        let ids = dirs.iter().map(|d| dbid(d)).collect();
        Stores { _root: root, dirs, ids, relay_dir, relay, nodes }
    }

    /// Every process and its directory, for [`wait_for`]'s report.
    fn all(&self) -> Vec<(&LabChild, &Path)> {
        self.nodes
            .iter()
            .zip(self.dirs.iter().map(PathBuf::as_path))
            .chain([(&self.relay, self.relay_dir.as_path())])
            .collect()
    }

    /// Stops both servers cleanly.
    fn stop(&self) {
        for n in &self.nodes {
            stop(n);
        }
    }
}

/// Submits one unit per JSON body in `bodies` at `dir`.
fn submit_bodies(dir: &Path, bodies: &[String]) {
    let lines: String =
        bodies.iter().map(|b| format!("{{\"kind\":\"TUBT\",\"body\":{b}}}\n")).collect();
    let out =
        common::run_with_input(&["submit", "--data-dir", s(dir), "--jsonl", "-"], lines.as_bytes());
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

/// The relay and its status, started on `listen` and admitting the system of `member`.
fn relay_for(lab: &Lab, node: &str, dir: &Path, listen: SocketAddr, member: &Path) -> LabChild {
    let relay = start_relay(lab, node, dir, listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    let relay_json = |dir: &Path| {
        let out = common::run(&["relay", "--data-dir", s(dir), "--status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).ok()
    };
    while !relay_json(dir).is_some_and(|st| st["running"] == true && st["pid"] == relay.id()) {
        assert!(Instant::now() < deadline, "relay did not start:\n{}", relay.log().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    admit(dir, member);
    // A running relay reads the admission within a second; a node refused before that would
    // wait out a minute's backoff.
    while relay_json(dir).is_none_or(|st| st["systems"].as_array().is_none_or(Vec::is_empty)) {
        assert!(Instant::now() < deadline, "relay did not admit:\n{}", relay.log().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    relay
}

/// `meshnode subscribe --from-start` at the running node in `dir`, read line by line; killed
/// when dropped.
struct Subscriber {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Subscriber {
    fn start(dir: &Path) -> Subscriber {
        use std::io::BufRead;
        let mut child = common::cmd(&["subscribe", "--data-dir", s(dir), "--from-start"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber { child, lines }
    }

    /// The next `n` units, waiting at most until `deadline`.
    fn next(&mut self, n: usize, deadline: Instant) -> Vec<Value> {
        let mut units = Vec::new();
        while units.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => units.push(serde_json::from_str(&line).expect("subscribe json line")),
                Err(_) => break,
            }
        }
        assert_eq!(units.len(), n, "subscribe printed {} of {n} units: {units:?}", units.len());
        units
    }
}

/// The first `n` units `meshnode subscribe --from-start` prints at the running node in `dir`.
fn subscribed(dir: &Path, n: usize) -> Vec<Value> {
    Subscriber::start(dir).next(n, Instant::now() + BUDGET)
}

/// Every byte of every file under `dir`.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every readable mapping of process `pid`, read through `/proc/PID/mem`.
fn process_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut region).is_ok() {
            out.extend_from_slice(&region);
        }
    }
    out
}

/// A capture of every frame on every interface of a namespace's node (AF_PACKET), running on
/// a thread until [`Capture::stop`]; dropped (a test that panics), it stops the thread and
/// closes its socket too, so the namespace can be removed.
struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Capture {
    /// Stops the capture; the frames' bytes.
    fn stop(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.reader.take().map(|r| r.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Starts capturing every frame on every interface of `node`.
fn capture(lab: &Lab, node: &str) -> Capture {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let fd = lab
        .enter(node, || unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // The timeout lets the reader see its stop flag: without it `recv` could block for
            // ever, and the guard's drop with it.
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            fd
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while !flag.load(Ordering::Relaxed) {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                all.extend_from_slice(&buf[..n as usize]);
            }
        }
        unsafe { libc::close(fd) };
        all
    });
    Capture { stop, reader: Some(reader) }
}

/// The relay never sees a unit's content: a marker submitted at store 1 arrives at store 2
/// through the relay, and it is in none of the relay's files, in no frame on the relay's
/// interface, and nowhere in the relay process's memory. Positive controls: the marker is at
/// the receiver, and each scan finds something known to be there.
#[test]
fn marker_never_reaches_the_relay() {
    let Some(net) = Internet::build("rmarker") else { return };
    let deadline = Instant::now() + BUDGET;
    let capture = capture(&net.lab, "relay");
    let stores = Stores::start(&net, "1,2,3,5", &RELAY_ONLY, &[]);
    let (dirs, relay_dir) = (&stores.dirs, &stores.relay_dir);
    let marker = format!("MARKER-{}-a7c1e5", std::process::id());
    let mut bodies: Vec<String> = (0..40).map(|i| format!("{{\"filler\":{i}}}")).collect();
    bodies.insert(17, format!("{{\"password\":\"{marker}\"}}"));
    submit_bodies(&dirs[0], &bodies);
    wait_for("the units at server2", deadline, &stores.all(), || units(&dirs[1]) == 41);
    let frames = capture.stop();
    let memory = process_memory(stores.relay.id());

    // Positive controls: the marker is at the receiver, the capture holds the relay traffic
    // (the relay's address in IP headers), the memory holds the relay's listen address.
    let delivered = subscribed(&dirs[1], 41);
    let hex_marker = hex::encode(&marker);
    assert!(
        delivered
            .iter()
            .any(|u| u.to_string().contains(&marker) || u.to_string().contains(&hex_marker)),
        "the marker unit is at server2: {delivered:?}"
    );
    assert!(frames.len() > 10_000 && contains(&frames, &[10, 77, 70, 1]), "capture is empty");
    let listen = net.relay_addr.to_string();
    assert!(contains(&memory, listen.as_bytes()), "relay memory scan finds its listen address");
    assert!(
        files_under(relay_dir).iter().any(|(_, bytes)| contains(bytes, listen.as_bytes())),
        "the relay's files hold its listen address (status)"
    );

    let marker = marker.as_bytes();
    for (path, bytes) in files_under(relay_dir) {
        assert!(!contains(&bytes, marker), "the marker is in the relay's {}", path.display());
    }
    assert!(!contains(&frames, marker), "the marker crossed the relay's interface in clear");
    assert!(!contains(&memory, marker), "the marker is in the relay's memory");
    stores.stop();
}

/// Outsiders get nothing from the relay: a node of a system the relay never admitted, and a
/// node of an admitted RmSystem whose install id (and key) is not the system's (it knows only
/// the RmSystem), are refused; their status says so and the relay counts them.
#[test]
fn relay_refuses_outsiders() {
    let Some(net) = Internet::build("rrefuse") else { return };
    let lab = &net.lab;
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    let members = common::new_system(root.path(), "1,2,3,6", &["server1"]).0;
    let foreign = common::new_system(&root.path().join("foreign"), "9,9,9,9", &["server2"]).0;
    let pretender = common::new_system(&root.path().join("pretender"), "1,2,3,6", &["lane1"]).0;
    let relay_dir = root.path().join("relay");
    let relay = relay_for(lab, "relay", &relay_dir, net.relay_addr, &members[0]);
    let key = relay_status(&relay_dir)["key"].as_str().unwrap().to_string();
    let dirs = [members[0].as_path(), foreign[0].as_path(), pretender[0].as_path()];
    for dir in dirs {
        edit_config(dir, &RELAY_ONLY, &relay_tables(&[(net.relay_addr, key.clone())]));
    }
    let nodes = [
        start(lab, "server1", dirs[0], &["--role", "store-server"]),
        start(lab, "server2", dirs[1], &["--role", "store-server"]),
        start(lab, "lane1", dirs[2], &[]),
    ];
    let all: Vec<(&LabChild, &Path)> =
        nodes.iter().zip(dirs).chain([(&relay, relay_dir.as_path())]).collect();
    let relay_state = |dir: &Path| status(dir)["node"]["relays"][0].clone();
    wait_for("the member up, the outsiders refused", deadline, &all, || {
        relay_state(dirs[0])["state"] == "up"
            && relay_state(dirs[1])["state"] == "refused"
            && relay_state(dirs[2])["state"] == "refused"
    });
    let foreign_st = relay_state(dirs[1]);
    assert!(
        foreign_st["refused"].as_str().is_some_and(|r| r.contains("unknown_system")),
        "{foreign_st}"
    );
    let pretender_st = relay_state(dirs[2]);
    assert!(
        pretender_st["refused"].as_str().is_some_and(|r| r.contains("bad_proof")),
        "{pretender_st}"
    );
    // The relay writes its status every second.
    wait_for("the relay to count both refusals", deadline, &all, || {
        let refused = &relay_status(&relay_dir)["refused"];
        refused["unknown_system"].as_u64() >= Some(1) && refused["bad_proof"].as_u64() >= Some(1)
    });
    let st = relay_status(&relay_dir);
    // Only the admitted system has connections at the relay; the pretender's failed proofs
    // are counted against the system it claimed.
    for system in st["systems"].as_array().unwrap() {
        let admitted = system["rmsystem"] == "1,2,3,6";
        assert_eq!(system["admitted"], admitted, "{st:#}");
        assert_eq!(system["connected"].as_u64() > Some(0), admitted, "{st:#}");
        if admitted {
            assert!(system["counters"]["bad_proof"].as_u64() >= Some(1), "{st:#}");
        }
    }
    for n in &nodes {
        stop(n);
    }
}

/// A relay killed (-9) in the middle of a transfer and restarted, with a second configured
/// relay that never runs: nothing is lost and nothing is delivered twice. A subscriber at the
/// receiver sees every unit once, in order, and then a sentinel submitted last, so no
/// duplicate hides after the count.
#[test]
fn relay_restart_loses_nothing() {
    const UNITS: usize = 3_000;
    let Some(net) = Internet::build("rrestart") else { return };
    let deadline = Instant::now() + BUDGET * 2;
    // Nothing ever listens at the second relay.
    let down = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 77, 70, 1), RELAY_PORT + 1));
    let mut stores = Stores::start(&net, "1,2,3,7", &RELAY_ONLY, &[(down, "5a".repeat(32))]);
    let dirs = stores.dirs.clone();
    let origin = stores.ids[0].clone();
    let sales = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| format!("{{\"sale\":{i}}}")).collect()
    };
    // The first third flows; the relay dies as soon as some of it arrived; the rest is
    // submitted while the relay is down, so the sessions hold unacknowledged data across the
    // crash whatever the timing.
    submit_bodies(&dirs[0], &sales(0, UNITS / 3));
    wait_for("the first units at server2", deadline, &stores.all(), || units(&dirs[1]) > 0);
    stores.relay.kill().unwrap();
    submit_bodies(&dirs[0], &sales(UNITS / 3, UNITS));
    // Its control socket is up by now.
    let mut subscriber = Subscriber::start(&dirs[1]);
    stores.relay = start_relay(&net.lab, "relay", &stores.relay_dir, net.relay_addr);
    wait_for("every unit at server2", deadline, &stores.all(), || units(&dirs[1]) == UNITS as u64);
    submit_bodies(&dirs[0], &["{\"sentinel\":true}".to_string()]);
    let delivered = subscriber.next(UNITS + 1, deadline);
    for (i, unit) in delivered.iter().enumerate() {
        assert_eq!(unit["origin"], origin.as_str(), "{unit}");
        assert_eq!(unit["seq"].as_u64(), Some(i as u64 + 1), "delivered once, in order: {unit}");
    }
    assert!(delivered[UNITS].to_string().contains("sentinel"), "{}", delivered[UNITS]);
    let st = status(&dirs[0]);
    let relays = st["node"]["relays"].as_array().unwrap();
    assert_eq!(relays[0]["state"], "up", "{st:#}");
    assert_ne!(relays[1]["state"], "up", "{st:#}");
    stores.stop();
}

/// Two servers behind NATs that keep a socket's mapping whatever the destination (Linux
/// masquerade keeps the port): hole punching gives them a direct QUIC link, the status says
/// so, and units flow over it with the relay gone.
#[test]
fn hole_punch_gives_a_direct_link() {
    let Some(net) = Internet::build("rpunch") else { return };
    let deadline = Instant::now() + BUDGET;
    let stores = Stores::start(&net, "1,2,3,8", &[], &[]);
    let (dirs, ids) = (&stores.dirs, &stores.ids);
    let punched = |i: usize, j: usize| {
        let st = status(&dirs[i]);
        peer(&st, &ids[j]).is_some_and(|p| {
            p["state"] == "up" && p["link"] == "quic" && p["punch"]["state"] == "punched"
        })
    };
    wait_for("a hole-punched quic link both ways", deadline, &stores.all(), || {
        punched(0, 1) && punched(1, 0)
    });
    // From here only the punched link joins them.
    stores.relay.kill().unwrap();
    submit(&dirs[0], 25, "over-the-punched-link");
    wait_for("the units at server2", deadline, &stores.all(), || units(&dirs[1]) == 25);
    // The link is the NATs' public addresses: server2 reached server1 at nat1's address.
    let st = status(&dirs[1]);
    let p = peer(&st, &ids[0]).unwrap();
    assert_eq!(p["link"], "quic", "{st:#}");
    assert!(
        p["punch"]["candidates"].to_string().contains("10.77.70.11"),
        "server1's candidate is nat1's address: {st:#}"
    );
    stores.stop();
}

/// A NAT that maps each destination to a new port (masquerade fully-random) defeats punching:
/// after its rounds the status says it failed, and the relay path keeps carrying the units.
#[test]
fn symmetric_nat_keeps_the_relay_path() {
    let Some(net) = Internet::build("rsymm") else { return };
    let lab = &net.lab;
    lab.nft(
        "nat2",
        r#"table ip labnat
delete table ip labnat
table ip labnat {
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    oifname "inet" masquerade fully-random
  }
}
"#,
    )
    .unwrap();
    let deadline = Instant::now() + BUDGET;
    let stores = Stores::start(&net, "1,2,3,9", &FAST_RELAY_PATH, &[]);
    let (dirs, ids) = (&stores.dirs, &stores.ids);
    let all = stores.all();
    submit(&dirs[0], 10, "before");
    let failed_on_relay = |i: usize, j: usize| {
        let st = status(&dirs[i]);
        peer(&st, &ids[j]).is_some_and(|p| {
            p["state"] == "up" && p["link"] == "relay" && p["punch"]["state"] == "failed"
        })
    };
    wait_for("punching to fail both ways, on the relay path", deadline, &all, || {
        failed_on_relay(0, 1) && failed_on_relay(1, 0)
    });
    submit(&dirs[0], 15, "after");
    wait_for("every unit at server2", deadline, &all, || units(&dirs[1]) == 25);
    let st = status(&dirs[0]);
    let p = peer(&st, &ids[1]).unwrap();
    assert_eq!(p["link"], "relay", "{st:#}");
    assert!(p["punch"]["reason"].as_str().is_some_and(|r| r.contains("rounds")), "{st:#}");
    stores.stop();
}

/// One-time pads with the real binary: two servers get a hole-punched direct link, over which
/// each hands the other a pad; restarted with punching off they are joined by the relay only,
/// and a unit with a sensitive part (a marker) crosses it under the pad: it arrives intact,
/// the status counters show the pad was used (not withheld), and the marker is in none of the
/// relay's files, frames or memory.
#[test]
fn a_sensitive_part_crosses_the_relay_under_a_pad() {
    let Some(net) = Internet::build("rpads") else { return };
    let deadline = Instant::now() + BUDGET * 2;
    let mut stores = Stores::start(&net, "1,2,3,9", &[], &[]);
    let (dirs, ids) = (stores.dirs.clone(), stores.ids.clone());
    let pads = |i: usize, j: usize| -> Value {
        peer(&status(&dirs[i]), &ids[j]).map(|p| p["pads"].clone()).unwrap_or(Value::Null)
    };
    let handed_over = |i: usize, j: usize| {
        let p = pads(i, j);
        p["out_left"].as_u64() == Some(1 << 20) && p["in_bytes"].as_u64() == Some(1 << 20)
    };
    wait_for("a direct link and a pad each way", deadline, &stores.all(), || {
        handed_over(0, 1) && handed_over(1, 0)
    });
    stores.stop();
    // From here the relay alone joins them (the pads are on disk).
    for (i, dir) in dirs.iter().enumerate() {
        edit_config(dir, &RELAY_ONLY, "");
        stores.nodes[i] =
            start(&net.lab, &format!("server{}", i + 1), dir, &["--role", "store-server"]);
    }
    let relay_up = |i: usize, j: usize| {
        peer(&status(&dirs[i]), &ids[j]).is_some_and(|p| p["state"] == "up" && p["link"] == "relay")
    };
    wait_for("the relay link both ways", deadline, &stores.all(), || {
        relay_up(0, 1) && relay_up(1, 0)
    });
    let capture = capture(&net.lab, "relay");
    let marker = format!("SECRET-{}-4be9d0", std::process::id());
    let secret_file = dirs[0].join("secret.txt");
    std::fs::write(&secret_file, &marker).unwrap();
    let out = common::run_with_input(
        &["submit", "--data-dir", s(&dirs[0]), "--sensitive-file", s(&secret_file)],
        b"{\"password_changed\":\"staff 17\"}",
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    std::fs::remove_file(&secret_file).unwrap();
    submit(&dirs[0], 5, "after-the-secret");
    wait_for("the units at server2", deadline, &stores.all(), || units(&dirs[1]) == 6);
    let frames = capture.stop();
    let memory = process_memory(stores.relay.id());

    let delivered = subscribed(&dirs[1], 6);
    assert_eq!(delivered[0]["sensitive"], marker.as_str(), "{:?}", delivered[0]);
    assert!(delivered[1..].iter().all(|u| u.get("sensitive").is_none()), "{delivered:?}");
    let sender = status(&dirs[0]);
    let receiver = status(&dirs[1]);
    let counters = |st: &Value| st["node"]["counters"]["pads"].clone();
    assert!(relay_up(0, 1), "still on the relay: {sender:#}");
    assert_eq!(counters(&sender)["padded_sent"], 1, "{sender:#}");
    assert_eq!(counters(&sender)["units_withheld"], 0, "{sender:#}");
    assert_eq!(counters(&receiver)["padded_received"], 1, "{receiver:#}");
    assert_eq!(counters(&receiver)["padded_refused"], 0, "{receiver:#}");
    let left = pads(0, 1)["out_left"].as_u64().unwrap();
    assert!(left < 1 << 20, "the pad was used: {left}");

    assert!(frames.len() > 1_000 && contains(&frames, &[10, 77, 70, 1]), "capture is empty");
    let marker = marker.as_bytes();
    for (path, bytes) in files_under(&stores.relay_dir) {
        assert!(!contains(&bytes, marker), "the secret is in the relay's {}", path.display());
    }
    assert!(!contains(&frames, marker), "the secret crossed the relay's interface in clear");
    assert!(!contains(&memory, marker), "the secret is in the relay's memory");
    stores.stop();
}
