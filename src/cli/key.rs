//! `meshnode key export`: write a join file for a new member; `meshnode key relay-verifier`:
//! print the line a relay operator runs to admit this system.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::crypto::admission::AdmissionKey;
use crate::datadir::read_system_key;
use crate::wire::EnvironmentTag;

/// `meshnode key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a join file (mode 0600) carrying RmSystem, environment, system key and install id.
    Export {
        /// The join file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the `meshnode relay admit ...` line that admits this system at a relay. The
    /// verifier is public: it lets a relay check members, not act as one.
    RelayVerifier,
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
        KeyCommand::RelayVerifier => {
            let secrets = read_system_key(dir)
                .with_context(|| format!("cannot read the system key of {}", dir.display()))?;
            let env_tag = EnvironmentTag::of(&secrets.env).0;
            let key = AdmissionKey::derive(&secrets.install_id, secrets.rmsystem, env_tag)
                .context("cannot derive the relay admission key")?;
            println!(
                "meshnode relay admit --data-dir RELAY_DIR --system {} --env {} --verifier {}",
                secrets.rmsystem,
                secrets.env,
                key.verifier()
            );
            Ok(())
        }
    }
}
