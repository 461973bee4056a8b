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
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(first);
    let failed = Mutex::new(Vec::new());
    let events = AtomicU64::new(0);
    let started = Instant::now();
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
    let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_unstable();
    let events = events.into_inner();
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
