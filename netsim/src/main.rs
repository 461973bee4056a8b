//! The netsim command line: run a scenario once or over many seeds, print JSON.
//!
//! `netsim run --scenario chain --stores 100 --lanes 10 --units 10000 --seed 7 --json` prints one
//! JSON object (the run's [`Report`] plus the wall-clock `events_per_sec` and `wall_ms`, which
//! `--deterministic` leaves out so that two runs compare byte for byte).
//! `netsim run --seeds 1..1000 --faults all` runs every seed of the inclusive range on `--jobs`
//! threads and prints `{"seeds":N,"failed":[...]}`; each failing seed reruns alone with
//! `--seed N`. The exit status is 1 when a run fails its checks.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use netsim::factory::{cli_factory, PROTOCOL};
use netsim::scenario::{self, ChainParams, FaultSet, ScenarioKind};
use netsim::{Report, Simulation};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "netsim", about = "Deterministic simulator for meshnode's sync protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario with one seed or a range of seeds.
    Run(RunArgs),
    /// List the scenarios.
    Scenarios,
    /// The issue-4 benchmark: scaling of the fault-free chain (bytes per copy, time to
    /// converge) and simulator speed over many seeds; exits 1 when a target is missed.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Stores of each chain size (lanes 9, so 1 + 10 x stores nodes).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    stores: Vec<u32>,
    /// Units submitted in each chain run.
    #[arg(long, default_value_t = 1000)]
    units: u32,
    /// Seeds of the 50-node scenario (7 stores x 6 lanes + head office) with all faults.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// Threads for the seeds (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Args)]
struct RunArgs {
    /// chain, store-offline-day, laptop-offline-week, lane-blocked or head-office-down.
    #[arg(long, default_value = "chain")]
    scenario: ScenarioKind,
    /// Stores in the chain.
    #[arg(long, default_value_t = 4)]
    stores: u32,
    /// Lanes per store (at most 200).
    #[arg(long, default_value_t = 3)]
    lanes: u32,
    /// Units submitted in all.
    #[arg(long, default_value_t = 1000)]
    units: u32,
    /// Payload bytes per unit.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Seconds over which the units are submitted (outage scenarios stretch it).
    #[arg(long, default_value_t = 60)]
    submit_window_s: u64,
    /// Seconds allowed after the last scheduled event before the run gives up.
    #[arg(long, default_value_t = 600)]
    settle_s: u64,
    /// Stop at this simulated second whatever the scenario (overrides `--settle-s`).
    #[arg(long)]
    time_limit_s: Option<u64>,
    /// Random faults: all, none, or a comma list of loss, partition, crash, skew, disk.
    #[arg(long, default_value = "none")]
    faults: FaultSet,
    /// The seed of one run.
    #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
    seed: u64,
    /// Many runs: an inclusive range `A..B` (`1..1000` is 1000 seeds).
    #[arg(long)]
    seeds: Option<String>,
    /// Threads for `--seeds` (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print JSON (the default for `--seeds`).
    #[arg(long)]
    json: bool,
    /// Leave out wall-clock fields, so equal seeds print equal bytes.
    #[arg(long)]
    deterministic: bool,
    /// Print every event of a single run to stderr.
    #[arg(long)]
    trace: bool,
}

#[derive(Serialize)]
struct Single<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    events_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wall_ms: Option<u64>,
}

#[derive(Serialize)]
struct Many<'a> {
    protocol: &'a str,
    scenario: &'a str,
    seeds: u64,
    failed: Vec<u64>,
    events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    events_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wall_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Scenarios => {
            for kind in ScenarioKind::ALL {
                println!("{kind}");
            }
            Ok(())
        }
        Command::Bench(args) => {
            if !bench(&args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run(args) => {
            let ok = match &args.seeds {
                Some(range) => run_many(&args, parse_range(range)?)?,
                None => run_one(&args)?,
            };
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn params(args: &RunArgs) -> ChainParams {
    ChainParams {
        stores: args.stores,
        lanes: args.lanes,
        units: args.units,
        payload_bytes: args.payload_bytes,
        faults: args.faults,
        submit_window_us: args.submit_window_s.saturating_mul(1_000_000),
        settle_us: args.settle_s.saturating_mul(1_000_000),
    }
}

/// One run of `seed`: its report and the wall time it took.
fn simulate(args: &RunArgs, seed: u64, trace: bool) -> (Report, u64) {
    let mut scenario = scenario::build(args.scenario, &params(args), seed);
    if let Some(limit) = args.time_limit_s {
        scenario.config.time_limit_us = limit.saturating_mul(1_000_000);
    }
    let started = Instant::now();
    let mut sim = Simulation::new(scenario, cli_factory(), seed);
    if trace {
        sim.record_trace();
    }
    let report = sim.run();
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if trace {
        let mut err = std::io::stderr().lock();
        for e in sim.trace() {
            let _ = writeln!(err, "{} {} {}", e.at_us, e.kind, e.subject);
        }
    }
    (report, wall_us)
}

fn per_sec(events: u64, wall_us: u64) -> u64 {
    (u128::from(events) * 1_000_000 / u128::from(wall_us.max(1))) as u64
}

fn run_one(args: &RunArgs) -> anyhow::Result<bool> {
    let (report, wall_us) = simulate(args, args.seed, args.trace);
    let wall = (!args.deterministic).then_some(());
    if args.json {
        let out = Single {
            report: &report,
            events_per_sec: wall.map(|_| per_sec(report.events, wall_us)),
            wall_ms: wall.map(|_| wall_us / 1000),
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let value = serde_json::to_value(&report)?;
        if let Some(map) = value.as_object() {
            for (key, value) in map {
                println!("{key}: {value}");
            }
        }
        if wall.is_some() {
            println!("events_per_sec: {}", per_sec(report.events, wall_us));
        }
    }
    if !report.passed {
        eprintln!("seed {} failed: rerun with --seed {}", report.seed, report.seed);
    }
    Ok(report.passed)
}

fn run_many(args: &RunArgs, (first, last): (u64, u64)) -> anyhow::Result<bool> {
    let started = Instant::now();
    let (failed, events) = sweep(args, first, last);
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let wall = (!args.deterministic).then_some(());
    let out = Many {
        protocol: PROTOCOL,
        scenario: args.scenario.name(),
        seeds: last - first + 1,
        events,
        events_per_sec: wall.map(|_| per_sec(events, wall_us)),
        wall_ms: wall.map(|_| wall_us / 1000),
        failed,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(out.failed.is_empty())
}

/// Anti-entropy interval of every simulated node (the core's default), for the convergence
/// target.
const ANTI_ENTROPY_MS: f64 = 2_000.0;
/// Allowance for the LAN and WAN push path on top of two anti-entropy intervals.
const PUSH_MS: f64 = 200.0;

fn run_args(
    scenario: ScenarioKind,
    stores: u32,
    lanes: u32,
    units: u32,
    faults: FaultSet,
) -> RunArgs {
    RunArgs {
        scenario,
        stores,
        lanes,
        units,
        payload_bytes: 200,
        submit_window_s: 60,
        settle_s: 600,
        time_limit_s: None,
        faults,
        seed: 7,
        seeds: None,
        jobs: None,
        json: true,
        deterministic: false,
        trace: false,
    }
}

/// Runs the issue-4 targets and prints a table (Markdown rows for docs/PERFORMANCE.md).
fn bench(args: &BenchArgs) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut miss = |what: String| {
        println!("MISSED: {what}");
        ok = false;
    };
    println!("| nodes | units | converged | sim ms to converge | bytes per copy | unit bytes | ratio | messages | events/s | wall s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut first: Option<(usize, f64)> = None;
    for &stores in &args.stores {
        let run = run_args(ScenarioKind::Chain, stores, 9, args.units, FaultSet::default());
        let (r, wall_us) = simulate(&run, 7, false);
        let ratio = r.bytes_per_unit_copy / r.unit_bytes.max(1.0);
        let converge = r.sim_ms_to_converge.unwrap_or(u64::MAX);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.1} |",
            r.nodes,
            r.units_submitted,
            r.converged,
            converge,
            r.bytes_per_unit_copy,
            r.unit_bytes,
            ratio,
            r.messages_sent,
            per_sec(r.events, wall_us),
            wall_us as f64 / 1e6
        );
        if !r.passed {
            miss(format!("{} nodes: the run failed its checks", r.nodes));
        }
        if ratio > 1.3 {
            miss(format!("{} nodes: {ratio:.2}x bytes per copy (target <= 1.3x)", r.nodes));
        }
        if converge as f64 > 2.0 * ANTI_ENTROPY_MS + PUSH_MS {
            miss(format!("{} nodes: converged {converge} ms after the last submit (target <= 2 anti-entropy intervals + push)", r.nodes));
        }
        match first {
            None => first = Some((r.nodes, converge.max(1) as f64)),
            Some((n0, t0)) => {
                // Logarithmic: t(n) / t(n0) <= 2 * ln(n) / ln(n0).
                let bound = 2.0 * (r.nodes as f64).ln() / (n0 as f64).ln();
                if converge as f64 / t0 > bound {
                    miss(format!(
                        "{} nodes: convergence grew {:.1}x over {n0} nodes (bound {bound:.1}x)",
                        r.nodes,
                        converge as f64 / t0
                    ));
                }
            }
        }
    }
    let many =
        RunArgs { jobs: args.jobs, ..run_args(ScenarioKind::Chain, 7, 6, 1000, FaultSet::ALL) };
    let started = Instant::now();
    let (first_seed, last_seed) = (1, args.seeds.max(1));
    let (failed, events) = sweep(&many, first_seed, last_seed);
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    println!();
    println!(
        "{} seeds of the 50-node chain, all faults: {} failed, {:.1} s wall, {} events, {} events/s",
        last_seed - first_seed + 1,
        failed.len(),
        wall_us as f64 / 1e6,
        events,
        per_sec(events, wall_us)
    );
    if !failed.is_empty() {
        miss(format!("seeds failed: {failed:?}"));
    }
    // 1,000 seeds in under 10 minutes, scaled to the number of seeds run.
    let budget_us = 600_000_000.0 * (last_seed - first_seed + 1) as f64 / 1000.0;
    if wall_us as f64 > budget_us {
        miss(format!("seeds took {:.1} s (target {:.1} s)", wall_us as f64 / 1e6, budget_us / 1e6));
    }
    Ok(ok)
}

/// Runs seeds `first..=last` on the configured threads: the failed seeds and the total events.
fn sweep(args: &RunArgs, first: u64, last: u64) -> (Vec<u64>, u64) {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(first);
    let failed = Mutex::new(Vec::new());
    let events = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed > last {
                    break;
                }
                let (report, _) = simulate(args, seed, false);
                events.fetch_add(report.events, Ordering::Relaxed);
                if !report.passed {
                    eprintln!("seed {seed} failed: rerun with --seed {seed}");
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(seed);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_unstable();
    (failed, events.into_inner())
}

/// `A..B` or `A..=B`, both inclusive; or one number.
fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a, b.trim_start_matches('=')),
        None => (s, s),
    };
    let a: u64 = a.trim().parse().with_context(|| format!("bad seed range {s:?}"))?;
    let b: u64 = b.trim().parse().with_context(|| format!("bad seed range {s:?}"))?;
    if b < a {
        bail!("empty seed range {s:?}");
    }
    Ok((a, b))
}
