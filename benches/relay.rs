//! `scripts/bench relay` (issue 6 §4): the relay path against a direct link, in one run, with
//! the real binary in network namespaces (needs root, `ip` and `nft`).
//!
//! - Throughput: `--units` (default 50,000) units of `--payload` (default 200) bytes submitted
//!   at one node, timed until the other holds them all; (a) two nodes on one segment with a
//!   configured direct QUIC link, (b) two nodes each behind its own NAT router (nftables
//!   masquerade), reaching each other only through a relay on the "internet" segment.
//! - Bytes on the wire per delivered unit, from nftables counters: the sender's own leg (what
//!   it sends, all of it, over payload bytes) and, for the relay, both legs.
//! - Time to first delivery: the receiver behind NAT is started after the sender holds units
//!   for it; from its exec to its first unit held.
//! - Relay memory: a relay on loopback takes `--queued` (default 100,000) posts of 4 KiB to a
//!   mailbox nobody subscribes; its VmRSS and VmHWM after.
//!
//! Targets: relay >= 30 % of direct units/s; sender-leg bytes <= 2x payload bytes; relay RSS
//! <= 100 MiB with 100,000 queued payloads; first delivery <= 2 s. Exits 1 on a missed target.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshnode::net::relay_client::{RelayClient, RelayMembership};
use meshnode::wire::relay::Mailbox;
use netsim::netns::{Lab, LabChild};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(300);
const LINK_PORT: u16 = 7070;
const RELAY_PORT: u16 = 7740;
const MIB: f64 = (1u64 << 20) as f64;

struct Opts {
    units: usize,
    payload: usize,
    queued: usize,
    bin: PathBuf,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        units: 50_000,
        payload: 200,
        queued: 100_000,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_meshnode")),
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench" && a != "relay");
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--units" => o.units = value()?.parse()?,
            "--payload" => o.payload = value()?.parse()?,
            "--queued" => o.queued = value()?.parse()?,
            "--bin" => o.bin = value()?.into(),
            other => {
                bail!("unknown argument {other}; use --units N --payload B --queued N --bin PATH")
            }
        }
    }
    Ok(o)
}

fn main() {
    let result = opts().and_then(|o| run(&o));
    match result {
        Ok(missed) => {
            for m in &missed {
                println!("MISSED: {m}");
            }
            std::process::exit(i32::from(!missed.is_empty()));
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

// ----- helpers -----

fn meshnode(o: &Opts, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&o.bin).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("meshnode {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fresh system: `root/<names[0]>` plus members joined with its join file.
fn system(o: &Opts, root: &Path, rmsystem: &str, names: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let join = root.join(format!("{}.join", names[0]));
    for (i, name) in names.iter().enumerate() {
        let dir = root.join(name);
        if i == 0 {
            meshnode(o, &["init", "--data-dir", s(&dir), "--system", rmsystem])?;
            meshnode(o, &["key", "export", "--data-dir", s(&dir), "--out", s(&join)])?;
        } else {
            meshnode(o, &["init", "--data-dir", s(&dir), "--join", s(&join)])?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

fn append_config(dir: &Path, text: &str) -> anyhow::Result<()> {
    let path = dir.join("meshnode.toml");
    let config = std::fs::read_to_string(&path)? + text;
    Ok(std::fs::write(&path, config)?)
}

fn status(o: &Opts, dir: &Path) -> Option<Value> {
    let out = Command::new(&o.bin)
        .args(["--status", "--json", "--data-dir", s(dir)])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn units(o: &Opts, dir: &Path) -> u64 {
    status(o, dir).and_then(|st| st["units_total"].as_u64()).unwrap_or(0)
}

/// Starts `meshnode run` in `node` and waits until it serves its control socket.
fn start(o: &Opts, lab: &Lab, node: &str, dir: &Path) -> anyhow::Result<LabChild> {
    let listen = format!("0.0.0.0:{LINK_PORT}");
    let mut c = Command::new(&o.bin);
    c.args(["run", "--data-dir", s(dir), "--listen", &listen, "--role", "store-server"])
        .env("MESHNODE_LOG", "meshnode=warn");
    let child = lab.spawn(node, c)?;
    // A running node's status (its snapshot, removed at a clean stop) comes once its control
    // socket is up, so `submit` goes through the node.
    wait("the node to run", Duration::from_millis(5), || {
        status(o, dir).is_some_and(|st| st["running"] == true)
    })?;
    Ok(child)
}

/// Polls `check` every `every` until it holds or the deadline passes.
fn wait(what: &str, every: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(every);
    }
    Ok(())
}

/// Submits `n` units of `payload` bytes at the running node in `dir`.
fn submit(o: &Opts, dir: &Path, n: usize, tag: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let filler = "x".repeat(o.payload.saturating_sub(24));
    let lines: String =
        (0..n).map(|i| format!("{{\"payload\":\"{tag}{i:08}{filler}\"}}\n")).collect();
    let mut child = Command::new(&o.bin)
        .args(["submit", "--data-dir", s(dir), "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("submit failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// nftables counters of everything `node` sends and receives (all interfaces).
fn count_traffic(lab: &Lab, node: &str) -> anyhow::Result<()> {
    lab.nft(
        node,
        "table inet benchcount {\n chain out {\n type filter hook output priority 0; policy accept;\n counter\n }\n chain in {\n type filter hook input priority 0; policy accept;\n counter\n }\n}\n",
    )?;
    Ok(())
}

/// Bytes counted by [`count_traffic`] in `node`'s chain `chain` (out or in).
fn counted(lab: &Lab, node: &str, chain: &str) -> anyhow::Result<u64> {
    let out = lab.exec(node, &["nft", "list", "chain", "inet", "benchcount", chain])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("bytes ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|b| b.parse().ok())
        .with_context(|| format!("no counter in {text}"))
}

fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `meshnode relay` running in `node` (or on the host when `lab` is `None`), admitting the
/// system of `member`; returns it and its key.
fn relay(
    o: &Opts,
    lab: Option<(&Lab, &str)>,
    dir: &Path,
    listen: SocketAddr,
    member: &Path,
) -> anyhow::Result<(Box<dyn FnOnce() -> u32>, String)> {
    let mut c = Command::new(&o.bin);
    c.args(["relay", "--data-dir", s(dir), "--listen", &listen.to_string()])
        .env("MESHNODE_LOG", "meshnode=warn");
    let (pid, stop): (u32, Box<dyn FnOnce() -> u32>) = match lab {
        Some((lab, node)) => {
            let child = lab.spawn(node, c)?;
            let pid = child.id();
            (
                pid,
                Box::new(move || {
                    let _ = child.kill();
                    pid
                }),
            )
        }
        None => {
            let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
            let pid = child.id();
            (
                pid,
                Box::new(move || {
                    let _ = child.kill();
                    let _ = child.wait();
                    pid
                }),
            )
        }
    };
    let relay_status = || -> Option<Value> {
        let out = Command::new(&o.bin)
            .args(["relay", "--data-dir", s(dir), "--status", "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    wait("the relay to start", Duration::from_millis(20), || {
        relay_status().is_some_and(|st| st["running"] == true && st["pid"] == pid)
    })?;
    let line = meshnode(o, &["key", "relay-verifier", "--data-dir", s(member)])?;
    let args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|w| if w == "RELAY_DIR" { s(dir).to_string() } else { w.to_string() })
        .collect();
    meshnode(o, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    wait("the relay to admit the system", Duration::from_millis(20), || {
        relay_status().is_some_and(|st| st["systems"].as_array().is_some_and(|a| !a.is_empty()))
    })?;
    let key = relay_status().and_then(|st| st["key"].as_str().map(str::to_string));
    Ok((stop, key.context("relay key")?))
}

// ----- the run -----

struct Transfer {
    units_per_sec: f64,
    sender_bytes: u64,
    relay_bytes: u64,
    /// The sender's relay path counters after the run.
    relay_path: Value,
}

fn run(o: &Opts) -> anyhow::Result<Vec<String>> {
    let root = tempfile::tempdir()?;
    let mut lab = Lab::new("benchrelay")?;
    // direct: d1, d2 on one segment. inet: relay, nat1, nat2; store1: s1 behind nat1; store2:
    // s2 behind nat2.
    for seg in ["direct", "inet", "store1", "store2"] {
        lab.segment(seg)?;
    }
    lab.node("d1", &[("direct", "10.78.1.1/24")])?;
    lab.node("d2", &[("direct", "10.78.1.2/24")])?;
    lab.node("relay", &[("inet", "10.78.70.1/24")])?;
    for i in 1..=2u8 {
        let (nat, store, host) = (format!("nat{i}"), format!("store{i}"), format!("s{i}"));
        lab.node(
            &nat,
            &[("inet", &format!("10.78.70.{}/24", 10 + i)), (&store, &format!("10.78.7{i}.1/24"))],
        )?;
        lab.masquerade(&nat, "inet")?;
        lab.node(&host, &[(&store, &format!("10.78.7{i}.10/24"))])?;
        lab.route(&host, "default", Ipv4Addr::new(10, 78, 70 + i, 1))?;
    }
    let payload_bytes = (o.units * o.payload) as f64;

    // (a) direct.
    let direct = system(o, &root.path().join("direct"), "8,8,8,1", &["d1", "d2"])?;
    append_config(
        &direct[0],
        &format!("\n[[peer]]\naddress = \"10.78.1.2:{LINK_PORT}\"\nrole = \"store-server\"\n"),
    )?;
    let d = {
        let nodes = [start(o, &lab, "d1", &direct[0])?, start(o, &lab, "d2", &direct[1])?];
        wait("the direct link", Duration::from_millis(20), || {
            status(o, &direct[0]).is_some_and(|st| {
                st["node"]["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["state"] == "up"))
            })
        })?;
        count_traffic(&lab, "d1")?;
        let t = transfer(o, &direct[0], &direct[1])?;
        let sender_bytes = counted(&lab, "d1", "out")?;
        for n in nodes {
            n.kill()?;
        }
        Transfer { units_per_sec: t, sender_bytes, relay_bytes: 0, relay_path: Value::Null }
    };

    // (b) relay, and the time to first delivery.
    let relayed = system(o, &root.path().join("relayed"), "8,8,8,2", &["s1", "s2"])?;
    let relay_addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 78, 70, 1), RELAY_PORT));
    let (stop_relay, key) =
        relay(o, Some((&lab, "relay")), &root.path().join("r"), relay_addr, &relayed[0])?;
    for dir in &relayed {
        // The relay path is what is measured: no hole punching to a direct link.
        let path = std::fs::read_to_string(dir.join("meshnode.toml"))?
            .replace("hole_punch = true\n", "hole_punch = false\n");
        std::fs::write(dir.join("meshnode.toml"), path)?;
        append_config(dir, &format!("\n[[relay]]\naddr = \"{relay_addr}\"\nkey = \"{key}\"\n"))?;
    }
    let s1 = start(o, &lab, "s1", &relayed[0])?;
    // s2 meets s1 (presence), then goes offline; s1 holds units for it; s2 comes back.
    let s2 = start(o, &lab, "s2", &relayed[1])?;
    submit(o, &relayed[0], 1, "hello")?;
    wait("s2 to hold s1's first unit", Duration::from_millis(20), || units(o, &relayed[1]) == 1)?;
    s2.terminate()?;
    s2.wait_timeout(Duration::from_secs(20))?;
    submit(o, &relayed[0], 10, "while-away")?;
    let exec = Instant::now();
    let s2 = start(o, &lab, "s2", &relayed[1])?;
    wait("s2's first delivery after coming back", Duration::from_millis(5), || {
        units(o, &relayed[1]) > 1
    })?;
    let first_delivery = exec.elapsed().as_secs_f64();
    wait("s2 to catch up", Duration::from_millis(20), || units(o, &relayed[1]) == 11)?;
    count_traffic(&lab, "s1")?;
    count_traffic(&lab, "relay")?;
    let t = transfer(o, &relayed[0], &relayed[1])?;
    let r = Transfer {
        units_per_sec: t,
        sender_bytes: counted(&lab, "s1", "out")?,
        relay_bytes: counted(&lab, "relay", "in")? + counted(&lab, "relay", "out")?,
        relay_path: status(o, &relayed[0])
            .map_or(Value::Null, |st| st["node"]["relay_path"].clone()),
    };
    s1.kill()?;
    s2.kill()?;
    stop_relay();
    drop(lab);

    // Relay memory with payloads queued, on loopback.
    let (rss, hwm) = relay_memory(o, root.path())?;

    let ratio = r.units_per_sec / d.units_per_sec;
    let direct_x = d.sender_bytes as f64 / payload_bytes;
    let relay_x = r.sender_bytes as f64 / payload_bytes;
    let legs_x = r.relay_bytes as f64 / payload_bytes;
    println!("relay bench: {} units of {} bytes, one run", o.units, o.payload);
    println!(
        "  direct QUIC link      {:>9.0} units/s, sender sends {:.2}x payload bytes",
        d.units_per_sec, direct_x
    );
    println!(
        "  through one relay     {:>9.0} units/s ({:.0}% of direct; target >= 30%), sender sends {relay_x:.2}x payload bytes (target <= 2x), both relay legs {legs_x:.2}x",
        r.units_per_sec,
        ratio * 100.0
    );
    println!("  sender's relay path   {}", r.relay_path);
    println!("  first delivery        {first_delivery:.2} s from the NATed receiver's exec (target <= 2 s)");
    println!(
        "  relay memory          VmRSS {:.1} MiB, VmHWM {:.1} MiB with {} queued payloads of 4 KiB (target <= 100 MiB)",
        rss as f64 / MIB,
        hwm as f64 / MIB,
        o.queued
    );
    let mut missed = Vec::new();
    if ratio < 0.30 {
        missed.push(format!("relay throughput {:.0}% of direct < 30%", ratio * 100.0));
    }
    if relay_x > 2.0 {
        missed.push(format!("relay sender bytes {relay_x:.2}x payload > 2x"));
    }
    if first_delivery > 2.0 {
        missed.push(format!("first delivery {first_delivery:.2} s > 2 s"));
    }
    if rss as f64 > 100.0 * MIB {
        missed.push(format!("relay RSS {:.1} MiB > 100 MiB", rss as f64 / MIB));
    }
    Ok(missed)
}

/// Submits the bench's units at `from` and returns units/s until `to` holds them all.
fn transfer(o: &Opts, from: &Path, to: &Path) -> anyhow::Result<f64> {
    let before = units(o, to);
    let want = before + o.units as u64;
    let started = Instant::now();
    submit(o, from, o.units, "unit")?;
    wait("the receiver to hold every unit", Duration::from_millis(10), || units(o, to) >= want)?;
    Ok(o.units as f64 / started.elapsed().as_secs_f64())
}

/// A relay on loopback takes `o.queued` posts of 4 KiB to one mailbox; its VmRSS and VmHWM.
fn relay_memory(o: &Opts, root: &Path) -> anyhow::Result<(u64, u64)> {
    let member = system(o, &root.join("memory"), "8,8,8,3", &["m1"])?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let dir = root.join("memory-relay");
    let (stop, key) = relay(o, None, &dir, listen, &member[0])?;
    let key: [u8; 32] = hex::decode(key)?.try_into().map_err(|_| anyhow::anyhow!("key length"))?;
    let secrets = meshnode::datadir::read_system_key(&member[0])?;
    let membership = std::sync::Arc::new(RelayMembership::of(&secrets)?);
    // The relay allows a connection 2,000 posts/s: several connections, each paced below that.
    const CONNECTIONS: usize = 8;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let membership = membership.clone();
            let share = o.queued / CONNECTIONS + usize::from(c < o.queued % CONNECTIONS);
            tasks.push(tokio::spawn(async move {
                post_paced(listen, key, &membership, Mailbox([c as u8; 16]), share).await
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    // Measured while it runs, after the posts.
    let pid = {
        let out = Command::new(&o.bin)
            .args(["relay", "--data-dir", s(&dir), "--status", "--json"])
            .output()?;
        let st: Value = serde_json::from_slice(&out.stdout)?;
        st["pid"].as_u64().context("relay pid")? as u32
    };
    let (rss, hwm) = (vm(pid, "VmRSS:"), vm(pid, "VmHWM:"));
    stop();
    Ok((rss, hwm))
}

/// Posts `n` payloads of 4 KiB to `mailbox` at about 1,800 a second, and waits until the relay
/// confirmed the last one.
async fn post_paced(
    listen: SocketAddr,
    key: [u8; 32],
    membership: &RelayMembership,
    mailbox: Mailbox,
    n: usize,
) -> anyhow::Result<()> {
    use meshnode::wire::relay::RelayFrame;
    if n == 0 {
        return Ok(());
    }
    let mut client = RelayClient::connect(listen, key, membership, Duration::from_secs(10)).await?;
    let payload = vec![0xa5u8; 4096];
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut seq = 0u32;
    while (seq as usize) < n {
        tick.tick().await;
        for _ in 0..90 {
            if seq as usize == n {
                break;
            }
            client.post(seq, mailbox, 86_400, payload.clone()).await?;
            seq += 1;
        }
    }
    let last = seq - 1;
    loop {
        match client.recv().await? {
            Some(RelayFrame::Posted { seqs }) if seqs.contains(&last) => break,
            Some(RelayFrame::PostRefused { seq, reason }) => {
                bail!("post {seq} refused: {reason:?}")
            }
            Some(_) => {}
            None => bail!("the relay closed the connection"),
        }
    }
    client.close();
    Ok(())
}
