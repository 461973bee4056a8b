//! kill -9 of a submitting process at random moments: every acknowledged unit survives, the
//! store opens without manual repair, and no sequence number is ever reused.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

/// One round: stream units into `submit --jsonl -`, kill -9 after `kill_after` receipts (or
/// at once if 0), and return the receipts seen (origin, seq, physkey).
fn round(d: &std::path::Path, round_no: u64, kill_after: usize) -> Vec<(String, u64, String)> {
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
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        // A line is complete only with its newline; lines() drops it, and a torn last line
        // would not parse as JSON, so it is not counted as acknowledged.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { break };
        acked.push((
            v["origin"].as_str().unwrap().to_string(),
            v["seq"].as_u64().unwrap(),
            v["physkey"].as_str().unwrap().to_string(),
        ));
        if acked.len() >= kill_after || Instant::now() > deadline {
            break;
        }
    }
    // SIGKILL: no flush, no destructors.
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    acked
}

#[test]
fn kill_9_while_submitting_loses_nothing_acknowledged_and_never_reuses_a_seq() {
    let tmp = tempfile::tempdir().unwrap();
    // Small log files so kills also land around file rotation.
    let d = init(tmp.path(), "a", &[]);
    let cfg = std::fs::read_to_string(d.join("meshnode.toml")).unwrap();
    std::fs::write(
        d.join("meshnode.toml"),
        cfg.replace("file_size_limit = 67108864", "file_size_limit = 262144"),
    )
    .unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut origin = None;
    for round_no in 0..12 {
        let kill_after = match round_no % 3 {
            0 => rng.gen_range(0..5),
            1 => rng.gen_range(50..500),
            _ => rng.gen_range(1000..4000),
        };
        for (o, seq, physkey) in round(&d, round_no, kill_after) {
            origin.get_or_insert_with(|| o.clone());
            assert_eq!(Some(&o), origin.as_ref());
            if let Some(previous) = acked.insert(seq, physkey.clone()) {
                panic!("seq {seq} acknowledged twice: {previous} and then {physkey}");
            }
        }
    }
    assert!(acked.len() > 1000, "the test should acknowledge many units, got {}", acked.len());

    // Opens without manual repair, holds every acknowledged unit with the same physkey.
    let held = units(&d);
    let held: BTreeMap<u64, String> = held
        .iter()
        .map(|u| (u["seq"].as_u64().unwrap(), u["physkey"].as_str().unwrap().to_string()))
        .collect();
    for (seq, physkey) in &acked {
        assert_eq!(held.get(seq), Some(physkey), "acknowledged seq {seq} lost or changed");
    }
    // Seqs are contiguous from 1 (no gap a peer would wait for forever).
    let max = *held.keys().last().unwrap();
    assert_eq!(held.len() as u64, max, "gaps in own seqs");
    // The next submit continues after everything held.
    let out = run_with_input(&["submit", "--data-dir", s(&d)], b"after the storm");
    let next: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(next["seq"], max + 1);
    // And the logs verify clean.
    ok(&["log", "verify", "--data-dir", s(&d)]);
}
