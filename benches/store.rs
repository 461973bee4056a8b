//! `scripts/bench store`: durable submit throughput and latency against the disk's own fsync
//! rate, restart time and memory with 1,000,000 units stored. Prints one JSON object.
//!
//! Run: `cargo bench --bench store` (or `scripts/bench store`). Options after `--`:
//! `--units N` (default 1000000), `--dir PATH` (default a temp dir under ./target).
//! Targets (issue 3): batched throughput >= 30x fdatasync rate; single-submit p99 <= 3 fsync
//! times; restart with 1M units <= 1 s; RSS <= 200 MiB with 1M units.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshnode::datadir::{DataDir, SystemSecrets};
use meshnode::ledger::{Ledger, Submission};
use meshnode::store::Store;
use meshnode::{Environment, FileScopes, InstanceId, UnitKind, Urgency};
use rand::rngs::OsRng;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 4 KiB append + fdatasync, as fast as the disk allows, for two seconds.
fn fdatasync_rate(dir: &Path) -> f64 {
    let path = dir.join("fsync.probe");
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).unwrap();
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).ok();
    rate
}

fn sub(i: u64) -> Submission {
    let mut payload = vec![0u8; 256];
    payload[..8].copy_from_slice(&i.to_le_bytes());
    Submission {
        kind: UnitKind::Tubt,
        urgency: Urgency::Normal,
        scopes: FileScopes::NONE,
        physkey: None,
        payload,
        sensitive: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Child mode: open the data directory, report open time and memory after typical reads.
fn child_open(dir: &Path) {
    let start = Instant::now();
    let (datadir, _) = DataDir::open(dir, &mut OsRng).unwrap();
    let (mut ledger, report) = Ledger::open(&datadir, InstanceId::random(&mut OsRng)).unwrap();
    let open = start.elapsed();
    eprintln!("child: rss after open {} KiB", rss_kib("VmRSS:"));
    let total = ledger.store().units_total();
    let own = ledger.own_dbid();
    // Typical work after a restart: read scattered units, submit a few batches.
    let mut read = 0;
    for i in 0..10_000u64 {
        let seq = 1 + (i * 7919) % total.max(1);
        if ledger.store().get(&own, seq).unwrap().is_some() {
            read += 1;
        }
    }
    eprintln!("child: rss after reads {} KiB", rss_kib("VmRSS:"));
    for b in 0..10u64 {
        ledger.submit_batch((0..1000).map(|i| sub(b * 1000 + i)).collect(), now_ms()).unwrap();
    }
    let rss_after = rss_kib("VmRSS:");
    let hwm = rss_kib("VmHWM:");
    ledger.close().unwrap();
    println!(
        "{{\"open_ms\":{:.1},\"units\":{total},\"replayed\":{},\"reads\":{read},\"rss_mib\":{:.1},\"peak_rss_mib\":{:.1}}}",
        open.as_secs_f64() * 1000.0,
        report.replayed,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-open") {
        child_open(Path::new(&args[i + 1]));
        return;
    }
    let units: u64 = args
        .iter()
        .position(|a| a == "--units")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base: PathBuf = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-store"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join(format!("node-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());

    let fsync = fdatasync_rate(&base);
    eprintln!("fdatasync: {fsync:.0}/s");

    let secrets = SystemSecrets::generate(&mut OsRng, None, Environment::live());
    let datadir = DataDir::init(&dir, &secrets, &mut OsRng).unwrap();
    let (mut ledger, _) = Ledger::open(&datadir, InstanceId::random(&mut OsRng)).unwrap();

    // Single-unit acknowledged submits (each its own group commit), on an empty store.
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        let t = Instant::now();
        ledger.submit_batch(vec![sub(i)], now_ms()).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    let fsync_time = Duration::from_secs_f64(1.0 / fsync);
    eprintln!("single submit: p50 {p50:?} p99 {p99:?} (fsync {fsync_time:?})");

    // Batched durable throughput while filling to `units`.
    let batch = 1000u64;
    let start = Instant::now();
    let mut done = 2000u64;
    while done < units {
        let n = batch.min(units - done);
        ledger.submit_batch((done..done + n).map(sub).collect(), now_ms()).unwrap();
        done += n;
    }
    let fill = start.elapsed();
    let throughput = (units - 2000) as f64 / fill.as_secs_f64();
    eprintln!("batched: {throughput:.0} units/s over {} units", units - 2000);
    let fill_peak = rss_kib("VmHWM:");
    ledger.close().unwrap();
    drop(datadir);

    // Restart in a fresh process: open time and memory with everything stored.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child-open", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let child: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let disk: u64 = walk_size(&dir);

    let result = serde_json::json!({
        "commit": git_commit(),
        "units": units,
        "payload_bytes": 256,
        "fdatasync_per_sec": fsync.round(),
        "batched_units_per_sec": throughput.round(),
        "batched_vs_fsync": (throughput / fsync * 10.0).round() / 10.0,
        "single_p50_ms": p50.as_secs_f64() * 1000.0,
        "single_p99_ms": p99.as_secs_f64() * 1000.0,
        "single_p99_in_fsyncs": (p99.as_secs_f64() * fsync * 100.0).round() / 100.0,
        "restart_open_ms": child["open_ms"],
        "restart_rss_mib": child["rss_mib"],
        "restart_peak_rss_mib": child["peak_rss_mib"],
        "fill_peak_rss_mib": fill_peak as f64 / 1024.0,
        "disk_mib": disk as f64 / (1 << 20) as f64,
        "targets": {
            "batched_vs_fsync_min": 30,
            "single_p99_in_fsyncs_max": 3,
            "restart_open_ms_max": 1000,
            "rss_mib_max": 200
        }
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());

    // The targets are checked here, so a regression fails the benchmark run.
    let restart_ms = child["open_ms"].as_f64().unwrap_or(f64::MAX);
    let rss = child["peak_rss_mib"].as_f64().unwrap_or(f64::MAX).max(fill_peak as f64 / 1024.0);
    let mut missed = Vec::new();
    if throughput < 30.0 * fsync {
        missed.push(format!("batched {throughput:.0}/s < 30x fdatasync ({:.0}/s)", 30.0 * fsync));
    }
    if p99 > 3 * fsync_time {
        missed.push(format!("single p99 {p99:?} > 3 fsync times ({:?})", 3 * fsync_time));
    }
    if units >= 1_000_000 && restart_ms > 1000.0 {
        missed.push(format!("restart {restart_ms:.0} ms > 1000 ms"));
    }
    if rss > 200.0 {
        missed.push(format!("peak RSS {rss:.1} MiB > 200 MiB"));
    }
    if missed.is_empty() {
        eprintln!("store targets: all met");
    } else {
        eprintln!("store targets MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}

fn walk_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| walk_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("MESHNODE_BENCH_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        std::fs::remove_dir_all(&self.0).ok();
    }
}
