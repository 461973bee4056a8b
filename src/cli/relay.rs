//! `meshnode relay`: run a rendezvous relay, admit and revoke systems, show its status.
//!
//! ```text
//! meshnode relay --data-dir R --listen 0.0.0.0:7740        run (creates R on first start)
//! meshnode relay --data-dir R --status [--json]             works whether or not it runs
//! meshnode relay admit  --data-dir R --system S --env E --verifier HEX [quotas]
//! meshnode relay revoke --data-dir R --system S --env E [--verifier HEX]
//! ```
//!
//! A relay's directory never holds a system key: one that does is refused, so a node's data
//! directory cannot be turned into a relay by mistake.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::crypto::admission::Verifier;
use crate::datadir::{DataDirError, DirLock, SYSTEM_KEY_FILE};
use crate::id::{Environment, RmSystem};
use crate::relay::admitted::{
    AdmittedFile, SystemEntry, DEFAULT_MAX_PAYLOADS, DEFAULT_QUOTA_MIB, DEFAULT_TTL_DAYS,
};
use crate::relay::server::{
    self, RelayIdentity, RelayServerConfig, ADMITTED_FILE, RELAY_KEY_FILE, STATUS_FILE, STORE_DIR,
};
use crate::relay::{RelayCore, RelayLimits, SledRelayStore};

#[derive(Debug, Args)]
pub(super) struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    /// Run the relay listening on this UDP address, e.g. 0.0.0.0:7740.
    #[arg(long, value_name = "ADDR", conflicts_with = "status")]
    listen: Option<SocketAddr>,
    /// Show what the relay holds per system and whom it refused (running or not).
    #[arg(long)]
    status: bool,
    /// With --status: one JSON object instead of the table.
    #[arg(long, requires = "status")]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Admit the members of a system (the line `meshnode key relay-verifier` prints on a
    /// member). Admitting again adds a second verifier (install-id rotation) and replaces the
    /// quotas. A running relay picks the change up within a second.
    Admit {
        /// The system, e.g. 77,123,89,201192.
        #[arg(long, value_name = "RMSYSTEM")]
        system: RmSystem,
        /// Its environment.
        #[arg(long, value_name = "ENV", default_value = "live")]
        env: Environment,
        /// The verifier (64 hex digits) from `meshnode key relay-verifier`.
        #[arg(long, value_name = "HEX")]
        verifier: Verifier,
        /// Bytes the system may store, in MiB.
        #[arg(long, default_value_t = DEFAULT_QUOTA_MIB)]
        quota_mib: u64,
        /// Payloads the system may store.
        #[arg(long, default_value_t = DEFAULT_MAX_PAYLOADS)]
        max_payloads: u64,
        /// Longest time to live of its payloads, in days.
        #[arg(long, default_value_t = DEFAULT_TTL_DAYS)]
        ttl_days: u32,
    },
    /// Stop admitting a system (or only one of its two verifiers). Its stored payloads stay
    /// until they expire.
    Revoke {
        /// The system.
        #[arg(long, value_name = "RMSYSTEM")]
        system: RmSystem,
        /// Its environment.
        #[arg(long, value_name = "ENV", default_value = "live")]
        env: Environment,
        /// Only this verifier.
        #[arg(long, value_name = "HEX")]
        verifier: Option<Verifier>,
    },
}

pub(super) fn run(dir: &Path, args: RelayArgs) -> anyhow::Result<()> {
    if dir.join(SYSTEM_KEY_FILE).exists() {
        bail!(
            "{} holds a system key ({SYSTEM_KEY_FILE}); a relay never holds one. Give the relay its own --data-dir",
            dir.display()
        );
    }
    match (args.command, args.listen, args.status) {
        (Some(_), Some(_), _) | (Some(_), _, true) => bail!(
            "admit and revoke are used without --listen and --status: `meshnode relay admit --data-dir {} ...`",
            dir.display()
        ),
        (Some(command), ..) => admin(dir, command),
        (None, _, true) => status(dir, args.json),
        (None, Some(listen), false) => serve(dir, listen),
        (None, None, false) => bail!(
            "nothing to do: run with `meshnode relay --data-dir {0} --listen ADDR`, or see `meshnode relay --data-dir {0} --status`",
            dir.display()
        ),
    }
}

fn admin(dir: &Path, command: RelayCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(ADMITTED_FILE);
    let mut file = AdmittedFile::load(&path)?;
    match command {
        RelayCommand::Admit { system, env, verifier, quota_mib, max_payloads, ttl_days } => {
            file.admit(SystemEntry {
                rmsystem: system.to_string(),
                env: env.to_string(),
                verifiers: vec![verifier.to_string()],
                quota_mib,
                max_payloads,
                ttl_days,
            });
            file.check(&path)?;
            file.write(&path)?;
            outln!(
                "admitted {system} ({env}) at the relay in {}; a running relay picks it up within a second",
                dir.display()
            );
        }
        RelayCommand::Revoke { system, env, verifier } => {
            let verifier = verifier.map(|v| v.to_string());
            if !file.revoke(&system.to_string(), env.as_str(), verifier.as_deref()) {
                bail!(
                    "{system} ({env}) {} is not admitted in {}; nothing changed",
                    verifier.map_or(String::new(), |v| format!("with verifier {v}")),
                    path.display()
                );
            }
            file.write(&path)?;
            outln!("revoked {system} ({env}) at the relay in {}", dir.display());
        }
    }
    Ok(())
}

fn serve(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let _lock = lock_waiting(dir)?;
    let identity = RelayIdentity::load_or_create(dir)?;
    let store = SledRelayStore::open(&dir.join(STORE_DIR))
        .with_context(|| format!("cannot open the relay store in {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let socket = std::net::UdpSocket::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (udp); choose another --listen"))?;
    let cfg = RelayServerConfig { dir: dir.to_path_buf(), socket, limits: RelayLimits::default() };
    runtime.block_on(server::run(cfg, &identity, store, super::run::shutdown_signal()))?;
    eprintln!("meshnode relay stopped");
    Ok(())
}

/// Takes the directory's lock, waiting up to 10 s while a `--status` holds it for a moment.
fn lock_waiting(dir: &Path) -> anyhow::Result<DirLock> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match DirLock::acquire(dir) {
            Err(DataDirError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

fn status(dir: &Path, as_json: bool) -> anyhow::Result<()> {
    if !dir.join(RELAY_KEY_FILE).exists() {
        bail!(
            "{} is not a relay directory (no {RELAY_KEY_FILE}); start one with `meshnode relay --data-dir {} --listen ADDR`",
            dir.display(),
            dir.display()
        );
    }
    let status = match DirLock::holder(dir) {
        Some(pid) => {
            let path = dir.join(STATUS_FILE);
            match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(status) => status,
                None => {
                    serde_json::json!({"running": true, "pid": pid, "systems": [], "refused": {}})
                }
            }
        }
        None => {
            let _lock = DirLock::acquire(dir)?;
            let identity = RelayIdentity::load(dir)?;
            let admitted_path = dir.join(ADMITTED_FILE);
            let admitted = AdmittedFile::load(&admitted_path)?.check(&admitted_path)?;
            let store = SledRelayStore::open(&dir.join(STORE_DIR))
                .with_context(|| format!("cannot open the relay store in {}", dir.display()))?;
            let size = store.size_on_disk();
            let core =
                RelayCore::new(identity.public_key(), store, admitted, RelayLimits::default());
            let mut status = server::status_json(&core, None, None);
            status["store_bytes_on_disk"] = serde_json::json!(size);
            status
        }
    };
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(())
}

fn print_table(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mib = |v: &serde_json::Value| format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / 1048576.0);
    if s["running"] == true {
        outln!(
            "relay {}  key {}  up {} s  pid {}  store {} on disk",
            text(&s["listen"]),
            text(&s["key"]),
            text(&s["uptime_secs"]),
            text(&s["pid"]),
            mib(&s["store_bytes_on_disk"])
        );
    } else {
        outln!(
            "relay not running  key {}  store {} on disk",
            text(&s["key"]),
            mib(&s["store_bytes_on_disk"])
        );
    }
    let now = server::now_ms();
    for sys in s["systems"].as_array().cloned().unwrap_or_default() {
        let usage = &sys["usage"];
        let c = &sys["counters"];
        let oldest = usage["oldest_posted_ms"]
            .as_u64()
            .map_or("-".to_string(), |ms| format!("{} s", now.saturating_sub(ms) / 1000));
        outln!(
            "{} {}{}: {} connected, {} payloads, {} of {}, oldest {}, posted {}, delivered {}, taken {}, expired {}, quota refusals {}, rate limited posts {}, bad proof {}",
            text(&sys["rmsystem"]),
            text(&sys["env"]),
            if sys["admitted"] == true { "" } else { " (not admitted)" },
            text(&sys["connected"]),
            text(&usage["count"]),
            mib(&usage["bytes"]),
            mib(&sys["quota_bytes"]),
            oldest,
            text(&c["posted"]),
            text(&c["delivered"]),
            text(&c["taken"]),
            text(&c["expired"]),
            text(&c["quota_refusals"]),
            text(&c["rate_limited_posts"]),
            text(&c["bad_proof"]),
        );
    }
    let refused: Vec<String> = s["refused"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{} {}", k.replace('_', " "), text(v))).collect())
        .unwrap_or_default();
    outln!("refused: {}", if refused.is_empty() { "-".into() } else { refused.join(", ") });
}
