//! kill -9 at random moments, of a process submitting straight into the store and of a running
//! node taking submits through its control socket: every acknowledged unit survives, the store
//! opens without manual repair, and no sequence number is ever reused.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

/// A receipt: origin, seq, physkey.
type Receipt = (String, u64, String);

/// One round: stream units into `submit --jsonl -`, kill -9 after `kill_after` receipts (or
/// at once if 0), and return the receipts seen (origin, seq, physkey). With `node`, the
/// submits go through that running node and the node is the one killed, after at least one
/// receipt (so the client is connected to it, not to the store); the receipts the client
/// printed before it saw the node gone are counted too.
fn round(
    d: &std::path::Path,
    round_no: u64,
    kill_after: usize,
    node: Option<Running>,
) -> Vec<Receipt> {
    let mut child = cmd(&["submit", "--data-dir", s(d), "--jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !writer_stop.load(Ordering::Relaxed) {
            let line = format!(
                "{{\"body\":{{\"round\":{round_no},\"i\":{i},\"pad\":\"{}\"}}}}\n",
                "p".repeat(200)
            );
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
            i += 1;
        }
    });
    let kill_after = if node.is_some() { kill_after.max(1) } else { kill_after };
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < kill_after && Instant::now() < deadline {
        match stdout.next().and_then(|line| receipt(&line.ok()?)) {
            Some(r) => acked.push(r),
            None => break,
        }
    }
    // SIGKILL: no flush, no destructors.
    match node {
        Some(node) => {
            node.kill_9();
            // No more input, so the client ends whatever it does next. Every receipt it
            // printed is an acknowledgement of the node's; then it says the node closed the
            // connection and exits.
            stop.store(true, Ordering::Relaxed);
            acked.extend(stdout.map_while(|line| receipt(&line.ok()?)));
        }
        None => child.kill().unwrap(),
    }
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    acked
}

/// A receipt line. A line is complete only with its newline; `lines()` drops it, and a torn
/// last line does not parse as JSON, so it is not counted as acknowledged.
fn receipt(line: &str) -> Option<Receipt> {
    let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
    Some((
        v["origin"].as_str()?.to_string(),
        v["seq"].as_u64()?,
        v["physkey"].as_str()?.to_string(),
    ))
}

/// A new data directory with small log files, so kills also land around file rotation.
fn small_files_store(root: &std::path::Path) -> std::path::PathBuf {
    let d = init(root, "a", &[]);
    let cfg = std::fs::read_to_string(d.join("meshnode.toml")).unwrap();
    std::fs::write(
        d.join("meshnode.toml"),
        cfg.replace("file_size_limit = 67108864", "file_size_limit = 262144"),
    )
    .unwrap();
    d
}

/// Receipts of all rounds by seq; fails on a seq acknowledged twice or another origin.
#[derive(Default)]
struct Acked {
    by_seq: BTreeMap<u64, String>,
    origin: Option<String>,
}

impl Acked {
    fn add(&mut self, receipts: Vec<Receipt>) {
        for (o, seq, physkey) in receipts {
            self.origin.get_or_insert_with(|| o.clone());
            assert_eq!(Some(&o), self.origin.as_ref());
            if let Some(previous) = self.by_seq.insert(seq, physkey.clone()) {
                panic!("seq {seq} acknowledged twice: {previous} and then {physkey}");
            }
        }
    }
}

/// How many receipts a round waits for before the kill: at once, early, or deep in a stream.
fn kill_after(rng: &mut impl Rng, round_no: u64) -> usize {
    match round_no % 3 {
        0 => rng.gen_range(0..5),
        1 => rng.gen_range(50..500),
        _ => rng.gen_range(1000..4000),
    }
}

#[test]
fn kill_9_while_submitting_loses_nothing_acknowledged_and_never_reuses_a_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let d = small_files_store(tmp.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked = Acked::default();
    for round_no in 0..12 {
        acked.add(round(&d, round_no, kill_after(&mut rng, round_no), None));
    }
    holds_every_acknowledged_unit(&d, &acked);
}

/// `meshnode run` killed with -9 while an application streams submits through its control
/// socket (issue 5: "kill -9 loses nothing acknowledged"): every receipt it gave, up to the
/// last line it wrote before it died, is held after the restart, under the same seq.
#[test]
fn kill_9_of_a_running_node_loses_nothing_it_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = small_files_store(tmp.path());
    let port = free_port();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e7);
    let mut acked = Acked::default();
    for round_no in 0..6 {
        let node = Running::start(&d, port);
        acked.add(round(&d, round_no, kill_after(&mut rng, round_no), Some(node)));
    }
    // The last round's node is restarted once more, so its open after the kill is checked too.
    Running::start(&d, port).stop();
    holds_every_acknowledged_unit(&d, &acked);
}

/// The store opens without manual repair and holds every acknowledged unit with the same
/// physkey, with no gap in its own seqs; the next submit continues after them, and the logs
/// verify.
fn holds_every_acknowledged_unit(d: &std::path::Path, acked: &Acked) {
    let acked = &acked.by_seq;
    assert!(acked.len() > 1000, "the test should acknowledge many units, got {}", acked.len());

    let held = units(d);
    let held: BTreeMap<u64, String> = held
        .iter()
        .map(|u| (u["seq"].as_u64().unwrap(), u["physkey"].as_str().unwrap().to_string()))
        .collect();
    for (seq, physkey) in acked {
        assert_eq!(held.get(seq), Some(physkey), "acknowledged seq {seq} lost or changed");
    }
    // Seqs are contiguous from 1 (no gap a peer would wait for forever).
    let max = *held.keys().last().unwrap();
    assert_eq!(held.len() as u64, max, "gaps in own seqs");
    // The next submit continues after everything held.
    let out = run_with_input(&["submit", "--data-dir", s(d)], b"after the storm");
    let next: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(next["seq"], max + 1);
    // And the logs verify clean.
    ok(&["log", "verify", "--data-dir", s(d)]);
}
