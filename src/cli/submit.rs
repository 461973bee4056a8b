//! `meshnode submit`: hand units to the node; each accepted unit is printed as one JSON line
//! `{"origin":..,"seq":..,"physkey":..}` only once it is durable.
//!
//! With `--jsonl`, lines are read on a separate thread and committed in groups: whatever has
//! arrived (up to `submit.batch_size`) goes into one disk sync, so a fast producer gets large
//! batches and a slow one gets low latency. A bad line stops the run with its line number; the
//! lines before it are accepted (and printed), nothing after it is.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use crate::id::Physkey;
use crate::ledger::{Ledger, Receipt, Submission};
use crate::unit::{FileScopes, UnitKind, Urgency};

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
    /// Submit one unit per line of this file ('-' for stdin):
    /// {"kind":"TUBT","urgent":false,"body":<any JSON>}
    #[arg(long, value_name = "FILE", conflicts_with_all = ["physkey", "urgent", "background", "scopes"])]
    jsonl: Option<PathBuf>,
}

fn parse_scope(s: &str) -> Result<FileScopes, String> {
    match s.to_ascii_lowercase().as_str() {
        "all" => Ok(FileScopes::ALL),
        "up" => Ok(FileScopes::UP),
        "down" => Ok(FileScopes::DOWN),
        "across" => Ok(FileScopes::ACROSS),
        _ => Err(format!("unknown scope {s:?}: expected all, up, down or across")),
    }
}

/// One line of `--jsonl` input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default)]
    urgent: bool,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    physkey: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    body: serde_json::Value,
}

fn default_kind() -> String {
    "TUBT".into()
}

pub(super) fn run(dir: &Path, args: SubmitArgs) -> anyhow::Result<()> {
    match &args.jsonl {
        Some(path) => run_jsonl(dir, path),
        None => run_one(dir, &args),
    }
}

fn urgency(urgent: bool, background: bool) -> Urgency {
    match (urgent, background) {
        (true, _) => Urgency::Urgent,
        (false, true) => Urgency::Background,
        _ => Urgency::Normal,
    }
}

fn run_one(dir: &Path, args: &SubmitArgs) -> anyhow::Result<()> {
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
    let sub = Submission {
        kind: args.kind,
        urgency: urgency(args.urgent, args.background),
        scopes: args.scopes.iter().fold(FileScopes::NONE, |a, s| a.union(*s)),
        physkey: args.physkey,
        payload,
    };
    let (_datadir, mut ledger) = super::open_ledger(dir)?;
    ledger.check(&sub).context("unit refused; nothing was written")?;
    let receipts = ledger.submit_batch(vec![sub], super::now_ms())?;
    print_receipts(&receipts)?;
    ledger.close()?;
    Ok(())
}

fn print_receipts(receipts: &[Receipt]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for r in receipts {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A line read by the reader thread: its number and text, or the read error.
type LineMsg = Result<(u64, String), std::io::Error>;

fn run_jsonl(dir: &Path, path: &Path) -> anyhow::Result<()> {
    let (_datadir, mut ledger) = super::open_ledger(dir)?;
    let batch_size = usize::try_from(_datadir.config.submit.batch_size).unwrap_or(1000);
    let (tx, rx) = mpsc::sync_channel::<LineMsg>(batch_size * 4);
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

    let mut accepted = 0u64;
    // Block for the first line, then take whatever else has already arrived.
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut failure = None;
        for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg
                .context("cannot read the input")
                .and_then(|(n, line)| parse_line(&ledger, n, &line))
            {
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
            return Err(e.context(format!(
                "{accepted} units before this line were accepted (printed above); fix the line and submit the rest from there"
            )));
        }
    }
    ledger.close()?;
    Ok(())
}

fn parse_line(ledger: &Ledger, n: u64, line: &str) -> anyhow::Result<Option<Submission>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let parsed: JsonLine = serde_json::from_str(line).with_context(|| {
        format!("line {n}: not a unit; expected {{\"kind\":\"TUBT\",\"urgent\":false,\"body\":<any JSON>}}")
    })?;
    let kind: UnitKind = parsed.kind.parse().with_context(|| format!("line {n}"))?;
    if parsed.urgent && parsed.background {
        bail!("line {n}: a unit is either urgent or background, not both");
    }
    let physkey = match parsed.physkey {
        Some(k) => Some(k.parse::<Physkey>().with_context(|| format!("line {n}"))?),
        None => None,
    };
    let mut scopes = FileScopes::NONE;
    for s in &parsed.scopes {
        scopes = scopes.union(
            parse_scope(s).map_err(anyhow::Error::msg).with_context(|| format!("line {n}"))?,
        );
    }
    let sub = Submission {
        kind,
        urgency: urgency(parsed.urgent, parsed.background),
        scopes,
        physkey,
        payload: serde_json::to_vec(&parsed.body)?,
    };
    ledger.check(&sub).with_context(|| format!("line {n}"))?;
    Ok(Some(sub))
}
