//! The control socket through the real binary: `submit` through a running node, `subscribe`
//! on another node of the same system, crashes and clean restarts of either side, and what a
//! client that sends garbage gets. Nodes run on loopback, each test on its own discovery port
//! (so tests run in parallel); every wait has a deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cmd, free_port, ok, s, signal, wait_for, Running};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn socket(dir: &Path) -> PathBuf {
    common::control_socket(dir)
}

fn status(dir: &Path) -> Value {
    serde_json::from_str(&ok(&["--status", "--json", "--data-dir", s(dir)])).unwrap()
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

/// Two members of a new system under `root`, both running on loopback on one discovery port:
/// their directories, the port, and the nodes.
fn running_pair(root: &Path) -> (Vec<PathBuf>, u16, Running, Running) {
    let dirs = member_dirs(root, &["a", "b"]);
    let port = free_port();
    let node_a = Running::start(&dirs[0], port);
    let node_b = Running::start(&dirs[1], port);
    (dirs, port, node_a, node_b)
}

/// A control-socket connection of the test's own, as an application holds one: JSON lines
/// out, one reply line at a time in (each within [`DEADLINE`]).
struct RawClient {
    writer: UnixStream,
    lines: std::io::Lines<BufReader<UnixStream>>,
}

impl RawClient {
    fn connect(dir: &Path) -> RawClient {
        let stream = UnixStream::connect(socket(dir)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        RawClient { writer: stream.try_clone().unwrap(), lines: BufReader::new(stream).lines() }
    }

    /// Writes `lines` (each ending in a newline).
    fn send(&mut self, lines: &str) {
        self.writer.write_all(lines.as_bytes()).unwrap();
    }

    /// The next reply line, as JSON.
    fn next(&mut self) -> Value {
        serde_json::from_str(&self.lines.next().unwrap().unwrap()).unwrap()
    }
}

fn dbid(dir: &Path) -> String {
    status(dir)["dbid"].as_str().unwrap().to_string()
}

/// `submit --jsonl` of `bodies` (JSON texts); returns the receipts. Asserts success.
fn submit_jsonl(dir: &Path, lines: &str) -> Vec<Value> {
    let out =
        common::run_with_input(&["submit", "--data-dir", s(dir), "--jsonl", "-"], lines.as_bytes());
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    common::text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sale_lines(from: usize, to: usize, pad: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "{{\"body\":{{\"sale\":{i},\"pad\":\"{}\"}},\"urgent\":{}}}\n",
                "x".repeat(pad),
                i % 7 == 0
            )
        })
        .collect()
}

/// A `meshnode subscribe` process whose complete stdout lines arrive on a channel.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
    err: PathBuf,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Subscriber {
    fn start(dir: &Path, extra: &[&str]) -> Subscriber {
        let (mut child, err) = spawn_subscriber(dir, extra);
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in complete_lines(stdout) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber { child, lines, err }
    }

    /// The next `n` lines as JSON, within the deadline.
    fn take(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                    panic!("line {i} of {n} did not come; stderr: {}", self.stderr())
                });
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    }

    /// SIGTERM; expects a clean exit and returns the lines printed since the last `take`.
    fn stop(mut self) -> Vec<Value> {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "subscriber did not stop: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "subscriber exited with {status}: {}", self.stderr());
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(serde_json::from_str(&line).unwrap());
        }
        rest
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

fn spawn_subscriber(dir: &Path, extra: &[&str]) -> (Child, PathBuf) {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let err = dir.with_extension(format!("subscribe.{n}.err"));
    let mut args = vec!["subscribe", "--data-dir", s(dir)];
    args.extend_from_slice(extra);
    let child = cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start meshnode subscribe");
    (child, err)
}

/// The newline-terminated lines of `stdout` until EOF (a cut last line is dropped, as a
/// consumer of a killed subscriber must).
fn complete_lines(mut stdout: ChildStdout) -> impl Iterator<Item = String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    std::iter::from_fn(move || loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            return Some(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    })
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect()
}

#[test]
fn submit_through_a_running_node_reaches_a_subscriber_on_another_node() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, _, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    let origin = dbid(a);
    let mode = std::fs::metadata(socket(a)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is for the owner only");

    // One unit from a file, then JSON lines: the directory is locked by the node, so these
    // can only have gone through its socket.
    let payload = root.path().join("sale.json");
    std::fs::write(&payload, br#"{"sale":9.95}"#).unwrap();
    let first = ok(&["submit", "--data-dir", s(a), "--file", s(&payload)]);
    let first: Value = serde_json::from_str(first.trim()).unwrap();
    assert_eq!((first["origin"].as_str(), first["seq"].as_u64()), (Some(origin.as_str()), Some(1)));
    let mut receipts = vec![first];
    receipts.extend(submit_jsonl(a, &sale_lines(0, 20, 10)));
    assert_eq!(seqs(&receipts), (1..=21).collect::<Vec<_>>());

    // A bad line through the node: its number, the lines before it kept, nothing after.
    let input = "{\"body\":1}\n{\"body\":2}\n{\"kind\":\"TUXX\",\"body\":3}\n{\"body\":4}\n";
    let out =
        common::run_with_input(&["submit", "--data-dir", s(a), "--jsonl", "-"], input.as_bytes());
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(err.contains("line 3") && err.contains("TUXX"), "{err}");
    let kept: Vec<Value> =
        common::text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(seqs(&kept), [22, 23]);
    receipts.extend(kept);
    // An oversized payload is refused by the node as it was by the store.
    let big = vec![b'x'; (1 << 20) + 1];
    let out = common::run_with_input(&["submit", "--data-dir", s(a)], &big);
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(err.contains("1048577") && err.contains("payload_limit"), "{err}");

    // The other node delivers each unit once, in order, with everything a POS needs.
    let sub = Subscriber::start(b, &[]);
    let lines = sub.take(23);
    assert_eq!(seqs(&lines), (1..=23).collect::<Vec<_>>());
    for (line, receipt) in lines.iter().zip(&receipts) {
        assert_eq!(line["origin"], origin.as_str());
        assert_eq!(line["physkey"], receipt["physkey"]);
        assert_eq!(line["kind"], "TUBT");
        assert!(line["urgency"].is_string(), "{line}");
    }
    assert_eq!(lines[0]["payload"], r#"{"sale":9.95}"#);
    assert_eq!(lines[1]["payload"], r#"{"pad":"xxxxxxxxxx","sale":0}"#);
    assert_eq!(lines[1]["urgency"], "urgent");
    assert_eq!(lines[2]["urgency"], "normal");
    assert_eq!(lines[22]["payload"], "2");

    // `--status` asks the running node.
    let st = status(b);
    assert_eq!(st["running"], true);
    // Delivered before their own log sync: indexed soon after.
    wait_for("the other node to index every unit", &[&node_a, &node_b], || {
        status(b)["units_total"] == 23
    });
    assert!(sub.stop().is_empty(), "nothing more to print");

    node_a.stop();
    node_b.stop();
    // No node: submit opens the store directly again.
    let direct = submit_jsonl(a, "{\"body\":5}\n");
    assert_eq!(seqs(&direct), [24]);
}

#[test]
fn garbage_on_the_socket_gets_an_error_line_and_the_node_keeps_running() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a"]);
    let a = &dirs[0];
    let node = Running::start(a, free_port());
    let stream = UnixStream::connect(socket(a)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &[u8]| -> Value {
        writer.write_all(line).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    };
    for garbage in [
        &b"garbage\n"[..],
        b"\xff\xfe\n",
        b"[1,2]\n",
        b"{\"op\":\"launch\"}\n",
        b"{\"op\":\"submit\"}\n",
        b"{\"op\":\"ack\",\"origin\":\"AAAAAAAAAAAAAAA\",\"seq\":5}\n",
    ] {
        let reply = ask(garbage);
        assert!(reply["error"].is_string(), "{garbage:?} got {reply}");
    }
    // Still serving, on the same connection and to the CLI.
    let reply = ask(b"{\"op\":\"status\"}\n");
    assert_eq!(reply["status"]["units_total"], 0, "{reply}");
    assert_eq!(reply["control"]["clients"], 1, "{reply}");
    let reply = ask(b"{\"op\":\"submit\",\"body\":{\"ok\":true}}\n");
    assert_eq!(reply["seq"], 1, "{reply}");
    // One subscriber at a time.
    assert!(ask(b"{\"op\":\"subscribe\"}\n")["subscribed"].is_object());
    let mut other = UnixStream::connect(socket(a)).unwrap();
    other.write_all(b"{\"op\":\"subscribe\"}\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&other).read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["code"], "subscriber_busy", "{reply}");
    assert_eq!(status(a)["running"], true);
    node.stop();
}

#[test]
fn a_subscriber_killed_mid_stream_loses_nothing_and_repeats_at_most_one_line() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, _, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    // ~1 KB lines: far more than a pipe holds, so the subscriber blocks on stdout mid-stream.
    const N: u64 = 400;
    submit_jsonl(a, &sale_lines(0, N as usize, 1000));
    wait_for("b to hold every unit", &[&node_a, &node_b], || status(b)["units_total"] == N);

    let (mut child, _err) = spawn_subscriber(b, &[]);
    let mut lines = complete_lines(child.stdout.take().unwrap());
    let mut first: Vec<Value> =
        lines.by_ref().take(50).map(|l| serde_json::from_str(&l).unwrap()).collect();
    assert_eq!(first.len(), 50);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    first.extend(lines.map(|l| serde_json::from_str::<Value>(&l).unwrap()));
    let printed = seqs(&first);
    assert_eq!(printed, (1..=printed.len() as u64).collect::<Vec<_>>());
    let last = *printed.last().unwrap();
    assert!(last < N, "killed mid-stream (printed {last} of {N})");

    let sub = Subscriber::start(b, &[]);
    let head = sub.take(1);
    let start = head[0]["seq"].as_u64().unwrap();
    assert!(
        start == last || start == last + 1,
        "restarted at {start} after printing {last}: {}",
        node_b.log_text()
    );
    let rest = sub.take((N - start) as usize);
    let again: Vec<u64> = std::iter::once(start).chain(seqs(&rest)).collect();
    assert_eq!(again, (start..=N).collect::<Vec<_>>(), "no unit lost, each in order");
    assert!(sub.stop().is_empty());
    node_a.stop();
    node_b.stop();
}

/// A consumer that stops reading must not keep the subscriber from stopping: SIGTERM while
/// stdout is full ends it cleanly, every line written whole is acknowledged, and the next
/// subscriber starts right after the last complete line.
#[test]
fn a_subscriber_stopped_while_its_consumer_does_not_read_repeats_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, _, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    const N: u64 = 400;
    submit_jsonl(a, &sale_lines(0, N as usize, 1000));
    wait_for("b to hold every unit", &[&node_a, &node_b], || status(b)["units_total"] == N);

    let (mut child, err) = spawn_subscriber(b, &[]);
    let stdout = child.stdout.take().unwrap();
    let fd = stdout.as_raw_fd();
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on our own pipe's read end into a c_int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n as usize
    };
    // Full: more than half of the pipe's 64 KiB queued, and no more coming.
    let deadline = Instant::now() + DEADLINE;
    let mut last_seen = (0, 0);
    while last_seen.1 < 5 {
        assert!(Instant::now() < deadline, "stdout never filled ({} bytes)", queued());
        std::thread::sleep(Duration::from_millis(20));
        let now = queued();
        last_seen =
            if now > 32 * 1024 && now == last_seen.0 { (now, last_seen.1 + 1) } else { (now, 0) };
    }
    signal(&child, libc::SIGTERM);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(Instant::now() < deadline, "subscriber blocked on a full stdout: {stderr}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "clean exit, got {status}");
    let printed: Vec<Value> =
        complete_lines(stdout).map(|l| serde_json::from_str(&l).unwrap()).collect();
    let printed = seqs(&printed);
    assert_eq!(printed, (1..=printed.len() as u64).collect::<Vec<_>>());
    let last = *printed.last().unwrap();
    assert!(last < N, "stopped mid-stream (printed {last} of {N})");

    let sub = Subscriber::start(b, &[]);
    let rest = sub.take((N - last) as usize);
    assert_eq!(seqs(&rest), (last + 1..=N).collect::<Vec<_>>(), "each unit once, in order");
    assert!(sub.stop().is_empty());
    node_a.stop();
    node_b.stop();
}

#[test]
fn clean_restarts_of_the_node_and_the_subscriber_print_each_unit_once() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, port, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    submit_jsonl(a, &sale_lines(0, 10, 10));
    let sub = Subscriber::start(b, &[]);
    assert_eq!(seqs(&sub.take(10)), (1..=10).collect::<Vec<_>>());

    // The node stops cleanly while the subscriber waits; units arrive meanwhile elsewhere.
    node_b.stop();
    submit_jsonl(a, &sale_lines(10, 20, 10));
    let node_b = Running::start(b, port);
    assert_eq!(seqs(&sub.take(10)), (11..=20).collect::<Vec<_>>(), "continues where it stopped");

    // The subscriber stops cleanly; a new one starts after the last line printed.
    assert!(sub.stop().is_empty(), "no line twice");
    submit_jsonl(a, "{\"body\":\"late\"}\n");
    let sub = Subscriber::start(b, &[]);
    let next = sub.take(1);
    assert_eq!(next[0]["seq"], 21);
    assert_eq!(next[0]["payload"], "\"late\"");
    assert!(sub.stop().is_empty());

    // --from-start replays what was acknowledged, from seq 1.
    let sub = Subscriber::start(b, &["--from-start"]);
    assert_eq!(seqs(&sub.take(21)), (1..=21).collect::<Vec<_>>());
    assert!(sub.stop().is_empty());
    node_a.stop();
    node_b.stop();
}

/// Concurrent clients pipelining submits: the node batches them across connections, and every
/// client still gets exactly one receipt per request, in its own order, for its own unit.
#[test]
fn concurrent_clients_each_get_their_own_receipts_in_order() {
    const CLIENTS: usize = 8;
    const EACH: usize = 250;
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a"]);
    let node = Running::start(&dirs[0], free_port());
    let own = dbid(&dirs[0]);
    let key = |c: usize, i: usize| format!("CONCURRENT{c:02}N{i:019}");
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let path = socket(&dirs[0]);
            std::thread::spawn(move || {
                let stream = UnixStream::connect(&path).unwrap();
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut requests = String::new();
                for i in 0..EACH {
                    // The last one repeats the first physkey: answered `existing`.
                    let k = if i + 1 == EACH { key(c, 0) } else { key(c, i) };
                    requests.push_str(&format!(
                        "{{\"op\":\"submit\",\"physkey\":\"{k}\",\"body\":{{\"client\":{c},\"i\":{i}}}}}\n"
                    ));
                }
                writer.write_all(requests.as_bytes()).unwrap();
                let mut replies = BufReader::new(stream).lines();
                (0..EACH)
                    .map(|_| serde_json::from_str::<Value>(&replies.next().unwrap().unwrap()).unwrap())
                    .collect::<Vec<Value>>()
            })
        })
        .collect();
    let mut all_seqs = Vec::new();
    for (c, thread) in threads.into_iter().enumerate() {
        let receipts = thread.join().unwrap();
        assert_eq!(receipts.len(), EACH);
        let mut last = 0;
        for (i, r) in receipts.iter().enumerate() {
            assert!(r.get("error").is_none(), "client {c} request {i}: {r}");
            assert_eq!(r["origin"], own.as_str(), "{r}");
            let seq = r["seq"].as_u64().unwrap();
            if i + 1 == EACH {
                assert_eq!(r["physkey"], key(c, 0).as_str(), "{r}");
                assert_eq!(r["existing"], true, "{r}");
                assert_eq!(seq, receipts[0]["seq"].as_u64().unwrap());
                continue;
            }
            assert_eq!(r["physkey"], key(c, i).as_str(), "client {c} request {i}: {r}");
            assert!(r.get("existing").is_none(), "{r}");
            assert!(seq > last, "client {c}: receipts in request order");
            last = seq;
            all_seqs.push(seq);
        }
    }
    all_seqs.sort_unstable();
    let expected: Vec<u64> = (1..=(CLIENTS * (EACH - 1)) as u64).collect();
    assert_eq!(all_seqs, expected, "every unit stored once, no seq lost or reused");
    assert_eq!(status(&dirs[0])["units_total"], CLIENTS * (EACH - 1), "{}", node.log_text());
    node.stop();
}

/// Pipelined behind a refused submit, nothing of the connection is stored, exactly as when
/// submits came one at a time; another connection's submits in the same turn are not harmed.
#[test]
fn pipelined_submits_behind_a_refused_one_are_not_stored() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a"]);
    let node = Running::start(&dirs[0], free_port());
    let big = "x".repeat((1 << 20) + 1);
    let connect = || {
        let stream = UnixStream::connect(socket(&dirs[0])).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        (stream.try_clone().unwrap(), BufReader::new(stream).lines())
    };
    let ((mut w1, mut r1), (mut w2, mut r2)) = (connect(), connect());
    let small = |i: usize| format!("{{\"op\":\"submit\",\"body\":{{\"i\":{i}}}}}\n");
    let refused = format!("{}{{\"op\":\"submit\",\"payload\":\"{big}\"}}\n{}", small(1), small(2));
    let other: String = (10..20).map(small).collect();
    w1.write_all(refused.as_bytes()).unwrap();
    w2.write_all(other.as_bytes()).unwrap();
    let next = |r: &mut std::io::Lines<BufReader<UnixStream>>| -> Value {
        serde_json::from_str(&r.next().unwrap().unwrap()).unwrap()
    };
    assert!(next(&mut r1)["seq"].is_u64());
    let e = next(&mut r1)["error"].as_str().unwrap().to_string();
    assert!(e.starts_with("unit refused; nothing was written") && e.contains("1048577"), "{e}");
    let e = next(&mut r1)["error"].as_str().unwrap().to_string();
    assert!(e.starts_with("not submitted: an earlier submit"), "{e}");
    for _ in 10..20 {
        let r = next(&mut r2);
        assert!(r["seq"].is_u64(), "{r}");
    }
    assert_eq!(status(&dirs[0])["units_total"], 11, "{}", node.log_text());
    node.stop();
}

/// A connection's replies keep its order: a status request pipelined behind thousands of
/// submits (several group commits, whose log syncs run while the next is written) is answered
/// after the last receipt.
#[test]
fn a_request_behind_pipelined_submits_is_answered_after_their_receipts() {
    let root = tempfile::tempdir().unwrap();
    let dirs = member_dirs(root.path(), &["a"]);
    let node = Running::start(&dirs[0], free_port());
    let stream = UnixStream::connect(socket(&dirs[0])).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream).lines();
    let submits = 6000;
    let mut request: String =
        (0..submits).map(|i| format!("{{\"op\":\"submit\",\"body\":{{\"i\":{i}}}}}\n")).collect();
    request.push_str("{\"op\":\"status\"}\n");
    let write = std::thread::spawn(move || writer.write_all(request.as_bytes()).unwrap());
    for i in 0..submits {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(line["seq"].as_u64(), Some(i + 1), "receipt {i}: {line}");
    }
    let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["status"]["units_total"], submits, "{last}");
    write.join().unwrap();
    node.stop();
}

/// A connection's replies keep its order: a status request pipelined behind hundreds of
/// acknowledgements (batched into store flushes, each answered once its cursor is durable)
/// comes after the last of their answers, and after a restart the cursor covers them all. The
/// answers come on the loop today; this guards the order should they ever come later (a flush
/// off the loop was tried in session 10, and this test caught the missing gate).
#[test]
fn a_request_behind_pipelined_acknowledgements_is_answered_after_them() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, port, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    let units = 300;
    submit_jsonl(a, &sale_lines(0, units, 10));
    let origin = dbid(a);

    let mut app = RawClient::connect(b);
    app.send("{\"op\":\"subscribe\"}\n");
    assert!(app.next()["subscribed"].is_object());
    for seq in 1..=units as u64 {
        let line = app.next();
        assert_eq!((line["origin"].as_str(), line["seq"].as_u64()), (Some(&*origin), Some(seq)));
    }
    let mut request: String = (1..=units)
        .map(|seq| format!("{{\"op\":\"ack\",\"origin\":\"{origin}\",\"seq\":{seq}}}\n"))
        .collect();
    request.push_str("{\"op\":\"status\"}\n");
    app.send(&request);
    for seq in 1..=units as u64 {
        let line = app.next();
        assert_eq!(line["acked"]["seq"].as_u64(), Some(seq), "answer {seq}: {line}");
        assert_eq!(line["acked"]["origin"], origin.as_str(), "{line}");
    }
    let last = app.next();
    // Delivered before their own log sync (the origin made them durable), so some may still
    // wait for it: held or syncing, every unit is in.
    let status = &last["status"];
    let held = status["units_total"].as_u64().unwrap_or(0);
    let syncing = status["queues"]["received_syncing"].as_u64().unwrap_or(0);
    assert_eq!(held + syncing, units as u64, "{last}");
    drop(app);
    // Durable: after a restart the next subscriber starts past every acknowledged unit.
    node_b.stop();
    let node_b = Running::start(b, port);
    submit_jsonl(a, &sale_lines(units, units + 1, 10));
    let sub = Subscriber::start(b, &[]);
    assert_eq!(seqs(&sub.take(1)), [units as u64 + 1]);
    sub.stop();
    node_a.stop();
    node_b.stop();
}

/// An application that acknowledged part of what it read and then crashed, on a node that is
/// then killed with -9: the next subscriber gets exactly the units after the last acknowledged
/// one, in order. The acknowledged ones never come again (the `acked` reply means durable),
/// and the unacknowledged ones the crashed application had read come again.
#[test]
fn after_a_crash_of_the_application_and_a_kill_9_of_the_node_delivery_resumes_after_the_last_ack() {
    let root = tempfile::tempdir().unwrap();
    let (dirs, port, node_a, node_b) = running_pair(root.path());
    let (a, b) = (&dirs[0], &dirs[1]);
    let (units, acked) = (200u64, 120u64);
    submit_jsonl(a, &sale_lines(0, units as usize, 10));
    let origin = dbid(a);

    // The application reads every unit but acknowledges only the first 120, then crashes: its
    // connection drops with no goodbye.
    {
        let mut app = RawClient::connect(b);
        app.send("{\"op\":\"subscribe\"}\n");
        assert!(app.next()["subscribed"].is_object());
        for seq in 1..=units {
            assert_eq!(app.next()["seq"].as_u64(), Some(seq));
        }
        app.send(&format!("{{\"op\":\"ack\",\"origin\":\"{origin}\",\"seq\":{acked}}}\n"));
        assert_eq!(app.next()["acked"]["seq"].as_u64(), Some(acked));
    }
    node_b.kill_9();
    let node_b = Running::start(b, port);
    let sub = Subscriber::start(b, &[]);
    let again = sub.take((units - acked) as usize);
    assert_eq!(seqs(&again), (acked + 1..=units).collect::<Vec<_>>());
    assert!(again.iter().all(|l| l["origin"] == origin.as_str()));
    // Nothing more: one unit submitted now is the very next line.
    submit_jsonl(a, &sale_lines(units as usize, units as usize + 1, 10));
    assert_eq!(seqs(&sub.take(1)), [units + 1]);
    sub.stop();
    node_a.stop();
    node_b.stop();
}
