//! A lane's data directory put back in place to an earlier state (a VM snapshot reverted: the
//! same files, so the same dbid) hands out seqs again that its peers hold already, under other
//! units. Real nodes on loopback: what the lane sells after the revert still reaches the server.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// Copies a stopped node's data directory (what a snapshot holds).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Puts `dir` back to `copy` in place, as a VM snapshot's revert does at the block level: the
/// files keep their inodes (a copied or restored directory, whose install marker's inode
/// changes, takes a new dbid instead, see `datadir.rs`), later files are gone.
fn revert_in_place(copy: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let before = copy.join(entry.file_name());
        if !before.exists() {
            if entry.file_type().unwrap().is_dir() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            } else {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    for entry in std::fs::read_dir(copy).unwrap() {
        let entry = entry.unwrap();
        let target = dir.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            revert_in_place(&entry.path(), &target);
        } else {
            // Truncated and written over: the same inode.
            std::fs::write(&target, std::fs::read(entry.path()).unwrap()).unwrap();
        }
    }
}

/// Submits `n` sales at `dir`; their receipts, seq -> physkey.
fn sell(dir: &Path, n: usize, tag: &str) -> BTreeMap<u64, String> {
    let lines: String = (0..n)
        .map(|i| format!("{{\"kind\":\"TUBT\",\"body\":{{\"sale\":{i},\"at\":\"{tag}\"}}}}\n"))
        .collect();
    let out = run_with_input(&["submit", "--data-dir", s(dir), "--jsonl", "-"], lines.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["seq"].as_u64().unwrap(), r["physkey"].as_str().unwrap().to_string()))
        .collect()
}

/// What the server's status says the lane lacks of it, and it of the lane.
fn backlog(lane: &Path) -> Option<(u64, u64)> {
    let st = status(lane);
    let peer = st["node"]["peers"].as_array()?.first()?.clone();
    Some((peer["we_lack"].as_u64()?, peer["it_lacks"].as_u64()?))
}

#[test]
fn a_lane_put_back_to_a_copy_still_gets_what_it_sells_afterwards_to_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (dirs, _) = new_system(tmp.path(), "5,6,7,8", &["lane", "server"]);
    let (lane, server) = (&dirs[0], &dirs[1]);
    let port = free_port();
    let srv = Running::start_as(server, port, "127.0.0.1:0", "store-server");
    let node = Running::start(lane, port);
    let before = sell(lane, 5, "before the copy");
    wait_for("the server to hold the first sales", &[&srv, &node], || {
        units_total(server) == 5 && backlog(lane) == Some((0, 0))
    });
    node.stop();
    let copy = tmp.path().join("lane-copy");
    copy_dir(lane, &copy);

    let node = Running::start(lane, port);
    let lost = sell(lane, 5, "lost with the revert");
    wait_for("the server to hold the next sales", &[&srv, &node], || units_total(server) == 10);
    node.stop();
    srv.stop();

    // The revert; the lane sells while the server is down.
    let marker = std::fs::metadata(lane.join("install.marker")).unwrap().ino();
    revert_in_place(&copy, lane);
    assert_eq!(std::fs::metadata(lane.join("install.marker")).unwrap().ino(), marker);
    let node = Running::start(lane, port);
    let after = sell(lane, 3, "sold after the revert");
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        [6, 7, 8],
        "the copy hands 6-8 out again"
    );
    assert!(after.values().all(|k| !lost.values().any(|l| l == k)));

    let srv = Running::start_as(server, port, "127.0.0.1:0", "store-server");
    wait_for("the lane to notice and the two to converge", &[&srv, &node], || {
        status(lane)["node"]["own_conflict"].is_object() && backlog(lane) == Some((0, 0))
    });
    let st = status(lane);
    let conflict = &st["node"]["own_conflict"];
    assert_eq!(
        (conflict["our_head"].as_u64(), conflict["their_head"].as_u64()),
        (Some(8), Some(10))
    );
    // Only what lay above what the server was known to hold before the copy went again.
    assert_eq!(conflict["reissued"], 3, "{conflict}");
    assert_eq!(st["node"]["counters"]["own_conflicts"], 1);
    let table = ok(&["--status", "--data-dir", s(lane)]);
    assert!(table.contains("CONFLICT") && table.contains("up to seq 10"), "{table}");
    assert!(node.log_text().contains("rolled back"), "{}", node.log_text());
    // A sale now takes a seq nobody holds.
    let next = sell(lane, 1, "the next sale");
    assert!(next.keys().all(|&seq| seq > 13), "{next:?}");
    wait_for("the server to hold the next sale", &[&srv, &node], || units_total(server) == 14);
    node.stop();
    srv.stop();

    // Every sale reached the server: those from before the revert under their seqs, those sold
    // after it under the new seqs they were issued again with (same physkeys).
    let held: BTreeMap<String, u64> = units(server)
        .iter()
        .map(|u| (u["physkey"].as_str().unwrap().to_string(), u["seq"].as_u64().unwrap()))
        .collect();
    for (seq, key) in before.iter().chain(&lost) {
        assert_eq!(held.get(key), Some(seq), "sale {seq} from before the revert");
    }
    for key in after.values().chain(next.values()) {
        assert!(
            held.get(key).is_some_and(|&seq| seq > 10),
            "{key} sold after the revert: {held:?}"
        );
    }
    ok(&["log", "verify", "--data-dir", s(lane)]);
}
