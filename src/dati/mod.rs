//! TUBT daily log files, `TUBT_<DBID>_<NNNN>_<YYYYMMDD>.DATI`: the write-ahead log of the node
//! and the long-term record of every unit it accepted.
//!
//! Seed (`002_6d10ce54687095b4.txt`, "PosGreen"): "Main storage log file. These files hold all
//! the transactions ... A new file is created each day (times are UTC based, not local time), or
//! if the size exceeds internal maximums ... The index NNNN is a unique number designed to aid
//! replication even if the date is changed unexpectedly ... the date component is what the system
//! claimed the time was". Files are kept for ten years and carried on USB sticks, so every file
//! describes itself and every record is sealed with the log key.
//!
//! # Files
//!
//! Every unit the node accepts is appended to the log of its origin, e.g.
//! `TUBT_ITB85JUYCJS4IQA_8146_20140813.DATI`: origin dbid, NNNN (at least four digits, zero
//! padded, more past 9999) and the UTC day the writer's clock claimed when the file was started.
//! A new file starts when that day changes, either way (a clock set back starts a file with the
//! earlier date), or when the next record would take the file past the size limit. NNNN goes up
//! by one for each new file of an origin and never goes back: the caller keeps the high-water
//! marks ([`DatiWriter::nnnn_high_water`]) so that archiving old files away cannot bring a number
//! back.
//!
//! # Format, version 2 (integers big-endian)
//!
//! ```text
//! file   = header record*
//!
//! header (76 bytes)
//!  0      8  magic "MESHDATI"
//!  8      1  format version = 2 (1 is still read and continued, see below)
//!  9     15  origin dbid, ASCII A-Z 0-9
//! 24      4  NNNN
//! 28      4  date, yyyymmdd (UTC day of the writer's clock at creation)
//! 32      8  created, Unix ms (writer's clock)
//! 40     16  file id, random: seeds the hash chain and is bound into every record
//! 56     16  key check: BLAKE3 keyed tag of bytes 0..56 under the static log key
//! 72      4  crc32c of bytes 0..72
//!
//! record (L + 12 bytes; L = body length, 88 ..= 32 MiB)
//!  0      4  L
//!  4      4  crc32c of bytes 0..4 (guards L; lets a reader find the next record after damage)
//!  8      L  body:
//!             0  32  prev hash: chain hash of the previous record = BLAKE3 of its
//!                    body bytes 0..72 followed by its 16-byte tag
//!                    (first record: BLAKE3 of the 76 header bytes)
//!            32   8  seq (the unit's seq at its origin)
//!            40   8  key epoch
//!            48  24  nonce: writer id (16) | counter (8)
//!            72   n  sealed unit = XChaCha20-Poly1305(key = log key of the epoch, nonce,
//!                    aad, TransferUnit::encode()): ciphertext then 16-byte tag
//!                    aad (64) = file id | prev hash | seq | epoch
//!  8+L    4  crc32c of the body
//! ```
//!
//! The crc32c values catch accidental damage; the hash chain and the AAD catch records that were
//! reordered, removed from the middle, or moved in from another file. The chain hash covers the
//! tag rather than the whole ciphertext because the tag already commits to the ciphertext under
//! the log key: a changed ciphertext fails to open, a removed or moved record breaks the chain.
//! (Anyone holding the system key can reseal a whole file in either scheme.) Version 1 files,
//! whose chain hash is BLAKE3 of the whole body, are read and continued with that rule; hashing
//! ~90 bytes instead of the body took about a fifth of a receiving node's CPU off. The epoch key is
//! `KeySchedule::key(Purpose::Log, epoch)` for the epoch of the write time; the epoch number is
//! stored, so the file stays readable whatever the epoch period is later. The key check in the
//! header tells a wrong system key (or a file of another system) from damage, even for a file
//! without records.
//!
//! # Durability
//!
//! An appended record is durable once [`DatiWriter::sync`] returns: its bytes are written and
//! fdatasync'd. A new file is written as `.<name>.tmp` and gets its name only in the `sync` that
//! makes its header durable (fdatasync, link to the name, fsync of the directory), so a named
//! file always starts with a complete header, and a leftover `.tmp` file holds only records that
//! no `sync` confirmed; [`DatiWriter::open`] removes it. On open, the newest file of each origin
//! is scanned: a partial or damaged tail with nothing good after it (a write cut short) is cut
//! off; damage followed by good records is left in place, reported, and that origin continues
//! in a new file.
//!
//! # Limits and what this module does not do
//!
//! - Whole records cut from the end of a file at a record boundary cannot be detected from the
//!   file alone; the ledger's checkpoints and seq gaps see that.
//! - After damage, reading resumes at the next record that passes both checksums; its link to
//!   the records before it cannot be checked (it still has to authenticate, so it is a genuine
//!   record of this file), and the damage itself is reported.
//! - Finding the next record after damage costs one 4-byte checksum per damaged byte; a crafted
//!   file can make it cost more (bounded by the 32 MiB record limit per candidate).
//! - It does not lock the directory (the data directory code does: one process at a time), decide
//!   what to replay (the ledger does), archive old files, or print JSON (the CLI does).

mod bodies;
mod format;
mod reader;
mod sync_times;
mod writer;

#[cfg(test)]
mod damage_tests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::id::DatabaseId;
use crate::unit::UnitError;

pub use bodies::{DatiBodies, RecordLocation};
pub use format::{DatiHeader, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_RECORD_BODY};
pub use reader::{
    read_from, read_from_located, verify_file, DatiReader, DatiRecord, ReplayReport, VerifyReport,
};
pub use sync_times::{DiskSyncs, RecentSyncs, SyncTimes};
pub use writer::{DatiWriter, OpenReport, Repair, SyncJob, SyncStart};

/// Default size limit of one file: 64 MiB.
pub const DEFAULT_SIZE_LIMIT: u64 = 64 << 20;

/// Where the logs live and when a file is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatiConfig {
    /// The directory of the DATI files (`D/dati`); created by [`DatiWriter::open`] if missing.
    pub dir: PathBuf,
    /// A new file starts when the next record would take the current one past this many bytes.
    /// A record larger than the limit still goes in, alone in a new file.
    pub size_limit: u64,
}

impl DatiConfig {
    /// `dir` with the default size limit.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DatiConfig { dir: dir.into(), size_limit: DEFAULT_SIZE_LIMIT }
    }
}

/// A place in one origin's log: byte `offset` of file `nnnn`, where a record starts or the file
/// ends. Saved in checkpoints; [`read_from`] replays the records at or after it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct DatiPosition {
    /// The file number.
    pub nnnn: u32,
    /// Byte offset in that file.
    pub offset: u64,
}

/// One DATI file found by [`list_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatiFileInfo {
    /// Full path.
    pub path: PathBuf,
    /// The file name.
    pub name: String,
    /// The origin dbid, from the name.
    pub origin: DatabaseId,
    /// NNNN, from the name.
    pub nnnn: u32,
    /// The date part, yyyymmdd, from the name.
    pub date: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Errors of the DATI layer. Damage is reported with the file and the byte offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatiError {
    /// A file system call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done: "open", "read", "write", "fdatasync", ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The header is damaged, of another format, or disagrees with the file name.
    #[error("bad DATI header in {}: {why}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: HeaderProblem,
    },
    /// A record is damaged or is not where it was written.
    #[error("bad record at offset {offset} of {}: {why}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// What is wrong.
        why: RecordProblem,
    },
    /// The key check of the header failed.
    #[error(
        "cannot decrypt {} (key check at offset {offset}): the file belongs to another system or \
         the system key is wrong; read it with the key of the system that wrote it",
        path.display()
    )]
    WrongKey {
        /// The file.
        path: PathBuf,
        /// Byte offset of the key check.
        offset: u64,
    },
    /// [`DatiWriter::append`] was given a unit that no reader would accept.
    #[error("refusing to log invalid unit {origin}/{seq}: {source}")]
    InvalidUnit {
        /// Its origin.
        origin: DatabaseId,
        /// Its seq.
        seq: u64,
        /// Why it is invalid.
        #[source]
        source: UnitError,
    },
    /// The unit does not fit one record.
    #[error(
        "unit {origin}/{seq} encodes to {len} bytes, more than one DATI record holds \
         ({MAX_RECORD_BODY} bytes)"
    )]
    UnitTooLarge {
        /// Its origin.
        origin: DatabaseId,
        /// Its seq.
        seq: u64,
        /// Its encoded length.
        len: usize,
    },
    /// The file numbers of an origin are used up.
    #[error("no file number left for origin {origin} (NNNN reached 4294967295)")]
    NnnnExhausted {
        /// The origin.
        origin: DatabaseId,
    },
    /// The writer sealed 2^64 records.
    #[error("the DATI writer used up its nonces; reopen it")]
    NonceExhausted,
    /// A write or fsync failed before; the writer refuses work until reopened.
    #[error(
        "an earlier write or fsync of {} failed, so the logs may not hold what was appended; \
         reopen the logs (restart meshnode) to recover",
        path.display()
    )]
    WriterFailed {
        /// The file whose write or fsync failed.
        path: PathBuf,
    },
    /// A file of that name exists already.
    #[error("{} exists already; is another process writing this directory?", path.display())]
    NameTaken {
        /// The name.
        path: PathBuf,
    },
    /// A replay position is past the end of its file.
    #[error(
        "replay position {offset} is past the end of {} ({size} bytes): the file is shorter \
         than the checkpoint says; records may be missing",
        path.display()
    )]
    PositionPastEnd {
        /// The file.
        path: PathBuf,
        /// The position.
        offset: u64,
        /// The file size.
        size: u64,
    },
    /// A log file the store points into is not in the directory.
    #[error(
        "daily log {nnnn} of origin {origin} is missing from {}: the store keeps only an index into the daily logs, so put the file back (it may have been archived away), or run `meshnode rebuild` to drop what it held",
        dir.display()
    )]
    MissingLog {
        /// The origin.
        origin: DatabaseId,
        /// The file's NNNN.
        nnnn: u32,
        /// The log directory.
        dir: PathBuf,
    },
}

impl DatiError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl (FnOnce(io::Error) -> DatiError) + 'a {
        move |source| DatiError::Io { op, path: path.to_path_buf(), source }
    }

    /// The byte offset of the damage, for record errors and key-check failures.
    pub fn offset(&self) -> Option<u64> {
        match self {
            DatiError::BadRecord { offset, .. } | DatiError::WrongKey { offset, .. } => {
                Some(*offset)
            }
            DatiError::BadHeader { .. } => Some(0),
            _ => None,
        }
    }
}

/// What is wrong with a file header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The file is shorter than a header.
    #[error("the file is {len} bytes, shorter than a header ({HEADER_LEN} bytes)")]
    Truncated {
        /// The file length.
        len: u64,
    },
    /// No `MESHDATI` magic.
    #[error("not a meshnode DATI file (no MESHDATI magic)")]
    Magic,
    /// A format version this build does not read.
    #[error(
        "format version {0} is not supported (this build reads versions 1 to {FORMAT_VERSION}); \
         upgrade meshnode, or the header is damaged"
    )]
    Version(u8),
    /// The header checksum does not match.
    #[error("header checksum mismatch: the header is damaged; restore the file from a copy")]
    Checksum,
    /// The origin is not a dbid.
    #[error("the origin is not a database id (15 characters A-Z 0-9)")]
    Origin,
    /// The file name says another origin, NNNN or date than the header.
    #[error("the file name does not match the header; the header says its name is {expected}")]
    NameMismatch {
        /// The name the header implies.
        expected: String,
    },
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordProblem {
    /// The checksum of the length field does not match.
    #[error(
        "the length field is damaged (checksum mismatch): a write cut short by a crash, or \
         damage on disk"
    )]
    LengthChecksum,
    /// The length is below the smallest record.
    #[error("length {len} is shorter than any record ({} bytes)", format::MIN_BODY)]
    TooShort {
        /// The length field.
        len: u32,
    },
    /// The length is above the record limit.
    #[error("length {len} is over the record limit of {MAX_RECORD_BODY} bytes")]
    TooLong {
        /// The length field.
        len: u32,
    },
    /// The file ends inside the record.
    #[error(
        "the record needs {needed} bytes but the file ends after {available}: the file was cut \
         short (a crash during a write, or an incomplete copy)"
    )]
    Truncated {
        /// Bytes the record needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The body checksum does not match.
    #[error("checksum mismatch: the record is damaged; restore the file from a copy")]
    Checksum,
    /// The previous-record hash does not match the record before.
    #[error(
        "hash chain broken: a record before this one is missing, was reordered or was replaced"
    )]
    ChainBroken,
    /// The sealed unit does not authenticate although the header key check passed.
    #[error("cannot decrypt the unit: the record was altered or moved here from another file")]
    Decrypt,
    /// The decrypted unit does not decode.
    #[error("the sealed unit does not decode: {0}")]
    Unit(UnitError),
    /// The unit's origin or seq differs from the file's origin or the record's seq.
    #[error("the sealed unit is {origin}/{seq}, which does not match the file and the record")]
    UnitMismatch {
        /// The unit's origin.
        origin: DatabaseId,
        /// The unit's seq.
        seq: u64,
    },
}

/// The file name of file `nnnn` of `origin` started on `date` (yyyymmdd).
pub fn file_name(origin: &DatabaseId, nnnn: u32, date: u32) -> String {
    format!("TUBT_{origin}_{nnnn:04}_{date:08}.DATI")
}

/// Parses a DATI file name into (origin, NNNN, date); `None` for any other name. The `TUBT_`
/// prefix and `.DATI` suffix may be in any case (copies on USB sticks are sometimes renamed).
pub fn parse_file_name(name: &str) -> Option<(DatabaseId, u32, u32)> {
    let prefix = name.get(..5)?;
    let suffix = name.get(name.len().checked_sub(5)?..)?;
    if !prefix.eq_ignore_ascii_case("TUBT_") || !suffix.eq_ignore_ascii_case(".DATI") {
        return None;
    }
    let mut parts = name.get(5..name.len() - 5)?.split('_');
    let origin: DatabaseId = parts.next()?.parse().ok()?;
    let nnnn = parts.next()?;
    let date = parts.next()?;
    if parts.next().is_some()
        || nnnn.len() < 4
        || date.len() != 8
        || !nnnn.bytes().chain(date.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((origin, nnnn.parse().ok()?, date.parse().ok()?))
}

/// The UTC day of `unix_ms` as yyyymmdd. Days after 9999-12-31 give 99991231, so a clock set
/// absurdly far ahead still has somewhere to write.
pub fn utc_date(unix_ms: u64) -> u32 {
    // Howard Hinnant's civil_from_days, in unsigned arithmetic (days are never negative here).
    let z = unix_ms / 86_400_000 + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return 99991231;
    }
    // year <= 9999, so the value is below 10^8 and fits a u32.
    u32::try_from(year * 10_000 + month * 100 + day).unwrap_or(99991231)
}

/// The DATI files in `dir`, sorted by (origin, NNNN, name). Other files, directories and
/// the `.tmp` files of a writer are ignored.
pub fn list_files(dir: &Path) -> Result<Vec<DatiFileInfo>, DatiError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(DatiError::io("list", dir))? {
        let entry = entry.map_err(DatiError::io("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some((origin, nnnn, date)) = parse_file_name(&name) else {
            continue;
        };
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(DatiError::io("stat", &path))?;
        if !meta.is_file() {
            continue;
        }
        out.push(DatiFileInfo { path, name, origin, nnnn, date, size: meta.len() });
    }
    out.sort_by(|a, b| (a.origin, a.nnnn, &a.name).cmp(&(b.origin, b.nnnn, &b.name)));
    Ok(out)
}

/// Lossless on every platform meshnode supports (usize is at most 64 bits).
pub(crate) fn len64(n: usize) -> u64 {
    n as u64
}
