//! `netsim::netns` labs on the real kernel: unicast and multicast across a segment, the UDP
//! fault and its heal, a routed link that multicast does not cross, a NAT router and a
//! partition, and cleanup on drop and on panic. Each test has its own prefix so they run in
//! parallel; without root they print why and pass.
//!
//! No test waits on silence: a datagram that must not arrive is proved dropped by the lab's
//! nftables counter, or by a later datagram on the same path arriving first.

#![cfg(target_os = "linux")]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use netsim::netns::{Lab, NetnsError};

/// meshnode's discovery group.
const GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 6, 83);
const PORT: u16 = 41_083;
/// A deadline for datagrams that must arrive; generous because the machine is shared.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn unicast_and_multicast_cross_a_segment() {
    let Some(mut lab) = lab_or_skip("nlu") else { return };
    lab.segment("lan").unwrap();
    lab.node("a", &[("lan", "10.77.1.10/24")]).unwrap();
    lab.node("b", &[("lan", "10.77.1.20/24")]).unwrap();
    let (a_addr, b_addr) = (lab.addr("a", "lan").unwrap(), lab.addr("b", "lan").unwrap());

    let a = open(&lab, "a", a_addr);
    let b = open(&lab, "b", b_addr);
    a.send_to(b"unicast", (b_addr, PORT)).unwrap();
    let (text, from) = receive(&b).expect("unicast a -> b");
    assert_eq!((text.as_str(), from.ip()), ("unicast", a_addr.into()));

    a.send_to(b"multicast", (GROUP, PORT)).unwrap();
    let (text, from) = receive(&b).expect("multicast a -> b");
    assert_eq!((text.as_str(), from.ip()), ("multicast", a_addr.into()));

    // Commands run in the node: they see its address and not the other node's.
    let output = lab.exec("b", &["ip", "-o", "-4", "addr", "show"]).unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&b_addr.to_string()) && !text.contains(&a_addr.to_string()), "{text}");
}

#[test]
fn dropped_unicast_spares_multicast_until_healed() {
    let Some(mut lab) = lab_or_skip("nld") else { return };
    lab.segment("lan").unwrap();
    lab.node("a", &[("lan", "10.77.2.10/24")]).unwrap();
    lab.node("b", &[("lan", "10.77.2.20/24")]).unwrap();
    let (a_addr, b_addr) = (lab.addr("a", "lan").unwrap(), lab.addr("b", "lan").unwrap());
    let a = open(&lab, "a", a_addr);
    let b = open(&lab, "b", b_addr);

    lab.drop_udp_unicast("b").unwrap();
    assert_eq!(lab.dropped("b").unwrap(), 0);
    a.send_to(b"dropped in", (b_addr, PORT)).unwrap();
    wait_for("b's input to drop a's unicast", || lab.dropped("b").unwrap() >= 1);
    // Dropped on output, the send itself fails with EPERM: drivers must not treat it as fatal.
    let error = b.send_to(b"dropped out", (a_addr, PORT)).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
    wait_for("b's output to drop its unicast", || lab.dropped("b").unwrap() >= 2);

    // The unicast datagrams are gone (counted), so the first thing b receives is multicast.
    a.send_to(b"multicast", (GROUP, PORT)).unwrap();
    assert_eq!(receive(&b).expect("multicast reaches b").0, "multicast");

    lab.heal("b").unwrap();
    assert_eq!(lab.dropped("b").unwrap(), 0);
    a.send_to(b"healed", (b_addr, PORT)).unwrap();
    assert_eq!(receive(&b).expect("unicast after heal").0, "healed");
    b.send_to(b"healed back", (a_addr, PORT)).unwrap();
    assert_eq!(receive(&a).expect("unicast from b after heal").0, "healed back");
}

#[test]
fn router_joins_two_segments_for_unicast_only() {
    let Some(mut lab) = lab_or_skip("nlr") else { return };
    lab.segment("store1").unwrap();
    lab.segment("store2").unwrap();
    lab.node("router", &[("store1", "10.77.31.1/24"), ("store2", "10.77.32.1/24")]).unwrap();
    lab.node("a", &[("store1", "10.77.31.10/24")]).unwrap();
    lab.node("b", &[("store2", "10.77.32.10/24")]).unwrap();
    lab.enable_forwarding("router").unwrap();
    lab.route("a", "10.77.32.0/24", lab.addr("router", "store1").unwrap()).unwrap();
    lab.route("b", "default", lab.addr("router", "store2").unwrap()).unwrap();
    let (a_addr, b_addr) = (lab.addr("a", "store1").unwrap(), lab.addr("b", "store2").unwrap());
    let router_addr = lab.addr("router", "store1").unwrap();
    let a = open(&lab, "a", a_addr);
    let b = open(&lab, "b", b_addr);
    let router = open(&lab, "router", router_addr);

    a.send_to(b"a to b", (b_addr, PORT)).unwrap();
    assert_eq!(receive(&b).expect("unicast a -> b through the router").0, "a to b");
    b.send_to(b"b to a", (a_addr, PORT)).unwrap();
    assert_eq!(receive(&a).expect("unicast b -> a through the router").0, "b to a");

    // Multicast reaches the router's store1 side whatever its TTL, and is not forwarded.
    for ttl in [1, 16] {
        a.set_multicast_ttl_v4(ttl).unwrap();
        a.send_to(format!("ttl {ttl}").as_bytes(), (GROUP, PORT)).unwrap();
        assert_eq!(receive(&router).expect("multicast on store1").0, format!("ttl {ttl}"));
    }
    // Had the router forwarded them, they would be ahead of this datagram on the same path.
    a.send_to(b"after multicast", (b_addr, PORT)).unwrap();
    assert_eq!(receive(&b).expect("unicast marker").0, "after multicast");
    b.set_nonblocking(true).unwrap();
    let mut buffer = [0; 64];
    let error = b.recv_from(&mut buffer).expect_err("no multicast may cross the router");
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn nat_router_masquerades_and_partition_cuts_off() {
    let Some(mut lab) = lab_or_skip("nln") else { return };
    lab.segment("store").unwrap();
    lab.segment("wan").unwrap();
    lab.node("nat", &[("store", "10.77.7.1/24"), ("wan", "10.77.8.1/24")]).unwrap();
    lab.node("lane", &[("store", "10.77.7.10/24")]).unwrap();
    lab.node("hub", &[("wan", "10.77.8.10/24")]).unwrap();
    lab.masquerade("nat", "wan").unwrap();
    lab.route("lane", "default", lab.addr("nat", "store").unwrap()).unwrap();
    let (lane_addr, hub_addr) =
        (lab.addr("lane", "store").unwrap(), lab.addr("hub", "wan").unwrap());
    let lane = open(&lab, "lane", lane_addr);
    let hub = open(&lab, "hub", hub_addr);

    // The hub has no route to the store LAN: it sees and answers the router's WAN address.
    lane.send_to(b"out", (hub_addr, PORT)).unwrap();
    let (text, from) = receive(&hub).expect("datagram through the NAT");
    assert_eq!((text.as_str(), from.ip()), ("out", lab.addr("nat", "wan").unwrap().into()));
    hub.send_to(b"back", from).unwrap();
    assert_eq!(receive(&lane).expect("reply through the NAT").0, "back");

    // A partitioned router forwards nothing, and healing it keeps the NAT.
    lab.partition("nat").unwrap();
    lane.send_to(b"cut", (hub_addr, PORT)).unwrap();
    wait_for("the partition to drop the datagram", || lab.dropped("nat").unwrap() >= 1);
    lab.heal("nat").unwrap();
    lane.send_to(b"healed", (hub_addr, PORT)).unwrap();
    let (text, from) = receive(&hub).expect("datagram after heal");
    assert_eq!((text.as_str(), from.ip()), ("healed", lab.addr("nat", "wan").unwrap().into()));
}

#[test]
fn drop_deletes_namespaces_and_kills_children() {
    let prefix = "nlc";
    let Some(probe) = lab_or_skip(prefix) else { return };
    drop(probe);

    // A namespace a killed run left: its pid is gone, so the next lab deletes it.
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let leftover = format!("{prefix}-{}-0-stale", exited.id());
    run_ip(&["netns", "add", &leftover]);
    assert!(namespaces(prefix).contains(&leftover));

    let mut lab = Lab::new(prefix).unwrap();
    assert!(!namespaces(prefix).contains(&leftover), "leftover not deleted");
    lab.segment("lan").unwrap();
    lab.node("a", &[("lan", "10.77.4.10/24")]).unwrap();
    lab.node("b", &[("lan", "10.77.4.20/24")]).unwrap();
    assert_eq!(namespaces(prefix).len(), 3, "switch and two nodes");

    let mut command = Command::new("ip");
    command.args(["-o", "-4", "addr", "show"]);
    let once = lab.spawn("a", command).unwrap();
    assert!(once.wait_timeout(RECEIVE_TIMEOUT).unwrap().is_some_and(|status| status.success()));
    assert!(once.log().unwrap().contains("10.77.4.10/24"), "{}", once.log().unwrap());
    let mut command = Command::new("sleep");
    command.arg("600");
    let long = lab.spawn("b", command).unwrap();
    assert!(long.try_wait().unwrap().is_none());
    let (pid, log_path) = (long.id(), long.log_path().to_path_buf());

    drop(lab);
    assert_eq!(namespaces(prefix), Vec::<String>::new());
    assert!(long.try_wait().unwrap().is_some(), "child not killed");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child not reaped");
    assert!(!log_path.exists(), "logs of a passing lab are deleted");
}

#[test]
fn drop_during_panic_deletes_namespaces() {
    let prefix = "nlx";
    let Some(mut lab) = lab_or_skip(prefix) else { return };
    let result = panic::catch_unwind(AssertUnwindSafe(move || {
        lab.segment("lan").unwrap();
        lab.node("a", &[("lan", "10.77.5.10/24")]).unwrap();
        let mut command = Command::new("sleep");
        command.arg("600");
        lab.spawn("a", command).unwrap();
        assert_eq!(namespaces(prefix).len(), 2);
        panic!("deliberate panic: the lab must still clean up");
    }));
    assert!(result.is_err());
    assert_eq!(namespaces(prefix), Vec::<String>::new());
}

#[test]
fn errors_name_the_fix() {
    let Some(mut lab) = lab_or_skip("nle") else { return };
    lab.segment("lan").unwrap();
    lab.node("a", &[("lan", "10.77.6.10/24")]).unwrap();
    let error = lab.nft("a", "table inet lab { chain c { bogus } }\n").unwrap_err();
    let NetnsError::Command { ref command, ref stderr, fix, .. } = error else {
        panic!("{error}");
    };
    assert!(command.contains("nft -f -") && stderr.contains("syntax error"), "{error}");
    assert!(fix.contains("one statement per line"), "{error}");
    assert!(matches!(
        lab.segment("a-name-longer-than-15"),
        Err(NetnsError::InvalidName { kind: "segment", .. })
    ));
    assert!(matches!(
        lab.node("b", &[("lan", "10.77.6.300/24")]),
        Err(NetnsError::InvalidAddress { .. })
    ));
}

/// A lab, or `None` after printing why this machine cannot run one (not root, no `ip`/`nft`);
/// with `MESHNODE_REQUIRE_NETNS=1` (CI) that fails the test instead.
fn lab_or_skip(prefix: &str) -> Option<Lab> {
    let required = std::env::var("MESHNODE_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    match Lab::new(prefix) {
        Ok(lab) => Some(lab),
        Err(error) if error.is_unsupported() && !required => {
            eprintln!("skipping netns test ({prefix}): {error}");
            None
        }
        Err(error) => panic!("{error}"),
    }
}

/// A UDP socket in `node` on `PORT` of every address, in the discovery group on the node's
/// `addr`, sending multicast out of that interface (TTL 1, no loopback), with a receive
/// deadline.
fn open(lab: &Lab, node: &str, addr: Ipv4Addr) -> UdpSocket {
    lab.enter(node, || -> io::Result<UdpSocket> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT))?;
        socket.join_multicast_v4(&GROUP, &addr)?;
        set_multicast_if(&socket, addr)?;
        socket.set_multicast_ttl_v4(1)?;
        // Otherwise a sender's own group datagrams queue up ahead of what it waits for.
        socket.set_multicast_loop_v4(false)?;
        socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        Ok(socket)
    })
    .unwrap()
    .unwrap()
}

/// IP_MULTICAST_IF, which std does not offer.
fn set_multicast_if(socket: &UdpSocket, addr: Ipv4Addr) -> io::Result<()> {
    let value = libc::in_addr { s_addr: u32::from(addr).to_be() };
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&value as *const libc::in_addr).cast(),
            std::mem::size_of::<libc::in_addr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The next datagram, or `None` when none arrives before the socket's deadline.
fn receive(socket: &UdpSocket) -> Option<(String, SocketAddr)> {
    let mut buffer = [0; 1500];
    match socket.recv_from(&mut buffer) {
        Ok((len, from)) => Some((String::from_utf8_lossy(&buffer[..len]).into_owned(), from)),
        Err(error)
            if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
        {
            None
        }
        Err(error) => panic!("recv_from: {error}"),
    }
}

/// Polls `done` (1 ms doubling to 50 ms) until it holds; panics after `RECEIVE_TIMEOUT`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while !done() {
        assert!(start.elapsed() < RECEIVE_TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The namespaces whose names start with `prefix-`, from `ip netns list`.
fn namespaces(prefix: &str) -> Vec<String> {
    let output = run_ip(&["netns", "list"]);
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn run_ip(args: &[&str]) -> std::process::Output {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}
