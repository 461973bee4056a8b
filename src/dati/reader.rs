//! Reading DATI files: iterate the records of one file, verify a file, replay a directory.
//!
//! A reader yields every good record and an error for each damaged place, then goes on with the
//! next good record after the damage (found by its length checksum and body checksum), so a
//! caller that wants strictness stops at the first error and a caller that wants everything
//! keeps going. Memory is bounded by the largest record (32 MiB) plus a read buffer; no length
//! read from the file is allocated before the file is known to hold that many bytes.
//!
//! This module does not repair or write anything (see `writer.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::crypto::{Epoch, EpochKey, KeySchedule, Nonce, Purpose};
use crate::dati::format::{self, Body, DatiHeader, FRAME_HEAD, FRAME_OVERHEAD, HEADER_LEN};
use crate::dati::{len64, list_files, parse_file_name, DatiError, DatiPosition, HeaderProblem};
use crate::dati::{RecordLocation, RecordProblem};
use crate::id::DatabaseId;
use crate::unit::TransferUnit;

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 256 << 10;
/// Consumed bytes are dropped from the buffer once there are this many.
const COMPACT_AT: usize = 1 << 20;
/// Bytes examined per step when looking for the next record after damage.
const SCAN_WINDOW: usize = 64 << 10;

/// One record read back from a file: everything `meshnode log dump` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatiRecord {
    /// Byte offset of the record in its file.
    pub offset: u64,
    /// Bytes the record takes in the file; the next record starts at `offset + len`.
    pub len: u64,
    /// The unit's seq, as stored beside the sealed unit.
    pub seq: u64,
    /// The key epoch the record was sealed in.
    pub epoch: Epoch,
    /// The nonce (writer id and counter).
    pub nonce: Nonce,
    /// The unit.
    pub unit: TransferUnit,
}

/// What [`verify_file`] found in a good file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The file header.
    pub header: DatiHeader,
    /// Number of records.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// What [`read_from`] replayed.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Files read (wholly or from a position).
    pub files: usize,
    /// Units passed to the callback.
    pub records: u64,
    /// Damage skipped over: bad headers, bad records, positions past the end of a file. The
    /// caller logs these; the units in damaged places are missing from the replay.
    pub problems: Vec<DatiError>,
}

/// A record frame that passed its checksums and the hash chain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub offset: u64,
    /// Body length.
    pub len: usize,
    /// BLAKE3 of the body.
    pub hash: [u8; 32],
}

impl Frame {
    pub(crate) fn end(&self) -> u64 {
        self.offset + len64(FRAME_OVERHEAD + self.len)
    }
}

/// Iterates the records of one DATI file (see the module doc for how damage is handled).
///
/// Opening checks the header and its key check, so a wrong system key fails at once with
/// [`DatiError::WrongKey`]. Items are `Err` for each damaged place; iteration continues after it.
pub struct DatiReader<R = File> {
    src: Source<R>,
    path: PathBuf,
    header: DatiHeader,
    /// BLAKE3 of the header bytes: the prev hash of the first record.
    header_hash: [u8; 32],
    keys: KeySchedule,
    record_key: Option<EpochKey>,
    /// Where the next record should start.
    pos: u64,
    /// The prev hash the record at `pos` must carry; `None` when unknown (after damage, or
    /// when started in the middle of a file).
    expect_prev: Option<[u8; 32]>,
    /// Look for the next good record from `pos` before reading one.
    resync: bool,
    /// The record at this offset was reported as a broken chain link; accept it next time.
    chain_excused_at: Option<u64>,
    done: bool,
}

impl<R> std::fmt::Debug for DatiReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatiReader").field("path", &self.path).field("pos", &self.pos).finish()
    }
}

impl DatiReader<File> {
    /// Opens `path` and checks its header, its key check and that its name matches the header
    /// (when the name is a DATI name).
    pub fn open(path: &Path, keys: &KeySchedule) -> Result<Self, DatiError> {
        Self::open_at(path, keys, 0)
    }

    /// Like [`DatiReader::open`], then starts at byte `offset` (a record boundary, e.g. from a
    /// [`DatiPosition`]); offsets inside the header mean the first record. The hash chain is
    /// checked from the second record read.
    pub fn open_at(path: &Path, keys: &KeySchedule, offset: u64) -> Result<Self, DatiError> {
        let file = File::open(path).map_err(DatiError::io("open", path))?;
        let size = file.metadata().map_err(DatiError::io("stat", path))?.len();
        let mut reader = Self::new(Source::new(file, Some(size)), path, keys)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let header = &reader.header;
            if parse_file_name(name).is_some_and(|n| n != (header.origin, header.nnnn, header.date))
            {
                let why = HeaderProblem::NameMismatch { expected: header.file_name() };
                return Err(DatiError::BadHeader { path: path.to_path_buf(), why });
            }
        }
        if offset > reader.pos {
            reader.src.seek_to(offset).map_err(DatiError::io("seek", path))?;
            reader.pos = offset;
            reader.expect_prev = None;
        }
        Ok(reader)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl<'a> DatiReader<&'a [u8]> {
    /// A reader over bytes in memory (for fuzzing and tests); errors name the path `<bytes>`.
    pub fn from_bytes(bytes: &'a [u8], keys: &KeySchedule) -> Result<Self, DatiError> {
        Self::new(Source::new(bytes, Some(len64(bytes.len()))), Path::new("<bytes>"), keys)
    }
}

impl<R: Read> DatiReader<R> {
    /// Reads and checks the header (format, checksum, key check).
    fn new(mut src: Source<R>, path: &Path, keys: &KeySchedule) -> Result<Self, DatiError> {
        let bytes = src.window(0, HEADER_LEN).map_err(DatiError::io("read", path))?;
        let bad = |why| DatiError::BadHeader { path: path.to_path_buf(), why };
        let header = DatiHeader::decode(bytes).map_err(bad)?;
        if !DatiHeader::key_matches(bytes, &keys.static_key(Purpose::Log)) {
            let offset = len64(format::KEY_CHECK_OFFSET);
            return Err(DatiError::WrongKey { path: path.to_path_buf(), offset });
        }
        let header_hash = *blake3::hash(bytes).as_bytes();
        Ok(DatiReader {
            src,
            path: path.to_path_buf(),
            header,
            header_hash,
            keys: keys.clone(),
            record_key: None,
            pos: len64(HEADER_LEN),
            expect_prev: Some(header_hash),
            resync: false,
            chain_excused_at: None,
            done: false,
        })
    }

    /// The file header.
    pub fn header(&self) -> &DatiHeader {
        &self.header
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next record is expected: after the last record read (the end of the good
    /// part of the file when iteration ended without an error).
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// BLAKE3 of the header bytes (the prev hash of the first record).
    pub(crate) fn header_hash(&self) -> [u8; 32] {
        self.header_hash
    }

    /// The next frame that passed its checksums and the hash chain, without opening the unit.
    pub(crate) fn next_frame(&mut self) -> Option<Result<Frame, DatiError>> {
        if self.done {
            return None;
        }
        if self.resync {
            match self.find_frame(self.pos) {
                Ok(Some(offset)) => {
                    self.pos = offset;
                    self.expect_prev = None;
                    self.resync = false;
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(DatiError::io("read", &self.path)(e)));
                }
            }
        }
        let offset = self.pos;
        let len = match self.read_frame(offset) {
            Ok(Some(len)) => len,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(FrameError::Io(e)) => {
                self.done = true;
                return Some(Err(DatiError::io("read", &self.path)(e)));
            }
            Err(FrameError::Bad(why)) => {
                self.pos = offset + 1;
                self.resync = true;
                return Some(Err(self.bad(offset, why)));
            }
        };
        let Some(body) = self.src.buffered(offset + len64(FRAME_HEAD), len) else {
            // read_frame just buffered these bytes; treat a miss like a short file.
            self.done = true;
            return None;
        };
        let Some(fields) = Body::parse(body) else {
            // frame_len admits no body shorter than MIN_BODY.
            self.done = true;
            return None;
        };
        if let Some(expected) = self.expect_prev {
            if expected != fields.prev_hash && self.chain_excused_at != Some(offset) {
                self.chain_excused_at = Some(offset);
                return Some(Err(self.bad(offset, RecordProblem::ChainBroken)));
            }
        }
        let frame = Frame { offset, len, hash: format::chain_hash(self.header.version, body) };
        self.expect_prev = Some(frame.hash);
        self.pos = frame.end();
        Some(Ok(frame))
    }

    /// Opens the unit of a frame returned by the last `next_frame`.
    fn open_frame(&mut self, frame: Frame) -> Result<DatiRecord, DatiError> {
        let problem =
            |why| DatiError::BadRecord { path: self.path.clone(), offset: frame.offset, why };
        let body = self
            .src
            .buffered(frame.offset + len64(FRAME_HEAD), frame.len)
            .and_then(Body::parse)
            .ok_or_else(|| problem(RecordProblem::Checksum))?;
        if self.record_key.as_ref().is_some_and(|k| k.epoch() != body.epoch) {
            self.record_key = None;
        }
        let keys = &self.keys;
        let key = self.record_key.get_or_insert_with(|| keys.key(Purpose::Log, body.epoch));
        let unit = body.open(&self.header, key).map_err(problem)?;
        Ok(DatiRecord {
            offset: frame.offset,
            len: frame.end() - frame.offset,
            seq: body.seq,
            epoch: body.epoch,
            nonce: body.nonce,
            unit,
        })
    }

    /// Reads and checks the record at `offset`; `Ok(None)` at the end of the file.
    fn read_frame(&mut self, offset: u64) -> Result<Option<usize>, FrameError> {
        let head = self.src.window(offset, FRAME_HEAD).map_err(FrameError::Io)?;
        let available = len64(head.len());
        let Some(head) = head.first_chunk::<FRAME_HEAD>() else {
            if available == 0 {
                return Ok(None);
            }
            let needed = len64(FRAME_HEAD);
            return Err(FrameError::Bad(RecordProblem::Truncated { needed, available }));
        };
        let len = format::frame_len(*head).map_err(FrameError::Bad)?;
        let needed = FRAME_OVERHEAD + len;
        if let Some(available) = self.src.remaining(offset).filter(|&r| r < len64(needed)) {
            let needed = len64(needed);
            return Err(FrameError::Bad(RecordProblem::Truncated { needed, available }));
        }
        let frame = self.src.window(offset, needed).map_err(FrameError::Io)?;
        if frame.len() < needed {
            let (needed, available) = (len64(needed), len64(frame.len()));
            return Err(FrameError::Bad(RecordProblem::Truncated { needed, available }));
        }
        if !format::frame_checksum_ok(frame) {
            return Err(FrameError::Bad(RecordProblem::Checksum));
        }
        Ok(Some(len))
    }

    /// The offset of the first place at or after `from` that holds a record passing both
    /// checksums.
    fn find_frame(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        loop {
            let window = self.src.window(at, SCAN_WINDOW + FRAME_HEAD - 1)?;
            if window.len() < FRAME_HEAD {
                return Ok(None);
            }
            let scanned = window.len() + 1 - FRAME_HEAD;
            let candidate = window.windows(FRAME_HEAD).position(|head| {
                head.first_chunk::<FRAME_HEAD>().is_some_and(|h| format::frame_len(*h).is_ok())
            });
            let Some(i) = candidate else {
                at += len64(scanned);
                continue;
            };
            let offset = at + len64(i);
            if let Ok(Some(_)) = self.read_frame(offset) {
                return Ok(Some(offset));
            }
            at = offset + 1;
        }
    }

    fn bad(&self, offset: u64, why: RecordProblem) -> DatiError {
        DatiError::BadRecord { path: self.path.clone(), offset, why }
    }
}

impl<R: Read> Iterator for DatiReader<R> {
    type Item = Result<DatiRecord, DatiError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.next_frame()? {
            Ok(frame) => self.open_frame(frame),
            Err(e) => Err(e),
        })
    }
}

enum FrameError {
    Io(io::Error),
    Bad(RecordProblem),
}

/// Checks every record of one file: header, key check, checksums, hash chain, decryption and
/// unit encoding. The first problem is returned, naming the file and the byte offset.
pub fn verify_file(path: &Path, keys: &KeySchedule) -> Result<VerifyReport, DatiError> {
    let mut reader = DatiReader::open(path, keys)?;
    let mut records = 0;
    for record in &mut reader {
        record?;
        records += 1;
    }
    let bytes = reader.src.total.unwrap_or(reader.pos);
    Ok(VerifyReport { header: reader.header, records, bytes })
}

/// Replays the logs in `dir`: passes to `f`, in file order, every unit at or after each origin's
/// position in `positions` (that file from the offset, and all later files of the origin), and
/// every unit of origins absent from `positions`.
///
/// Damage is skipped and listed in the report; a wrong key and IO errors stop the replay, as does
/// an error from `f`. Call it after [`crate::dati::DatiWriter::open`], which cuts torn tails.
pub fn read_from<E, F>(
    dir: &Path,
    keys: &KeySchedule,
    positions: &BTreeMap<DatabaseId, DatiPosition>,
    mut f: F,
) -> Result<ReplayReport, E>
where
    E: From<DatiError>,
    F: FnMut(TransferUnit) -> Result<(), E>,
{
    read_from_located(dir, keys, positions, |unit, _| f(unit))
}

/// Like [`read_from`], and also passes where each record is, for an index of the logs.
pub fn read_from_located<E, F>(
    dir: &Path,
    keys: &KeySchedule,
    positions: &BTreeMap<DatabaseId, DatiPosition>,
    mut f: F,
) -> Result<ReplayReport, E>
where
    E: From<DatiError>,
    F: FnMut(TransferUnit, RecordLocation) -> Result<(), E>,
{
    let mut report = ReplayReport::default();
    for file in list_files(dir)? {
        let start = match positions.get(&file.origin) {
            Some(pos) if file.nnnn < pos.nnnn => continue,
            Some(pos) if file.nnnn == pos.nnnn => pos.offset,
            _ => 0,
        };
        if start > file.size {
            let (path, offset, size) = (file.path, start, file.size);
            report.problems.push(DatiError::PositionPastEnd { path, offset, size });
            continue;
        }
        let reader = match DatiReader::open_at(&file.path, keys, start) {
            Ok(reader) => reader,
            Err(e @ DatiError::BadHeader { .. }) => {
                report.problems.push(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report.files += 1;
        for record in reader {
            match record {
                Ok(record) => {
                    let at = RecordLocation {
                        nnnn: file.nnnn,
                        offset: record.offset,
                        len: u32::try_from(record.len).unwrap_or(u32::MAX),
                    };
                    f(record.unit, at)?;
                    report.records += 1;
                }
                Err(e @ DatiError::Io { .. }) => return Err(e.into()),
                Err(e) => report.problems.push(e),
            }
        }
    }
    Ok(report)
}

impl<R: Read + Seek> Source<R> {
    /// Moves to `pos` (forward or back), keeping the buffer when it already holds `pos`.
    fn seek_to(&mut self, pos: u64) -> io::Result<()> {
        if pos >= self.start && pos <= self.start + len64(self.buf.len()) {
            return Ok(());
        }
        self.inner.seek(SeekFrom::Start(pos))?;
        self.buf.clear();
        self.start = pos;
        self.eof = false;
        Ok(())
    }
}

/// A forward-only buffered view of a byte source.
struct Source<R> {
    inner: R,
    buf: Vec<u8>,
    /// Source offset of `buf[0]`.
    start: u64,
    eof: bool,
    /// Total length, when known: lengths past it are refused before any read.
    total: Option<u64>,
}

impl<R: Read> Source<R> {
    fn new(inner: R, total: Option<u64>) -> Self {
        Source { inner, buf: Vec::new(), start: 0, eof: false, total }
    }

    /// Bytes left from `pos`, when the total is known.
    fn remaining(&self, pos: u64) -> Option<u64> {
        self.total.map(|t| t.saturating_sub(pos))
    }

    /// Up to `n` bytes from `pos` (fewer only at the end of the source). `pos` never goes
    /// below an earlier `pos`: bytes before it are dropped.
    fn window(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let Some(mut rel) = pos.checked_sub(self.start) else {
            return Ok(&[]);
        };
        let held = len64(self.buf.len());
        if rel >= held {
            self.buf.clear();
            self.start += held;
            let skip = rel - held;
            let skipped = io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())?;
            self.start += skipped;
            if skipped < skip {
                self.eof = true;
                return Ok(&[]);
            }
            rel = 0;
        }
        // rel < buf.len() here, or 0.
        let mut rel = usize::try_from(rel).unwrap_or(0);
        if rel >= COMPACT_AT {
            self.buf.drain(..rel);
            self.start = pos;
            rel = 0;
        }
        while self.buf.len() - rel < n && !self.eof {
            let want = (n - (self.buf.len() - rel)).max(READ_CHUNK);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let got = loop {
                match self.inner.read(&mut self.buf[old..]) {
                    Ok(got) => break got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + got);
            self.eof = got == 0;
        }
        let end = self.buf.len().min(rel.saturating_add(n));
        Ok(self.buf.get(rel..end).unwrap_or(&[]))
    }

    /// `n` bytes from `pos` if they are in the buffer.
    fn buffered(&self, pos: u64, n: usize) -> Option<&[u8]> {
        let rel = usize::try_from(pos.checked_sub(self.start)?).ok()?;
        self.buf.get(rel..rel.checked_add(n)?)
    }
}
