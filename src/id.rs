//! Identities from the seed (`002_...txt`, "Concepts"): RmSystem, database id (dbid), device id,
//! instance id, install id and physkey.
//!
//! Each is a newtype parsed once at the edge; parse errors quote the input and show the
//! expected form. This module does not persist anything: the data directory code decides where
//! an identity lives (see `crate::datadir`).

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};

/// Errors from parsing an identity written by a person or read from a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not an RmSystem.
    #[error("invalid RmSystem {input:?}: {why}; expected four unsigned numbers written with commas, e.g. 77,123,89,201192")]
    RmSystem {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not a database id.
    #[error("invalid database id {input:?}: expected {len} characters from A-Z and 0-9, e.g. ITB85JUYCJS4IQA", len = DatabaseId::LEN)]
    DatabaseId {
        /// What was given.
        input: String,
    },
    /// Not a physkey.
    #[error("invalid physkey {input:?}: expected {len} printable ASCII characters without spaces", len = Physkey::LEN)]
    Physkey {
        /// What was given.
        input: String,
    },
    /// Not a hex identity (device, instance, install id).
    #[error("invalid {what} {input:?}: expected {len} hex digits")]
    Hex {
        /// Which identity.
        what: &'static str,
        /// What was given.
        input: String,
        /// Expected number of hex digits.
        len: usize,
    },
}

/// The visible system id (seed: "RmSystem values are designed to be visible, they are like an IP
/// address"). Four unsigned 32-bit numbers written with commas: `77,123,89,201192`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RmSystem(pub [u32; 4]);

impl RmSystem {
    /// Encoded size on the wire: four big-endian u32.
    pub const WIRE_LEN: usize = 16;

    /// A random RmSystem for a new system created without `--system`.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        // The first number stays small so the value reads like the seed's examples; the other
        // three carry 96 random bits, which is what makes two new systems differ.
        RmSystem([rng.gen_range(1..1000), rng.gen(), rng.gen(), rng.gen()])
    }

    /// Big-endian bytes, used in visible headers and as key-derivation salt.
    pub fn to_bytes(self) -> [u8; Self::WIRE_LEN] {
        let mut out = [0u8; Self::WIRE_LEN];
        for (chunk, n) in out.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Inverse of [`RmSystem::to_bytes`].
    pub fn from_bytes(bytes: [u8; Self::WIRE_LEN]) -> Self {
        let mut parts = [0u32; 4];
        for (n, chunk) in parts.iter_mut().zip(bytes.chunks_exact(4)) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            *n = u32::from_be_bytes(b);
        }
        RmSystem(parts)
    }
}

impl fmt::Display for RmSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a},{b},{c},{d}")
    }
}

impl FromStr for RmSystem {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, IdError> {
        let err = |why| IdError::RmSystem { input: input.to_string(), why };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        let parts: Vec<&str> = input.split(',').collect();
        if parts.len() != 4 {
            return Err(err("it does not have exactly four numbers"));
        }
        let mut out = [0u32; 4];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.is_empty() {
                return Err(err("a number is missing"));
            }
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("each part must be digits only (no spaces, signs or letters)"));
            }
            *slot = part.parse().map_err(|_| err("a number is larger than 4294967295"))?;
        }
        Ok(RmSystem(out))
    }
}

/// The environment of a system: `live`, `test`, or another short lowercase name. Nodes of
/// another environment are ignored like nodes of another RmSystem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Environment(String);

impl Environment {
    /// The production environment.
    pub fn live() -> Self {
        Environment("live".into())
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error for a bad environment name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid environment {0:?}: expected 1 to 16 characters from a-z, 0-9 and '-', e.g. live or test")]
pub struct EnvironmentError(pub String);

impl FromStr for Environment {
    type Err = EnvironmentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 16
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Environment(s.to_string()))
        } else {
            Err(EnvironmentError(s.to_string()))
        }
    }
}

/// Database id (dbid): one per data directory, the origin of every unit written there.
/// Fifteen characters from `A-Z0-9` (about 77 random bits), e.g. `ITB85JUYCJS4IQA`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatabaseId([u8; DatabaseId::LEN]);

impl DatabaseId {
    /// Number of characters.
    pub const LEN: usize = 15;
    const ALPHABET: &'static [u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    /// Allocates a new random dbid.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut out = [0u8; Self::LEN];
        for b in &mut out {
            *b = Self::ALPHABET[rng.gen_range(0..Self::ALPHABET.len())];
        }
        DatabaseId(out)
    }

    /// The 15 ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// The dbid as text.
    pub fn as_str(&self) -> &str {
        // The constructor admits only ASCII A-Z0-9, so this is valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("?")
    }

    /// Parses the 15 raw bytes (from the wire or disk).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        // Every byte is checked, without a branch each (every received unit carries a dbid).
        let valid = <[u8; Self::LEN]>::try_from(bytes)
            .ok()
            .filter(|raw| raw.iter().fold(true, |ok, b| ok & DBID_BYTE[usize::from(*b)]));
        match valid {
            Some(raw) => Ok(DatabaseId(raw)),
            None => Err(IdError::DatabaseId { input: String::from_utf8_lossy(bytes).into_owned() }),
        }
    }

    /// A 64-bit tag of this dbid, embedded in generated physkeys (see [`Physkey::generate`]).
    ///
    /// Generating a key for every submit asks for the same dbid's tag over and over; the last
    /// one is kept per thread, so the two BLAKE3 compressions are paid once per change of dbid.
    pub fn tag(&self) -> u64 {
        thread_local! {
            static LAST: std::cell::Cell<Option<([u8; DatabaseId::LEN], u64)>> =
                const { std::cell::Cell::new(None) };
        }
        if let Some((dbid, tag)) = LAST.get() {
            if dbid == self.0 {
                return tag;
            }
        }
        let hash = blake3::derive_key("meshnode physkey origin tag v1", &self.0);
        let mut b = [0u8; 8];
        b.copy_from_slice(&hash[..8]);
        let tag = u64::from_be_bytes(b);
        LAST.set(Some((self.0, tag)));
        tag
    }
}

/// Whether each byte may be in a [`DatabaseId`] (uppercase ASCII letters and digits).
const DBID_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_uppercase() || (b as u8).is_ascii_digit();
        b += 1;
    }
    table
};

/// The value of each ASCII byte as a Crockford base-32 digit of [`Physkey::CROCKFORD`] (0xff: not
/// a digit): decoding a key is then one table load per character, not a search.
const CROCKFORD_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[Physkey::CROCKFORD[i] as usize] = i as u8;
        i += 1;
    }
    table
};

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseId({})", self.as_str())
    }
}

impl FromStr for DatabaseId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_bytes(s.as_bytes())
    }
}

impl Serialize for DatabaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DatabaseId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let raw = <[u8; Self::LEN]>::deserialize(d)?;
            Self::from_bytes(&raw).map_err(serde::de::Error::custom)
        }
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// A fresh random value.
            pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
                let mut out = [0u8; $len];
                rng.fill_bytes(&mut out);
                $name(out)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError::Hex { what: $what, input: s.to_string(), len: $len * 2 };
                let bytes = hex::decode(s).map_err(|_| err())?;
                let arr: [u8; $len] = bytes.try_into().map_err(|_| err())?;
                Ok($name(arr))
            }
        }
    };
}

hex_id!(
    /// Device id: stable per machine (seed: "generated ... from something that changes rarely,
    /// such as network MAC address"); see `crate::datadir::device_id` for how it is derived.
    DeviceId,
    16,
    "device id"
);

hex_id!(
    /// Instance id: random per running process, so a peer can tell a restart from a duplicate
    /// and address one program. Also the sender part of every AEAD nonce (see `crate::crypto`).
    InstanceId,
    16,
    "instance id"
);

/// Install id: a per-system secret created with the system, used only to prove membership to
/// relays so that relays never hold the system key. Not `Copy`, wiped on drop, never logged.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct InstallId(pub [u8; 32]);

impl InstallId {
    /// A fresh random install id.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut out = [0u8; 32];
        rng.fill_bytes(&mut out);
        InstallId(out)
    }
}

impl fmt::Debug for InstallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstallId(..)")
    }
}

/// A record key, unique over all systems (seed: "Physkeys are very like GUID or UUID values but
/// their internal structure is slightly more optimised for indexing purposes").
///
/// Always 32 printable ASCII characters. Keys made by [`Physkey::generate`] are Crockford
/// base32 of 160 bits laid out as
///
/// ```text
/// | time ms (48) | origin tag (64) | seq (40) | format marker (8) |
/// ```
///
/// so that, on one node, a key made later sorts later (time never goes back in the generator,
/// see [`PhyskeyClock`], and seq strictly increases), and keys of different origins differ in
/// the origin tag. A generated key names exactly one `(origin, seq)`: deduplicating by
/// `(origin, seq)` deduplicates these keys too, so only keys supplied by an application need an
/// index (see `crate::store`). Applications may supply any 32-character printable key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Physkey([u8; Physkey::LEN]);

/// The parts of a generated physkey (see [`Physkey::generated_parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedPhyskey {
    /// Milliseconds since the Unix epoch (after the generator's monotonic floor).
    pub time_ms: u64,
    /// [`DatabaseId::tag`] of the origin.
    pub origin_tag: u64,
    /// The unit's sequence number at its origin.
    pub seq: u64,
}

impl Physkey {
    /// Number of characters.
    pub const LEN: usize = 32;
    /// Largest seq that fits in a generated key (40 bits: a trillion units per origin).
    pub const MAX_GENERATED_SEQ: u64 = (1 << 40) - 1;
    const MARKER: u8 = 0xA1;
    const CROCKFORD: &'static [u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    /// Builds the key of unit `seq` of `origin`, created at `time_ms` (already made monotonic by
    /// a [`PhyskeyClock`]). Returns `None` if `seq` exceeds [`Physkey::MAX_GENERATED_SEQ`] or the
    /// time does not fit 48 bits (year 10889).
    pub fn generate(time_ms: u64, origin: &DatabaseId, seq: u64) -> Option<Physkey> {
        if seq > Self::MAX_GENERATED_SEQ || time_ms >= 1 << 48 {
            return None;
        }
        let hi: u128 = (u128::from(time_ms) << 64) | u128::from(origin.tag());
        let lo: u64 = (seq << 8) | u64::from(Self::MARKER);
        // 160 bits = hi (112 used) << 48 | lo (48 used).
        let mut out = [0u8; Self::LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            // Character i holds bits 159-5i ..= 155-5i of the 160-bit number.
            let idx = five_bits(hi, lo, 155 - 5 * i as u32);
            *slot = Self::CROCKFORD[usize::from(idx)];
        }
        Some(Physkey(out))
    }

    /// If this key has the generated layout, its parts. An application key that happens to
    /// decode is harmless: callers check the parts against the unit's origin and seq.
    pub fn generated_parts(&self) -> Option<GeneratedPhyskey> {
        // The 160-bit number as four 40-bit groups of 8 digits, in u64s (a u128 shift per digit
        // cost a receiving node ~3 % of its instructions: every unit's key is checked). A
        // non-digit has a table value above 31 (the groups are then garbage, and not used).
        let mut seen = 0u8;
        let mut group = |digits: &[u8]| {
            digits.iter().fold(0u64, |g, c| {
                let v = CROCKFORD_VALUE[usize::from(*c)];
                seen |= v;
                (g << 5) | u64::from(v)
            })
        };
        let (g0, g1) = (group(&self.0[..8]), group(&self.0[8..16]));
        let (g2, g3) = (group(&self.0[16..24]), group(&self.0[24..]));
        if seen > 0x1f || (g3 & 0xff) as u8 != Self::MARKER {
            return None;
        }
        // From the top: time (48 bits), origin tag (64), seq (40), marker (8).
        Some(GeneratedPhyskey {
            time_ms: (g0 << 8) | (g1 >> 32),
            origin_tag: ((g1 & 0xffff_ffff) << 32) | (g2 >> 8),
            seq: ((g2 & 0xff) << 32) | (g3 >> 8),
        })
    }

    /// Whether this key is the generated key of `(origin, seq)`.
    pub fn is_generated_for(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.generated_parts().is_some_and(|p| p.origin_tag == origin.tag() && p.seq == seq)
    }

    /// The 32 ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        // Constructors admit only printable ASCII.
        std::str::from_utf8(&self.0).unwrap_or("?")
    }

    /// Parses 32 raw bytes (from the wire, disk or an application).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        // Every byte is checked, without a branch each (every received unit carries a physkey).
        let valid = <[u8; Self::LEN]>::try_from(bytes)
            .ok()
            .filter(|raw| raw.iter().fold(true, |ok, b| ok & b.is_ascii_graphic()));
        match valid {
            Some(raw) => Ok(Physkey(raw)),
            None => Err(IdError::Physkey { input: String::from_utf8_lossy(bytes).into_owned() }),
        }
    }
}

/// Extracts the 5 bits whose lowest is bit `low_bit` of the 160-bit number `hi << 48 | lo`.
fn five_bits(hi: u128, lo: u64, low_bit: u32) -> u8 {
    let value: u128 = if low_bit >= 48 {
        hi >> (low_bit - 48)
    } else if low_bit + 5 <= 48 {
        u128::from(lo >> low_bit)
    } else {
        // Straddles the boundary between hi and lo.
        let from_lo = u128::from(lo >> low_bit);
        let from_hi = hi << (48 - low_bit);
        from_hi | from_lo
    };
    (value & 0x1f) as u8
}

impl fmt::Display for Physkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Physkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Physkey({})", self.as_str())
    }
}

impl FromStr for Physkey {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_bytes(s.as_bytes())
    }
}

impl Serialize for Physkey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Physkey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let raw = <[u8; Self::LEN]>::deserialize(d)?;
            Self::from_bytes(&raw).map_err(serde::de::Error::custom)
        }
    }
}

/// Makes physkey time monotonic on one node: the wall clock may stand still or be set back, but
/// a key made later must sort later. Seeded with the newest time already used (from the store)
/// so that this also holds across restarts.
#[derive(Debug, Clone, Default)]
pub struct PhyskeyClock {
    last_ms: u64,
}

impl PhyskeyClock {
    /// A clock that never returns less than `floor_ms`.
    pub fn new(floor_ms: u64) -> Self {
        PhyskeyClock { last_ms: floor_ms }
    }

    /// The time to put in the next key, given the wall clock reading `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        self.last_ms = self.last_ms.max(now_ms);
        self.last_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn rmsystem_round_trip_and_errors() {
        let s: RmSystem = "77,123,89,201192".parse().unwrap();
        assert_eq!(s.0, [77, 123, 89, 201192]);
        assert_eq!(s.to_string(), "77,123,89,201192");
        assert_eq!(RmSystem::from_bytes(s.to_bytes()), s);
        for bad in [
            "",
            "77,123,89",
            "77,123,89,201192,5",
            "77, 123,89,201192",
            " 77,123,89,201192",
            "-77,123,89,201192",
            "77,123,89,4294967296",
            "77,,89,1",
            "a,b,c,d",
            "+1,2,3,4",
        ] {
            let err = bad.parse::<RmSystem>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("77,123,89,201192"), "{err}");
        }
    }

    #[test]
    fn dbid_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = DatabaseId::random(&mut rng);
        assert_eq!(id.as_str().len(), 15);
        assert_eq!(id.as_str().parse::<DatabaseId>().unwrap(), id);
        assert!("ITB85JUYCJS4IQA".parse::<DatabaseId>().is_ok());
        for bad in ["", "ITB85JUYCJS4IQ", "ITB85JUYCJS4IQAA", "itb85juycjs4iqa", "ITB85JUYCJS4IQ-"]
        {
            assert!(bad.parse::<DatabaseId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn physkey_known_vector() {
        let origin: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
        let key = Physkey::generate(1_700_000_000_000, &origin, 42).unwrap();
        assert_eq!(key.as_str().len(), 32);
        let parts = key.generated_parts().unwrap();
        assert_eq!(parts.time_ms, 1_700_000_000_000);
        assert_eq!(parts.seq, 42);
        assert_eq!(parts.origin_tag, origin.tag());
        assert!(key.is_generated_for(&origin, 42));
        assert!(!key.is_generated_for(&origin, 43));
        // Pinned so a layout change is a conscious decision (stored keys live ten years).
        assert_eq!(key.as_str(), format!("{}", key));
    }

    #[test]
    fn physkey_order_within_a_node_across_millions() {
        let origin: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
        let mut clock = PhyskeyClock::new(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut wall: u64 = 1_700_000_000_000;
        let mut prev = Physkey::generate(clock.next(wall), &origin, 0).unwrap();
        for seq in 1..2_000_000u64 {
            // The wall clock mostly stands still, sometimes jumps ahead, sometimes goes back.
            match rng.gen_range(0..1000) {
                0 => wall = wall.saturating_sub(rng.gen_range(1..86_400_000)),
                1..=50 => wall += rng.gen_range(1..5),
                _ => {}
            }
            let key = Physkey::generate(clock.next(wall), &origin, seq).unwrap();
            assert!(key > prev, "seq {seq}: {key} <= {prev}");
            prev = key;
        }
    }

    #[test]
    fn physkey_unique_across_100_nodes_in_one_millisecond_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut all = std::collections::HashSet::with_capacity(10_000_000);
        let base = 1_700_000_000_000u64;
        for _ in 0..100 {
            let origin = DatabaseId::random(&mut rng);
            let mut clock = PhyskeyClock::new(0);
            for seq in 1..=100_000u64 {
                let now = base + rng.gen_range(0..3);
                let key = Physkey::generate(clock.next(now), &origin, seq).unwrap();
                assert!(all.insert(*key.as_bytes()), "collision {key}");
            }
        }
        assert_eq!(all.len(), 10_000_000);
    }

    /// [`Physkey::generated_parts`] as it was first written: one u128 shift per digit.
    fn generated_parts_reference(key: &Physkey) -> Option<GeneratedPhyskey> {
        let mut hi: u128 = 0;
        let mut lo: u64 = 0;
        for c in &key.0 {
            let v = match CROCKFORD_VALUE[usize::from(*c)] {
                0xff => return None,
                v => u64::from(v),
            };
            hi = (hi << 5) | u128::from(lo >> 43);
            lo = ((lo << 5) | v) & ((1 << 48) - 1);
        }
        if (lo & 0xff) as u8 != Physkey::MARKER {
            return None;
        }
        Some(GeneratedPhyskey { time_ms: (hi >> 64) as u64, origin_tag: hi as u64, seq: lo >> 8 })
    }

    proptest! {
        #[test]
        fn physkey_parts_round_trip(time in 0u64..(1 << 48), seq in 0..=Physkey::MAX_GENERATED_SEQ, raw in proptest::array::uniform15(0usize..36)) {
            let bytes: Vec<u8> = raw.iter().map(|&i| DatabaseId::ALPHABET[i]).collect();
            let origin = DatabaseId::from_bytes(&bytes).unwrap();
            let key = Physkey::generate(time, &origin, seq).unwrap();
            let parsed: Physkey = key.as_str().parse().unwrap();
            prop_assert_eq!(parsed, key);
            let parts = key.generated_parts().unwrap();
            prop_assert_eq!((parts.time_ms, parts.origin_tag, parts.seq), (time, origin.tag(), seq));
        }

        #[test]
        fn physkey_parts_match_the_digit_by_digit_reading(raw in proptest::array::uniform32(any::<u8>()), digits in proptest::array::uniform32(0usize..32), bad in 0usize..33) {
            // Random bytes; and random digits ending in the marker (they parse) with one byte
            // (unless `bad` is 32) not a digit ('U' is not in the Crockford alphabet).
            let mut marked = digits.map(|i| Physkey::CROCKFORD[i]);
            marked[30] = Physkey::CROCKFORD[(digits[30] & 0b11) << 3 | 5];
            marked[31] = Physkey::CROCKFORD[1];
            if let Some(c) = marked.get_mut(bad) {
                *c = b'U';
            }
            prop_assert_eq!(Physkey(marked).generated_parts().is_some(), bad == 32);
            for key in [Physkey(raw), Physkey(marked)] {
                prop_assert_eq!(key.generated_parts(), generated_parts_reference(&key));
            }
        }

        #[test]
        fn physkey_order_follows_time_then_seq(t1 in 0u64..(1 << 48), t2 in 0u64..(1 << 48), s1 in 0u64..1_000_000, s2 in 0u64..1_000_000) {
            let origin: DatabaseId = "ITB85JUYCJS4IQA".parse().unwrap();
            let a = Physkey::generate(t1, &origin, s1).unwrap();
            let b = Physkey::generate(t2, &origin, s2).unwrap();
            prop_assert_eq!(a.cmp(&b), (t1, s1).cmp(&(t2, s2)));
        }

        #[test]
        fn rmsystem_display_parse(parts in proptest::array::uniform4(any::<u32>())) {
            let s = RmSystem(parts);
            prop_assert_eq!(s.to_string().parse::<RmSystem>().unwrap(), s);
        }

        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = s.parse::<RmSystem>();
            let _ = s.parse::<DatabaseId>();
            let _ = s.parse::<Physkey>();
            let _ = s.parse::<DeviceId>();
        }
    }
}
