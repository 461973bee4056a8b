//! `meshnode demo`: three nodes of a fresh system on loopback, in temporary data directories.
//! They find each other, a few sample sales are submitted at one, and they arrive at the
//! others; a status table shows each step. Everything is removed at the end. Nothing leaves
//! 127.0.0.1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The sample sales submitted at the first node.
const SALES: [&str; 5] = [
    r#"{"kind":"TUBT","urgent":true,"body":{"lane":1,"sale":"coffee","total":3.20}}"#,
    r#"{"kind":"TUBT","body":{"lane":1,"sale":"bread","total":2.45}}"#,
    r#"{"kind":"TUBT","body":{"lane":1,"sale":"apples 1kg","total":2.99}}"#,
    r#"{"kind":"TUBT","body":{"lane":1,"sale":"newspaper","total":1.80}}"#,
    r#"{"kind":"TUBT","body":{"lane":1,"customer":"C-1042","points":12}}"#,
];

/// How long each step may take before the demo gives up (and says why).
const STEP: Duration = Duration::from_secs(20);

/// The demo's children, stopped (then killed) when dropped, also on error.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.0 {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find the meshnode binary")?;
    let root = std::env::temp_dir().join(format!("meshnode-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = demo(&exe, &root);
    let _ = std::fs::remove_dir_all(&root);
    result?;
    println!("\ndone in {:.1} s; temporary data removed.", started.elapsed().as_secs_f64());
    Ok(())
}

fn demo(exe: &Path, root: &Path) -> anyhow::Result<()> {
    let names = ["store-server", "lane-1", "lane-2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let join = root.join("join.key");
    step(exe, &["init", "--data-dir", path(&dirs[0])?, "--system", "77,123,89,201192"])?;
    step(exe, &["key", "export", "--data-dir", path(&dirs[0])?, "--out", path(&join)?])?;
    for d in &dirs[1..] {
        step(exe, &["init", "--data-dir", path(d)?, "--join", path(&join)?])?;
    }
    println!("a new system 77,123,89,201192 with three members in {}", root.display());
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let mut nodes = Nodes(Vec::new());
    for (name, dir) in names.iter().zip(&dirs) {
        let role = if *name == "store-server" { "store-server" } else { "lane" };
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let child = Command::new(exe)
            .args(["run", "--data-dir", path(dir)?, "--discovery-if", "127.0.0.1"])
            .args(["--discovery-port", &port, "--listen", "127.0.0.1:0", "--role", role])
            .env("MESHNODE_LOG", "meshnode=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node")?;
        nodes.0.push(child);
    }
    println!("started three nodes on 127.0.0.1 (discovery port {port}); waiting for them to find each other...");
    wait(&dirs, "every node to see both others up", |s| up_peers(s) == 2)?;
    table(&names, &dirs);

    println!("\nsubmitting {} sample sales at {}...", SALES.len(), names[1]);
    let mut submit = Command::new(exe)
        .args(["submit", "--data-dir", path(&dirs[1])?, "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Some(mut stdin) = submit.stdin.take() {
        for sale in SALES {
            writeln!(stdin, "{sale}")?;
        }
    }
    let out = submit.wait_with_output()?;
    if !out.status.success() {
        bail!("the submit failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  accepted {line}");
    }
    let want = SALES.len() as u64;
    wait(&dirs, "the sales to arrive at every node", |s| s["units_total"].as_u64() == Some(want))?;
    println!("\nall {want} sales arrived at every node:");
    table(&names, &dirs);
    println!("  (unsafe: own units no head office holds yet; this demo has no head office)");
    drop(nodes);
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("the temporary directory path is not UTF-8")
}

/// Runs one meshnode command quietly; its stderr is shown if it fails.
fn step(exe: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(exe).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("meshnode {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The running node's snapshot (`run/status.json`), or null.
fn snapshot(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join(super::run::STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn up_peers(s: &serde_json::Value) -> usize {
    s["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count())
}

fn wait(
    dirs: &[PathBuf],
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP;
    while !dirs.iter().all(|d| check(&snapshot(d))) {
        if Instant::now() > deadline {
            let logs: Vec<String> = dirs
                .iter()
                .map(|d| std::fs::read_to_string(d.with_extension("log")).unwrap_or_default())
                .collect();
            bail!("timed out waiting for {what}; node logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn table(names: &[&str], dirs: &[PathBuf]) {
    println!(
        "  {:<14} {:<17} {:>5} {:>6} {:>7}  links",
        "node", "dbid", "units", "peers", "unsafe"
    );
    for (name, dir) in names.iter().zip(dirs) {
        let s = snapshot(dir);
        let links: Vec<String> = s["peers"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|p| p["state"] == "up")
                    .map(|p| {
                        let link = p["link"].as_str().unwrap_or("?");
                        match p["rtt_ms"].as_f64() {
                            Some(ms) => format!("{link} {ms:.1} ms"),
                            None => link.to_string(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  {:<14} {:<17} {:>5} {:>6} {:>7}  {}",
            name,
            s["dbid"].as_str().unwrap_or("?"),
            s["units_total"].to_string(),
            format!("{} up", up_peers(&s)),
            s["unsafe_backlog"].to_string(),
            links.join(", ")
        );
    }
}
