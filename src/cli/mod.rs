//! The command line: one file per subcommand, each a thin layer over the library.
//!
//! Errors are `anyhow` here (and only here): each carries the context an operator needs, is
//! printed as `error: ...` on stderr, and exits with status 1 (2 for argument errors, by clap).

/// A line on stdout for a command whose work is done (status tables, reports). A reader that
/// went away (`meshnode --status | head`) ends the command quietly, as for any Unix tool, where
/// `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

/// For `outln!`: a closed pipe ends the command with success, another error with a message.
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("error: cannot write to stdout: {e}\n"),
    );
    std::process::exit(1);
}

mod demo;
mod init;
mod key;
mod log;
mod rebuild;
mod relay;
mod run;
mod status;
mod submit;
mod subscribe;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::datadir::{DataDir, OpenNote};
use crate::id::InstanceId;
use crate::ledger::Ledger;

/// meshnode: carries retail business transactions to every machine of a system that needs them.
#[derive(Debug, Parser)]
#[command(name = "meshnode", version, about, long_about = None, arg_required_else_help = true)]
pub struct Cli {
    /// Show the node's status (works whether or not the node runs).
    #[arg(long)]
    status: bool,
    /// With --status: print one JSON object instead of the table.
    #[arg(long, requires = "status")]
    json: bool,
    /// The data directory (also MESHNODE_DATA_DIR).
    #[arg(long, global = true, env = "MESHNODE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new system in a data directory, or join one with --join.
    Init(init::InitArgs),
    /// Manage the system key.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Submit units: one from a file or stdin, or many as JSON lines (through the running node
    /// if one runs, else directly on the store).
    Submit(submit::SubmitArgs),
    /// Print the units delivered to this node as JSON lines (origin, seq, physkey, kind,
    /// urgency, payload), each once, in per-origin order; needs the running node.
    Subscribe(subscribe::SubscribeArgs),
    /// List the units held, one JSON line each.
    Units(units::UnitsArgs),
    /// Verify, dump and import TUBT daily log files.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Rebuild the store from the daily log files alone.
    Rebuild(rebuild::RebuildArgs),
    /// Three nodes of a fresh system on loopback: they find each other, sample sales
    /// submitted at one arrive at the others. Cleans up after itself.
    Demo,
    /// Run the node: find peers on the LAN, link, and carry units until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Run a rendezvous relay (`--listen ADDR`), show it (`--status`), or admit and revoke
    /// the systems it serves. A relay never holds a system key.
    Relay(relay::RelayArgs),
}

/// Parses the arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("meshnode=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log on a full disk must not end the process (it reports such writes with
        // `eprintln!`, which panics): the node recovers from a full disk (`meshnode run`).
        .log_internal_errors(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.status {
        if cli.command.is_some() {
            anyhow::bail!("--status is used alone: `meshnode --status [--json] --data-dir DIR`");
        }
        return status::run(&data_dir(&cli.data_dir)?, cli.json);
    }
    let dir = &cli.data_dir;
    match cli.command {
        Some(Command::Init(args)) => init::run(&data_dir(dir)?, args),
        Some(Command::Key(cmd)) => key::run(&data_dir(dir)?, cmd),
        Some(Command::Submit(args)) => submit::run(&data_dir(dir)?, args),
        Some(Command::Subscribe(args)) => subscribe::run(&data_dir(dir)?, args),
        Some(Command::Units(args)) => units::run(&data_dir(dir)?, args),
        Some(Command::Log(cmd)) => log::run(dir.as_deref(), cmd),
        Some(Command::Rebuild(args)) => rebuild::run(&data_dir(dir)?, args),
        Some(Command::Run(args)) => run::run(&data_dir(dir)?, args),
        Some(Command::Relay(args)) => relay::run(&data_dir(dir)?, args),
        Some(Command::Demo) => demo::run(),
        None => anyhow::bail!("nothing to do; see `meshnode --help`"),
    }
}

fn data_dir(dir: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    dir.clone().context("--data-dir DIR is required (or set MESHNODE_DATA_DIR)")
}

/// Wall-clock milliseconds since the Unix epoch (the CLI is the IO edge; the library takes
/// time as a parameter).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Opens and locks `dir` and its ledger, logging what the operator must know.
pub(crate) fn open_ledger(dir: &std::path::Path) -> anyhow::Result<(DataDir, Ledger)> {
    open_ledger_as(dir, InstanceId::random(&mut rand::rngs::OsRng))
}

/// [`open_ledger`] for the process `instance` (the running node uses its instance id in its
/// nonces and announcements too).
pub(crate) fn open_ledger_as(
    dir: &std::path::Path,
    instance: InstanceId,
) -> anyhow::Result<(DataDir, Ledger)> {
    let mut rng = rand::rngs::OsRng;
    let (datadir, notes) = DataDir::open(dir, &mut rng)
        .with_context(|| format!("cannot open data directory {}", dir.display()))?;
    for note in notes {
        match note {
            OpenNote::NewDbid { old, new, reason } => {
                tracing::warn!(%old, %new, %reason, "allocated a new dbid so sequence numbers are never reused");
            }
        }
    }
    let (ledger, report) = Ledger::open(&datadir, instance)
        .with_context(|| format!("cannot open the store of {}", dir.display()))?;
    for repair in &report.repairs {
        tracing::warn!(%repair, "daily log repaired");
    }
    if report.replayed > 0 {
        tracing::info!(records = report.replayed, "replayed daily log records into the store");
    }
    Ok((datadir, ledger))
}
