//! Helpers for tests that run the real `meshnode` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshnode"))
}

/// A `meshnode` command with a clean environment for the settings meshnode reads.
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env_remove("MESHNODE_DATA_DIR").env_remove("MESHNODE_LOG");
    c
}

/// Runs meshnode with `args` (stdin closed) and returns its output.
pub fn run(args: &[&str]) -> Output {
    cmd(args).stdin(Stdio::null()).output().expect("run meshnode")
}

/// Runs meshnode with `input` on stdin.
pub fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshnode");
    // Write on another thread: a large output must be read while the input is still being
    // written, or both pipes fill and the two processes wait on each other.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// Runs and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "meshnode {args:?} failed:\n{}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs and asserts failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "meshnode {args:?} should have failed:\n{}", text(&out.stdout));
    text(&out.stderr)
}

/// Lossy UTF-8.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `path` as &str.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Creates a new system in `dir/name` and returns its path.
pub fn init(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let d = dir.join(name);
    let mut args = vec!["init", "--data-dir", s(&d)];
    args.extend_from_slice(extra);
    ok(&args);
    d
}

/// `meshnode --status --json` parsed.
pub fn status(d: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["--status", "--json", "--data-dir", s(d)])).expect("status json")
}

/// `meshnode units --json` parsed.
pub fn units(d: &Path) -> Vec<serde_json::Value> {
    ok(&["units", "--json", "--data-dir", s(d)])
        .lines()
        .map(|l| serde_json::from_str(l).expect("unit json"))
        .collect()
}

/// The DATI files of a data directory, sorted.
pub fn dati_files(d: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.join("dati"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "DATI"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A network-namespace lab for a test, or `None` (after saying why) where the machine cannot
/// make one (not root, `ip` or `nft` missing): the test then passes without running. With
/// `MESHNODE_REQUIRE_NETNS=1` (CI sets it) it fails instead, so a CI machine that cannot run
/// these tests goes red rather than passing them unrun.
#[cfg(target_os = "linux")]
pub fn lab_or_skip(prefix: &str) -> Option<netsim::netns::Lab> {
    let required = std::env::var("MESHNODE_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    match netsim::netns::Lab::new(prefix) {
        Ok(lab) => Some(lab),
        Err(e) if e.is_unsupported() && !required => {
            eprintln!("skipping netns test ({prefix}): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Submits `n` sales tagged `tag` at `dir` with `meshnode submit --jsonl` (through the running
/// node if one runs there).
pub fn submit_sales(dir: &Path, n: usize, tag: &str) {
    let lines: String = (0..n)
        .map(|i| format!("{{\"kind\":\"TUBT\",\"body\":{{\"sale\":{i},\"at\":\"{tag}\"}}}}\n"))
        .collect();
    let out = run_with_input(&["submit", "--data-dir", s(dir), "--jsonl", "-"], lines.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A `meshnode run` on loopback (discovery on 127.0.0.1), killed when dropped (also when the
/// test fails).
pub struct Running {
    child: std::process::Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a test waits for a condition on running nodes.
pub const NODE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

impl Running {
    /// A lane with links on an ephemeral loopback port; returns once its control socket
    /// answers.
    pub fn start(dir: &Path, port: u16) -> Running {
        Running::start_as(dir, port, "127.0.0.1:0", "lane")
    }

    /// A node of `role` with links on `listen`, discovery on `port`; returns once its control
    /// socket answers. Its log (appended across restarts) is `dir` + `.log`.
    pub fn start_as(dir: &Path, port: u16, listen: &str, role: &str) -> Running {
        let log = dir.with_extension("log");
        let port = port.to_string();
        let args =
            ["run", "--data-dir", s(dir), "--discovery-if", "127.0.0.1", "--discovery-port", &port];
        let child = cmd(&args)
            .args(["--listen", listen, "--role", role])
            .env("MESHNODE_LOG", "meshnode=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
            .spawn()
            .expect("start meshnode run");
        let node = Running { child, dir: dir.to_path_buf(), log };
        let socket = control_socket(dir);
        wait_for("the control socket", &[&node], || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        node
    }

    /// SIGTERM, then a clean exit within [`NODE_DEADLINE`] that removes the control socket.
    pub fn stop(self) {
        self.stop_with(libc::SIGTERM)
    }

    /// `sig` (SIGTERM or SIGINT), then a clean exit within [`NODE_DEADLINE`] that removes the
    /// control socket.
    pub fn stop_with(mut self, sig: libc::c_int) {
        signal(&self.child, sig);
        let deadline = std::time::Instant::now() + NODE_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "node exited with {status}: {}", self.log_text());
                let socket = control_socket(&self.dir);
                assert!(!socket.exists(), "the socket is removed at a clean stop");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "node did not stop: {}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no destructors, no clean stop; returns once the process is gone.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends `sig` to a child of the test.
pub fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// The control socket of a node's data directory.
pub fn control_socket(dir: &Path) -> PathBuf {
    dir.join("run/control.sock")
}

/// A UDP port free on loopback now (each test its own, so parallel meshes do not meet).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it holds or [`NODE_DEADLINE`] passes (then fails with `what` and the
/// nodes' logs).
pub fn wait_for(what: &str, nodes: &[&Running], check: impl FnMut() -> bool) {
    wait_within(what, NODE_DEADLINE, nodes, check)
}

/// [`wait_for`] with a deadline of `within` from now, for a test whose point is how soon.
pub fn wait_within(
    what: &str,
    within: std::time::Duration,
    nodes: &[&Running],
    mut check: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|n| n.log_text()).collect();
            panic!("timed out waiting for {what}; logs:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A new system `rmsystem` in `root/<names[0]>` plus members joined with its join file; their
/// directories and the join file.
pub fn new_system(root: &Path, rmsystem: &str, names: &[&str]) -> (Vec<PathBuf>, PathBuf) {
    let first = init(root, names[0], &["--system", rmsystem]);
    let join = root.join(format!("{}.join", names[0]));
    ok(&["key", "export", "--data-dir", s(&first), "--out", s(&join)]);
    let mut dirs = vec![first];
    for name in &names[1..] {
        dirs.push(init(root, name, &["--join", s(&join)]));
    }
    (dirs, join)
}

/// Polls `check` every 100 ms until it holds; past `deadline` fails with every lab process's
/// log and, for a node's directory, its status.
#[cfg(target_os = "linux")]
pub fn lab_wait_for(
    what: &str,
    deadline: std::time::Instant,
    nodes: &[(&netsim::netns::LabChild, &Path)],
    mut check: impl FnMut() -> bool,
) {
    while !check() {
        if std::time::Instant::now() > deadline {
            let report: Vec<String> = nodes
                .iter()
                .map(|(n, d)| {
                    let st = run(&["--status", "--json", "--data-dir", s(d)]);
                    format!(
                        "{} (running: {:?}):\n{}\nstatus:\n{}",
                        n.node(),
                        n.try_wait().ok().map(|w| w.is_none()),
                        n.log().unwrap_or_default(),
                        text(&st.stdout)
                    )
                })
                .collect();
            panic!("timed out waiting for {what}; nodes:\n{}", report.join("\n----\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// SIGTERM to a lab process, which must exit 0 within 20 s.
#[cfg(target_os = "linux")]
pub fn lab_stop(child: &netsim::netns::LabChild) {
    child.terminate().unwrap();
    let status = child.wait_timeout(std::time::Duration::from_secs(20)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{} did not stop cleanly", child.node());
}

/// Units held by the node in `dir` (0 when its status has none).
pub fn units_total(dir: &Path) -> u64 {
    status(dir)["units_total"].as_u64().unwrap_or(0)
}

/// The dbid of the data directory `dir`.
pub fn dbid(dir: &Path) -> String {
    status(dir)["dbid"].as_str().unwrap().to_string()
}
