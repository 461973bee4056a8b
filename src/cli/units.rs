//! `meshnode units`: one JSON line per unit held.

use std::io::Write;
use std::path::Path;

use clap::Args;

use crate::store::Store;

/// Arguments of `meshnode units`.
#[derive(Debug, Args)]
pub struct UnitsArgs {
    /// Print JSON lines (the only format for now; accepted for scripts).
    #[arg(long)]
    json: bool,
}

pub(super) fn run(dir: &Path, _args: UnitsArgs) -> anyhow::Result<()> {
    let (_datadir, ledger) = super::open_ledger(dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut io_error = None;
    ledger.store().for_each_unit(&mut |unit| {
        let line = serde_json::json!({
            "origin": unit.origin.as_str(),
            "seq": unit.seq,
            "physkey": unit.physkey.as_str(),
            "kind": unit.kind.as_str(),
            "urgency": unit.urgency.as_str(),
            "length": unit.payload.len(),
        });
        match writeln!(out, "{line}") {
            Ok(()) => true,
            Err(e) => {
                io_error = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = io_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    out.flush().ok();
    ledger.close()?;
    Ok(())
}
