//! The data directory: what lives where, who may use it, and which dbid it writes as.
//!
//! ```text
//! D/system.key       secrets of the system (RmSystem, env, system key, install id), mode 0600
//! D/meshnode.toml    settings (crate::config)
//! D/identity.toml    this directory's dbid and how to tell it was copied or restored
//! D/install.marker   never rewritten; its inode changes when the directory is copied/restored
//! D/lock             flock'd by the one process using the directory; holds its pid
//! D/store/           the sled store (crate::store)
//! D/dati/            TUBT daily logs (crate::dati)
//! ```
//!
//! A copied or restored directory must not keep writing as the same dbid: the original (or the
//! copy's own past) may already have used the sequence numbers the copy would use next. So the
//! identity records the device id at allocation (the seed's "Piid") and the install marker's
//! inode; when either no longer matches, a new dbid is allocated and the reason logged. A
//! directory put back in place (a VM snapshot reverted, a block-level restore) keeps its inodes
//! and so its dbid: that case is caught when a peer shows own units beyond this directory's
//! head (`crate::proto::node::own_origin`). This module does not open the store or the logs (see
//! `crate::ledger`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, NodeConfig};
use crate::crypto::{KeySchedule, SystemKey};
use crate::id::{DatabaseId, DeviceId, Environment, InstallId, RmSystem};

/// File names inside a data directory.
pub const SYSTEM_KEY_FILE: &str = "system.key";
/// Settings file.
pub const CONFIG_FILE: &str = "meshnode.toml";
/// Identity file.
pub const IDENTITY_FILE: &str = "identity.toml";
/// Install marker file.
pub const MARKER_FILE: &str = "install.marker";
/// Lock file.
pub const LOCK_FILE: &str = "lock";
/// Device id fallback file (only where no stable machine id exists).
pub const DEVICE_ID_FILE: &str = "device.id";

/// Errors opening, creating or reading a data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// IO on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// No system here yet.
    #[error("{path} holds no meshnode system (no {SYSTEM_KEY_FILE}); create one with `meshnode init --data-dir {path}` or join one with `meshnode init --data-dir {path} --join FILE`")]
    NotInitialised {
        /// The data directory.
        path: PathBuf,
    },
    /// `init` on a directory that already holds a system.
    #[error("{path} already holds a meshnode system (found {found}); nothing was changed. Use another --data-dir, or remove the directory first if you really mean to start over")]
    AlreadyInitialised {
        /// The data directory.
        path: PathBuf,
        /// The file that shows it.
        found: &'static str,
    },
    /// Key file readable by others.
    #[error("{path} is readable by group or others (mode {mode:o}); the system key must stay secret. Fix it with `chmod 600 {path}`")]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key, join or identity file that does not parse.
    #[error("{path}: {why}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// Another process uses the directory.
    #[error("{path} is in use by another meshnode process (pid {pid}); stop it first, or use another --data-dir")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid written by the holder, or "unknown".
        pid: String,
    },
    /// The config file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// The secrets shared by every member of a system: what `system.key` and a join file carry.
#[derive(Debug, Clone)]
pub struct SystemSecrets {
    /// The visible system id.
    pub rmsystem: RmSystem,
    /// live, test, ...
    pub env: Environment,
    /// The system key (256 bits).
    pub system_key: SystemKey,
    /// The relay membership secret.
    pub install_id: InstallId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    format: u32,
    kind: String,
    rmsystem: String,
    env: String,
    system_key: String,
    install_id: String,
}

impl SystemSecrets {
    /// A new system: random key and install id; `rmsystem` random when not given.
    pub fn generate<R: RngCore + CryptoRng>(
        rng: &mut R,
        rmsystem: Option<RmSystem>,
        env: Environment,
    ) -> Self {
        SystemSecrets {
            rmsystem: rmsystem.unwrap_or_else(|| RmSystem::random(rng)),
            env,
            system_key: SystemKey::random(rng),
            install_id: InstallId::random(rng),
        }
    }

    /// The key schedule of this system with the epoch period and maximum clock skew of `node`
    /// (the `[node]` section of `meshnode.toml`).
    pub fn key_schedule(&self, node: &NodeConfig) -> KeySchedule {
        KeySchedule::new(&self.system_key, self.rmsystem, &self.env, node.key_epoch_period_secs)
            .with_max_clock_skew(node.max_clock_skew_secs)
    }

    fn to_text(&self, kind: &str) -> String {
        let body = SecretsFile {
            format: 1,
            kind: kind.to_string(),
            rmsystem: self.rmsystem.to_string(),
            env: self.env.to_string(),
            system_key: hex::encode(self.system_key.expose()),
            install_id: hex::encode(self.install_id.0),
        };
        let header = match kind {
            "join" => "# meshnode join file: makes a machine a member of this system.\n# SECRET: anyone holding it is a member. Carry it safely, delete it after use.\n# Use: meshnode init --data-dir DIR --join THIS_FILE\n",
            _ => "# meshnode system key: the secrets of this system. Mode 0600; never share it.\n# To add a machine, export a join file: meshnode key export --data-dir DIR --out FILE\n",
        };
        // Serializing plain strings to TOML cannot fail.
        format!("{header}{}", toml::to_string(&body).expect("toml of strings"))
    }

    fn parse(text: &str, path: &Path, expect_kind: &str) -> Result<Self, DataDirError> {
        let bad = |why: String| DataDirError::BadFile { path: path.to_path_buf(), why };
        let file: SecretsFile = toml::from_str(text).map_err(|e| {
            bad(format!("not a meshnode {expect_kind} file: {}", e.to_string().trim_end()))
        })?;
        if file.format != 1 {
            return Err(bad(format!(
                "format {} is not supported by this meshnode (reads format 1); upgrade meshnode",
                file.format
            )));
        }
        if file.kind != expect_kind {
            return Err(bad(format!(
                "this is a {:?} file, expected a {expect_kind:?} file",
                file.kind
            )));
        }
        let rmsystem = file.rmsystem.parse().map_err(|e| bad(format!("rmsystem: {e}")))?;
        let env = file.env.parse().map_err(|e| bad(format!("env: {e}")))?;
        let hex32 = |name: &str, value: &str| -> Result<[u8; 32], DataDirError> {
            let bytes = hex::decode(value)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    bad(format!("{name} must be 64 hex digits; the file is damaged, copy it again from the original"))
                })?;
            Ok(bytes)
        };
        Ok(SystemSecrets {
            rmsystem,
            env,
            system_key: SystemKey::from_bytes(hex32("system_key", &file.system_key)?),
            install_id: InstallId(hex32("install_id", &file.install_id)?),
        })
    }

    /// Reads a join file written by `meshnode key export`.
    pub fn read_join_file(path: &Path) -> Result<Self, DataDirError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, path, "join")
    }

    /// Writes a join file with mode 0600; refuses to overwrite an existing file.
    pub fn write_join_file(&self, path: &Path) -> Result<(), DataDirError> {
        write_new_secret(path, self.to_text("join").as_bytes())
    }
}

/// Creates `path` with mode 0600 (never wider, whatever the umask) and syncs it.
fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Writes `path` atomically (temp file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory so a created or renamed entry survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// This directory's identity (`identity.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The dbid units written here carry.
    pub dbid: DatabaseId,
    /// Device id when the dbid was allocated (seed: "Piid").
    pub piid: String,
    /// Inode of `install.marker` when the dbid was allocated.
    pub marker_inode: u64,
    /// Earlier dbids of this directory, oldest first.
    #[serde(default)]
    pub previous_dbids: Vec<DatabaseId>,
}

/// Holds the directory's lock for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DataDirError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a file descriptor we own; no memory is touched.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataDirError::Locked {
                    path: dir.to_path_buf(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid.to_string() },
                });
            }
            return Err(DataDirError::Io { path, source: err });
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io_err(&path))?;
        Ok(DirLock { _file: file })
    }

    /// The pid written in `dir/lock` if a process holds the lock now.
    pub fn holder(dir: &Path) -> Option<String> {
        let path = dir.join(LOCK_FILE);
        let file = File::open(&path).ok()?;
        // SAFETY: as in acquire; a shared, non-blocking probe that we release at once.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            // SAFETY: releases the probe lock taken just above on our own descriptor.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return None;
        }
        let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
        Some(if pid.is_empty() { "unknown".into() } else { pid })
    }
}

/// This machine's device id: from `/etc/machine-id`, else the first MAC address, hashed; else
/// random and kept in `dir/device.id`. `MESHNODE_MACHINE_ID` overrides the machine id (for
/// containers that share one `/etc/machine-id`, and for tests that simulate another machine).
pub fn device_id(dir: &Path) -> Result<DeviceId, DataDirError> {
    let hash = |source: &[u8]| {
        let h = blake3::derive_key("meshnode device id v1", source);
        let mut out = [0u8; DeviceId::LEN];
        out.copy_from_slice(&h[..DeviceId::LEN]);
        DeviceId(out)
    };
    if let Ok(id) = std::env::var("MESHNODE_MACHINE_ID") {
        if !id.trim().is_empty() {
            return Ok(hash(id.trim().as_bytes()));
        }
    }
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = fs::read_to_string(path) {
            if id.trim().len() >= 16 {
                return Ok(hash(id.trim().as_bytes()));
            }
        }
    }
    if let Some(mac) = first_mac() {
        return Ok(hash(mac.as_bytes()));
    }
    let path = dir.join(DEVICE_ID_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(id) = text.trim().parse() {
            return Ok(id);
        }
    }
    let id = DeviceId::random(&mut rand::rngs::OsRng);
    write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

fn first_mac() -> Option<String> {
    let mut names: Vec<_> =
        fs::read_dir("/sys/class/net").ok()?.flatten().map(|e| e.path()).collect();
    names.sort();
    names.into_iter().find_map(|dev| {
        let mac = fs::read_to_string(dev.join("address")).ok()?;
        let mac = mac.trim();
        (mac.len() == 17 && mac != "00:00:00:00:00:00").then(|| mac.to_string())
    })
}

/// Something worth telling the operator that happened while opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenNote {
    /// A new dbid was allocated because the directory was copied or restored.
    NewDbid {
        /// The dbid no longer written as.
        old: DatabaseId,
        /// The new one.
        new: DatabaseId,
        /// Why.
        reason: String,
    },
}

/// An open data directory, locked for this process.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// The system's secrets.
    pub secrets: SystemSecrets,
    /// Settings.
    pub config: Config,
    /// dbid and its provenance.
    pub identity: Identity,
    /// This machine.
    pub device_id: DeviceId,
    _lock: DirLock,
}

impl DataDir {
    /// Creates a new member directory of the system `secrets` at `path` (created if missing).
    /// Refuses, changing nothing, if `path` already holds a system.
    pub fn init<R: RngCore + CryptoRng>(
        path: &Path,
        secrets: &SystemSecrets,
        rng: &mut R,
    ) -> Result<DataDir, DataDirError> {
        for found in [SYSTEM_KEY_FILE, IDENTITY_FILE, "store"] {
            if path.join(found).exists() {
                return Err(DataDirError::AlreadyInitialised { path: path.to_path_buf(), found });
            }
        }
        fs::create_dir_all(path).map_err(io_err(path))?;
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        let lock = DirLock::acquire(path)?;
        // Re-check under the lock: another init may have raced us.
        if path.join(SYSTEM_KEY_FILE).exists() {
            return Err(DataDirError::AlreadyInitialised {
                path: path.to_path_buf(),
                found: SYSTEM_KEY_FILE,
            });
        }
        let device_id = device_id(path)?;
        let marker = path.join(MARKER_FILE);
        let _ = fs::remove_file(&marker);
        write_atomic(
            &marker,
            b"meshnode install marker: do not edit; its identity tells copies apart\n",
        )?;
        let identity = Identity {
            dbid: DatabaseId::random(rng),
            piid: device_id.to_string(),
            marker_inode: inode(&marker)?,
            previous_dbids: Vec::new(),
        };
        write_identity(path, &identity)?;
        if !path.join(CONFIG_FILE).exists() {
            write_atomic(&path.join(CONFIG_FILE), Config::TEMPLATE.as_bytes())?;
        }
        // The key file last: its presence is what marks the directory as initialised.
        write_new_secret(&path.join(SYSTEM_KEY_FILE), secrets.to_text("system").as_bytes())?;
        sync_dir(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            secrets: secrets.clone(),
            config: Config::load(&path.join(CONFIG_FILE))?,
            identity,
            device_id,
            _lock: lock,
        })
    }

    /// Opens and locks an existing directory; allocates a new dbid if it was copied or
    /// restored (returned in the notes, which the caller logs).
    pub fn open<R: RngCore + CryptoRng>(
        path: &Path,
        rng: &mut R,
    ) -> Result<(DataDir, Vec<OpenNote>), DataDirError> {
        let secrets = read_system_key(path)?;
        let lock = DirLock::acquire(path)?;
        let config = Config::load(&path.join(CONFIG_FILE))?;
        let device_id = device_id(path)?;
        let mut identity = read_identity(path)?;
        let mut notes = Vec::new();
        let marker = path.join(MARKER_FILE);
        let marker_inode = inode(&marker).ok();
        let reason = if identity.piid != device_id.to_string() {
            Some(format!(
                "the device id changed from {} to {device_id} (directory copied to another machine)",
                identity.piid
            ))
        } else if marker_inode != Some(identity.marker_inode) {
            Some(
                "the install marker changed (directory copied or restored from a backup)"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(reason) = reason {
            let old = identity.dbid;
            let new = DatabaseId::random(rng);
            let _ = fs::remove_file(&marker);
            write_atomic(
                &marker,
                b"meshnode install marker: do not edit; its identity tells copies apart\n",
            )?;
            identity.previous_dbids.push(old);
            identity.dbid = new;
            identity.piid = device_id.to_string();
            identity.marker_inode = inode(&marker)?;
            write_identity(path, &identity)?;
            notes.push(OpenNote::NewDbid { old, new, reason });
        }
        Ok((
            DataDir { path: path.to_path_buf(), secrets, config, identity, device_id, _lock: lock },
            notes,
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the sled store lives.
    pub fn store_path(&self) -> PathBuf {
        self.path.join("store")
    }

    /// Where the daily logs live.
    pub fn dati_path(&self) -> PathBuf {
        self.path.join("dati")
    }

    /// The key schedule with the configured epoch period and maximum clock skew.
    pub fn key_schedule(&self) -> KeySchedule {
        self.secrets.key_schedule(&self.config.node)
    }
}

/// Reads `D/system.key`, refusing it if group or others can read it.
pub fn read_system_key(dir: &Path) -> Result<SystemSecrets, DataDirError> {
    let path = dir.join(SYSTEM_KEY_FILE);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::NotInitialised { path: dir.to_path_buf() })
        }
        Err(source) => return Err(DataDirError::Io { path, source }),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::KeyFileMode { path, mode });
    }
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    SystemSecrets::parse(&text, &path, "system")
}

/// Reads `D/identity.toml` without locking (for status of a running node).
pub fn read_identity(dir: &Path) -> Result<Identity, DataDirError> {
    let path = dir.join(IDENTITY_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    toml::from_str(&text).map_err(|e| DataDirError::BadFile {
        path: path.clone(),
        why: format!("{}; restore it from a backup (it holds the dbid)", e.to_string().trim_end()),
    })
}

fn write_identity(dir: &Path, identity: &Identity) -> Result<(), DataDirError> {
    let body = toml::to_string(identity).expect("toml of plain fields");
    let text = format!(
        "# meshnode identity of this data directory; written by meshnode, do not edit.\n{body}"
    );
    write_atomic(&dir.join(IDENTITY_FILE), text.as_bytes())
}

fn inode(path: &Path) -> Result<u64, DataDirError> {
    Ok(fs::metadata(path).map_err(io_err(path))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn secrets() -> SystemSecrets {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        SystemSecrets::generate(
            &mut rng,
            Some("77,123,89,201192".parse().unwrap()),
            Environment::live(),
        )
    }

    #[test]
    fn init_open_refuse_twice() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("node");
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let created = DataDir::init(&d, &secrets(), &mut rng).unwrap();
        let dbid = created.identity.dbid;
        let mode = fs::metadata(d.join(SYSTEM_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Locked while `created` lives.
        let err = DataDir::open(&d, &mut rng).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(created);
        let before = fs::read(d.join(SYSTEM_KEY_FILE)).unwrap();
        let err = DataDir::init(&d, &secrets(), &mut rng).unwrap_err();
        assert!(matches!(err, DataDirError::AlreadyInitialised { .. }), "{err}");
        assert_eq!(fs::read(d.join(SYSTEM_KEY_FILE)).unwrap(), before);
        let (opened, notes) = DataDir::open(&d, &mut rng).unwrap();
        assert!(notes.is_empty());
        assert_eq!(opened.identity.dbid, dbid);
        assert_eq!(opened.secrets.rmsystem.to_string(), "77,123,89,201192");
    }

    #[test]
    fn key_schedule_follows_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let created = DataDir::init(dir.path(), &secrets(), &mut rng).unwrap();
        assert_eq!(created.key_schedule().epoch_window(), 2, "defaults: 24 h period, 1 day skew");
        drop(created);
        let config = "[node]\nkey_epoch_period_secs = 3600\nmax_clock_skew_secs = 86400\n";
        fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
        let (opened, _) = DataDir::open(dir.path(), &mut rng).unwrap();
        let schedule = opened.key_schedule();
        assert_eq!(schedule.period_secs(), 3_600);
        assert_eq!(schedule.max_clock_skew_secs(), 86_400);
        assert_eq!(schedule.epoch_window(), 48);
    }

    #[test]
    fn key_file_mode_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        drop(DataDir::init(dir.path(), &secrets(), &mut rng).unwrap());
        let key = dir.path().join(SYSTEM_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let err = DataDir::open(dir.path(), &mut rng).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn copied_directory_gets_a_new_dbid() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let dbid = DataDir::init(&a, &secrets(), &mut rng).unwrap().identity.dbid;
        // A copy: same content, new inodes.
        let b = dir.path().join("b");
        fs::create_dir(&b).unwrap();
        for entry in fs::read_dir(&a).unwrap().flatten() {
            fs::copy(entry.path(), b.join(entry.file_name())).unwrap();
        }
        let (opened, notes) = DataDir::open(&b, &mut rng).unwrap();
        assert_ne!(opened.identity.dbid, dbid);
        assert_eq!(opened.identity.previous_dbids, vec![dbid]);
        assert!(matches!(&notes[..], [OpenNote::NewDbid { old, .. }] if *old == dbid));
        drop(opened);
        // Stable afterwards.
        let (again, notes) = DataDir::open(&b, &mut rng).unwrap();
        assert!(notes.is_empty());
        assert_ne!(again.identity.dbid, dbid);
        // The original keeps its dbid.
        assert_eq!(DataDir::open(&a, &mut rng).unwrap().0.identity.dbid, dbid);
    }

    #[test]
    fn join_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = secrets();
        let path = dir.path().join("join.key");
        s.write_join_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = SystemSecrets::read_join_file(&path).unwrap();
        assert_eq!(back.rmsystem, s.rmsystem);
        assert_eq!(back.system_key, s.system_key);
        assert_eq!(back.install_id, s.install_id);
        assert!(s.write_join_file(&path).is_err(), "never overwrites");
        let bad = dir.path().join("bad");
        fs::write(&bad, "format = 1\nkind = \"join\"\nrmsystem = \"1,2,3\"\nenv = \"live\"\nsystem_key = \"00\"\ninstall_id = \"00\"\n").unwrap();
        let err = SystemSecrets::read_join_file(&bad).unwrap_err().to_string();
        assert!(err.contains("rmsystem") && err.contains("1,2,3"), "{err}");
        fs::write(&bad, "hello").unwrap();
        let err = SystemSecrets::read_join_file(&bad).unwrap_err().to_string();
        assert!(err.contains("not a meshnode join file"), "{err}");
    }
}
