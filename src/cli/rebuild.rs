//! `meshnode rebuild`: rebuild the store from the daily logs alone.

use std::path::Path;

use anyhow::Context;
use clap::Args;

use crate::datadir::DataDir;
use crate::store::Store;

/// Arguments of `meshnode rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {}

pub(super) fn run(dir: &Path, _args: RebuildArgs) -> anyhow::Result<()> {
    let mut rng = rand::rngs::OsRng;
    let (datadir, _) =
        DataDir::open(dir, &mut rng).with_context(|| format!("cannot open {}", dir.display()))?;
    let store = datadir.store_path();
    let aside = dir.join("store.before-rebuild");
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("cannot remove {}", aside.display()))?;
    }
    if store.exists() {
        // Kept until the rebuild succeeded, so a failed rebuild loses nothing.
        std::fs::rename(&store, &aside)
            .with_context(|| format!("cannot move {} aside", store.display()))?;
    }
    drop(datadir);
    let result = super::open_ledger(dir).and_then(|(_d, ledger)| {
        let total = ledger.store().units_total();
        ledger.close()?;
        Ok(total)
    });
    match result {
        Ok(total) => {
            if aside.exists() {
                std::fs::remove_dir_all(&aside).ok();
            }
            println!("rebuilt the store of {} from its daily logs: {total} units", dir.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&store);
            if aside.exists() {
                std::fs::rename(&aside, &store).ok();
            }
            Err(e.context("rebuild failed; the previous store was put back"))
        }
    }
}
