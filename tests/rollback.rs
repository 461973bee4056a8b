//! A lane's data directory put back in place to an earlier state (a VM snapshot reverted: the
//! same files, so the same dbid) hands out seqs again that its peers hold already, under other
//! units. Real nodes on loopback: what the lane sells after the revert still reaches the server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// The own units the lane knows the server holds, compared with its own.
fn confirmed(lane: &Path) -> Option<u64> {
    let st = status(lane);
    st["node"]["peers"].as_array()?.first()?["own_confirmed"].as_u64()
}

/// Every physkey held at `dir`, with the seqs it is held under.
fn held(dir: &Path) -> BTreeSet<(String, u64)> {
    units(dir)
        .iter()
        .map(|u| (u["physkey"].as_str().unwrap().to_string(), u["seq"].as_u64().unwrap()))
        .collect()
}

/// A lane and a store server, the lane's data directory put back in place while the server is
/// down: sales before a copy of the lane's directory, sales lost with the revert, and sales
/// made after it. The two nodes are running again when it returns.
struct Reverted {
    sales: Sales,
    node: Running,
    srv: Running,
}

/// The two data directories, and the receipts of the three kinds of sale (seq -> physkey).
struct Sales {
    _tmp: tempfile::TempDir,
    lane: PathBuf,
    server: PathBuf,
    before: BTreeMap<u64, String>,
    lost: BTreeMap<u64, String>,
    after: BTreeMap<u64, String>,
}

fn revert(before_n: usize, lost_n: usize, after_n: usize) -> Reverted {
    let tmp = tempfile::tempdir().unwrap();
    let (dirs, _) = new_system(tmp.path(), "5,6,7,8", &["lane", "server"]);
    let (lane, server) = (dirs[0].clone(), dirs[1].clone());
    let port = free_port();
    let srv = Running::start_as(&server, port, "127.0.0.1:0", "store-server");
    let node = Running::start(&lane, port);
    let before = sell(&lane, before_n, "before the copy");
    // Until the lane has recorded it (the server compared them): the copy keeps that record.
    wait_for("the server to hold the first sales", &[&srv, &node], || {
        units_total(&server) == before_n as u64 && confirmed(&lane) == Some(before_n as u64)
    });
    node.stop();
    let copy = tmp.path().join("lane-copy");
    copy_dir(&lane, &copy);

    let node = Running::start(&lane, port);
    let lost = sell(&lane, lost_n, "lost with the revert");
    let total = (before_n + lost_n) as u64;
    wait_for("the server to hold the next sales", &[&srv, &node], || {
        units_total(&server) == total && confirmed(&lane) == Some(total)
    });
    node.stop();
    srv.stop();

    // The revert; the lane sells while the server is down.
    let marker = std::fs::metadata(lane.join("install.marker")).unwrap().ino();
    revert_in_place(&copy, &lane);
    assert_eq!(std::fs::metadata(lane.join("install.marker")).unwrap().ino(), marker);
    let node = Running::start(&lane, port);
    let after = sell(&lane, after_n, "sold after the revert");
    let first = before_n as u64 + 1;
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        (first..first + after_n as u64).collect::<Vec<_>>(),
        "the copy hands the lost seqs out again"
    );
    assert!(after.values().all(|k| !lost.values().any(|l| l == k)));
    let srv = Running::start_as(&server, port, "127.0.0.1:0", "store-server");
    Reverted { sales: Sales { _tmp: tmp, lane, server, before, lost, after }, node, srv }
}

impl Sales {
    /// Every sale is held at both ends: those from before the revert under their seqs at the
    /// server, and each physkey under some seq at the lane and the server.
    fn every_sale_everywhere(&self, extra: &BTreeMap<u64, String>) {
        let (at_lane, at_server) = (held(&self.lane), held(&self.server));
        for (seq, key) in self.before.iter().chain(&self.lost) {
            assert!(at_server.contains(&(key.clone(), *seq)), "sale {seq} from before the revert");
        }
        let all = self.before.values().chain(self.lost.values()).chain(self.after.values());
        for key in all.chain(extra.values()) {
            for (name, held) in [("lane", &at_lane), ("server", &at_server)] {
                assert!(held.iter().any(|(k, _)| k == key), "{key} at the {name}: {held:?}");
            }
        }
    }
}

#[test]
fn a_lane_put_back_to_a_copy_still_gets_what_it_sells_afterwards_to_the_server() {
    let r = revert(5, 5, 3);
    let (lane, server) = (&r.sales.lane, &r.sales.server);
    // Seen by heads (the server holds 10, the lane knows 8), then by content: the lane offers
    // 6-8 for comparison, and the server sends its own units of those seqs back.
    wait_for("the lane to notice twice and the two to converge", &[&r.srv, &r.node], || {
        let st = status(lane);
        st["node"]["counters"]["own_conflicts"] == 2 && backlog(lane) == Some((0, 0))
    });
    let st = status(lane);
    let conflict = &st["node"]["own_conflict"];
    assert_eq!(
        (conflict["differing"].as_u64(), conflict["their_head"].as_u64()),
        (Some(3), Some(8)),
        "{conflict}"
    );
    // 6-8 went again at the first sight (only what lay above what the server was known to
    // hold before the copy), the server's 6-8 at the second.
    assert_eq!(st["node"]["counters"]["units_reissued"], 6, "{st}");
    assert_eq!(conflict["reissued"], 3, "{conflict}");
    let table = ok(&["--status", "--data-dir", s(lane)]);
    assert!(table.contains("CONFLICT") && table.contains("3 own seqs (up to 8)"), "{table}");
    assert!(r.node.log_text().contains("rolled back"), "{}", r.node.log_text());
    // A sale now takes a seq nobody holds.
    let next = sell(lane, 1, "the next sale");
    assert!(next.keys().all(|&seq| seq > 16), "{next:?}");
    wait_for("the server to hold the next sale", &[&r.srv, &r.node], || units_total(server) == 17);
    r.node.stop();
    r.srv.stop();
    r.sales.every_sale_everywhere(&next);
    ok(&["log", "verify", "--data-dir", s(lane)]);
}

/// The lane sells more after the revert than the revert took back: by heads the server looks
/// behind it, and only the content shows the conflict.
#[test]
fn a_lane_that_sold_past_its_old_head_after_a_revert_is_found_by_content() {
    let r = revert(5, 2, 5);
    let (lane, server) = (&r.sales.lane, &r.sales.server);
    wait_for("the lane to notice and the two to converge", &[&r.srv, &r.node], || {
        status(lane)["node"]["own_conflict"].is_object() && backlog(lane) == Some((0, 0))
    });
    let st = status(lane);
    let conflict = &st["node"]["own_conflict"];
    assert_eq!(
        (conflict["differing"].as_u64(), conflict["their_head"].as_u64()),
        (Some(2), Some(7)),
        "{conflict}"
    );
    assert_eq!(conflict["reissued"], 4, "ours and theirs of seqs 6-7: {conflict}");
    let srv_status = status(server);
    assert_eq!(srv_status["node"]["counters"]["units_diverged"], 2, "{srv_status}");
    wait_for("the server to hold every unit", &[&r.srv, &r.node], || units_total(server) == 14);
    r.node.stop();
    r.srv.stop();
    r.sales.every_sale_everywhere(&BTreeMap::new());
}

/// The lane's own daily logs from before the revert, carried back and imported while no node
/// runs: the units under the seqs handed out again go in under new seqs, with ours.
#[test]
fn importing_the_lanes_own_logs_from_before_a_revert_issues_both_units_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (dirs, _) = new_system(tmp.path(), "5,6,7,8", &["lane"]);
    let lane = &dirs[0];
    let before = sell(lane, 5, "before the copy");
    let copy = tmp.path().join("lane-copy");
    copy_dir(lane, &copy);
    let lost = sell(lane, 2, "lost with the revert");
    let stick = tmp.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let mut carried = Vec::new();
    for f in dati_files(lane) {
        let to = stick.join(f.file_name().unwrap());
        std::fs::copy(&f, &to).unwrap();
        carried.push(to);
    }
    revert_in_place(&copy, lane);
    let after = sell(lane, 3, "sold after the revert");
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), [6, 7, 8]);

    let mut args = vec!["log", "import", "--data-dir", s(lane)];
    args.extend(carried.iter().map(|p| s(p)));
    let out = ok(&args);
    assert!(out.contains("2 units read are this node's own") && out.contains("(4 units"), "{out}");
    let held = held(lane);
    for key in before.values().chain(lost.values()).chain(after.values()) {
        assert!(held.iter().any(|(k, _)| k == key), "{key}: {held:?}");
    }
    assert_eq!(held.len(), 12, "8 seqs, and 4 units again under 9-12: {held:?}");
    // Imported again: nothing goes again.
    let out = ok(&args);
    assert!(out.contains("(0 units"), "{out}");
    assert_eq!(units_total(lane), 12);
    ok(&["log", "verify", "--data-dir", s(lane)]);
}
