//! `meshnode --status`: what this node is and holds, for an operator (table) or a script
//! (`--json`). Works whether or not another process holds the data directory; a running node
//! is asked for a fresh snapshot on its control socket (falling back to `run/status.json`).
//! A store failure of the last day (`run/store-failure.json`, see `meshnode run`) is shown
//! whether or not the node runs; a store that cannot be opened is shown, then fails the
//! command.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::control::client::{ControlClient, Reply};
use crate::datadir::{read_identity, read_system_key, DataDir, DataDirError, DirLock};
use crate::dati;
use crate::store::Store;

pub(super) fn run(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    let secrets = read_system_key(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let node = crate::config::Config::load(&dir.join(crate::datadir::CONFIG_FILE))
        .map(|c| c.node)
        .unwrap_or_default();
    let key_epoch = secrets.key_schedule(&node).epoch_at(super::now_ms() / 1000).0;
    let files = dati::list_files(&dir.join("dati")).unwrap_or_default();
    let dati_files: Vec<_> =
        files.iter().map(|f| json!({"name": f.name, "size": f.size})).collect();

    let mut status = json!({
        "rmsystem": secrets.rmsystem.to_string(),
        "env": secrets.env.to_string(),
        "running": false,
        "key_epoch": key_epoch,
        "dati_files": dati_files,
    });
    let mut unreadable = None;
    match DirLock::holder(dir) {
        Some(pid) => describe_busy(&mut status, dir, &pid)?,
        None => match super::open_ledger(dir) {
            Ok((datadir, ledger)) => {
                fill_from_store(&mut status, &datadir, ledger.store());
                ledger.close()?;
            }
            // A node (or a submit) took the directory between the probe and the open.
            Err(e) => match e.downcast_ref::<DataDirError>() {
                Some(DataDirError::Locked { pid, .. }) => {
                    let pid = pid.clone();
                    describe_busy(&mut status, dir, &pid)?
                }
                // Still show what the files say (and a store failure being recovered from),
                // then fail with the reason.
                _ => {
                    if let Ok(identity) = read_identity(dir) {
                        status["dbid"] = json!(identity.dbid.as_str());
                    }
                    status["store_error"] = json!(format!("{e:#}"));
                    unreadable = Some(e);
                }
            },
        },
    }
    // A store failure in the last day, recovered or not (see `meshnode run`).
    if let Some(failure) = super::run::StoreFailure::read(dir) {
        let ago_ms = super::now_ms().saturating_sub(failure.at_unix_ms);
        if ago_ms < FAILURE_SHOWN_FOR.as_millis() as u64 {
            let mut shown = serde_json::to_value(&failure)?;
            shown["ago_secs"] = json!(ago_ms / 1000);
            status["last_store_failure"] = shown;
        }
    }
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    match unreadable {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How long `--status` shows a store failure after it happened.
const FAILURE_SHOWN_FOR: Duration = Duration::from_secs(24 * 3600);

/// What the files tell while another process (a submit, or the node) has the store open, and
/// the running node's own snapshot when it answers.
fn describe_busy(status: &mut serde_json::Value, dir: &Path, pid: &str) -> anyhow::Result<()> {
    let identity = read_identity(dir)?;
    status["dbid"] = json!(identity.dbid.as_str());
    status["device_id"] = json!(crate::datadir::device_id(dir)?.to_string());
    status["busy_pid"] = json!(pid);
    status["units_total"] = serde_json::Value::Null;
    status["units_by_origin"] = serde_json::Value::Null;
    // A running node answers on its control socket; it also writes a snapshot every second.
    let snapshot = ask_node(dir).or_else(|| {
        std::fs::read(dir.join(super::run::STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    });
    if let Some(node) = snapshot {
        status["running"] = json!(true);
        status["units_total"] = node["units_total"].clone();
        status["node"] = node;
    }
    Ok(())
}

/// A fresh snapshot from the running node's control socket, if it answers within a second.
fn ask_node(dir: &Path) -> Option<serde_json::Value> {
    let mut node = ControlClient::connect(dir, Duration::ZERO).ok().flatten()?;
    node.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    node.send(r#"{"op":"status"}"#).ok()?;
    match node.recv().ok()?? {
        Reply::Status(mut reply) => Some(reply["status"].take()),
        _ => None,
    }
}

fn fill_from_store(status: &mut serde_json::Value, datadir: &DataDir, store: &impl Store) {
    status["dbid"] = json!(datadir.identity.dbid.as_str());
    status["device_id"] = json!(datadir.device_id.to_string());
    status["units_total"] = json!(store.units_total());
    let by_origin: serde_json::Map<String, serde_json::Value> = store
        .count_by_origin()
        .into_iter()
        .map(|(origin, n)| (origin.to_string(), json!(n)))
        .collect();
    status["units_by_origin"] = serde_json::Value::Object(by_origin);
}

fn print_table(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    outln!("system    {} ({})", text(&s["rmsystem"]), text(&s["env"]));
    outln!("dbid      {}   device {}", text(&s["dbid"]), text(&s["device_id"]));
    match s.get("busy_pid") {
        Some(pid) if s["running"] == true => outln!("node      running (pid {})", text(pid)),
        Some(pid) => outln!("node      not running; data directory busy (pid {})", text(pid)),
        None => outln!("node      not running"),
    }
    if let Some(f) = s["last_store_failure"].as_object() {
        print_store_failure(f, s["running"] == true);
    }
    if let Some(e) = s["store_error"].as_str() {
        outln!("STORE     cannot open: {e}");
    }
    outln!("key epoch {}", text(&s["key_epoch"]));
    outln!("units     {}", text(&s["units_total"]));
    if let Some(origins) = s["units_by_origin"].as_object() {
        for (origin, n) in origins {
            outln!("  {origin}  {n}");
        }
    }
    if s["node"].is_object() {
        print_running(&s["node"]);
    }
    let files = s["dati_files"].as_array().cloned().unwrap_or_default();
    outln!("daily logs {}", files.len());
    for f in files {
        outln!("  {}  {} bytes", text(&f["name"]), text(&f["size"]));
    }
}

/// A store failure of the last day: still waiting to reopen (the node is down), or recovered.
fn print_store_failure(f: &serde_json::Map<String, serde_json::Value>, running: bool) {
    let cause = f.get("cause").and_then(|v| v.as_str()).unwrap_or("-");
    let ago = f.get("ago_secs").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let restarts = f.get("restarts").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let next = f.get("next_attempt_unix_ms").and_then(serde_json::Value::as_u64);
    match next {
        Some(at) if !running => {
            let in_secs = at.saturating_sub(super::now_ms()).div_ceil(1000);
            let pid = f.get("pid").and_then(serde_json::Value::as_u64).unwrap_or(0);
            outln!(
                "STORE     FAILED {} ago: {cause}\n          `meshnode run` (pid {pid}) reopens the data directory in {in_secs} s, replaying its daily logs (nothing acknowledged is lost); if this repeats, check the disk: free space, `dmesg`",
                duration_text(ago)
            );
        }
        _ => outln!(
            "store     failed {} ago and was reopened ({restarts} restart{}): {cause}",
            duration_text(ago),
            if restarts == 1 { "" } else { "s" }
        ),
    }
}

/// `secs` for a person: 42 s, 7 min, 5 h.
fn duration_text(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// The running node's part of the table: is it up, is my data safe, who is up, what is stuck.
/// One line per peer that shares one-time pads with us or has sensitive units waiting.
fn print_pads(peers: &[serde_json::Value]) {
    let kib = |v: &serde_json::Value| v.as_u64().unwrap_or(0).div_ceil(1024);
    for p in peers {
        let pads = &p["pads"];
        if pads.is_null() {
            continue;
        }
        let offered = if pads["out_offered"] == true { " (a new pad offered)" } else { "" };
        outln!(
            "pads      {}: out {} KiB left{offered}, in {} KiB",
            p["dbid"].as_str().unwrap_or("-"),
            kib(&pads["out_left"]),
            kib(&pads["in_bytes"]),
        );
        let from_us = pads["withheld_from_us"].as_u64().unwrap_or(0);
        if from_us > 0 {
            outln!(
                "WAITING   {from_us} sensitive units of {} wait for a pad or a direct link (later units of their origins wait behind them)",
                p["dbid"].as_str().unwrap_or("-"),
            );
        }
        let by_us = pads["withheld_by_us"].as_u64().unwrap_or(0);
        if by_us > 0 {
            outln!(
                "WAITING   {by_us} sensitive units withheld from {} over the relay: no pad left (a direct link hands a new one over)",
                p["dbid"].as_str().unwrap_or("-"),
            );
        }
    }
}

/// The table's lines for origins whose delivery waits on a seq this node lacks, saying whether
/// a linked peer holds it (anti-entropy fetches it) or none reports it.
fn gap_lines(n: &serde_json::Value) -> Vec<String> {
    let gaps = n["gaps"].as_array().cloned().unwrap_or_default();
    let mut lines: Vec<String> = gaps
        .iter()
        .map(|g| {
            let origin = g["origin"].as_str().unwrap_or("-");
            let seq = g["waiting_for"].as_u64().unwrap_or(0);
            let beyond = g["held_beyond"].as_u64().unwrap_or(0);
            match g["held_by"].as_u64().unwrap_or(0) {
                0 => format!(
                    "GAP       {beyond} units of {origin} wait behind its seq {seq}, which no linked peer reports holding: if this stays, the unit is only on a machine out of reach, or nowhere (README: \"A seq no node holds\")"
                ),
                peers => format!(
                    "GAP       {beyond} units of {origin} wait behind its seq {seq}, which {peers} linked peer(s) hold: anti-entropy fetches it"
                ),
            }
        })
        .collect();
    let total = n["origins_with_gaps"].as_u64().unwrap_or(0);
    if let Some(more) = total.checked_sub(gaps.len() as u64).filter(|m| *m > 0) {
        lines.push(format!(
            "          and {more} more origins wait on a seq this node lacks (--status --json lists {})",
            gaps.len()
        ));
    }
    lines
}

fn print_running(n: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let listen: Vec<String> =
        n["listen"].as_array().map(|a| a.iter().map(&text).collect()).unwrap_or_default();
    outln!(
        "running   {} s as {}; links on {}; discovery {} / units {}",
        text(&n["uptime_secs"]),
        text(&n["role"]),
        if listen.is_empty() { "-".to_string() } else { listen.join(", ") },
        text(&n["discovery_group"]),
        text(&n["env_group"])
    );
    let unsafe_backlog = n["unsafe_backlog"].as_u64().unwrap_or(0);
    if unsafe_backlog == 0 {
        outln!("safe      every own unit is held by a main server");
    } else {
        outln!("UNSAFE    {unsafe_backlog} own units no main server holds yet");
    }
    if let Some(c) = n["own_conflict"].as_object() {
        let get = |k: &str| c.get(k).map(&text).unwrap_or_default();
        if c.get("differing").and_then(serde_json::Value::as_u64).unwrap_or(0) > 0 {
            outln!(
                "CONFLICT  {} holds {} own seqs (up to {}) as other units: this data directory was rolled back or restored in place, or is in use on another machine too; both units of each seq went again under new seqs, {} units in all (meshnode's log has the time)",
                get("seen_at"),
                get("differing"),
                get("their_head"),
                get("reissued")
            );
        } else {
            outln!(
                "CONFLICT  {} holds own units up to seq {}, beyond this node's head {}: this data directory was rolled back or restored in place, or is in use on another machine too; new units skip those seqs, and {} own units were issued again (meshnode's log has the time)",
                get("seen_at"),
                get("their_head"),
                get("our_head"),
                get("reissued")
            );
        }
    }
    for line in gap_lines(n) {
        outln!("{line}");
    }
    let peers = n["peers"].as_array().cloned().unwrap_or_default();
    let up = peers.iter().filter(|p| p["state"] == "up").count();
    outln!("peers     {} known, {} up", peers.len(), up);
    if !peers.is_empty() {
        outln!(
            "  {:<16} {:<13} {:<24} {:<14} {:>8} {:>9} {:>8} {:>8}  address",
            "dbid",
            "role",
            "state",
            "link",
            "rtt",
            "seen ago",
            "we lack",
            "it lacks"
        );
    }
    for p in &peers {
        let state = match p["reason"].as_str() {
            Some(reason) if p["state"] != "up" => format!("{} ({reason})", text(&p["state"])),
            _ => text(&p["state"]),
        };
        let addr = p["addrs"].as_array().and_then(|a| a.first()).map(&text).unwrap_or_default();
        let rtt = p["rtt_ms"].as_f64().map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
        outln!(
            "  {:<16} {:<13} {:<24} {:<14} {:>8} {:>8}s {:>8} {:>8}  {}",
            text(&p["dbid"]),
            text(&p["role"]),
            state,
            text(&p["link"]),
            rtt,
            p["last_seen_ms_ago"].as_u64().unwrap_or(0) / 1000,
            text(&p["we_lack"]),
            text(&p["it_lacks"]),
            addr
        );
    }
    for r in n["relays"].as_array().cloned().unwrap_or_default() {
        let index = r["index"].as_u64().unwrap_or(0) + 1;
        let state = match r["refused"].as_str() {
            Some(reason) => format!("refused ({reason})"),
            None => text(&r["state"]),
        };
        outln!(
            "relay r{index}  {state}; observed {}; posted {}, delivered {}, post refusals {}",
            text(&r["observed"]),
            text(&r["posted"]),
            text(&r["delivered"]),
            text(&r["post_refusals"])
        );
    }
    if let Some(warning) = n["relay_warning"].as_str() {
        outln!("WARNING   {warning}");
    }
    print_pads(&peers);
    let q = &n["queues"];
    outln!(
        "queues    outputs {}, links {}, connecting {}, wants in flight {}, submits syncing {}, received units syncing {}",
        text(&q["outputs"]),
        text(&q["links"]),
        text(&q["connecting"]),
        text(&q["wants_in_flight"]),
        text(&q["submits_syncing"]),
        text(&q["received_syncing"])
    );
    if let Some(disk) = n["disk"].as_object() {
        let count = |k: &str| disk.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let ms = |k: &str| disk.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        // A device that stalls holds up every unit (each waits for a log sync here); one that
        // is merely slow shows in the percentiles (a unit's path holds one sync at its origin; a
        // receiver delivers before its own).
        let recent = disk.get("recent").and_then(serde_json::Value::as_object);
        let recent_ms = |k: &str| {
            recent.and_then(|r| r.get(k)).and_then(serde_json::Value::as_f64).unwrap_or(0.0)
        };
        outln!(
            "disk      last 5-10 min: {} log syncs, p50 {:.2} ms, p99 {:.2} ms; slowest {:.1} ms",
            recent
                .and_then(|r| r.get("log_syncs"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            recent_ms("p50_ms"),
            recent_ms("p99_ms"),
            recent_ms("slowest_ms")
        );
        outln!(
            "          since start: {} log syncs, p50 {:.2} ms, p99 {:.2} ms, {} over 10 ms, {} over 100 ms; slowest {:.1} ms",
            count("log_syncs"),
            ms("p50_ms"),
            ms("p99_ms"),
            count("over_10ms"),
            count("over_100ms"),
            ms("slowest_ms")
        );
    }
    if let Some(rejects) = n["counters"]["rejects"].as_object() {
        let nonzero: Vec<String> = rejects
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !nonzero.is_empty() {
            outln!("refused   {}", nonzero.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gap_lines;
    use serde_json::json;

    #[test]
    fn gaps_say_whether_a_linked_peer_holds_the_seq() {
        let n = json!({
            "gaps": [
                {"origin": "AAAAAAAAAAAAAAA", "waiting_for": 3, "held_beyond": 40, "held_by": 0},
                {"origin": "BBBBBBBBBBBBBBB", "waiting_for": 9, "held_beyond": 2, "held_by": 2},
            ],
            "origins_with_gaps": 5,
        });
        let lines = gap_lines(&n);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("GAP       40 units of AAAAAAAAAAAAAAA wait behind its seq 3,")
        );
        assert!(lines[0].contains("no linked peer reports holding"), "{lines:?}");
        assert!(lines[1].starts_with("GAP       2 units of BBBBBBBBBBBBBBB wait behind its seq 9,"));
        assert!(lines[1].contains("2 linked peer(s) hold"), "{lines:?}");
        assert!(lines[2].contains("and 3 more origins"), "{lines:?}");
        assert!(gap_lines(&json!({"gaps": [], "origins_with_gaps": 0})).is_empty());
        assert!(gap_lines(&json!({})).is_empty(), "an older node's status has no gaps");
    }
}
