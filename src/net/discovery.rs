//! LAN discovery sockets: the shared discovery group (seed: 239.192.6.83) where IDQY/IDRP
//! travel, and each environment's own group where units are multicast.
//!
//! - Groups: every system shares 239.192.6.83 for discovery; units of one RmSystem and
//!   environment go to `239.192.6.x` derived from both ([`env_group`]), never `.83`. Two
//!   systems whose groups collide only see each other's datagrams: those carry the sender's
//!   RmSystem and are sealed with its key, so the receiver drops and counts them (a little
//!   wasted bandwidth, nothing more).
//! - TTL 1: discovery ends at the first router, as a store LAN should.
//! - Interfaces: by default the machine's private IPv4 interfaces that are up and multicast
//!   capable ([`private_ipv4_interfaces`]); `--discovery-if ADDR` picks others, and
//!   `127.0.0.1` runs a whole mesh on loopback without root (the group is joined on loopback
//!   and `IP_MULTICAST_IF` points there, as ../shared/NETWORK-TESTING.md describes).
//! - Receivers bind the group's address and port with `SO_REUSEADDR` + `SO_REUSEPORT`, so
//!   several nodes on one machine (the demo, tests) share the port, and binding the group
//!   address (not 0.0.0.0) keeps another group's traffic on the same port out.
//! - Senders: one socket per interface, since `IP_MULTICAST_IF` is per socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::id::{Environment, RmSystem};

/// The shared discovery group (seed 002: "239.192.6.83").
pub const DISCOVERY_GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 6, 83);

/// Default port of the discovery and environment groups.
pub const DEFAULT_PORT: u16 = 7083;

/// The environment group of `system` in `env`: `239.192.6.x` with `x` in `1..=254` except 83,
/// from a hash of both (so live and test of one system, and different systems, usually differ;
/// a collision is harmless, see the module docs).
pub fn env_group(system: RmSystem, env: &Environment) -> Ipv4Addr {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"meshnode env group v1");
    hasher.update(&system.to_bytes());
    hasher.update(env.as_str().as_bytes());
    let hash = hasher.finalize();
    let bytes = hash.as_bytes();
    // 253 usable values: 1..=254 without 83.
    let n = u16::from_be_bytes([bytes[0], bytes[1]]) % 253;
    let x = 1 + n as u8;
    let x = if x >= 83 { x + 1 } else { x };
    Ipv4Addr::new(239, 192, 6, x)
}

/// Whether `addr` is a private (RFC 1918) address.
pub fn is_private(addr: Ipv4Addr) -> bool {
    addr.is_private()
}

/// The machine's IPv4 addresses on interfaces that are up, multicast capable, not loopback and
/// private: where a store LAN is. A public address is never chosen by default, so a machine on
/// the open internet does not announce itself there.
pub fn private_ipv4_interfaces() -> io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        let wanted = flags & libc::IFF_UP as u32 != 0
            && flags & libc::IFF_MULTICAST as u32 != 0
            && flags & libc::IFF_LOOPBACK as u32 == 0;
        if !wanted || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if is_private(addr) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A socket that receives `group` on every interface in `interfaces`.
pub fn group_receiver(group: SocketAddrV4, interfaces: &[Ipv4Addr]) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    grow_recv_buffer(&socket);
    socket.bind(&SocketAddr::V4(group).into())?;
    for interface in interfaces {
        socket.join_multicast_v4(group.ip(), interface)?;
    }
    // Our own datagrams come back on loopback; the core ignores announcements of its own dbid
    // and units it holds already.
    socket.set_multicast_loop_v4(true)?;
    Ok(socket.into())
}

/// Receive buffer asked for on the group sockets: a sender's burst of multicast units (8 KiB
/// datagrams) waits here while the node commits the previous burst, instead of being dropped
/// by the kernel and fetched again by anti-entropy.
pub const GROUP_RECV_BUFFER: usize = 4 << 20;

/// Asks for [`GROUP_RECV_BUFFER`]: forced where the process may (`CAP_NET_ADMIN`), else as
/// much as `net.core.rmem_max` allows.
fn grow_recv_buffer(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(GROUP_RECV_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its exact size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        let _ = socket.set_recv_buffer_size(GROUP_RECV_BUFFER);
    }
}

/// A socket that sends to groups out of `interface`, TTL 1, bound to an ephemeral port on
/// that interface (IDRP answers come back to it).
pub fn group_sender(interface: Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn env_groups_avoid_the_discovery_group_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for a in 0..200u32 {
            let system: RmSystem = format!("{a},1,2,3").parse().unwrap();
            for env in ["live", "test"] {
                let g = env_group(system, &env.parse().unwrap());
                assert_eq!(&g.octets()[..3], &[239, 192, 6]);
                assert!(g.octets()[3] != 83 && g.octets()[3] != 0 && g.octets()[3] != 255);
                seen.insert(g);
            }
        }
        assert!(seen.len() > 150, "groups spread over the range: {}", seen.len());
        let s: RmSystem = "77,123,89,201192".parse().unwrap();
        assert_ne!(env_group(s, &"live".parse().unwrap()), env_group(s, &"test".parse().unwrap()));
    }

    #[test]
    fn interfaces_are_private_and_not_loopback() {
        for addr in private_ipv4_interfaces().unwrap() {
            assert!(addr.is_private() && !addr.is_loopback(), "{addr}");
        }
    }

    /// Two receivers on one machine share the port on loopback and both hear one sender.
    #[test]
    fn loopback_multicast_reaches_every_receiver() {
        let lo = Ipv4Addr::LOCALHOST;
        // A port of our own so parallel test runs do not hear each other.
        let probe = UdpSocket::bind((lo, 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 192, 6, 201), port);
        let a = group_receiver(group, &[lo]).unwrap();
        let b = group_receiver(group, &[lo]).unwrap();
        let sender = group_sender(lo).unwrap();
        sender.send_to(b"IDQY hello", SocketAddr::V4(group)).unwrap();
        for r in [&a, &b] {
            r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = r.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"IDQY hello");
            assert_eq!(from.ip(), std::net::IpAddr::V4(lo));
        }
    }
}
