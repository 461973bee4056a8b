//! Network-namespace labs for tests of the real `meshnode` binary: segments (bridges), nodes
//! (namespaces), routes, nftables faults, processes and in-process sockets inside a node.
//!
//! ```text
//! let mut lab = Lab::new("ms7")?;                   // NotRoot / MissingTool: skip the test
//! lab.segment("store1")?;                           // a bridge: one LAN, multicast floods it
//! lab.node("lane1", &[("store1", "10.77.1.10/24")])?;
//! lab.node("server", &[("store1", "10.77.1.1/24")])?;
//! let server = lab.spawn("server", command)?;       // `ip netns exec`, log file, killed on drop
//! let socket = lab.enter("lane1", || UdpSocket::bind("10.77.1.10:0"))??;
//! lab.drop_udp_unicast("lane1")?;                   // discovery still flows, links do not
//! lab.heal("lane1")?;
//! drop(lab);                                        // kills children, deletes namespaces
//! ```
//!
//! # Layout
//!
//! - Every lab has a tag, `PREFIX-PID-N`, and every namespace it makes is `TAG-NODE`, plus
//!   `TAG-switch` for the bridges. Namespace names are the only names the lab puts in a global
//!   place, so they carry the pid: parallel tests never collide, and a later [`Lab::new`] with
//!   the same prefix recognises (dead pid) and deletes what a killed run left behind.
//! - A segment is a bridge in the switch namespace, never in the host's, so nothing a lab makes
//!   can touch the host's real interfaces. Multicast snooping is off: the bridge floods
//!   multicast like the unmanaged switch of a store.
//! - A node's interface on a segment is named after the segment (`store1`), which is why
//!   segment names have at most 15 characters. Interface names live inside the lab's own
//!   namespaces, so they need no prefix; the switch side of each veth is `p.N` with the node
//!   name as its alias (`ip -n TAG-switch link` shows who is plugged where).
//! - Each node gets lo up, its addresses, and a route 224.0.0.0/4 through each interface (the
//!   first one listed has the lowest metric), so multicast leaves through the LAN without a
//!   default route. IPv6 duplicate address detection is off in every node, so link-local
//!   addresses are usable at once instead of staying "tentative".
//!
//! # Faults
//!
//! The kernel of the build machines has no `tc netem`, so faults are nftables rules inside a
//! node's namespace: [`Lab::drop_udp_unicast`] and [`Lab::partition`] replace the node's
//! `inet lab` table, [`Lab::heal`] deletes it, and [`Lab::dropped`] counts what its drop rules
//! hit (so a test can prove a fault took effect instead of waiting for silence). NAT lives in
//! a separate `ip labnat` table that healing leaves alone.
//!
//! # Not here
//!
//! Delay, jitter and bandwidth limits (model them in the simulator), IPv6 addresses, multicast
//! routing between segments, and anything deterministic: this module runs real processes on
//! the wall clock. It needs Linux, root, `ip` (iproute2) and `nft` (nftables).

#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The multicast groups meshnode discovers on; [`Lab::drop_udp_unicast`] lets them through.
pub const DISCOVERY_GROUPS: &str = "239.192.6.0/24";

/// How long a new node's links may take to come up before [`Lab::node`] gives up.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `ip netns` keeps its namespaces (bind mounts of `/proc/PID/ns/net`).
const NETNS_DIR: &str = "/run/netns";

/// The chains of [`Lab::drop_udp_unicast`]; the accepted group is [`DISCOVERY_GROUPS`].
const DROP_UDP_UNICAST: &str = r#"  chain input {
    type filter hook input priority 0; policy accept;
    iifname "lo" accept
    ip daddr 239.192.6.0/24 accept
    meta l4proto udp counter drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    ip daddr 239.192.6.0/24 accept
    meta l4proto udp counter drop
  }
"#;

/// The chains of [`Lab::partition`]; explicit `counter drop` rules rather than a drop policy,
/// so [`Lab::dropped`] counts them.
const PARTITION: &str = r#"  chain input {
    type filter hook input priority 0; policy accept;
    iifname "lo" accept
    counter drop
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    counter drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    counter drop
  }
"#;

/// Why a lab could not be built or changed.
///
/// [`NetnsError::is_unsupported`] tells a test to skip (not root, a tool missing) rather than
/// fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// Namespaces, bridges and nftables need root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
    #[error("network namespaces need root (effective uid {euid}); run the tests as root")]
    NotRoot {
        /// The effective uid of this process.
        euid: u32,
    },
    /// A command-line tool the lab runs is not installed.
    #[error("{tool} not found: {fix}")]
    MissingTool {
        /// The missing program.
        tool: &'static str,
        /// How to install it.
        fix: &'static str,
    },
    /// A command exited with an error.
    #[error("`{command}` failed ({status}): {stderr}; fix: {fix}")]
    Command {
        /// The command line, with its standard input when it had one.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on standard error.
        stderr: String,
        /// The most likely fix for that error.
        fix: &'static str,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A prefix, segment or node name the lab cannot use.
    #[error("invalid {kind} name {name:?}: {rule}")]
    InvalidName {
        /// "prefix", "segment" or "node".
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// What a valid name looks like.
        rule: &'static str,
    },
    /// An address or route destination that is not IPv4 CIDR.
    #[error("invalid address {text:?}: expected IPv4 CIDR such as 10.77.1.10/24")]
    InvalidAddress {
        /// The rejected text.
        text: String,
    },
    /// A segment or node this lab does not have.
    #[error("no {kind} {name:?} in this lab")]
    Unknown {
        /// "segment" or "node".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A segment or node added twice, or a node put on one segment twice.
    #[error("{kind} {name:?} is already in this lab")]
    Duplicate {
        /// "segment", "node" or "link".
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A node asked about a segment it is not on.
    #[error("node {node:?} is not on segment {segment:?}")]
    NotOnSegment {
        /// The node.
        node: String,
        /// The segment (the interface name).
        segment: String,
    },
    /// A condition polled with a deadline never became true.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the lab polled.
        waited: Duration,
    },
}

impl NetnsError {
    /// Whether this machine cannot run labs at all (not root, a tool missing): tests print the
    /// error and skip instead of failing.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::NotRoot { .. } | Self::MissingTool { .. })
    }
}

/// A set of network namespaces (nodes) joined by bridges (segments), deleted on drop.
///
/// Building the topology takes `&mut self`; faults, processes and [`Lab::enter`] take `&self`,
/// so threads may share a built lab. `Drop` kills every child [`Lab::spawn`] started, then
/// deletes every namespace the lab made (which removes their veths; the switch namespace holds
/// the bridges), also while a test panics. Children's logs are kept when dropping during a
/// panic, and their directory is printed.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    ip: PathBuf,
    nft: PathBuf,
    switch: String,
    segments: BTreeSet<String>,
    nodes: Vec<Node>,
    /// Every namespace this lab created, in creation order.
    made: Vec<String>,
    next_port: u32,
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    next_child: AtomicU32,
    log_dir: PathBuf,
}

/// A process running in a node's namespace, started by [`Lab::spawn`].
///
/// The lab owns the process: it is killed and reaped when the lab drops, whether or not this
/// handle still exists. Its standard output and error go to one log file ([`LabChild::log`]);
/// its standard input is empty.
#[derive(Debug, Clone)]
pub struct LabChild {
    node: String,
    pid: u32,
    log_path: PathBuf,
    child: Arc<Mutex<Child>>,
}

#[derive(Debug)]
struct Node {
    name: String,
    namespace: String,
    links: Vec<Link>,
}

#[derive(Debug)]
struct Link {
    segment: String,
    port: String,
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Lab {
    /// An empty lab whose names start with `prefix` (1 to 12 of `a-z`, `0-9`; one prefix per
    /// test), after deleting the namespaces and logs of earlier runs with this prefix whose
    /// process is gone (killing what still runs in them).
    pub fn new(prefix: &str) -> Result<Self, NetnsError> {
        static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
        if prefix.is_empty()
            || prefix.len() > 12
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetnsError::InvalidName {
                kind: "prefix",
                name: prefix.to_string(),
                rule: "1 to 12 of a-z and 0-9",
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(NetnsError::NotRoot { euid });
        }
        let ip = find_tool("ip")
            .ok_or(NetnsError::MissingTool { tool: "ip", fix: "apt-get install -y iproute2" })?;
        let nft = find_tool("nft")
            .ok_or(NetnsError::MissingTool { tool: "nft", fix: "apt-get install -y nftables" })?;
        let tag =
            format!("{prefix}-{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let mut lab = Self {
            switch: format!("{tag}-switch"),
            log_dir: std::env::temp_dir().join(format!("netns-lab-{tag}")),
            tag,
            ip,
            nft,
            segments: BTreeSet::new(),
            nodes: Vec::new(),
            made: Vec::new(),
            next_port: 0,
            children: Mutex::new(Vec::new()),
            next_child: AtomicU32::new(0),
        };
        lab.remove_leftovers(prefix)?;
        let switch = lab.switch.clone();
        lab.add_namespace(&switch)?;
        Ok(lab)
    }

    /// Adds a LAN segment: a bridge in the switch namespace, named `name` (1 to 15 of `a-z`,
    /// `0-9`, `_`, `-`), which also names each node's interface on it.
    pub fn segment(&mut self, name: &str) -> Result<(), NetnsError> {
        check_name("segment", name, 15)?;
        if name == "lo" {
            return Err(NetnsError::InvalidName {
                kind: "segment",
                name: name.to_string(),
                rule: "lo is the loopback interface",
            });
        }
        if self.segments.contains(name) {
            return Err(NetnsError::Duplicate { kind: "segment", name: name.to_string() });
        }
        let batch = format!("link add {name} type bridge mcast_snooping 0\nlink set {name} up\n");
        self.ip_batch(&self.switch, &batch)?;
        self.segments.insert(name.to_string());
        Ok(())
    }

    /// Adds a node (a namespace) with one interface per `(segment, "ADDRESS/LEN")` link, lo up
    /// and a multicast route through each interface; returns once every link carries traffic
    /// (bridge port forwarding, interface up), polled with a deadline.
    ///
    /// A node on two segments is a router once [`Lab::enable_forwarding`] is called.
    pub fn node(&mut self, name: &str, links: &[(&str, &str)]) -> Result<(), NetnsError> {
        check_name("node", name, 32)?;
        if name == "switch" {
            return Err(NetnsError::InvalidName {
                kind: "node",
                name: name.to_string(),
                rule: "switch names the namespace of the bridges",
            });
        }
        if self.nodes.iter().any(|node| node.name == name) {
            return Err(NetnsError::Duplicate { kind: "node", name: name.to_string() });
        }
        let mut parsed = Vec::with_capacity(links.len());
        for (segment, cidr) in links {
            if !self.segments.contains(*segment) {
                return Err(NetnsError::Unknown { kind: "segment", name: segment.to_string() });
            }
            if parsed.iter().any(|link: &Link| link.segment == *segment) {
                return Err(NetnsError::Duplicate { kind: "link", name: segment.to_string() });
            }
            let (addr, prefix_len) = parse_cidr(cidr)?;
            self.next_port += 1;
            parsed.push(Link {
                segment: segment.to_string(),
                port: format!("p.{}", self.next_port),
                addr,
                prefix_len,
            });
        }

        let namespace = format!("{}-{name}", self.tag);
        self.add_namespace(&namespace)?;
        // Off before the interfaces exist: new interfaces copy the namespace's defaults.
        enter_namespace(&namespace, || {
            for key in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{key}/accept_dad");
                match fs::write(&path, "0") {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        return Err(io_error(format!("write {path}"), error));
                    }
                    _ => {}
                }
            }
            Ok(())
        })??;

        let mut switch_batch = String::new();
        let mut node_batch = String::from("link set lo up\n");
        for (metric, link) in parsed.iter().enumerate() {
            let Link { segment, port, addr, prefix_len } = link;
            switch_batch.push_str(&format!(
                "link add {port} type veth peer name {segment} netns {namespace}\n\
                 link set {port} master {segment} alias {name} up\n"
            ));
            node_batch.push_str(&format!(
                "addr add {addr}/{prefix_len} dev {segment}\n\
                 link set {segment} up\n\
                 route add 224.0.0.0/4 dev {segment} metric {metric}\n"
            ));
        }
        self.ip_batch(&self.switch, &switch_batch)?;
        self.ip_batch(&namespace, &node_batch)?;

        // A bridge port forwards only once it has seen carrier; until then frames are dropped.
        poll_until(&format!("the links of node {name}"), LINK_TIMEOUT, || {
            let switch = self.ip_in(&self.switch, &["-d", "-o", "link", "show"])?;
            let node = self.ip_in(&namespace, &["-o", "link", "show"])?;
            Ok(parsed.iter().all(|link| {
                link_line(&switch, &link.port)
                    .is_some_and(|line| line.contains("bridge_slave state forwarding"))
                    && link_line(&node, &link.segment).is_some_and(|line| {
                        line.contains("LOWER_UP") && line.contains(" state UP ")
                    })
            }))
        })?;
        self.nodes.push(Node { name: name.to_string(), namespace, links: parsed });
        Ok(())
    }

    /// Turns on IPv4 forwarding in a node, making a node on two segments a router. Multicast
    /// is still not forwarded (no multicast routing daemon), as between real store LANs.
    pub fn enable_forwarding(&self, node: &str) -> Result<(), NetnsError> {
        enter_namespace(self.namespace(node)?, || {
            fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|error| io_error("write /proc/sys/net/ipv4/ip_forward".into(), error))
        })?
    }

    /// Adds a route in a node: `destination` is IPv4 CIDR or "default"; `via` is a gateway on
    /// one of the node's segments.
    pub fn route(&self, node: &str, destination: &str, via: Ipv4Addr) -> Result<(), NetnsError> {
        let namespace = self.namespace(node)?;
        if destination != "default" {
            parse_cidr(destination)?;
        }
        let via = via.to_string();
        self.ip_in(namespace, &["route", "add", destination, "via", &via])?;
        Ok(())
    }

    /// The address of a node on a segment.
    pub fn addr(&self, node: &str, segment: &str) -> Result<Ipv4Addr, NetnsError> {
        self.link(node, segment).map(|link| link.addr)
    }

    /// The full namespace name of a node, for `ip netns exec` by hand and for logs.
    pub fn namespace(&self, node: &str) -> Result<&str, NetnsError> {
        self.find(node).map(|node| node.namespace.as_str())
    }

    /// Drops the node's own unicast UDP, in and out, but lets [`DISCOVERY_GROUPS`] multicast
    /// and loopback through: peers still discover the node, yet no link to it works. Replaces
    /// the node's previous fault. Forwarded traffic of a router is not touched.
    pub fn drop_udp_unicast(&self, node: &str) -> Result<(), NetnsError> {
        self.replace_fault(node, DROP_UDP_UNICAST)
    }

    /// Cuts a node off: drops every IP packet in, out and through it except on loopback.
    /// Replaces the node's previous fault.
    pub fn partition(&self, node: &str) -> Result<(), NetnsError> {
        self.replace_fault(node, PARTITION)
    }

    /// Removes the node's fault (its `inet lab` table, including rules a test put there with
    /// [`Lab::nft`]); NAT stays. Healing a healthy node is harmless.
    pub fn heal(&self, node: &str) -> Result<(), NetnsError> {
        self.nft(node, "table inet lab\ndelete table inet lab\n")
    }

    /// Loads nftables rules into a node with `nft -f -` (one statement per line; on one line a
    /// chain needs `;` after its closing brace). Rules in `table inet lab` are removed by
    /// [`Lab::heal`] and counted by [`Lab::dropped`]; other tables stay until the lab drops.
    pub fn nft(&self, node: &str, rules: &str) -> Result<(), NetnsError> {
        let namespace = self.namespace(node)?;
        let nft = self.nft.to_string_lossy();
        self.run(&self.ip, &["netns", "exec", namespace, &nft, "-f", "-"], Some(rules))?;
        Ok(())
    }

    /// Makes a node a NAT router: turns on forwarding and masquerades what leaves through its
    /// interface `out_if` (a segment name). Survives [`Lab::heal`]. For a NAT that breaks hole
    /// punching, add rules with [`Lab::nft`].
    pub fn masquerade(&self, node: &str, out_if: &str) -> Result<(), NetnsError> {
        self.link(node, out_if)?;
        self.enable_forwarding(node)?;
        // Add-then-delete makes the replacement one transaction whether or not a table exists.
        let rules = format!(
            r#"table ip labnat
delete table ip labnat
table ip labnat {{
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    oifname "{out_if}" masquerade
  }}
}}
"#
        );
        self.nft(node, &rules)
    }

    /// How many packets the drop rules of the node's `inet lab` table have dropped since the
    /// fault was set (0 when healthy): a test proves a fault hit its traffic by polling this
    /// rather than by waiting for silence.
    pub fn dropped(&self, node: &str) -> Result<u64, NetnsError> {
        let namespace = self.namespace(node)?;
        let nft = self.nft.to_string_lossy();
        let mut list = Command::new(&self.ip);
        list.args(["netns", "exec", namespace, &nft, "list", "table", "inet", "lab"]);
        let output =
            list.output().map_err(|error| io_error(format!("run {}", self.ip.display()), error))?;
        if !output.status.success() {
            // No table: the node is healthy and nothing is dropped.
            return Ok(0);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text
            .lines()
            .filter(|line| line.trim_end().ends_with("drop"))
            .filter_map(|line| {
                let count = line.split("counter packets ").nth(1)?;
                count.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum())
    }

    /// Starts `command` inside a node with `ip netns exec`, which also shows the process the
    /// node's own `/sys/class/net` and any `/etc/netns/NAMESPACE/` files in place of `/etc`
    /// (meshnode reads both to derive its device id).
    ///
    /// Carried over from `command`: program, arguments, environment changes and working
    /// directory. Not carried over (std does not expose them): stdio, which the lab sets (see
    /// [`LabChild`]), `env_clear`, and unix extensions such as `pre_exec`.
    pub fn spawn(&self, node: &str, command: Command) -> Result<LabChild, NetnsError> {
        let namespace = self.namespace(node)?;
        let mut wrapped = Command::new(&self.ip);
        wrapped.args(["netns", "exec", namespace]);
        wrapped.arg(command.get_program()).args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        fs::create_dir_all(&self.log_dir)
            .map_err(|error| io_error(format!("create {}", self.log_dir.display()), error))?;
        let number = self.next_child.fetch_add(1, Ordering::Relaxed);
        let log_path = self.log_dir.join(format!("{node}-{number}.log"));
        let log = File::create(&log_path)
            .map_err(|error| io_error(format!("create {}", log_path.display()), error))?;
        let log_err = log
            .try_clone()
            .map_err(|error| io_error(format!("dup {}", log_path.display()), error))?;
        wrapped.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = wrapped.spawn().map_err(|error| {
            io_error(format!("spawn {:?} in {namespace}", command.get_program()), error)
        })?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.children).push(Arc::clone(&child));
        Ok(LabChild { node: node.to_string(), pid, log_path, child })
    }

    /// Runs `args` to completion inside a node (`ip netns exec`) and returns its output,
    /// whatever its exit status; an error only when it cannot be started.
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<Output, NetnsError> {
        let namespace = self.namespace(node)?;
        Command::new(&self.ip)
            .args(["netns", "exec", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| io_error(format!("run {args:?} in {namespace}"), error))
    }

    /// Runs `f` on a new thread that has joined the node's network namespace and returns its
    /// result; a panic in `f` is resumed on the caller.
    ///
    /// Sockets `f` creates belong to the node's namespace for their whole life, wherever they
    /// are used later, so a test can return them and use them from its own thread. Only the
    /// network namespace changes: files, `/proc` and `/sys` are still the host's.
    pub fn enter<T, F>(&self, node: &str, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        enter_namespace(self.namespace(node)?, f)
    }

    fn find(&self, node: &str) -> Result<&Node, NetnsError> {
        self.nodes
            .iter()
            .find(|candidate| candidate.name == node)
            .ok_or_else(|| NetnsError::Unknown { kind: "node", name: node.to_string() })
    }

    fn link(&self, node: &str, segment: &str) -> Result<&Link, NetnsError> {
        self.find(node)?.links.iter().find(|link| link.segment == segment).ok_or_else(|| {
            NetnsError::NotOnSegment { node: node.to_string(), segment: segment.to_string() }
        })
    }

    fn replace_fault(&self, node: &str, chains: &str) -> Result<(), NetnsError> {
        // Add-then-delete makes the replacement one transaction whether or not a table exists.
        self.nft(
            node,
            &format!("table inet lab\ndelete table inet lab\ntable inet lab {{\n{chains}}}\n"),
        )
    }

    fn add_namespace(&mut self, namespace: &str) -> Result<(), NetnsError> {
        // The first `ip netns add` on a machine makes /run/netns a shared mount; two at once can
        // stack two mounts and hide the first namespace, so a process adds one at a time.
        static ADDING: Mutex<()> = Mutex::new(());
        let _adding = lock(&ADDING);
        self.run(&self.ip, &["netns", "add", namespace], None)?;
        self.made.push(namespace.to_string());
        Ok(())
    }

    fn remove_leftovers(&self, prefix: &str) -> Result<(), NetnsError> {
        let own = std::process::id();
        let is_leftover = |name: &str| {
            let pid = name.strip_prefix(prefix)?.strip_prefix('-')?.split('-').next()?;
            let pid: u32 = pid.parse().ok()?;
            (pid != own && !Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        };
        let mut leftovers: Vec<String> = fs::read_dir(NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_leftover(name).is_some())
            .collect();
        leftovers.sort();
        for namespace in &leftovers {
            self.kill_processes_in(namespace);
            self.run(&self.ip, &["netns", "del", namespace], None)?;
        }
        let temp = std::env::temp_dir();
        for entry in fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("netns-lab-").and_then(is_leftover).is_some() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Kills what still runs in a namespace (a killed run's children, a grandchild), so that
    /// deleting it really frees it: a namespace lives on while a process is inside.
    fn kill_processes_in(&self, namespace: &str) {
        let Ok(output) = Command::new(&self.ip).args(["netns", "pids", namespace]).output() else {
            return;
        };
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill has no memory preconditions; the pid is inside a namespace this
                // lab (or a dead run with its prefix) made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    fn ip_in(&self, namespace: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", namespace];
        full.extend_from_slice(args);
        let output = self.run(&self.ip, &full, None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn ip_batch(&self, namespace: &str, batch: &str) -> Result<(), NetnsError> {
        self.run(&self.ip, &["-n", namespace, "-batch", "-"], Some(batch))?;
        Ok(())
    }

    fn run(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, NetnsError> {
        let name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
        // `ip netns exec NS nft ...` fails with nft's errors.
        let tool = if args.iter().any(|arg| Path::new(arg).file_name() == Some("nft".as_ref())) {
            "nft"
        } else {
            &name
        };
        let mut line = format!("{name} {}", args.join(" "));
        if let Some(input) = stdin {
            line.push_str(&format!(" <<EOF\n{input}EOF"));
        }
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| io_error(format!("run `{line}`"), error))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Inputs are a few lines; a write error shows up as the command's failure.
            let _ = pipe.write_all(input.as_bytes());
        }
        let output =
            child.wait_with_output().map_err(|error| io_error(format!("run `{line}`"), error))?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(NetnsError::Command {
            fix: fix_for(tool, &stderr),
            command: line,
            status: output.status,
            stderr,
        })
    }
}

impl LabChild {
    /// The process id (the program itself: `ip netns exec` execs it without forking).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The node it runs in.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The file its standard output and error go to; deleted with the lab unless the lab drops
    /// during a panic.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything it printed so far (invalid UTF-8 replaced), for assertions and for printing
    /// when a test times out.
    pub fn log(&self) -> io::Result<String> {
        fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        lock(&self.child).try_wait()
    }

    /// Its exit status once it exits, or `None` if it still runs after `timeout`. Polls, so
    /// the lab can still kill it meanwhile.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Asks it to stop (SIGTERM) if it still runs; see [`LabChild::wait_timeout`].
    pub fn terminate(&self) -> io::Result<()> {
        let mut child = lock(&self.child);
        // Holding the lock while checking means nobody reaps it in between, so the pid cannot
        // have been reused.
        if child.try_wait()?.is_none() {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Kills it (SIGKILL) and reaps it, returning how it ended; for crash tests.
    pub fn kill(&self) -> io::Result<ExitStatus> {
        let mut child = lock(&self.child);
        child.kill()?;
        child.wait()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in lock(&self.children).drain(..) {
            let mut child = lock(&child);
            let _ = child.kill();
            let _ = child.wait();
        }
        for namespace in self.made.iter().rev() {
            self.kill_processes_in(namespace);
            if let Err(error) = self.run(&self.ip, &["netns", "del", namespace], None) {
                eprintln!("netns lab {}: {error}", self.tag);
            }
        }
        if self.log_dir.exists() {
            if thread::panicking() {
                eprintln!("netns lab {}: child logs kept in {}", self.tag, self.log_dir.display());
            } else {
                let _ = fs::remove_dir_all(&self.log_dir);
            }
        }
    }
}

fn enter_namespace<T, F>(namespace: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = Path::new(NETNS_DIR).join(namespace);
    let file =
        File::open(&path).map_err(|error| io_error(format!("open {}", path.display()), error))?;
    thread::scope(|scope| {
        let thread = thread::Builder::new()
            .name(format!("netns {namespace}"))
            .spawn_scoped(scope, move || {
                // SAFETY: setns only reads the open descriptor and moves this thread (not the
                // process) into the namespace; the thread ends when `f` returns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = io::Error::last_os_error();
                    return Err(io_error(format!("setns into {namespace}"), error));
                }
                drop(file);
                Ok(f())
            })
            .map_err(|error| io_error("spawn a namespace thread".into(), error))?;
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Calls `done` until it returns true, pausing 1 ms doubling to 50 ms, until `timeout`.
fn poll_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, NetnsError>,
) -> Result<(), NetnsError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(NetnsError::Timeout { what: what.to_string(), waited: start.elapsed() });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The line of `ip -o link show` output for interface `name` ("3: name@if2: <...> ...").
fn link_line<'a>(output: &'a str, name: &str) -> Option<&'a str> {
    output.lines().find(|line| {
        line.split(": ").nth(1).and_then(|field| field.split('@').next()) == Some(name)
    })
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetnsError> {
    let invalid = || NetnsError::InvalidAddress { text: text.to_string() };
    let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
    let len: u8 = len.parse().map_err(|_| invalid())?;
    if len > 32 {
        return Err(invalid());
    }
    Ok((addr, len))
}

fn check_name(kind: &'static str, name: &str, max: usize) -> Result<(), NetnsError> {
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > max || !name.bytes().all(valid) {
        return Err(NetnsError::InvalidName {
            kind,
            name: name.to_string(),
            rule: if max == 15 {
                "1 to 15 of a-z, 0-9, '_', '-' (it names interfaces)"
            } else {
                "1 to 32 of a-z, 0-9, '_', '-'"
            },
        });
    }
    Ok(())
}

/// The tool in `PATH` or in the sbin directories, which a non-root `PATH` often lacks.
fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The likely fix for a failed `ip` or `nft`, from its standard error.
fn fix_for(tool: &str, stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        "run as root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    } else if stderr.contains("File exists") {
        "the name or route is taken: use another name, address or prefix"
    } else if stderr.contains("Unknown device type") {
        "the kernel lacks veth or bridge: modprobe veth bridge"
    } else if tool == "nft" && stderr.contains("syntax error") {
        "correct the rules: one statement per line, or `;` after a closing brace on one line"
    } else if tool == "nft" {
        "check that the kernel has nf_tables (modprobe nf_tables) and the rules are valid"
    } else {
        "run the command by hand as root to see why"
    }
}

fn io_error(what: String, source: io::Error) -> NetnsError {
    NetnsError::Io { what, source }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-done worth refusing to read.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_fault_spares_the_discovery_groups() {
        assert_eq!(DROP_UDP_UNICAST.matches(DISCOVERY_GROUPS).count(), 2);
    }

    #[test]
    fn cidr_is_ipv4_with_a_length() {
        assert_eq!(parse_cidr("10.77.1.10/24").unwrap(), (Ipv4Addr::new(10, 77, 1, 10), 24));
        for bad in ["10.77.1.10", "10.77.1.300/24", "10.77.1.10/33", "fe80::1/64"] {
            assert!(matches!(parse_cidr(bad), Err(NetnsError::InvalidAddress { .. })), "{bad}");
        }
    }

    #[test]
    fn link_line_matches_the_whole_name() {
        let output = "2: store1@if3: <UP,LOWER_UP> state UP\n3: store10@if5: <UP> state DOWN\n";
        assert!(link_line(output, "store10").unwrap().contains("DOWN"));
        assert!(link_line(output, "store1").unwrap().contains("LOWER_UP"));
        assert!(link_line(output, "store").is_none());
    }

    #[test]
    fn segment_names_fit_an_interface_name() {
        assert!(check_name("segment", "store1", 15).is_ok());
        for bad in ["", "a-name-of-16-chr", "Store", "a/b", "a b"] {
            assert!(check_name("segment", bad, 15).is_err(), "{bad:?}");
        }
    }
}
