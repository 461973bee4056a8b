//! `R/admitted.toml`: the systems a relay admits, their verifiers and quotas (design §1.1).
//!
//! ```toml
//! [[system]]
//! rmsystem = "77,123,89,201192"
//! env = "live"
//! verifiers = ["3f2a..."]     # 1 or 2 (two during an install-id rotation)
//! quota_mib = 1024
//! max_payloads = 200000
//! ttl_days = 7
//! ```
//!
//! Written atomically by `meshnode relay admit|revoke`, read by a running relay whenever its
//! modification time changes: a plain file rather than a tree of the relay's sled store, so the
//! admin commands need no lock held by the running relay and operators can read it. Every error
//! names the file, the line (toml's message) or the `[[system]]` entry, and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::Scope;
use crate::crypto::admission::Verifier;
use crate::id::{Environment, RmSystem};
use crate::wire::EnvironmentTag;

/// Default byte quota per system: 1 GiB.
pub const DEFAULT_QUOTA_MIB: u64 = 1024;
/// Default payload quota per system.
pub const DEFAULT_MAX_PAYLOADS: u64 = 200_000;
/// Default and largest time to live, in days.
pub const DEFAULT_TTL_DAYS: u32 = 7;
/// At most this many verifiers per system: the current install id and the one being replaced.
pub const MAX_VERIFIERS: usize = 2;

/// Why `admitted.toml` could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmittedError {
    /// IO on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown key (toml's message names line and column).
    #[error("invalid {path}: {message}; fix the file or rewrite it with `meshnode relay admit`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// An entry with a bad value.
    #[error("invalid {path}: [[system]] entry {index} ({rmsystem}): {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based position of the entry.
        index: usize,
        /// Its rmsystem as written.
        rmsystem: String,
        /// What is wrong and how to fix it.
        why: String,
    },
}

/// One `[[system]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemEntry {
    /// `77,123,89,201192`.
    pub rmsystem: String,
    /// `live`, `test`, ...
    pub env: String,
    /// Hex Ed25519 public keys from `meshnode key relay-verifier`.
    pub verifiers: Vec<String>,
    /// Byte quota in MiB.
    #[serde(default = "default_quota")]
    pub quota_mib: u64,
    /// Payload quota.
    #[serde(default = "default_max_payloads")]
    pub max_payloads: u64,
    /// Largest time to live, in days.
    #[serde(default = "default_ttl")]
    pub ttl_days: u32,
}

fn default_quota() -> u64 {
    DEFAULT_QUOTA_MIB
}
fn default_max_payloads() -> u64 {
    DEFAULT_MAX_PAYLOADS
}
fn default_ttl() -> u32 {
    DEFAULT_TTL_DAYS
}

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmittedFile {
    /// The entries.
    #[serde(default)]
    pub system: Vec<SystemEntry>,
}

/// What one admitted system may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPolicy {
    /// The environment's name (for status).
    pub env: String,
    /// Public keys that admit members.
    pub verifiers: Vec<Verifier>,
    /// Bytes it may store.
    pub quota_bytes: u64,
    /// Payloads it may store.
    pub max_payloads: u64,
    /// Longest time to live.
    pub max_ttl_secs: u32,
}

/// The admitted systems, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// By scope.
    pub systems: BTreeMap<Scope, SystemPolicy>,
}

impl AdmittedFile {
    /// Reads `path`; a missing file admits nobody.
    pub fn load(path: &Path) -> Result<AdmittedFile, AdmittedError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(AdmittedError::Io { path: path.to_path_buf(), source }),
        };
        let file: AdmittedFile = toml::from_str(&text).map_err(|e| AdmittedError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        file.check(path)?;
        Ok(file)
    }

    /// The checked form.
    pub fn check(&self, path: &Path) -> Result<Admitted, AdmittedError> {
        let mut systems = BTreeMap::new();
        for (i, entry) in self.system.iter().enumerate() {
            let invalid = |why: String| AdmittedError::Invalid {
                path: path.to_path_buf(),
                index: i + 1,
                rmsystem: entry.rmsystem.clone(),
                why,
            };
            let rmsystem: RmSystem = entry.rmsystem.parse().map_err(|e| invalid(format!("{e}")))?;
            let env: Environment = entry.env.parse().map_err(|e| invalid(format!("{e}")))?;
            if entry.verifiers.is_empty() || entry.verifiers.len() > MAX_VERIFIERS {
                return Err(invalid(format!(
                    "{} verifiers; give 1 or {MAX_VERIFIERS} (the second only while the install id is rotated)",
                    entry.verifiers.len()
                )));
            }
            let verifiers = entry
                .verifiers
                .iter()
                .map(|v| v.parse::<Verifier>().map_err(|e| invalid(format!("{e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            if entry.quota_mib == 0 || entry.quota_mib > 1 << 30 {
                return Err(invalid("quota_mib must be 1 to 2^30".into()));
            }
            if entry.max_payloads == 0 {
                return Err(invalid("max_payloads must be at least 1".into()));
            }
            if entry.ttl_days == 0 || entry.ttl_days > 365 {
                return Err(invalid("ttl_days must be 1 to 365".into()));
            }
            let scope = Scope { rmsystem, env_tag: EnvironmentTag::of(&env).0 };
            let policy = SystemPolicy {
                env: env.to_string(),
                verifiers,
                quota_bytes: entry.quota_mib.saturating_mul(1 << 20),
                max_payloads: entry.max_payloads,
                max_ttl_secs: entry.ttl_days.saturating_mul(86_400),
            };
            if systems.insert(scope, policy).is_some() {
                return Err(invalid(format!(
                    "{} {} is listed twice; keep one entry",
                    entry.rmsystem, entry.env
                )));
            }
        }
        Ok(Admitted { systems })
    }

    /// Adds `entry`, or updates the entry of its system: a new verifier is added beside the
    /// current one (at most two, the oldest dropped), quotas are replaced.
    pub fn admit(&mut self, mut entry: SystemEntry) {
        match self.system.iter_mut().find(|e| e.rmsystem == entry.rmsystem && e.env == entry.env) {
            Some(existing) => {
                let mut verifiers = existing.verifiers.clone();
                for v in entry.verifiers.drain(..) {
                    if !verifiers.contains(&v) {
                        verifiers.push(v);
                    }
                }
                while verifiers.len() > MAX_VERIFIERS {
                    verifiers.remove(0);
                }
                entry.verifiers = verifiers;
                *existing = entry;
            }
            None => self.system.push(entry),
        }
    }

    /// Removes one verifier of a system, or the whole system when `verifier` is `None` or it
    /// was the last. Returns whether anything changed.
    pub fn revoke(&mut self, rmsystem: &str, env: &str, verifier: Option<&str>) -> bool {
        let before = self.clone();
        if let Some(v) = verifier {
            for entry in &mut self.system {
                if entry.rmsystem == rmsystem && entry.env == env {
                    entry.verifiers.retain(|known| !known.eq_ignore_ascii_case(v));
                }
            }
            self.system.retain(|e| !e.verifiers.is_empty());
        } else {
            self.system.retain(|e| !(e.rmsystem == rmsystem && e.env == env));
        }
        *self != before
    }

    /// Writes the file atomically (temp file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), AdmittedError> {
        let io = |source| AdmittedError::Io { path: path.to_path_buf(), source };
        let body = toml::to_string(self).map_err(|e| AdmittedError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let text = format!("# meshnode relay: the systems admitted here. Written by `meshnode relay admit|revoke`.\n{body}");
        let tmp = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn entry(v: &str) -> SystemEntry {
        SystemEntry {
            rmsystem: "77,123,89,201192".into(),
            env: "live".into(),
            verifiers: vec![v.into()],
            quota_mib: 1,
            max_payloads: 5,
            ttl_days: 1,
        }
    }

    #[test]
    fn admit_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admitted.toml");
        assert!(AdmittedFile::load(&path).unwrap().system.is_empty());
        let mut file = AdmittedFile::default();
        file.admit(entry(V1));
        file.admit(entry(V2));
        assert_eq!(file.system.len(), 1);
        assert_eq!(file.system[0].verifiers, vec![V1.to_string(), V2.to_string()]);
        file.write(&path).unwrap();
        let back = AdmittedFile::load(&path).unwrap();
        assert_eq!(back, file);
        let admitted = back.check(&path).unwrap();
        let policy = admitted.systems.values().next().unwrap();
        assert_eq!(
            (policy.quota_bytes, policy.max_payloads, policy.max_ttl_secs),
            (1 << 20, 5, 86_400)
        );
        let mut file = back;
        assert!(file.revoke("77,123,89,201192", "live", Some(V1)));
        assert_eq!(file.system[0].verifiers, vec![V2.to_string()]);
        assert!(file.revoke("77,123,89,201192", "live", None));
        assert!(file.system.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admitted.toml");
        std::fs::write(
            &path,
            "[[system]]\nrmsystem = \"1,2,3,4\"\nenv = \"live\"\nverifierz = []\n",
        )
        .unwrap();
        let err = AdmittedFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("admitted.toml") && err.contains("line 4"), "{err}");
        std::fs::write(
            &path,
            format!("[[system]]\nrmsystem = \"1,2,3\"\nenv = \"live\"\nverifiers = [\"{V1}\"]\n"),
        )
        .unwrap();
        let err = AdmittedFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("entry 1") && err.contains("four"), "{err}");
        std::fs::write(
            &path,
            "[[system]]\nrmsystem = \"1,2,3,4\"\nenv = \"live\"\nverifiers = [\"zz\"]\n",
        )
        .unwrap();
        let err = AdmittedFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
