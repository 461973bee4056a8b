//! A full disk under a running node: the store fails, the node stops and says why, reopens
//! its data directory by itself once the disk has room again, and keeps every unit it
//! acknowledged. The disk is a small tmpfs the test mounts (root), filled by another file, as
//! a log or a backup would fill a store machine's disk.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tmpfs of `size` mounted on a directory of its own; unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// `None` (after saying why) where this machine cannot mount one (not root); with
    /// `MESHNODE_REQUIRE_NETNS=1` (CI) that fails the test instead, as for the netns tests.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", s(at)])
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Tmpfs { at: at.to_path_buf() });
        }
        let why = text(&out.stderr);
        let required = std::env::var("MESHNODE_REQUIRE_NETNS").is_ok_and(|v| v == "1");
        assert!(!required, "cannot mount a tmpfs for the full-disk test: {why}");
        eprintln!("skipping the full-disk test: cannot mount a tmpfs ({why})");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", s(&self.at)]).status();
    }
}

/// One unit through the control socket of the node in `d`: its receipt (seq, physkey), or the
/// error the node answered; `None` while no node answers there.
fn submit(d: &Path, payload: &str) -> Option<Result<(u64, String), String>> {
    let stream = UnixStream::connect(control_socket(d)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut writer = stream;
    let line = serde_json::json!({"op": "submit", "payload": payload});
    writeln!(writer, "{line}").ok()?;
    let mut reply = String::new();
    if reader.read_line(&mut reply).ok()? == 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&reply).expect("a JSON reply");
    Some(match v["error"].as_str() {
        Some(e) => Err(e.to_string()),
        None => Ok((v["seq"].as_u64().unwrap(), v["physkey"].as_str().unwrap().to_string())),
    })
}

/// Fills the file system of `dir` with `dir/filler` until it refuses.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 64 << 10];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    path
}

#[test]
fn a_full_disk_stops_the_node_which_reopens_its_store_once_there_is_room() {
    let root = tempfile::tempdir().unwrap();
    // The data directory is the whole tmpfs; the node's log (`lane.log`, beside it) is not
    // on it, so the test reads every line the node wrote.
    let Some(disk) = Tmpfs::mount(&root.path().join("lane"), "16m") else { return };
    let d = disk.at.clone();
    ok(&["init", "--data-dir", s(&d), "--env", "test"]);
    let node = Running::start(&d, free_port());

    let payload = "s".repeat(20_000);
    let mut receipts: BTreeMap<u64, String> = BTreeMap::new();
    for _ in 0..20 {
        let (seq, physkey) = submit(&d, &payload).expect("the node answers").expect("accepted");
        receipts.insert(seq, physkey);
    }

    // Another program fills the disk: the next submits are refused, naming the cause, and the
    // node stops to reopen its store.
    let filler = fill(&d);
    let mut refused = None;
    for _ in 0..100 {
        match submit(&d, &payload) {
            Some(Ok((seq, physkey))) => {
                // What fitted in the space left (the logs buffer until their sync).
                receipts.insert(seq, physkey);
            }
            Some(Err(e)) => {
                refused = Some(e);
                break;
            }
            None => break, // stopped already
        }
    }
    if let Some(e) = &refused {
        assert!(e.contains("No space left on device"), "{e}");
    }
    wait_for("the node to stop on its store failure", &[&node], || {
        node.log_text().contains("the node stopped; it reopens")
    });
    let log = node.log_text();
    assert!(log.contains("the store failed: writing the daily logs failed"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");

    // Room again: the node reopens by itself and accepts units, with no operator.
    std::fs::remove_file(filler).unwrap();
    let mut after = None;
    wait_for("a submit to succeed after the reopen", &[&node], || {
        match submit(&d, "after the reopen") {
            Some(Ok(receipt)) => after = Some(receipt),
            _ => return false,
        }
        true
    });
    let (seq, physkey) = after.unwrap();
    assert!(receipts.keys().all(|s| *s < seq), "no seq handed out twice: {seq}");
    receipts.insert(seq, physkey);

    // Status tells the operator what happened.
    let st = status(&d);
    let failure = &st["last_store_failure"];
    assert!(failure["cause"].as_str().unwrap().contains("No space left on device"), "{st}");
    assert!(failure["restarts"].as_u64().unwrap() >= 1, "{st}");
    assert!(failure["next_attempt_unix_ms"].is_null(), "running again: {st}");
    let table = ok(&["--status", "--data-dir", s(&d)]);
    assert!(table.contains("failed") && table.contains("was reopened"), "{table}");

    // A clean stop, and every acknowledged unit is held, unchanged.
    node.stop();
    let held: BTreeMap<u64, String> = units(&d)
        .iter()
        .map(|u| (u["seq"].as_u64().unwrap(), u["physkey"].as_str().unwrap().to_string()))
        .collect();
    for (seq, physkey) in &receipts {
        assert_eq!(held.get(seq), Some(physkey), "unit {seq} acknowledged, then lost");
    }
}
