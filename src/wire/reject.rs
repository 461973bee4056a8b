//! Why a received packet was dropped, and counters of drops by reason for `meshnode --status`.
//!
//! A rejection costs at most the packet (or, for a lost stream, that link); it is counted,
//! logged at debug or trace by the caller, and never a panic. Reasons fall in the classes of
//! [`RejectClass`] so that a flood of foreign traffic on a shared multicast address is not
//! mistaken for an attack, and an attack is not mistaken for an old peer.
//!
//! This module does not log and does not decide what to do about a peer.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::header::EnvironmentTag;
use super::Tag;
use crate::id::{InstanceId, RmSystem};

/// Why a received packet or link was refused. Values from the packet are carried for logging;
/// they are unauthenticated unless the variant says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Another system's packet (seed: packets of another RmSystem are ignored).
    #[error("packet of another system {system}")]
    ForeignSystem {
        /// The RmSystem in the packet.
        system: RmSystem,
    },
    /// Our system, another environment (e.g. `test` on a `live` LAN).
    #[error("packet of another environment (tag {environment})")]
    ForeignEnvironment {
        /// The environment tag in the packet.
        environment: EnvironmentTag,
    },
    /// A discovery packet whose keyed tag does not verify: forged, tampered or another key.
    #[error("{tag} packet with a bad tag (forged, tampered or another system key)")]
    BadTag {
        /// The packet type.
        tag: Tag,
    },
    /// A sealed packet that does not open: tampered, or sealed with another system key.
    #[error("{tag} packet does not decrypt (tampered or another system key)")]
    DecryptFailure {
        /// The packet type.
        tag: Tag,
    },
    /// An authentic packet seen before, or too old for the sender's replay window.
    #[error("replayed packet from {sender} (counter {counter})")]
    Replay {
        /// The sending instance (authenticated).
        sender: InstanceId,
        /// The repeated nonce counter (authenticated).
        counter: u64,
    },
    /// A key epoch outside the accepted window (`KeySchedule::epoch_window` either side, sized
    /// from the maximum clock skew): a clock farther off than configured.
    #[error("key epoch {epoch} is outside the accepted window around {current}")]
    StaleEpoch {
        /// Epoch in the packet.
        epoch: u64,
        /// Our current epoch.
        current: u64,
    },
    /// Bytes that do not parse as what their tag says (used by the layers that decode bodies).
    #[error("malformed {tag} packet")]
    Malformed {
        /// The packet type.
        tag: Tag,
    },
    /// Shorter than the fixed part of its layout.
    #[error("packet of {len} bytes is shorter than the minimum of {min}")]
    Truncated {
        /// Length received.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// Longer than allowed.
    #[error("packet of {len} bytes is over the limit of {max}")]
    Oversized {
        /// Length received or announced.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A packet type this build does not know (seed: "you should not block by packet type");
    /// skipped.
    #[error("unknown packet type {tag}")]
    UnknownType {
        /// The packet type.
        tag: Tag,
    },
    /// A layout version this build does not read; the sender is newer.
    #[error("datagram format version {version} is not supported; upgrade meshnode")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// A link whose peer did not prove membership of the system.
    #[error("link peer did not prove membership of the system")]
    NonMemberLink,
}

impl Rejection {
    /// The reason, without the values, for counting.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::ForeignSystem { .. } => RejectReason::ForeignSystem,
            Rejection::ForeignEnvironment { .. } => RejectReason::ForeignEnvironment,
            Rejection::BadTag { .. } => RejectReason::BadTag,
            Rejection::DecryptFailure { .. } => RejectReason::DecryptFailure,
            Rejection::Replay { .. } => RejectReason::Replay,
            Rejection::StaleEpoch { .. } => RejectReason::StaleEpoch,
            Rejection::Malformed { .. } => RejectReason::Malformed,
            Rejection::Truncated { .. } => RejectReason::Truncated,
            Rejection::Oversized { .. } => RejectReason::Oversized,
            Rejection::UnknownType { .. } => RejectReason::UnknownType,
            Rejection::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Rejection::NonMemberLink => RejectReason::NonMemberLink,
        }
    }

    /// What kind of fault this is; see [`RejectClass`].
    pub fn class(&self) -> RejectClass {
        self.reason().class()
    }
}

/// The kind of a rejection, kept apart as rustls keeps peer faults apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RejectClass {
    /// Not a fault: traffic of another system or environment sharing the medium (the seed's
    /// discovery address is shared by all systems).
    Foreign,
    /// Malformed bytes: too short, too long, or not parsing.
    Malformed,
    /// Well formed but not allowed: not authentic, replayed, out of its epoch, not a member.
    NotAllowed,
    /// Not supported by this build: an unknown packet type or a newer layout.
    NotSupported,
}

/// A rejection reason without its values: the key of [`RejectCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// See [`Rejection::ForeignSystem`].
    ForeignSystem,
    /// See [`Rejection::ForeignEnvironment`].
    ForeignEnvironment,
    /// See [`Rejection::BadTag`].
    BadTag,
    /// See [`Rejection::DecryptFailure`].
    DecryptFailure,
    /// See [`Rejection::Replay`].
    Replay,
    /// See [`Rejection::StaleEpoch`].
    StaleEpoch,
    /// See [`Rejection::Malformed`].
    Malformed,
    /// See [`Rejection::Truncated`].
    Truncated,
    /// See [`Rejection::Oversized`].
    Oversized,
    /// See [`Rejection::UnknownType`].
    UnknownType,
    /// See [`Rejection::UnsupportedVersion`].
    UnsupportedVersion,
    /// See [`Rejection::NonMemberLink`].
    NonMemberLink,
}

impl RejectReason {
    /// Every reason, in the order of the status output.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::ForeignSystem,
        RejectReason::ForeignEnvironment,
        RejectReason::BadTag,
        RejectReason::DecryptFailure,
        RejectReason::Replay,
        RejectReason::StaleEpoch,
        RejectReason::Malformed,
        RejectReason::Truncated,
        RejectReason::Oversized,
        RejectReason::UnknownType,
        RejectReason::UnsupportedVersion,
        RejectReason::NonMemberLink,
    ];

    /// The snake_case name used in JSON status output.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ForeignSystem => "foreign_system",
            RejectReason::ForeignEnvironment => "foreign_environment",
            RejectReason::BadTag => "bad_tag",
            RejectReason::DecryptFailure => "decrypt_failure",
            RejectReason::Replay => "replay",
            RejectReason::StaleEpoch => "stale_epoch",
            RejectReason::Malformed => "malformed",
            RejectReason::Truncated => "truncated",
            RejectReason::Oversized => "oversized",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::NonMemberLink => "non_member_link",
        }
    }

    /// What kind of fault this is.
    pub fn class(self) -> RejectClass {
        match self {
            RejectReason::ForeignSystem | RejectReason::ForeignEnvironment => RejectClass::Foreign,
            RejectReason::Malformed | RejectReason::Truncated | RejectReason::Oversized => {
                RejectClass::Malformed
            }
            RejectReason::BadTag
            | RejectReason::DecryptFailure
            | RejectReason::Replay
            | RejectReason::StaleEpoch
            | RejectReason::NonMemberLink => RejectClass::NotAllowed,
            RejectReason::UnknownType | RejectReason::UnsupportedVersion => {
                RejectClass::NotSupported
            }
        }
    }

    fn index(self) -> usize {
        // ALL lists every variant once, so the position always exists.
        RejectReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rejections counted by reason. Serializes as a JSON object with every reason's snake_case
/// name, zeros included, so the status output has a fixed shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectCounters {
    counts: [u64; RejectReason::ALL.len()],
}

impl RejectCounters {
    /// All zero.
    pub fn new() -> RejectCounters {
        RejectCounters::default()
    }

    /// Counts one rejection.
    pub fn record(&mut self, rejection: &Rejection) {
        self.record_reason(rejection.reason());
    }

    /// Counts one rejection of `reason`.
    pub fn record_reason(&mut self, reason: RejectReason) {
        if let Some(count) = self.counts.get_mut(reason.index()) {
            *count = count.saturating_add(1);
        }
    }

    /// How many rejections of `reason` were counted.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts.get(reason.index()).copied().unwrap_or(0)
    }

    /// How many rejections were counted in all.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// Each reason with its count, in [`RejectReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL.into_iter().zip(self.counts.iter().copied())
    }
}

impl Serialize for RejectCounters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.counts.len()))?;
        for (reason, count) in self.iter() {
            map.serialize_entry(reason.as_str(), &count)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<Rejection> {
        vec![
            Rejection::ForeignSystem { system: RmSystem([1, 2, 3, 4]) },
            Rejection::ForeignEnvironment { environment: EnvironmentTag([1, 2, 3, 4]) },
            Rejection::BadTag { tag: Tag::Idqy },
            Rejection::DecryptFailure { tag: Tag::Tubt },
            Rejection::Replay { sender: InstanceId([5; 16]), counter: 9 },
            Rejection::StaleEpoch { epoch: 1, current: 3 },
            Rejection::Malformed { tag: Tag::Qerq },
            Rejection::Truncated { len: 3, min: 74 },
            Rejection::Oversized { len: 70_000, max: 65_507 },
            Rejection::UnknownType { tag: Tag::Unknown(*b"ZZZZ") },
            Rejection::UnsupportedVersion { version: 2 },
            Rejection::NonMemberLink,
        ]
    }

    #[test]
    fn every_reason_is_listed_named_and_counted() {
        let all = one_of_each();
        let reasons: Vec<RejectReason> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, RejectReason::ALL);
        let mut counters = RejectCounters::new();
        for (i, rejection) in all.iter().enumerate() {
            for _ in 0..=i {
                counters.record(rejection);
            }
            assert!(!rejection.to_string().is_empty());
        }
        for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(counters.get(reason), i as u64 + 1, "{reason}");
        }
        assert_eq!(counters.total(), (1..=12).sum::<u64>());
    }

    #[test]
    fn classes_keep_faults_apart() {
        use RejectClass::*;
        let classes: Vec<RejectClass> = one_of_each().iter().map(Rejection::class).collect();
        assert_eq!(
            classes,
            [
                Foreign,
                Foreign,
                NotAllowed,
                NotAllowed,
                NotAllowed,
                NotAllowed,
                Malformed,
                Malformed,
                Malformed,
                NotSupported,
                NotSupported,
                NotAllowed
            ]
        );
    }

    #[test]
    fn serializes_as_snake_case_object_with_zeros() {
        let mut counters = RejectCounters::new();
        counters.record(&Rejection::Replay { sender: InstanceId([0; 16]), counter: 1 });
        counters.record(&Rejection::Replay { sender: InstanceId([0; 16]), counter: 1 });
        counters.record(&Rejection::ForeignSystem { system: RmSystem([9, 9, 9, 9]) });
        let json = serde_json::to_value(&counters).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 12);
        assert_eq!(json["replay"], 2);
        assert_eq!(json["foreign_system"], 1);
        assert_eq!(json["non_member_link"], 0);
        let text = serde_json::to_string(&counters).unwrap();
        assert!(text.starts_with(r#"{"foreign_system":1,"foreign_environment":0,"#), "{text}");
    }
}
