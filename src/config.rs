//! `meshnode.toml`: the node's settings, their defaults, and validation with clear messages.
//!
//! `meshnode init` writes [`Config::TEMPLATE`], every setting with its default and a comment.
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error
//! names the file, the line and the fix. This module does not read the system key (see
//! `crate::datadir`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::{DEFAULT_EPOCH_PERIOD_SECS, DEFAULT_MAX_CLOCK_SKEW_SECS};
use crate::unit::DEFAULT_PAYLOAD_LIMIT;

/// Errors reading or validating `meshnode.toml`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// TOML syntax error or unknown key; the message carries line and column.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with the line, the column and the offending text.
        message: String,
    },
    /// A value that cannot work.
    #[error("invalid config {path}: {what}; {fix}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting and value.
        what: String,
        /// What to do.
        fix: &'static str,
    },
    /// The same thing configured twice.
    #[error("invalid config {path}: {what} is configured twice; remove one")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// A value out of range.
    #[error("invalid config {path}: {key} = {value} is out of range; {expected}")]
    Range {
        /// The file.
        path: PathBuf,
        /// The setting, `section.name`.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range, in words.
        expected: &'static str,
    },
}

/// All settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[dati]`.
    pub dati: DatiConfig,
    /// `[submit]`.
    pub submit: SubmitConfig,
    /// `[links]`.
    pub links: LinksConfig,
    /// `[[peer]]`: direct peers beyond the LAN (seed 001: main servers, tried in priority
    /// order).
    pub peer: Vec<PeerConfig>,
    /// `[[relay]]`: rendezvous relays on the internet, in order (the order is each relay's
    /// index in the status).
    pub relay: Vec<RelayConfig>,
    /// `[relay_path]`: how units travel through the relays.
    pub relay_path: RelayPathSettings,
}

/// One `[[relay]]`: a rendezvous relay this node keeps a connection to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where it listens, `IP:port` (UDP).
    pub addr: std::net::SocketAddr,
    /// Its public key, 64 hex digits, as `meshnode relay --status` prints it. The node only
    /// talks to a relay that proves this key, so a relay cannot be impersonated.
    #[serde(deserialize_with = "relay_key")]
    pub key: [u8; 32],
}

fn relay_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    hex::decode(text.trim()).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).ok_or_else(
        || {
            serde::de::Error::custom(
                "a relay key is 64 hex digits; copy it from `meshnode relay --status` on the relay",
            )
        },
    )
}

/// `[relay_path]`: units to peers with no direct link travel through the relays, fragmented,
/// mixed, padded and sealed (the relay reads nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayPathSettings {
    /// Most relay sessions (peers reached through relays) this node keeps.
    pub max_sessions: u64,
    /// Keepalive of a relay session, in seconds.
    pub keepalive_secs: u64,
    /// Longest random delay before a payload is posted, per urgency, in milliseconds: the
    /// delays hide which payloads belong together; urgent units wait least.
    pub delay_ms_urgent: u64,
    /// See `delay_ms_urgent`.
    pub delay_ms_normal: u64,
    /// See `delay_ms_urgent`.
    pub delay_ms_background: u64,
    /// How long relays keep our payloads for a peer that is offline, in seconds (the relay may
    /// cap it).
    pub payload_ttl_secs: u64,
    /// Try UDP hole punching with peers reached through a relay, for a direct link.
    pub hole_punch: bool,
    /// Length of the one-time pads this node hands its peers beyond the LAN over direct
    /// links, for the sensitive parts of units it later sends them through a relay; 0: none.
    pub pad_bytes: u64,
}

impl Default for RelayPathSettings {
    fn default() -> Self {
        let core = crate::proto::relaypath::RelayPathConfig::default();
        let [urgent, normal, background] = core.delays.0;
        RelayPathSettings {
            max_sessions: core.max_sessions as u64,
            keepalive_secs: core.keepalive_ms / 1000,
            delay_ms_urgent: urgent,
            delay_ms_normal: normal,
            delay_ms_background: background,
            payload_ttl_secs: u64::from(core.payload_ttl_secs),
            hole_punch: true,
            pad_bytes: crate::proto::pads::DEFAULT_PAD_BYTES,
        }
    }
}

impl RelayPathSettings {
    /// The core's relay path settings for `relays` configured relays.
    pub fn core(&self, relays: usize) -> crate::proto::relaypath::RelayPathConfig {
        use crate::proto::relaypath::{mixer::Delays, RelayPathConfig};
        RelayPathConfig {
            relays: u16::try_from(relays).unwrap_or(u16::MAX),
            max_sessions: usize::try_from(self.max_sessions).unwrap_or(usize::MAX),
            keepalive_ms: self.keepalive_secs.saturating_mul(1000),
            delays: Delays([self.delay_ms_urgent, self.delay_ms_normal, self.delay_ms_background]),
            payload_ttl_secs: u32::try_from(self.payload_ttl_secs).unwrap_or(u32::MAX),
            ..RelayPathConfig::default()
        }
    }
}

/// `[links]`: how this node keeps its links.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinksConfig {
    /// How often an offline configured peer is tried, after quick first retries, in seconds
    /// (seed 001: "interval by which an offline server is pinged", default 5 minutes).
    pub offline_ping_secs: u64,
    /// Links prefer QUIC; when the QUIC path to a peer fails (UDP blocked) they use TCP, and
    /// QUIC is tried again this many seconds later.
    pub quic_retry_secs: u64,
    /// `false`: TCP links only (a site whose firewall passes no UDP at all).
    pub quic: bool,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig { offline_ping_secs: 300, quic_retry_secs: 60, quic: true }
    }
}

/// One `[[peer]]`: a machine outside the LAN this node links to directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Where it accepts links, `IP:port`.
    pub address: std::net::SocketAddr,
    /// Lower is preferred; a peer is tried only while every peer of a lower number fails.
    #[serde(default)]
    pub priority: u32,
    /// `main-server` (head office), `store-server` or `lane`.
    #[serde(default = "PeerConfig::default_role")]
    pub role: crate::proto::Role,
}

impl PeerConfig {
    fn default_role() -> crate::proto::Role {
        crate::proto::Role::MainServer
    }
}

/// `[node]`: settings that must agree across a system.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Largest unit payload accepted, in bytes.
    pub payload_limit: u64,
    /// Key epoch period in seconds.
    pub key_epoch_period_secs: u64,
    /// Largest error of one node's clock, either way, in seconds; sizes the accepted key-epoch
    /// window (see `KeySchedule::epoch_window`).
    pub max_clock_skew_secs: u64,
}

/// `[store]`: the local indexed store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache in MiB.
    pub cache_mb: u64,
    /// How often the store is flushed and the log replay point moved, in milliseconds.
    pub checkpoint_interval_ms: u64,
}

/// `[dati]`: the TUBT daily log files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatiConfig {
    /// Start a new file when the current one would exceed this many bytes.
    pub file_size_limit: u64,
}

/// `[submit]`: local submission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitConfig {
    /// Units per group commit when submitting JSON lines.
    pub batch_size: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            payload_limit: DEFAULT_PAYLOAD_LIMIT as u64,
            key_epoch_period_secs: DEFAULT_EPOCH_PERIOD_SECS,
            max_clock_skew_secs: DEFAULT_MAX_CLOCK_SKEW_SECS,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { cache_mb: 64, checkpoint_interval_ms: 1000 }
    }
}

impl Default for DatiConfig {
    fn default() -> Self {
        DatiConfig { file_size_limit: 64 << 20 }
    }
}

impl Default for SubmitConfig {
    fn default() -> Self {
        SubmitConfig { batch_size: 1000 }
    }
}

impl Config {
    /// The file `meshnode init` writes: every setting at its default, with a comment.
    pub const TEMPLATE: &'static str = r#"# meshnode settings. Every value below is the default; change one and restart the node.
# Unknown keys are refused, so a typo is reported instead of silently ignored.

[node]
# Largest payload of one transfer unit, in bytes (1 MiB). Larger submissions are refused with
# an error. Keep it the same on every node of the system: a node drops units over its limit.
payload_limit = 1048576
# Derived keys change every this many seconds (24 h). Keep it the same on every node.
key_epoch_period_secs = 86400
# How far, in seconds, any one node's clock may be off, either way (1 day; 1 s to 30 days).
# Two nodes may be twice this apart, so keys up to ceil(2 * this / key_epoch_period_secs)
# periods (at least 1) before or after ours are accepted; a clock off by more is refused.
# Larger values keep captured packets acceptable longer. Keep it the same on every node.
max_clock_skew_secs = 86400

[store]
# Page cache of the local store, in MiB. More speeds up reads of old units; the node's memory
# grows by about this much.
cache_mb = 64
# How often, in milliseconds, the store is flushed and the daily-log replay point advanced.
# Acknowledged units are durable in the daily logs regardless; this bounds restart work.
checkpoint_interval_ms = 1000

[dati]
# A daily log file (dati/TUBT_<DBID>_<NNNN>_<YYYYMMDD>.DATI) is closed and a new one started
# each UTC day, or earlier when it would grow past this many bytes (64 MiB).
file_size_limit = 67108864

[submit]
# Units written per group commit by `meshnode submit --jsonl` (one disk sync per batch).
batch_size = 1000

[links]
# After three quick retries, an unreachable configured peer is tried every this many seconds
# (5 minutes; 5 s to 1 day).
offline_ping_secs = 300
# Links use QUIC (UDP) and fall back to TCP by themselves when UDP fails on the path; QUIC is
# tried again this many seconds later (1 s to 1 hour). quic = false: TCP only.
quic_retry_secs = 60
quic = true

# Direct peers beyond the LAN (head office, a store server of another store), one [[peer]]
# table each. Peers are tried in order of priority: priority 1 only while every priority-0
# peer fails, and the node goes back to the better one when it returns. For example:
#
# [[peer]]
# address = "203.0.113.10:7070"
# priority = 0
# role = "main-server"

# Rendezvous relays on the internet (`meshnode relay`), one [[relay]] table each. Peers with no
# direct link reach each other through them: units are fragmented, mixed, padded and sealed,
# so a relay sees neither content nor message boundaries. Configure two or more, run by
# different operators where possible: one relay sees every payload's size and timing. The key
# is what `meshnode relay --status` prints on the relay. For example:
#
# [[relay]]
# addr = "198.51.100.7:7740"
# key = "3f2a9c...64 hex digits..."

[relay_path]
# Most peers reached through relays at once (main servers first).
max_sessions = 8
# Keepalive of a relay session, in seconds.
keepalive_secs = 60
# Longest random delay, in ms, before a payload goes to a relay, per urgency: the delays hide
# which payloads belong together; urgent units wait least.
delay_ms_urgent = 20
delay_ms_normal = 200
delay_ms_background = 2000
# How long relays keep payloads for a peer that is offline, in seconds (2 days; a relay may cap
# it). Longer does not help: a payload older than the receiver's mailbox window (2 days) can no
# longer be opened, so the node never asks for more; an offline peer catches up by anti-entropy.
payload_ttl_secs = 172800
# With the addresses the relays see, peers reached through a relay try UDP hole punching; where
# both NATs allow it, a direct QUIC link replaces the relay path (`meshnode --status` shows
# which, and why). false: keep traffic on the relays.
hole_punch = true
# Units with a sensitive part (`meshnode submit --sensitive-file`, or "sensitive" on the control
# socket) cross a relay only under a one-time pad: this node makes one of this many bytes for
# each peer beyond the LAN while a direct link to it is up, and uses 32 bytes plus the secret's
# length per unit. Without a pad such units wait for a direct link (status shows them).
# 0: make no pads (pads from peers are still used); else 4096 to 16777216.
pad_bytes = 1048576
"#;

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let check = |key: &'static str, value: u64, min: u64, max: u64, expected: &'static str| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Range { path: path.to_path_buf(), key, value, expected })
            }
        };
        check(
            "node.payload_limit",
            self.node.payload_limit,
            1,
            16 << 20,
            "use 1 to 16777216 bytes",
        )?;
        check(
            "node.key_epoch_period_secs",
            self.node.key_epoch_period_secs,
            60,
            366 * 86_400,
            "use 60 seconds to 366 days",
        )?;
        check(
            "node.max_clock_skew_secs",
            self.node.max_clock_skew_secs,
            1,
            Self::MAX_CLOCK_SKEW_SECS,
            "use 1 second to 30 days (2592000)",
        )?;
        check("store.cache_mb", self.store.cache_mb, 4, 64 << 10, "use 4 to 65536 MiB")?;
        check(
            "store.checkpoint_interval_ms",
            self.store.checkpoint_interval_ms,
            10,
            600_000,
            "use 10 ms to 10 minutes",
        )?;
        check(
            "dati.file_size_limit",
            self.dati.file_size_limit,
            64 << 10,
            4 << 30,
            "use 64 KiB to 4 GiB",
        )?;
        check("submit.batch_size", self.submit.batch_size, 1, 100_000, "use 1 to 100000")?;
        check(
            "links.offline_ping_secs",
            self.links.offline_ping_secs,
            5,
            86_400,
            "use 5 seconds to 1 day",
        )?;
        check("relay_path.max_sessions", self.relay_path.max_sessions, 1, 64, "use 1 to 64")?;
        check(
            "relay_path.keepalive_secs",
            self.relay_path.keepalive_secs,
            5,
            3_600,
            "use 5 seconds to 1 hour",
        )?;
        for (key, value) in [
            ("relay_path.delay_ms_urgent", self.relay_path.delay_ms_urgent),
            ("relay_path.delay_ms_normal", self.relay_path.delay_ms_normal),
            ("relay_path.delay_ms_background", self.relay_path.delay_ms_background),
        ] {
            check(key, value, 0, 60_000, "use 0 to 60000 ms")?;
        }
        check(
            "relay_path.payload_ttl_secs",
            self.relay_path.payload_ttl_secs,
            60,
            30 * 86_400,
            "use 60 seconds to 30 days",
        )?;
        if self.relay_path.pad_bytes != 0 {
            check(
                "relay_path.pad_bytes",
                self.relay_path.pad_bytes,
                crate::proto::pads::MIN_PAD_BYTES,
                crate::proto::pads::MAX_PAD_BYTES,
                "use 0 (no pads) or 4096 to 16777216 bytes",
            )?;
        }
        if self.relay.len() > Self::MAX_RELAYS {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                what: format!("{} [[relay]] tables", self.relay.len()),
                fix: "configure at most 16 relays",
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for relay in &self.relay {
            if relay.addr.ip().is_unspecified() || relay.addr.port() == 0 {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    what: format!("[[relay]] addr = \"{}\"", relay.addr),
                    fix: "give the relay's reachable IP address and port, e.g. 198.51.100.7:7740",
                });
            }
            if !seen.insert(relay.addr) {
                return Err(ConfigError::Duplicate {
                    path: path.to_path_buf(),
                    what: format!("[[relay]] addr = \"{}\"", relay.addr),
                });
            }
        }
        check(
            "links.quic_retry_secs",
            self.links.quic_retry_secs,
            1,
            3_600,
            "use 1 second to 1 hour",
        )?;
        Ok(())
    }

    /// Most `[[relay]]` tables.
    pub const MAX_RELAYS: usize = 16;

    /// The largest `node.max_clock_skew_secs` accepted: 30 days. A clock further off is broken,
    /// not skewed, and a wider window only prolongs how long captured packets stay acceptable.
    pub const MAX_CLOCK_SKEW_SECS: u64 = 30 * 86_400;

    /// The payload limit as a `usize`.
    pub fn payload_limit(&self) -> usize {
        usize::try_from(self.node.payload_limit).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn peers_and_links_parse_with_defaults_and_clear_errors() {
        let path = Path::new("meshnode.toml");
        let text = "[links]\noffline_ping_secs = 60\n\n[[peer]]\naddress = \"10.0.0.1:7070\"\n\n[[peer]]\naddress = \"10.0.0.2:7070\"\npriority = 1\nrole = \"store-server\"\n";
        let c = Config::parse(text, path).unwrap();
        assert_eq!(c.links.offline_ping_secs, 60);
        assert_eq!(c.peer.len(), 2);
        assert_eq!(c.peer[0].role, crate::proto::Role::MainServer);
        assert_eq!(c.peer[0].priority, 0);
        assert_eq!(c.peer[1].role, crate::proto::Role::StoreServer);
        let bad = Config::parse("[[peer]]\naddress = \"head-office\"\n", path).unwrap_err();
        assert!(bad.to_string().contains("line 2"), "{bad}");
        let bad = Config::parse("[[peer]]\naddress = \"10.0.0.1:1\"\nrole = \"boss\"\n", path)
            .unwrap_err();
        assert!(bad.to_string().contains("main-server"), "{bad}");
        let bad = Config::parse("[links]\noffline_ping_secs = 1\n", path).unwrap_err();
        assert!(bad.to_string().contains("links.offline_ping_secs"), "{bad}");
        assert!(Config::parse(Config::TEMPLATE, path).unwrap().peer.is_empty());
    }
}

/// Entry points for the fuzz targets (`fuzz/`), also run by the unit tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::path::Path;

    /// Parses arbitrary bytes as a config: never panics, and every error names the file.
    pub fn config_parse(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if let Err(e) = super::Config::parse(text, Path::new("fuzz.toml")) {
            assert!(e.to_string().contains("fuzz.toml"), "error without the file name: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(text in "(\\[[a-z]{0,8}\\]\n|[a-z_]{0,16} = [0-9a-z\"]{0,12}\n|.{0,20}\n){0,8}") {
            fuzzing::config_parse(text.as_bytes());
        }
    }

    #[test]
    fn relays_parse_and_bad_keys_and_duplicates_are_named() {
        let path = Path::new("meshnode.toml");
        let key = "ab".repeat(32);
        let text = format!(
            "[[relay]]\naddr = \"198.51.100.7:7740\"\nkey = \"{key}\"\n\n[[relay]]\naddr = \"198.51.100.8:7740\"\nkey = \"{key}\"\n\n[relay_path]\nmax_sessions = 3\ndelay_ms_urgent = 0\n"
        );
        let c = Config::parse(&text, path).unwrap();
        assert_eq!(c.relay.len(), 2);
        assert_eq!(c.relay[1].addr, "198.51.100.8:7740".parse().unwrap());
        assert_eq!(c.relay[0].key, [0xab; 32]);
        let core = c.relay_path.core(c.relay.len());
        assert_eq!((core.relays, core.max_sessions, core.delays.0[0]), (2, 3, 0));
        assert_eq!(core.delays.0[1], RelayPathSettings::default().delay_ms_normal);

        let short = "[[relay]]\naddr = \"198.51.100.7:7740\"\nkey = \"abcd\"\n";
        let err = Config::parse(short, path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits") && err.contains("line 3"), "{err}");
        let twice = format!(
            "[[relay]]\naddr = \"198.51.100.7:7740\"\nkey = \"{key}\"\n[[relay]]\naddr = \"198.51.100.7:7740\"\nkey = \"{key}\"\n"
        );
        let err = Config::parse(&twice, path).unwrap_err().to_string();
        assert!(err.contains("configured twice") && err.contains("198.51.100.7:7740"), "{err}");
        let nowhere = format!("[[relay]]\naddr = \"0.0.0.0:7740\"\nkey = \"{key}\"\n");
        let err = Config::parse(&nowhere, path).unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:7740") && err.contains("reachable"), "{err}");
        let many: String = (0..17)
            .map(|i| format!("[[relay]]\naddr = \"198.51.100.{i}:7740\"\nkey = \"{key}\"\n"))
            .collect();
        let err = Config::parse(&many, path).unwrap_err().to_string();
        assert!(err.contains("at most 16"), "{err}");
        let err = Config::parse("[relay_path]\nmax_sessions = 0\n", path).unwrap_err().to_string();
        assert!(err.contains("relay_path.max_sessions = 0"), "{err}");
        let err = Config::parse("[relay_path]\npad_bytes = 100\n", path).unwrap_err().to_string();
        assert!(err.contains("relay_path.pad_bytes = 100") && err.contains("4096"), "{err}");
        assert_eq!(
            Config::parse("[relay_path]\npad_bytes = 0\n", path).unwrap().relay_path.pad_bytes,
            0
        );
    }

    #[test]
    fn template_is_the_defaults() {
        let parsed = Config::parse(Config::TEMPLATE, Path::new("meshnode.toml")).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::parse("", Path::new("x")).unwrap(), Config::default());
    }

    #[test]
    fn errors_name_line_and_key() {
        let err =
            Config::parse("[node]\npayload_limit = 5\npayload_limt = 3\n", Path::new("m.toml"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("m.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("payload_limt"), "{err}");

        let err = Config::parse("[node]\npayload_limit = \"big\"\n", Path::new("m.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");

        let err =
            Config::parse("[store]\ncache_mb = 1\n", Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("store.cache_mb = 1"), "{err}");
        assert!(err.contains("4 to 65536"), "{err}");

        let err = Config::parse("[node\n", Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn max_clock_skew() {
        let parse = |text: &str| Config::parse(text, Path::new("m.toml"));
        assert_eq!(Config::default().node.max_clock_skew_secs, 86_400);
        let config = parse("[node]\nmax_clock_skew_secs = 3600\n").unwrap();
        assert_eq!(config.node.max_clock_skew_secs, 3_600);
        assert_eq!(config.node.key_epoch_period_secs, DEFAULT_EPOCH_PERIOD_SECS);
        let top = parse("[node]\nmax_clock_skew_secs = 2592000\n").unwrap();
        assert_eq!(top.node.max_clock_skew_secs, Config::MAX_CLOCK_SKEW_SECS);

        for value in [0, 2_592_001, u64::from(u32::MAX)] {
            let err = parse(&format!("[node]\nmax_clock_skew_secs = {value}\n")).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Range { key: "node.max_clock_skew_secs", value: v, .. } if v == value
                ),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains("m.toml"), "{message}");
            assert!(message.contains(&format!("node.max_clock_skew_secs = {value}")), "{message}");
            assert!(message.contains("1 second to 30 days"), "{message}");
        }
        // It belongs to [node]: elsewhere it is an unknown key.
        let err = parse("[store]\nmax_clock_skew_secs = 60\n").unwrap_err().to_string();
        assert!(err.contains("max_clock_skew_secs") && err.contains("line 2"), "{err}");
    }
}
