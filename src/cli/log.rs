//! `meshnode log`: verify, dump and import TUBT daily log files (`TUBT_<DBID>_<NNNN>_<DATE>.DATI`).
//!
//! Records are sealed with the system's log key, so each command needs a member's data
//! directory (`--data-dir`) for the key, even for a file that came from elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::crypto::KeySchedule;
use crate::datadir::read_system_key;
use crate::dati;
use crate::ledger::{Ledger, Rival};
use crate::store::Store;
use crate::unit::TransferUnit;

/// `meshnode log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Check every record of every daily log (or one file): checksums, hash chain, decryption.
    /// Names the file and byte offset of the first bad record.
    Verify {
        /// Check only this file.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print the records of one file as JSON lines, for a support engineer.
    Dump {
        /// The file to dump.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Include the payload (base64-free: as text when it is UTF-8, else hex).
        #[arg(long)]
        payload: bool,
    },
    /// Take units from daily log files carried from another machine (duplicates are ignored).
    Import {
        /// The files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

pub(super) fn run(dir: Option<&Path>, cmd: LogCommand) -> anyhow::Result<()> {
    let dir = dir.context(
        "--data-dir DIR is required: daily log records are sealed with the system key, which is read from a member's data directory",
    )?;
    match cmd {
        LogCommand::Verify { file } => verify(dir, file.as_deref()),
        LogCommand::Dump { file, payload } => dump(dir, &file, payload),
        LogCommand::Import { files } => import(dir, &files),
    }
}

fn schedule(dir: &Path) -> anyhow::Result<KeySchedule> {
    let secrets = read_system_key(dir)
        .with_context(|| format!("cannot read the system key of {}", dir.display()))?;
    let config = crate::config::Config::load(&dir.join(crate::datadir::CONFIG_FILE))?;
    Ok(secrets.key_schedule(&config.node))
}

fn verify(dir: &Path, file: Option<&Path>) -> anyhow::Result<()> {
    let keys = schedule(dir)?;
    let files: Vec<PathBuf> = match file {
        Some(f) => vec![f.to_path_buf()],
        None => dati::list_files(&dir.join("dati"))?.into_iter().map(|f| f.path).collect(),
    };
    let (mut records, mut bytes) = (0u64, 0u64);
    for path in &files {
        let report = dati::verify_file(path, &keys)?;
        records += report.records;
        bytes += report.bytes;
        outln!("ok {} ({} records, {} bytes)", path.display(), report.records, report.bytes);
    }
    outln!("verified {} files, {records} records, {bytes} bytes: no damage found", files.len());
    Ok(())
}

fn dump(dir: &Path, file: &Path, with_payload: bool) -> anyhow::Result<()> {
    let keys = schedule(dir)?;
    let reader = dati::DatiReader::open(file, &keys)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for record in reader {
        let record = record?;
        let unit = &record.unit;
        let mut line = serde_json::json!({
            "offset": record.offset,
            "origin": unit.origin.as_str(),
            "seq": unit.seq,
            "physkey": unit.physkey.as_str(),
            "kind": unit.kind.as_str(),
            "urgency": unit.urgency.as_str(),
            "scopes": unit.scopes.names(),
            "created_ms": unit.created_ms,
            "key_epoch": record.epoch.0,
            "length": unit.payload.len(),
        });
        if with_payload {
            line["payload"] = match std::str::from_utf8(&unit.payload) {
                Ok(text) => serde_json::json!(text),
                Err(_) => serde_json::json!({ "hex": hex::encode(&unit.payload) }),
            };
        }
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    out.flush().ok();
    Ok(())
}

fn import(dir: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    let (datadir, mut ledger) = super::open_ledger(dir)?;
    let keys = datadir.key_schedule();
    let dati_dir = datadir.dati_path();
    let (mut seen, mut new) = (0u64, 0usize);
    // Issued again once every file is in: a later file may hold own units above this node's
    // head, whose seqs the copies must not take.
    let mut rivals = Vec::new();
    for path in files {
        if path.parent().map(|p| same_dir(p, &dati_dir)).unwrap_or(false) {
            bail!("{} is already one of this node's daily logs; import files carried from another machine", path.display());
        }
        // Read the whole file first: a damaged file is refused before anything is taken.
        let units: Vec<_> = dati::DatiReader::open(path, &keys)?
            .map(|r| r.map(|rec| rec.unit))
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("{} was not imported (nothing taken from it)", path.display())
            })?;
        seen += units.len() as u64;
        for chunk in units.chunks(crate::ledger::RIVALS_MAX) {
            new += ledger.accept_batch(chunk.to_vec(), super::now_ms())?.len();
            rivals.extend(ledger.take_rivals());
        }
    }
    let (found, again) = (rivals.len(), issue_again(&mut ledger, rivals)?);
    ledger.close()?;
    outln!(
        "imported {} files: {seen} units read, {new} new, {} already held",
        files.len(),
        seen - new as u64 - found as u64
    );
    if found > 0 {
        outln!(
            "{found} units read are this node's own, made before its data directory was rolled back in place, under seqs it has handed out again since: both units of each such seq go again under new seqs, unless held already ({again} units went again; README, \"A data directory put back in place\")"
        );
    }
    Ok(())
}

/// Own units read under seqs this node holds as other units (its data directory was rolled
/// back in place): both units of each such seq go again under new seqs, as a running node does
/// (`crate::proto::node::own_origin`), unless the one read is held already (an earlier import,
/// or a peer sent it back). Returns how many units went again.
fn issue_again(ledger: &mut Ledger, rivals: Vec<Rival>) -> anyhow::Result<usize> {
    let mut again: Vec<TransferUnit> = Vec::new();
    for Rival { held, received } in rivals {
        let held_already = matches!(ledger.store().find_physkey(&received.physkey), Ok(Some(_)));
        if held_already || again.iter().any(|u| u.physkey == received.physkey) {
            continue;
        }
        again.push(held);
        again.push(received);
    }
    if again.is_empty() {
        return Ok(0);
    }
    let logged = ledger.reissue_logged(again, super::now_ms())?;
    Ok(ledger.index(logged)?.len())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
