//! `meshnode submit`: hand units to the node; each accepted unit is printed as one JSON line
//! `{"origin":..,"seq":..,"physkey":..}` only once it is durable.
//!
//! When a node runs in the data directory, units go through its control socket (one request
//! per unit, pipelined; see [`crate::control`]); otherwise the store is opened directly. The
//! output and exit codes are the same either way.
//!
//! With `--jsonl`, lines are read on a separate thread. Directly on the store they are
//! committed in groups: whatever has arrived (up to `submit.batch_size`) goes into one disk
//! sync, so a fast producer gets large batches and a slow one gets low latency. Through a
//! running node each unit is its own disk sync (the core takes one submission per input), with
//! up to [`IN_FLIGHT`] requests pipelined. A bad line stops the run with its line number; the
//! lines before it are accepted (and printed), nothing after it is (the node refuses the rest
//! of a connection's submits after a refused one).

use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::control::client::{ControlClient, Reply};
use crate::control::protocol::{self, RequestError};
use crate::id::Physkey;
use crate::ledger::{Receipt, Submission};
use crate::unit::{FileScopes, UnitKind, Urgency};

/// Submit requests sent to a running node before their receipts are read, at most.
const IN_FLIGHT: usize = 256;
/// How long to wait for the control socket of a node that holds the data directory but has
/// not created its socket yet (it is starting).
pub(super) const STARTING_NODE_WAIT: Duration = Duration::from_secs(5);

/// Arguments of `meshnode submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Unit kind: TUBT, TUEV or TUST.
    #[arg(long, default_value = "TUBT")]
    kind: UnitKind,
    /// A customer or staff member is waiting for this unit.
    #[arg(long, conflicts_with = "background")]
    urgent: bool,
    /// Low-priority bulk data.
    #[arg(long)]
    background: bool,
    /// TUBT file scope (all, up, down, across); repeatable.
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    scopes: Vec<FileScopes>,
    /// The record's physkey (32 printable ASCII characters); resubmitting the same physkey
    /// returns the existing unit instead of writing a second one.
    #[arg(long)]
    physkey: Option<Physkey>,
    /// Read the payload from this file instead of stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "jsonl")]
    file: Option<PathBuf>,
    /// The unit's sensitive part (a password, a key; at most 4 KiB), read from this file: it
    /// never goes into a multicast datagram, and crosses a relay only under a one-time pad. A
    /// file, not an argument, so the secret does not show in the process list.
    #[arg(long, value_name = "FILE", conflicts_with = "jsonl")]
    sensitive_file: Option<PathBuf>,
    /// Submit one unit per line of this file ('-' for stdin):
    /// {"kind":"TUBT","urgent":false,"body":{"any":"JSON value"}}
    #[arg(long, value_name = "FILE", conflicts_with_all = ["physkey", "urgent", "background", "scopes"])]
    jsonl: Option<PathBuf>,
}

fn parse_scope(s: &str) -> Result<FileScopes, String> {
    protocol::parse_scope(s)
        .ok_or_else(|| format!("unknown scope {s:?}: expected all, up, down or across"))
}

pub(super) fn run(dir: &Path, args: SubmitArgs) -> anyhow::Result<()> {
    let node = ControlClient::connect(dir, STARTING_NODE_WAIT)?;
    match (&args.jsonl, node) {
        (Some(path), Some(node)) => run_jsonl_through(node, path),
        (Some(path), None) => run_jsonl(dir, path),
        (None, node) => run_one(dir, &args, node),
    }
}

fn urgency(urgent: bool, background: bool) -> Urgency {
    match (urgent, background) {
        (true, _) => Urgency::Urgent,
        (false, true) => Urgency::Background,
        _ => Urgency::Normal,
    }
}

fn run_one(dir: &Path, args: &SubmitArgs, node: Option<ControlClient>) -> anyhow::Result<()> {
    let payload = match &args.file {
        Some(file) => std::fs::read(file)
            .with_context(|| format!("cannot read payload file {}", file.display()))?,
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read the payload from stdin")?;
            buf
        }
    };
    let sensitive = match &args.sensitive_file {
        Some(file) => std::fs::read(file)
            .with_context(|| format!("cannot read the sensitive part from {}", file.display()))?,
        None => Vec::new(),
    };
    let sub = Submission {
        kind: args.kind,
        urgency: urgency(args.urgent, args.background),
        scopes: args.scopes.iter().fold(FileScopes::NONE, |a, s| a.union(*s)),
        physkey: args.physkey,
        payload,
        sensitive,
    };
    if let Some(mut node) = node {
        node.send(&protocol::submit_request(&sub)).context("cannot send to the node")?;
        return match node.recv().context("cannot read the node's reply")? {
            Some(Reply::Receipt(line)) => print_lines(&[line]),
            Some(Reply::Error { message, .. }) => Err(anyhow!(message)),
            Some(other) => bail!("the node answered {other:?} to a submit"),
            None => bail!(
                "the node closed the connection before answering; check its log and submit again"
            ),
        };
    }
    let (_datadir, mut ledger) = super::open_ledger(dir)?;
    ledger.check(&sub).context("unit refused; nothing was written")?;
    let receipts = ledger.submit_batch(vec![sub], super::now_ms())?;
    print_receipts(&receipts)?;
    ledger.close()?;
    Ok(())
}

fn print_receipts(receipts: &[Receipt]) -> anyhow::Result<()> {
    let lines: Vec<String> = receipts.iter().map(protocol::receipt_line).collect();
    print_lines(&lines)
}

fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A line read by the reader thread: its number and text, or the read error.
type LineMsg = Result<(u64, String), std::io::Error>;

/// Reads the lines of `path` ('-': stdin) on a thread, into a channel of `capacity`.
fn spawn_line_reader(path: &Path, capacity: usize) -> anyhow::Result<mpsc::Receiver<LineMsg>> {
    let (tx, rx) = mpsc::sync_channel::<LineMsg>(capacity);
    let reader: Box<dyn BufRead + Send> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    std::thread::spawn(move || {
        for (i, line) in reader.lines().enumerate() {
            let msg = line.map(|l| (i as u64 + 1, l));
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
    });
    Ok(rx)
}

fn stopped_at(e: anyhow::Error, accepted: u64) -> anyhow::Error {
    e.context(format!(
        "{accepted} units before this line were accepted (printed above); fix the line and submit the rest from there"
    ))
}

fn run_jsonl(dir: &Path, path: &Path) -> anyhow::Result<()> {
    let (_datadir, mut ledger) = super::open_ledger(dir)?;
    let batch_size = usize::try_from(_datadir.config.submit.batch_size).unwrap_or(1000);
    let rx = spawn_line_reader(path, batch_size * 4)?;

    let mut accepted = 0u64;
    // Block for the first line, then take whatever else has already arrived.
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut failure = None;
        for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            let parsed = msg.context("cannot read the input").and_then(|(n, line)| {
                let sub = parse_line(n, &line)?;
                if let Some(sub) = &sub {
                    ledger.check(sub).with_context(|| format!("line {n}"))?;
                }
                Ok(sub)
            });
            match parsed {
                Ok(Some(sub)) => batch.push(sub),
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if batch.len() >= batch_size {
                break;
            }
        }
        if !batch.is_empty() {
            let receipts = ledger.submit_batch(batch, super::now_ms())?;
            accepted += receipts.len() as u64;
            print_receipts(&receipts)?;
        }
        if let Some(e) = failure {
            ledger.close()?;
            return Err(stopped_at(e, accepted));
        }
    }
    ledger.close()?;
    Ok(())
}

/// `--jsonl` through a running node: pipelined requests, receipts printed in order.
fn run_jsonl_through(mut node: ControlClient, path: &Path) -> anyhow::Result<()> {
    let rx = spawn_line_reader(path, IN_FLIGHT * 4)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut accepted = 0u64;
    // The first failure by line number: a refusal of an earlier line in flight wins over a
    // bad line found later.
    let mut failure: Option<(u64, anyhow::Error)> = None;
    let mut input_done = false;
    loop {
        if !input_done && failure.is_none() && in_flight.len() < IN_FLIGHT {
            let msg = if in_flight.is_empty() {
                out.flush()?;
                rx.recv().ok()
            } else {
                match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        input_done = true;
                        None
                    }
                }
            };
            match msg {
                None if in_flight.is_empty() => input_done = true,
                None => {}
                Some(Err(e)) => {
                    failure =
                        Some((u64::MAX, anyhow::Error::new(e).context("cannot read the input")));
                }
                Some(Ok((n, line))) => {
                    match parse_line(n, &line) {
                        Ok(Some(sub)) => {
                            node.queue(&protocol::submit_request(&sub))
                                .context("cannot send to the node")?;
                            in_flight.push_back(n);
                        }
                        Ok(None) => {}
                        Err(e) => failure = Some((n, e)),
                    }
                    continue;
                }
            }
        }
        let Some(n) = in_flight.pop_front() else {
            if input_done || failure.is_some() {
                break;
            }
            continue;
        };
        node.flush().context("cannot send to the node")?;
        match node.recv().context("cannot read the node's reply")? {
            Some(Reply::Receipt(line)) => {
                accepted += 1;
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Some(Reply::Error { message, .. }) => {
                if failure.as_ref().is_none_or(|(at, _)| n < *at) {
                    failure = Some((n, anyhow!("line {n}: {message}")));
                }
            }
            Some(other) => bail!("the node answered {other:?} to a submit"),
            None => bail!(
                "the node closed the connection before answering line {n}; {accepted} units were accepted (printed above); check the node's log and submit the rest from line {n}"
            ),
        }
    }
    out.flush()?;
    match failure {
        Some((_, e)) => Err(stopped_at(e, accepted)),
        None => Ok(()),
    }
}

fn parse_line(n: u64, line: &str) -> anyhow::Result<Option<Submission>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    protocol::parse_submit_line(line).map(Some).map_err(|e| match e {
        RequestError::Fields { source, .. } => anyhow!(
            "line {n}: not a unit ({source}); expected {{\"kind\":\"TUBT\",\"urgent\":false,\"body\":<any JSON>}}"
        ),
        other => anyhow!("line {n}: {other}"),
    })
}
