//! Who may peer, and what a node does with traffic it must refuse: the real binary in network
//! namespaces (a `netsim::netns` lab per test, removed also on failure; nothing leaves it).
//! Needs root, `ip` and `nft`; without them each test says why and passes.
//!
//! - outsiders on the bridge (a node of another RmSystem, two nodes of our RmSystem with a
//!   wrong key) get nothing from the members and give them nothing; the members count them;
//! - garbage, truncated, tampered and replayed datagrams at the discovery and environment
//!   groups, and junk and half handshakes at the link port, are refused and counted while two
//!   members keep converging; the members' own multicast (an IDQY, a unit) leaves with IP TTL
//!   1, so it ends at the first router;
//! - two store LANs and head office: a unit of a lane in store 2 reaches head office (reachable
//!   only from store 1's server) over two configured links, becomes safe at the lane, and
//!   reaches the lane of store 1.
//!
//! - a wrong-key node that tries to link is refused in the handshake, and both ends count it
//!   (`non_member_link`, `links_refused`).

#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{lab_or_skip, lab_stop as stop, lab_wait_for as wait_for, s, submit_sales as submit};
use netsim::netns::{Lab, LabChild};
use serde_json::Value;

/// Where every node accepts links in these tests.
const LINK_PORT: u16 = 7070;

/// Logs: info, plus the link layer's debug lines (refused handshakes are only logged there).
const LOG: &str = "meshnode=info,meshnode::net=debug";

/// A copy of join file `join` whose system key has every hex digit changed: the same RmSystem,
/// environment and install id, another key (what a damaged or forged join file gives).
fn wrong_key_join_file(join: &Path, out: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let text = std::fs::read_to_string(join).unwrap();
    let mut changed = 0;
    let forged: String = text
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some(("system_key", value)) => {
                changed += 1;
                let flipped: String = value
                    .chars()
                    .map(|c| match c.to_digit(16) {
                        Some(d) => std::char::from_digit(d ^ 0xf, 16).unwrap(),
                        None => c,
                    })
                    .collect();
                format!("system_key = {flipped}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert_eq!(changed, 1, "one system_key line in the join file:\n{text}");
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).unwrap();
    f.write_all(forged.as_bytes()).unwrap();
}

fn add_peer(dir: &Path, addr: SocketAddr, role: &str) {
    let path = dir.join("meshnode.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[[peer]]\naddress = \"{addr}\"\npriority = 0\nrole = \"{role}\"\n"));
    std::fs::write(&path, text).unwrap();
}

/// Starts `meshnode run` in `node` with links on [`LINK_PORT`] and `extra` arguments.
fn start(lab: &Lab, node: &str, dir: &Path, extra: &[&str]) -> LabChild {
    let listen = format!("0.0.0.0:{LINK_PORT}");
    let mut c = Command::new(common::bin());
    c.args(["run", "--data-dir", s(dir), "--listen", &listen]).args(extra).env("MESHNODE_LOG", LOG);
    lab.spawn(node, c).expect("spawn meshnode in the lab")
}

use common::{dbid, status, units_total as units};

/// The running node's peers.
fn peers(st: &Value) -> Vec<Value> {
    st["node"]["peers"].as_array().cloned().unwrap_or_default()
}

fn up_peers(st: &Value) -> Vec<String> {
    peers(st)
        .iter()
        .filter(|p| p["state"] == "up")
        .filter_map(|p| p["dbid"].as_str().map(str::to_string))
        .collect()
}

fn counter(st: &Value, name: &str) -> u64 {
    st["node"]["counters"][name].as_u64().unwrap_or(0)
}

fn rejects(st: &Value, reason: &str) -> u64 {
    st["node"]["counters"]["rejects"][reason].as_u64().unwrap_or(0)
}

fn rejects_total(st: &Value) -> u64 {
    st["node"]["counters"]["rejects"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// How long one test may wait for its nodes in all (they need a few seconds).
const BUDGET: Duration = Duration::from_secs(60);

fn assert_running(nodes: &[&LabChild]) {
    for n in nodes {
        assert!(
            n.try_wait().unwrap().is_none(),
            "{} exited; log:\n{}",
            n.node(),
            n.log().unwrap_or_default()
        );
    }
}

/// `addr:port` as a socket address.
fn at(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, port))
}

/// A group's address from status (`"239.192.6.x:7083"`).
fn group(st: &Value, key: &str) -> SocketAddrV4 {
    st["node"][key].as_str().and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("{key} in {st}"))
}

#[test]
fn outsiders_on_the_bridge_get_nothing_and_are_counted() {
    let Some(mut lab) = lab_or_skip("poutsider") else { return };
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    // System A: two members. Another RmSystem: one node. Our RmSystem with a wrong key: two
    // nodes that share it (so they peer with each other and multicast on A's unit group).
    let (members, join) = common::new_system(root.path(), "1,2,3,4", &["m0", "m1"]);
    let (foreign, _) = common::new_system(root.path(), "9,8,7,6", &["f0"]);
    let forged = root.path().join("forged.join");
    wrong_key_join_file(&join, &forged);
    let wrong: Vec<PathBuf> = ["w0", "w1"]
        .iter()
        .map(|n| common::init(root.path(), n, &["--join", s(&forged)]))
        .collect();
    let st = status(&wrong[0]);
    assert_eq!(st["rmsystem"], status(&members[0])["rmsystem"], "same RmSystem, another key");

    lab.segment("lan").unwrap();
    let names = ["m0", "m1", "f0", "w0", "w1"];
    for (i, name) in names.iter().enumerate() {
        lab.node(name, &[("lan", &format!("10.77.41.{}/24", 10 + i))]).unwrap();
    }
    let m0_addr = lab.addr("m0", "lan").unwrap();
    // The wrong-key node also tries a direct link to m0 (it was told where the server is).
    add_peer(&wrong[0], at(m0_addr, LINK_PORT), "store-server");

    submit(&members[0], 40, "m0");
    submit(&members[1], 40, "m1");
    submit(&foreign[0], 25, "f0");
    submit(&wrong[0], 15, "w0");
    submit(&wrong[1], 15, "w1");
    let all_dirs: Vec<PathBuf> = members.iter().chain(&foreign).chain(&wrong).cloned().collect();
    let dirs: Vec<&Path> = all_dirs.iter().map(PathBuf::as_path).collect();
    let nodes: Vec<LabChild> =
        names.iter().zip(&dirs).map(|(n, d)| start(&lab, n, d, &[])).collect();
    let all: Vec<(&LabChild, &Path)> = nodes.iter().zip(dirs.iter().copied()).collect();
    let ids: Vec<String> = dirs.iter().map(|d| dbid(d)).collect();

    wait_for("the members to link and converge on 80 units", deadline, &all, || {
        (0..2).all(|i| {
            let st = status(dirs[i]);
            st["units_total"] == 80 && up_peers(&st) == vec![ids[1 - i].clone()]
        })
    });
    wait_for("the wrong-key pair to link with each other", deadline, &all, || {
        (3..5).all(|i| up_peers(&status(dirs[i])) == vec![ids[7 - i].clone()])
    });
    // Units submitted while running are multicast on the unit group of the RmSystem: the
    // members' reach the wrong-key pair, the pair's reach the members; neither opens them.
    submit(&members[0], 10, "m0-live");
    submit(&members[1], 10, "m1-live");
    submit(&wrong[0], 10, "w0-live");
    submit(&foreign[0], 5, "f0-live");
    wait_for(
        "the members to hold 100, the pair 40, and the refusals counted",
        deadline,
        &all,
        || {
            // The members' discovery reaches the pair as bad tags; waited for, not assumed
            // (a wrong-key node that started after a member's announcement hears the next).
            let wrong_ok = (3..5).all(|i| {
                let st = status(dirs[i]);
                st["units_total"] == 40
                    && rejects(&st, "decrypt_failure") > 0
                    && rejects(&st, "bad_tag") > 0
            });
            wrong_ok
                && (0..2).all(|i| {
                    let st = status(dirs[i]);
                    st["units_total"] == 100
                        && rejects(&st, "foreign_system") > 0
                        && counter(&st, "foreign_nodes_heard") > 0
                        && rejects(&st, "bad_tag") > 0
                        && rejects(&st, "decrypt_failure") > 0
                })
        },
    );
    // m0 refused the wrong-key node's link in the handshake, and counted it.
    wait_for("m0 to refuse w0's link as a non-member", deadline, &all, || {
        rejects(&status(dirs[0]), "non_member_link") > 0
    });
    assert_running(&nodes.iter().collect::<Vec<_>>());

    // Nothing crossed, either way, however long the outsiders were there.
    for i in 0..2 {
        let st = status(dirs[i]);
        assert_eq!(st["units_total"], 100, "{}: only members' units", names[i]);
        let seen: Vec<String> =
            peers(&st).iter().filter_map(|p| p["dbid"].as_str().map(str::to_string)).collect();
        assert_eq!(
            seen,
            vec![ids[1 - i].clone()],
            "{}: the other member is its only peer",
            names[i]
        );
    }
    assert_eq!(units(dirs[2]), 30, "the foreign node holds only its own units");
    let st = status(dirs[2]);
    assert!(peers(&st).is_empty(), "the foreign node peers with no one: {st}");
    assert!(rejects(&st, "foreign_system") > 0, "the foreign node counts us as foreign: {st}");
    for i in 3..5 {
        let st = status(dirs[i]);
        assert_eq!(st["units_total"], 40, "{}: only the pair's units", names[i]);
        assert!(
            peers(&st).iter().all(|p| p["dbid"] == ids[7 - i].as_str()),
            "{}: peers only with the other wrong-key node: {st}",
            names[i]
        );
        assert!(rejects(&st, "bad_tag") > 0, "{}: the members' discovery is not ours", names[i]);
    }
    for n in &nodes {
        stop(n);
    }
    // Unit by unit, from the stores: every node holds units of its own system's origins only.
    let origins = |d: &Path| -> std::collections::BTreeSet<String> {
        common::units(d).iter().filter_map(|u| u["origin"].as_str().map(str::to_string)).collect()
    };
    let expect = |of: &[usize]| of.iter().map(|&j| ids[j].clone()).collect();
    for (i, of) in [(0, &[0, 1][..]), (1, &[0, 1]), (2, &[2]), (3, &[3, 4]), (4, &[3, 4])] {
        assert_eq!(origins(dirs[i]), expect(of), "{}: origins of its units", names[i]);
    }
}

/// A socket in the lab's node `node` that receives `group` on that node's interface `segment`.
fn group_listener(lab: &Lab, node: &str, segment: &str, group: SocketAddrV4) -> UdpSocket {
    let iface = lab.addr(node, segment).unwrap();
    lab.enter(node, move || {
        let socket = UdpSocket::bind(group).unwrap();
        socket.join_multicast_v4(group.ip(), &iface).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // Each datagram's IP TTL comes with it (see `recv_with_ttl`).
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_RECVTTL,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "IP_RECVTTL: {}", std::io::Error::last_os_error());
        socket
    })
    .unwrap()
}

/// One datagram, its sender, and the IP TTL it arrived with (the socket has IP_RECVTTL on;
/// `None` if the kernel gave none, or cut the control messages short).
fn recv_with_ttl(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Ipv4Addr, Option<u8>)> {
    // SAFETY: recvmsg on a socket we own into buffers that outlive the call; the control
    // messages are walked with the libc macros over the length the kernel wrote.
    unsafe {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(std::os::fd::AsRawFd::as_raw_fd(socket), &mut msg, 0);
        if n < 0 {
            return None;
        }
        let mut ttl = None;
        let mut cmsg = if msg.msg_flags & libc::MSG_CTRUNC == 0 {
            libc::CMSG_FIRSTHDR(&msg)
        } else {
            std::ptr::null_mut()
        };
        let int_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP
                && (*cmsg).cmsg_type == libc::IP_TTL
                && (*cmsg).cmsg_len as usize >= int_len
            {
                let value = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                ttl = u8::try_from(value).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let sender = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
        Some((n as usize, sender, ttl))
    }
}

/// The first datagram of packet type `tag` from `sender` that `socket` receives within `secs`
/// seconds. It must have left its sender with IP TTL 1 (it arrives unrouted, so with 1 still):
/// multicast ends at the first router.
fn capture(socket: &UdpSocket, tag: &[u8; 4], sender: Ipv4Addr, secs: u64) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        if let Some((n, from, ttl)) = recv_with_ttl(socket, &mut buf) {
            if buf[..n].starts_with(tag) && from == sender {
                let tag = String::from_utf8_lossy(tag);
                assert_eq!(ttl, Some(1), "{tag} from {sender} left with TTL {ttl:?}");
                return buf[..n].to_vec();
            }
        }
    }
    panic!("no {} datagram from {sender} seen in {secs} s", String::from_utf8_lossy(tag));
}

/// Flips one byte of a copy of `bytes`.
fn tampered(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x5a;
    out
}

#[test]
fn garbage_at_the_ports_is_refused_and_counted_and_nothing_is_lost() {
    let Some(mut lab) = lab_or_skip("pgarbage") else { return };
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    let (dirs, _) = common::new_system(root.path(), "1,2,3,4", &["m0", "m1"]);
    lab.segment("lan").unwrap();
    lab.node("m0", &[("lan", "10.77.42.10/24")]).unwrap();
    lab.node("m1", &[("lan", "10.77.42.11/24")]).unwrap();
    // The attacker: a machine on the same LAN running no meshnode, only the test's sockets.
    lab.node("x", &[("lan", "10.77.42.66/24")]).unwrap();
    submit(&dirs[0], 30, "m0-before");
    submit(&dirs[1], 30, "m1-before");

    let m0 = start(&lab, "m0", &dirs[0], &[]);
    let mut all: Vec<(&LabChild, &Path)> = vec![(&m0, &dirs[0])];
    wait_for("m0 to run", deadline, &all, || status(&dirs[0])["running"] == true);
    let st = status(&dirs[0]);
    let (discovery, env) = (group(&st, "discovery_group"), group(&st, "env_group"));
    let discovery_rx = group_listener(&lab, "x", "lan", discovery);
    let env_rx = group_listener(&lab, "x", "lan", env);
    // m1 announces itself (IDQY) as it starts: the test captures one on the way.
    let m1 = start(&lab, "m1", &dirs[1], &[]);
    all.push((&m1, &dirs[1]));
    let idqy = capture(&discovery_rx, b"IDQY", lab.addr("m1", "lan").unwrap(), 20);
    wait_for("the members to link and converge on 60", deadline, &all, || {
        dirs.iter().all(|d| {
            let st = status(d);
            st["units_total"] == 60 && up_peers(&st).len() == 1
        })
    });
    // A unit submitted now is multicast, sealed, on the unit group: capture one.
    submit(&dirs[0], 5, "m0-live");
    let tubt = capture(&env_rx, b"TUBT", lab.addr("m0", "lan").unwrap(), 20);
    wait_for("m1 to hold the live units", deadline, &all, || units(&dirs[1]) == 65);
    let before: Vec<Value> = dirs.iter().map(|d| status(d)).collect();

    // Datagrams at both groups, each received by both members.
    let pattern: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    let to_discovery: Vec<Vec<u8>> = vec![
        b"hello, meshnode".to_vec(),
        Vec::new(),
        pattern.clone(),
        idqy[..idqy.len() / 2].to_vec(),
        tampered(&idqy, idqy.len() - 1),
        idqy.clone(),
    ];
    let to_env: Vec<Vec<u8>> =
        vec![pattern.clone(), tubt[..30].to_vec(), tampered(&tubt, tubt.len() - 5), tubt.clone()];
    let m0_addr = lab.addr("m0", "lan").unwrap();
    let sent = lab
        .enter("x", || {
            let tx = UdpSocket::bind("10.77.42.66:0").unwrap();
            tx.set_multicast_ttl_v4(1).unwrap();
            for d in &to_discovery {
                tx.send_to(d, discovery).unwrap();
            }
            for d in &to_env {
                tx.send_to(d, env).unwrap();
            }
            // The link port over UDP (QUIC's, once links use it) gets junk and a replay.
            tx.send_to(&pattern, at(m0_addr, LINK_PORT)).unwrap();
            tx.send_to(&tubt, at(m0_addr, LINK_PORT)).unwrap();
            to_discovery.len() + to_env.len()
        })
        .unwrap();
    // The link port over TCP, where a TCP link listens: junk, an immediate close, half a
    // handshake, a reflected hello.
    lab.enter("x", || {
        let link = at(m0_addr, LINK_PORT);
        let connect = || {
            let c = TcpStream::connect_timeout(&link, Duration::from_secs(5)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        };
        let mut c = connect();
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        drop(c);
        // The node speaks first: its hello frame (8-byte header, then the hello).
        let read_hello = |c: &mut TcpStream| {
            let mut frame = vec![0u8; 8];
            c.read_exact(&mut frame).unwrap();
            let len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
            assert!(len < 4096, "a hello, not {len} bytes");
            frame.resize(8 + len, 0);
            c.read_exact(&mut frame[8..]).unwrap();
            frame
        };
        let mut c = connect();
        let hello = read_hello(&mut c);
        c.write_all(&hello[..hello.len() / 2]).unwrap();
        drop(c);
        let mut c = connect();
        let hello = read_hello(&mut c);
        c.write_all(&hello).unwrap();
        // Then whatever the node does, the test goes away without a proof.
        let _ = c.read(&mut [0u8; 256]);
    })
    .unwrap();

    // Each member refuses every datagram but the replay of its own (m1's IDQY at m1, m0's TUBT
    // at m0): a node never hears its own multicast (dropped by source address), so its replay
    // window has not seen it, and it is harmless there (its own announcement, units it holds).
    let refusable = sent - 1;
    // Each TCP attempt is refused (the probe's close, junk, half a handshake, a reflected
    // hello): 3 of them are a peer fault, counted.
    let links_refused = || {
        let counted = rejects_total(&status(&dirs[0]))
            .saturating_sub(rejects_total(&before[0]) + refusable as u64);
        counted >= 3
    };
    wait_for(
        "both members to count every datagram and m0 to refuse the links",
        deadline,
        &all,
        || {
            links_refused()
                && dirs.iter().zip(&before).all(|(d, b)| {
                    let st = status(d);
                    let grew = |r: &str| rejects(&st, r) > rejects(b, r);
                    rejects_total(&st) >= rejects_total(b) + refusable as u64
                        && grew("replay")
                        && grew("truncated")
                        && grew("bad_tag")
                        && grew("decrypt_failure")
                })
        },
    );
    let after: Vec<Value> = dirs.iter().map(|d| status(d)).collect();
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        let delta = |r: &str| rejects(a, r) - rejects(b, r);
        eprintln!(
            "m{i}: replay +{} truncated +{} bad_tag +{} decrypt_failure +{} total +{} (sent {sent})",
            delta("replay"),
            delta("truncated"),
            delta("bad_tag"),
            delta("decrypt_failure"),
            rejects_total(a) - rejects_total(b)
        );
        // Each datagram is refused once, for its own reason, and no other traffic is refused at
        // m1; m0 also counts the links it refused.
        let refused = rejects_total(a) - rejects_total(b);
        if i == 0 {
            assert!(refused >= refusable as u64, "m0: {a}");
        } else {
            assert_eq!(refused, refusable as u64, "m1: {a}");
        }
        assert_eq!(delta("replay"), 1, "m{i}: the other member's replayed datagram: {a}");
        assert_eq!(a["units_total"], 65, "m{i}: nothing accepted from the garbage");
    }
    assert_running(&[&m0, &m1]);

    // Nothing lost: the same link carries what comes next, both ways.
    submit(&dirs[0], 20, "m0-after");
    submit(&dirs[1], 20, "m1-after");
    wait_for("both members to hold 105 units", deadline, &all, || {
        dirs.iter().all(|d| {
            let st = status(d);
            st["units_total"] == 105 && up_peers(&st).len() == 1
        })
    });
    for d in &dirs {
        assert_eq!(counter(&status(d), "links_silent"), 0, "the members' link never went silent");
    }
    stop(&m0);
    stop(&m1);
}

#[test]
fn a_lane_of_store_2_reaches_head_office_through_store_1_and_becomes_safe() {
    let Some(mut lab) = lab_or_skip("pstores") else { return };
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    let names = ["server1", "lane1", "server2", "lane2", "ho"];
    let (dirs, _) = common::new_system(root.path(), "1,2,3,4", &names);
    // store1 and store2 are the store LANs; wan joins the two store servers; head office sits
    // on hq, which only server1 reaches. Multicast never crosses a segment, and the servers
    // discover only on their store LAN, so every link between segments is a configured one.
    for seg in ["store1", "store2", "wan", "hq"] {
        lab.segment(seg).unwrap();
    }
    lab.node(
        "server1",
        &[("store1", "10.77.51.1/24"), ("wan", "10.77.50.1/24"), ("hq", "10.77.52.1/24")],
    )
    .unwrap();
    lab.node("lane1", &[("store1", "10.77.51.10/24")]).unwrap();
    lab.node("server2", &[("store2", "10.77.53.1/24"), ("wan", "10.77.50.2/24")]).unwrap();
    lab.node("lane2", &[("store2", "10.77.53.10/24")]).unwrap();
    lab.node("ho", &[("hq", "10.77.52.10/24")]).unwrap();
    add_peer(&dirs[0], at(lab.addr("ho", "hq").unwrap(), LINK_PORT), "main-server");
    add_peer(&dirs[2], at(lab.addr("server1", "wan").unwrap(), LINK_PORT), "store-server");

    submit(&dirs[3], 30, "lane2-before");
    submit(&dirs[1], 10, "lane1-before");
    let server_if = |node: &str, seg: &str| lab.addr(node, seg).unwrap().to_string();
    let (s1_if, s2_if) = (server_if("server1", "store1"), server_if("server2", "store2"));
    let nodes = [
        start(&lab, "server1", &dirs[0], &["--role", "store-server", "--discovery-if", &s1_if]),
        start(&lab, "lane1", &dirs[1], &[]),
        start(&lab, "server2", &dirs[2], &["--role", "store-server", "--discovery-if", &s2_if]),
        start(&lab, "lane2", &dirs[3], &[]),
    ];
    let ids: Vec<String> = dirs.iter().map(|d| dbid(d)).collect();
    let up = |i: usize, j: usize| up_peers(&status(&dirs[i])).contains(&ids[j]);
    {
        let all: Vec<(&LabChild, &Path)> =
            nodes.iter().zip(dirs.iter().map(PathBuf::as_path)).collect();
        // Without head office nothing is safe, however far the units got.
        wait_for("store 2's units at server1, not safe", deadline, &all, || {
            up(0, 1)
                && up(0, 2)
                && up(2, 3)
                && units(&dirs[0]) == 40
                && status(&dirs[3])["node"]["unsafe_backlog"] == 30
        });
    }
    let nodes: Vec<LabChild> = nodes
        .into_iter()
        .chain([start(&lab, "ho", &dirs[4], &["--role", "main-server"])])
        .collect();
    let all: Vec<(&LabChild, &Path)> =
        nodes.iter().zip(dirs.iter().map(PathBuf::as_path)).collect();
    wait_for("server1 to link head office", deadline, &all, || up(0, 4));
    submit(&dirs[3], 10, "lane2-live");
    wait_for("lane2's 40 units at ho and lane1, and safe at lane2", deadline, &all, || {
        let by_origin_at = |i: usize| units(&dirs[i]) >= 40;
        let st = status(&dirs[3]);
        by_origin_at(4)
            && units(&dirs[1]) >= 50
            && st["node"]["unsafe_backlog"] == 0
            && st["units_total"] == 50
    });
    wait_for("everyone to hold all 50 units and lane1's to be safe too", deadline, &all, || {
        dirs.iter().all(|d| units(d) == 50) && status(&dirs[1])["node"]["unsafe_backlog"] == 0
    });
    // Head office only ever heard of server1 (it is on no other segment): the units of store 2
    // came over two configured links, hop by hop.
    let ho = status(&dirs[4]);
    let ho_peers: Vec<String> =
        peers(&ho).iter().filter_map(|p| p["dbid"].as_str().map(str::to_string)).collect();
    assert_eq!(ho_peers, vec![ids[0].clone()], "head office peers only with server1: {ho}");
    let s2 = status(&dirs[2]);
    let s1_at_s2 = peers(&s2).into_iter().find(|p| p["dbid"] == ids[0].as_str()).unwrap();
    assert_eq!(s1_at_s2["lan"], false, "server1 is not on store2's LAN: {s2}");
    assert_eq!(s1_at_s2["configured_priority"], 0, "server1 is server2's configured peer");
    let lane2_peers: Vec<String> = peers(&status(&dirs[3]))
        .iter()
        .filter_map(|p| p["dbid"].as_str().map(str::to_string))
        .collect();
    assert!(
        !lane2_peers.contains(&ids[0]) && !lane2_peers.contains(&ids[4]),
        "lane2 never met server1 or head office: {lane2_peers:?}"
    );
    for n in &nodes {
        stop(n);
    }
}

/// A wrong-key node configured to link to a member: both ends refuse the link in the
/// handshake and count it.
#[test]
fn a_wrong_key_link_is_counted_as_non_member() {
    let Some(mut lab) = lab_or_skip("prefused") else { return };
    let deadline = Instant::now() + BUDGET;
    let root = tempfile::tempdir().unwrap();
    let (members, join) = common::new_system(root.path(), "1,2,3,4", &["m0"]);
    let forged = root.path().join("forged.join");
    wrong_key_join_file(&join, &forged);
    let wrong = common::init(root.path(), "w0", &["--join", s(&forged)]);
    lab.segment("lan").unwrap();
    lab.node("m0", &[("lan", "10.77.43.10/24")]).unwrap();
    lab.node("w0", &[("lan", "10.77.43.20/24")]).unwrap();
    add_peer(&wrong, at(lab.addr("m0", "lan").unwrap(), LINK_PORT), "store-server");
    let m0 = start(&lab, "m0", &members[0], &[]);
    let w0 = start(&lab, "w0", &wrong, &[]);
    let all = [(&m0, members[0].as_path()), (&w0, wrong.as_path())];
    wait_for("both ends to count the refused link", deadline, &all, || {
        [&members[0], &wrong].iter().all(|d| {
            let st = status(d);
            rejects(&st, "non_member_link") > 0 && counter(&st, "links_refused") > 0
        })
    });
    assert!(peers(&status(&members[0])).is_empty(), "m0 never peered with w0");
    stop(&m0);
    stop(&w0);
}
