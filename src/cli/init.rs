//! `meshnode init`: create a system, or join one with a join file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::datadir::{DataDir, SystemSecrets};
use crate::id::{Environment, RmSystem};

/// Arguments of `meshnode init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// RmSystem of the new system, e.g. 77,123,89,201192 (random if not given).
    #[arg(long, value_name = "RMSYSTEM", conflicts_with = "join")]
    system: Option<RmSystem>,
    /// Environment of the new system.
    #[arg(long, value_name = "ENV", default_value = "live", conflicts_with = "join")]
    env: Environment,
    /// Join the system of this join file (from `meshnode key export`) instead.
    #[arg(long, value_name = "FILE")]
    join: Option<PathBuf>,
}

pub(super) fn run(dir: &Path, args: InitArgs) -> anyhow::Result<()> {
    let mut rng = rand::rngs::OsRng;
    let (secrets, verb) = match &args.join {
        Some(file) => (
            SystemSecrets::read_join_file(file)
                .with_context(|| format!("cannot read join file {}", file.display()))?,
            "joined",
        ),
        None => (SystemSecrets::generate(&mut rng, args.system, args.env), "created"),
    };
    let datadir = DataDir::init(dir, &secrets, &mut rng)
        .with_context(|| format!("cannot initialise {}", dir.display()))?;
    println!(
        "{verb} system {} ({}) in {}; this directory writes as dbid {}",
        secrets.rmsystem,
        secrets.env,
        dir.display(),
        datadir.identity.dbid
    );
    Ok(())
}
