//! `meshnode key export`: write a join file for a new member.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::datadir::read_system_key;

/// `meshnode key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a join file (mode 0600) carrying RmSystem, environment, system key and install id.
    Export {
        /// The join file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub(super) fn run(dir: &Path, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Export { out } => {
            let secrets = read_system_key(dir)
                .with_context(|| format!("cannot read the system key of {}", dir.display()))?;
            secrets
                .write_join_file(&out)
                .with_context(|| format!("cannot write join file {}", out.display()))?;
            println!(
                "wrote join file {} for system {} ({}); it is SECRET: carry it safely and delete it after `meshnode init --join`",
                out.display(),
                secrets.rmsystem,
                secrets.env
            );
            Ok(())
        }
    }
}
