//! One-time pads for the sensitive parts of units (seed 002: "one-time pads for highly sensitive
//! data such as passwords"; design: docs/design/internet-mesh.md §4).
//!
//! Everything on a relay link is sealed with the relay-purpose key, which derives from the
//! system key: whoever records relay traffic (the relay operator keeps payloads for their TTL)
//! and later obtains one member's `system.key` reads it all. A unit's sensitive part therefore
//! crosses a relay only XORed with pad material that no key derives: a node (the pad's
//! *owner*) generates a pad from the OS RNG, hands it to one peer over a direct link (QUIC or
//! TCP, both forward secret) and then uses it, in one direction only, for sensitive parts it
//! sends that peer over a relay. Each use takes 32 bytes for a one-time Poly1305 key (so the
//! part's integrity does not rest on the system key either) plus one byte per secret byte.
//!
//! Pad bytes are never used twice: the owner keeps its use cursor in memory and may consume only
//! bytes below `reserved_to`, which is made durable (a store flush) *before* any byte below it
//! is used. A crash wastes at most one reservation ([`RESERVE_BYTES`]) and the cursor restarts
//! at the durable `reserved_to`. A data directory that is copied or restored gets a new dbid
//! (see `crate::datadir`), and outbound pads recorded under another owner dbid are revoked at
//! load: a restored backup would otherwise use offsets again.
//!
//! This module is the book (records, cursors, the pad cipher); the node decides when to offer,
//! use or withhold ([`crate::proto::node`]). It reads and writes the store's metadata through
//! [`PadStorage`]: `pads` holds the records, `pad/<id>/<n>` the material in 64 KiB chunks.

use std::collections::BTreeMap;

use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use serde::{Deserialize, Serialize};

use crate::id::DatabaseId;
use crate::proto::message::{Message, PadId, PaddedUnit};
use crate::unit::{TransferUnit, UnitError, MAX_SENSITIVE_BYTES, UNIT_FORMAT_VERSION};

/// Default pad length: 1 MiB, about 10,000 passwords.
pub const DEFAULT_PAD_BYTES: u64 = 1 << 20;
/// Smallest pad accepted from a peer or configured.
pub const MIN_PAD_BYTES: u64 = 4 << 10;
/// Largest pad accepted from a peer or configured (bounds what an offer may make us hold).
pub const MAX_PAD_BYTES: u64 = 16 << 20;
/// Bytes of pad per stored chunk and per [`Message::PadOffer`].
pub const CHUNK_BYTES: usize = 64 << 10;
/// One-time MAC key taken from the pad before each sensitive part.
pub const MAC_KEY_BYTES: usize = 32;
/// Pad bytes reserved durably at a time (one store flush per this many bytes used).
pub const RESERVE_BYTES: u64 = 4 << 10;
/// Most peers whose pad offers are being received at once (one offer per peer; bounds memory
/// against broken peers; an unfinished offer is dropped with its link).
const MAX_INCOMING: usize = 8;
/// Store metadata entry of the records.
const META_PADS: &str = "pads";

/// Where the book keeps its bytes: the store's metadata, written durably.
pub trait PadStorage {
    /// A metadata entry.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, String>;
    /// Writes entries and makes them durable before returning.
    fn put_durably(&mut self, entries: &[(&str, &[u8])]) -> Result<(), String>;
}

/// A pad's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PadState {
    /// Generated and offered; the peer has not confirmed it stored the pad (outbound only).
    Offered,
    /// Usable.
    Ready,
    /// Never to be used: the peer lost it, or this directory was restored.
    Revoked,
}

/// One pad, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PadRecord {
    /// The pad.
    pub id: PadId,
    /// The node that generated it (and alone sends with it).
    pub owner: DatabaseId,
    /// The other end.
    pub peer: DatabaseId,
    /// Whether we are the owner.
    pub outbound: bool,
    /// Length in bytes.
    pub len: u64,
    /// Outbound: bytes before this may have been used; never used again. Inbound: the end of
    /// the highest range opened, as last saved (reported to the owner, see [`PadBook::seal`]).
    pub reserved_to: u64,
    /// Its state.
    pub state: PadState,
    /// When it was stored, Unix ms.
    pub created_ms: u64,
    /// BLAKE3 of the material.
    pub hash: [u8; 32],
}

/// Why a pad operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PadError {
    /// The store failed (nothing was used).
    #[error("pad store: {0}")]
    Storage(String),
    /// The store's pad entries do not decode.
    #[error("the one-time pad records in the store are damaged ({0}); outbound pads are not used and new ones are made at the next direct link")]
    Damaged(String),
    /// The pad records could not be read at start: pads are off until a restart.
    #[error("one-time pads are off: their records could not be read at start; restart the node once the store is readable")]
    Disabled,
    /// A pad this node does not hold.
    #[error("unknown pad {0}")]
    Unknown(PadId),
    /// A pad of another peer.
    #[error("pad {0} is not shared with this peer")]
    WrongPeer(PadId),
    /// Bytes beyond the pad.
    #[error("range beyond the end of pad {0}")]
    Bounds(PadId),
    /// The one-time MAC does not match: forged or damaged.
    #[error("the one-time MAC of a padded unit does not match")]
    Mac,
    /// An offer out of order, of a bad length, or one too many.
    #[error("pad offer {0} out of order, of a bad length, or one too many at once")]
    Offer(PadId),
    /// The offered pad does not hash to what its sender said.
    #[error("pad {0} does not match its hash")]
    Hash(PadId),
    /// The unit inside is not valid.
    #[error(transparent)]
    Unit(#[from] UnitError),
}

/// What status shows of the pads with one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PadPeerStatus {
    /// Pad bytes left to send sensitive parts to the peer (usable outbound pads).
    pub out_left: u64,
    /// A pad is offered to the peer and not confirmed yet.
    pub out_offered: bool,
    /// Bytes of the pads the peer gave us.
    pub in_bytes: u64,
}

/// A pad being received from one peer (one at a time per peer).
struct Incoming {
    pad: PadId,
    len: u64,
    data: zeroize::Zeroizing<Vec<u8>>,
}

/// The pads of this node, both directions.
pub struct PadBook {
    own: DatabaseId,
    records: BTreeMap<PadId, PadRecord>,
    /// Outbound: use cursors (bytes before them are used or wasted). Inbound: the end of the
    /// highest range opened (at least `reserved_to`).
    cursors: BTreeMap<PadId, u64>,
    /// Offers being received, per peer.
    incoming: BTreeMap<DatabaseId, Incoming>,
    /// The records could not be read at start: nothing is stored or used (a save would write
    /// over records this node cannot see, and reuse what they reserved).
    disabled: bool,
}

impl std::fmt::Debug for PadBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No material: records and cursors only.
        f.debug_struct("PadBook")
            .field("records", &self.records)
            .field("cursors", &self.cursors)
            .field("incoming", &self.incoming.len())
            .field("disabled", &self.disabled)
            .finish()
    }
}

fn chunk_name(id: &PadId, n: u64) -> String {
    format!("pad/{id}/{n}")
}

impl PadBook {
    /// An empty book.
    pub fn new(own: DatabaseId) -> PadBook {
        PadBook {
            own,
            records: BTreeMap::new(),
            cursors: BTreeMap::new(),
            incoming: BTreeMap::new(),
            disabled: false,
        }
    }

    /// Loads the records. Damaged records give an empty book and the error (the node counts it
    /// and goes on: new pads are made at the next direct link, old ones are never used again,
    /// so nothing is reused; their chunks stay behind). A store that cannot be read gives a
    /// disabled book. Outbound pads of another owner dbid (a restored or copied directory)
    /// are revoked.
    pub fn load(own: DatabaseId, storage: &dyn PadStorage) -> (PadBook, Option<PadError>) {
        let mut book = PadBook::new(own);
        let records: Vec<PadRecord> = match storage.meta(META_PADS) {
            Ok(None) => return (book, None),
            Ok(Some(bytes)) => match postcard::from_bytes(&bytes) {
                Ok(records) => records,
                Err(e) => return (book, Some(PadError::Damaged(e.to_string()))),
            },
            Err(e) => {
                book.disabled = true;
                return (book, Some(PadError::Storage(e)));
            }
        };
        for mut record in records {
            if record.outbound && record.owner != own {
                record.state = PadState::Revoked;
            }
            book.cursors.insert(record.id, record.reserved_to.min(record.len));
            book.records.insert(record.id, record);
        }
        (book, None)
    }

    fn records_bytes(&self) -> Vec<u8> {
        let records: Vec<&PadRecord> = self.records.values().collect();
        postcard::to_stdvec(&records).expect("postcard into Vec")
    }

    fn save(&self, storage: &mut dyn PadStorage) -> Result<(), PadError> {
        if self.disabled {
            return Err(PadError::Disabled);
        }
        storage.put_durably(&[(META_PADS, &self.records_bytes())]).map_err(PadError::Storage)
    }

    /// Stores a pad we generated for `peer` (durably, chunks and record with one flush) as
    /// offered; its id is the start of the material's hash (so it never repeats, whatever
    /// the core's RNG). The caller sends [`PadBook::offer`] on a direct link.
    pub fn add_outbound(
        &mut self,
        peer: DatabaseId,
        material: &[u8],
        now_ms: u64,
        storage: &mut dyn PadStorage,
    ) -> Result<PadId, PadError> {
        let hash = *blake3::hash(material).as_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        let id = PadId(id);
        let record = PadRecord {
            id,
            owner: self.own,
            peer,
            outbound: true,
            len: material.len() as u64,
            reserved_to: 0,
            state: PadState::Offered,
            created_ms: now_ms,
            hash,
        };
        self.store_new(record, material, storage)?;
        Ok(id)
    }

    fn store_new(
        &mut self,
        record: PadRecord,
        material: &[u8],
        storage: &mut dyn PadStorage,
    ) -> Result<(), PadError> {
        if self.disabled {
            return Err(PadError::Disabled);
        }
        let id = record.id;
        if self.records.contains_key(&id) {
            return Err(PadError::Offer(id));
        }
        self.records.insert(id, record);
        let names: Vec<String> =
            (0..material.chunks(CHUNK_BYTES).len() as u64).map(|n| chunk_name(&id, n)).collect();
        let records = self.records_bytes();
        let mut entries: Vec<(&str, &[u8])> =
            names.iter().map(String::as_str).zip(material.chunks(CHUNK_BYTES)).collect();
        entries.push((META_PADS, &records));
        if let Err(e) = storage.put_durably(&entries) {
            self.records.remove(&id);
            return Err(PadError::Storage(e));
        }
        self.cursors.insert(id, 0);
        Ok(())
    }

    /// The frames that hand pad `id` over: its chunks in order, then the hash.
    pub fn offer(&self, id: PadId, storage: &dyn PadStorage) -> Result<Vec<Message>, PadError> {
        let record = self.records.get(&id).ok_or(PadError::Unknown(id))?;
        let material = zeroize::Zeroizing::new(read(storage, record, 0, record.len)?);
        let mut frames: Vec<Message> = material
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(n, chunk)| Message::PadOffer {
                pad: id,
                len: record.len,
                offset: (n * CHUNK_BYTES) as u64,
                chunk: chunk.to_vec(),
            })
            .collect();
        frames.push(Message::PadComplete { pad: id, hash: record.hash });
        Ok(frames)
    }

    /// A part of a pad `peer` offers us. One offer per peer at a time (a new one replaces an
    /// unfinished one), from at most `MAX_INCOMING` peers at once.
    pub fn on_offer(
        &mut self,
        peer: DatabaseId,
        pad: PadId,
        len: u64,
        offset: u64,
        chunk: Vec<u8>,
    ) -> Result<(), PadError> {
        if !(MIN_PAD_BYTES..=MAX_PAD_BYTES).contains(&len) || chunk.len() > CHUNK_BYTES {
            self.incoming.remove(&peer);
            return Err(PadError::Offer(pad));
        }
        if offset == 0 {
            if !self.incoming.contains_key(&peer) && self.incoming.len() >= MAX_INCOMING {
                return Err(PadError::Offer(pad));
            }
            let data = zeroize::Zeroizing::new(Vec::new());
            self.incoming.insert(peer, Incoming { pad, len, data });
        }
        let Some(incoming) = self.incoming.get_mut(&peer) else {
            return Err(PadError::Offer(pad));
        };
        let fits = incoming.data.len() as u64 + chunk.len() as u64 <= len;
        if incoming.pad != pad
            || incoming.len != len
            || incoming.data.len() as u64 != offset
            || !fits
        {
            self.incoming.remove(&peer);
            return Err(PadError::Offer(pad));
        }
        incoming.data.extend_from_slice(&chunk);
        Ok(())
    }

    /// Drops an unfinished offer of `peer` (its link is gone).
    pub fn drop_incoming(&mut self, peer: &DatabaseId) {
        self.incoming.remove(peer);
    }

    /// The end of an offer: checks and stores the pad durably. `Ok` means the caller answers
    /// [`Message::PadAccepted`] (also for a pad already stored with that hash: the acceptance
    /// was lost).
    pub fn on_complete(
        &mut self,
        peer: DatabaseId,
        pad: PadId,
        hash: [u8; 32],
        now_ms: u64,
        storage: &mut dyn PadStorage,
    ) -> Result<(), PadError> {
        if let Some(held) = self.records.get(&pad) {
            let same = !held.outbound
                && held.owner == peer
                && held.state == PadState::Ready
                && held.hash == hash;
            self.incoming.remove(&peer);
            return if same { Ok(()) } else { Err(PadError::WrongPeer(pad)) };
        }
        let incoming = self.incoming.remove(&peer).ok_or(PadError::Offer(pad))?;
        if incoming.pad != pad || incoming.data.len() as u64 != incoming.len {
            return Err(PadError::Offer(pad));
        }
        if *blake3::hash(&incoming.data).as_bytes() != hash {
            return Err(PadError::Hash(pad));
        }
        let record = PadRecord {
            id: pad,
            owner: peer,
            peer,
            outbound: false,
            len: incoming.len,
            reserved_to: 0,
            state: PadState::Ready,
            created_ms: now_ms,
            hash,
        };
        self.store_new(record, &incoming.data, storage)
    }

    /// `peer` stored our pad: it may be used from now on.
    pub fn on_accepted(
        &mut self,
        peer: DatabaseId,
        pad: PadId,
        storage: &mut dyn PadStorage,
    ) -> Result<bool, PadError> {
        let Some(record) = self.records.get_mut(&pad) else { return Ok(false) };
        if !record.outbound || record.peer != peer || record.state != PadState::Offered {
            return Ok(false);
        }
        record.state = PadState::Ready;
        // The new pad retires the used-up and revoked ones for this peer.
        let dead: Vec<PadId> = self
            .records
            .values()
            .filter(|r| r.outbound && r.peer == peer && r.id != pad)
            .filter(|r| r.state == PadState::Revoked || self.left(r) <= MAC_KEY_BYTES as u64)
            .map(|r| r.id)
            .collect();
        if let Err(e) = self.forget(&dead, storage) {
            if let Some(record) = self.records.get_mut(&pad) {
                record.state = PadState::Offered;
            }
            return Err(e);
        }
        Ok(true)
    }

    /// `peer` lists which of our pads it holds, with how far it has opened each (`held`), and
    /// which of its own it may still use (`live`).
    ///
    /// - Our offered pads it holds are accepted (its `PadAccepted` was lost with a link).
    /// - Our usable pads it does not hold are revoked (it lost them).
    /// - Our cursors move past what it has opened: a data directory rolled back by a VM or
    ///   file system snapshot keeps its dbid, and would otherwise use those bytes again.
    /// - Its pads we hold that it no longer lists are forgotten (used up or revoked; their
    ///   chunks are overwritten, best effort: the store may keep old copies until it compacts).
    ///
    /// Returns (revoked, forgotten).
    pub fn on_peer_lists(
        &mut self,
        peer: DatabaseId,
        held: &[(PadId, u64)],
        live: &[PadId],
        storage: &mut dyn PadStorage,
    ) -> Result<(usize, usize), PadError> {
        let held: BTreeMap<PadId, u64> = held.iter().copied().collect();
        let live: std::collections::BTreeSet<PadId> = live.iter().copied().collect();
        let mut revoked = 0;
        let mut changed = false;
        let mut accepted = Vec::new();
        for record in self.records.values_mut().filter(|r| r.outbound && r.peer == peer) {
            match (record.state, held.get(&record.id)) {
                (PadState::Offered, Some(_)) => accepted.push(record.id),
                (PadState::Ready, None) => {
                    record.state = PadState::Revoked;
                    revoked += 1;
                    changed = true;
                }
                _ => {}
            }
            if let Some(&opened) = held.get(&record.id) {
                let opened = opened.min(record.len);
                let cursor = self.cursors.entry(record.id).or_insert(record.reserved_to);
                if opened > *cursor {
                    *cursor = opened;
                }
                if opened > record.reserved_to {
                    record.reserved_to = opened;
                    changed = true;
                }
            }
        }
        let dead: Vec<PadId> = self
            .records
            .values()
            .filter(|r| !r.outbound && r.owner == peer && !live.contains(&r.id))
            .map(|r| r.id)
            .collect();
        if !dead.is_empty() {
            self.forget(&dead, storage)?;
        } else if changed {
            self.save(storage)?;
        }
        for pad in accepted {
            self.on_accepted(peer, pad, storage)?;
        }
        Ok((revoked, dead.len()))
    }

    /// Our pads for `peer` that it may still receive units under: offered or usable, not used up.
    pub fn live_outbound(&self, peer: &DatabaseId) -> Vec<PadId> {
        self.records
            .values()
            .filter(|r| r.outbound && r.peer == *peer)
            .filter(|r| match r.state {
                PadState::Offered => true,
                PadState::Ready => self.left(r) > MAC_KEY_BYTES as u64,
                PadState::Revoked => false,
            })
            .map(|r| r.id)
            .collect()
    }

    /// Removes pads, overwrites their material and saves the records (one durable write, also
    /// when `ids` is empty).
    fn forget(&mut self, ids: &[PadId], storage: &mut dyn PadStorage) -> Result<(), PadError> {
        if self.disabled {
            return Err(PadError::Disabled);
        }
        let mut names = Vec::new();
        let mut removed = Vec::new();
        for id in ids {
            if let Some(record) = self.records.remove(id) {
                let chunks = record.len.div_ceil(CHUNK_BYTES as u64);
                names.extend((0..chunks).map(|n| chunk_name(id, n)));
                removed.push((record, self.cursors.remove(id)));
            }
        }
        let records = self.records_bytes();
        let mut entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
        entries.push((META_PADS, &records));
        if let Err(e) = storage.put_durably(&entries) {
            for (record, cursor) in removed {
                if let Some(cursor) = cursor {
                    self.cursors.insert(record.id, cursor);
                }
                self.records.insert(record.id, record);
            }
            return Err(PadError::Storage(e));
        }
        Ok(())
    }

    /// Forgets a pad `peer` gave us that cannot be read (its chunks are damaged): the next
    /// `Pads` no longer lists it, so the owner revokes it instead of burning it on units we
    /// cannot open.
    pub fn forget_inbound(
        &mut self,
        peer: &DatabaseId,
        pad: PadId,
        storage: &mut dyn PadStorage,
    ) -> Result<(), PadError> {
        let ours = self.records.get(&pad).is_some_and(|r| !r.outbound && r.owner == *peer);
        if ours {
            self.forget(&[pad], storage)?;
        }
        Ok(())
    }

    /// The pads `peer` gave us, each with the end of the highest range opened.
    pub fn inbound(&self, peer: &DatabaseId) -> Vec<(PadId, u64)> {
        self.records
            .values()
            .filter(|r| !r.outbound && r.owner == *peer && r.state == PadState::Ready)
            .map(|r| (r.id, self.cursors.get(&r.id).copied().unwrap_or(r.reserved_to)))
            .collect()
    }

    /// Whether our pad `id` is offered and not confirmed yet.
    pub fn is_offered(&self, id: &PadId) -> bool {
        self.records.get(id).is_some_and(|r| r.outbound && r.state == PadState::Offered)
    }

    /// An outbound pad to `peer` that is offered and not confirmed yet.
    pub fn offered(&self, peer: &DatabaseId) -> Option<PadId> {
        self.records
            .values()
            .find(|r| r.outbound && r.peer == *peer && r.state == PadState::Offered)
            .map(|r| r.id)
    }

    /// Outbound bytes not used yet (the cursor defaults to `len` only for a pad that has
    /// none, which `load` and `store_new` never leave).
    fn left(&self, record: &PadRecord) -> u64 {
        record.len - self.cursors.get(&record.id).copied().unwrap_or(record.len).min(record.len)
    }

    /// Whether a new pad for `peer` should be made: none is offered, and less than a quarter of
    /// a pad's length is left to use.
    pub fn wants_new(&self, peer: &DatabaseId, pad_bytes: u64) -> bool {
        !self.disabled && self.offered(peer).is_none() && self.status(peer).out_left < pad_bytes / 4
    }

    /// What status shows for `peer`.
    pub fn status(&self, peer: &DatabaseId) -> PadPeerStatus {
        let mut status = PadPeerStatus::default();
        for r in self.records.values().filter(|r| r.peer == *peer) {
            match (r.outbound, r.state) {
                (true, PadState::Ready) => status.out_left += self.left(r),
                (true, PadState::Offered) => status.out_offered = true,
                (false, PadState::Ready) => status.in_bytes += r.len,
                _ => {}
            }
        }
        status
    }

    /// Encrypts `unit`'s sensitive part for `peer` with the next bytes of a usable pad, after
    /// making their reservation durable. `Ok(None)`: no pad has room (the caller withholds the
    /// unit). An error uses nothing. The caller seals on a link only after the peer's `Pads`
    /// on it ([`PadBook::on_peer_lists`] moved the cursor past what the peer opened).
    pub fn seal(
        &mut self,
        peer: &DatabaseId,
        unit: &TransferUnit,
        storage: &mut dyn PadStorage,
    ) -> Result<Option<PaddedUnit>, PadError> {
        if self.disabled {
            return Err(PadError::Disabled);
        }
        let need = (MAC_KEY_BYTES + unit.sensitive.len()) as u64;
        let Some(id) = self
            .records
            .values()
            .filter(|r| r.outbound && r.peer == *peer && r.state == PadState::Ready)
            .find(|r| self.left(r) >= need)
            .map(|r| r.id)
        else {
            return Ok(None);
        };
        let record = self.records.get_mut(&id).ok_or(PadError::Unknown(id))?;
        let at = self.cursors.get(&id).copied().unwrap_or(record.reserved_to);
        if at + need > record.reserved_to {
            let before = record.reserved_to;
            record.reserved_to = (at + need.max(RESERVE_BYTES)).min(record.len);
            if let Err(e) = self.save(storage) {
                if let Some(record) = self.records.get_mut(&id) {
                    record.reserved_to = before;
                }
                return Err(e);
            }
        }
        let record = self.records.get(&id).ok_or(PadError::Unknown(id))?;
        let material = zeroize::Zeroizing::new(read(storage, record, at, need)?);
        // Used from here on, whatever happens to the unit.
        self.cursors.insert(id, at + need);
        let (key, stream) = material.split_at(MAC_KEY_BYTES);
        let ct: Vec<u8> = unit.sensitive.iter().zip(stream).map(|(s, p)| s ^ p).collect();
        let plain = unit.encode_without_sensitive();
        let mac = mac(key, &id, at, &plain, &ct);
        Ok(Some(PaddedUnit { unit: plain, pad: id, offset: at, ct, mac }))
    }

    /// Opens a padded unit `peer` sent: checks the one-time MAC and restores the sensitive
    /// part. Remembers how far the pad was opened (saved each [`RESERVE_BYTES`], and reported
    /// to the owner in `Pads`).
    pub fn open(
        &mut self,
        peer: &DatabaseId,
        padded: &PaddedUnit,
        payload_limit: usize,
        storage: &mut dyn PadStorage,
    ) -> Result<TransferUnit, PadError> {
        let id = padded.pad;
        let record = self.records.get(&id).ok_or(PadError::Unknown(id))?;
        if record.outbound || record.owner != *peer || record.state != PadState::Ready {
            return Err(PadError::WrongPeer(id));
        }
        if padded.ct.is_empty() {
            return Err(PadError::Unit(UnitError::Malformed("an empty padded part".into())));
        }
        if padded.ct.len() > MAX_SENSITIVE_BYTES {
            return Err(PadError::Unit(UnitError::SensitiveTooLarge(padded.ct.len())));
        }
        if padded.unit.first() != Some(&UNIT_FORMAT_VERSION) {
            return Err(PadError::Unit(UnitError::Malformed(
                "a padded unit must be a version 1 encoding".into(),
            )));
        }
        let need = (MAC_KEY_BYTES + padded.ct.len()) as u64;
        let material = zeroize::Zeroizing::new(read(storage, record, padded.offset, need)?);
        let (key, stream) = material.split_at(MAC_KEY_BYTES);
        verify(key, &id, padded.offset, &padded.unit, &padded.ct, &padded.mac)?;
        let mut unit = TransferUnit::decode(&padded.unit, payload_limit)?;
        unit.sensitive = padded.ct.iter().zip(stream).map(|(c, p)| c ^ p).collect();
        unit.validate(payload_limit)?;
        let end = padded.offset + need;
        let saved = record.reserved_to;
        let opened = self.cursors.entry(id).or_insert(saved);
        *opened = (*opened).max(end);
        if *opened >= saved + RESERVE_BYTES {
            let opened = *opened;
            if let Some(record) = self.records.get_mut(&id) {
                record.reserved_to = opened;
            }
            // Best effort: the owner also learns it from the next `Pads` on a live link.
            let _ = self.save(storage);
        }
        Ok(unit)
    }
}

/// Pad bytes `[at, at + n)` of `record`, from its chunks.
fn read(
    storage: &dyn PadStorage,
    record: &PadRecord,
    at: u64,
    n: u64,
) -> Result<Vec<u8>, PadError> {
    let id = record.id;
    let end = at.checked_add(n).filter(|end| *end <= record.len).ok_or(PadError::Bounds(id))?;
    let mut out = Vec::with_capacity(n as usize);
    let chunk = CHUNK_BYTES as u64;
    let mut pos = at;
    while pos < end {
        let index = pos / chunk;
        let start = index * chunk;
        let expected = (record.len - start).min(chunk) as usize;
        let bytes = storage
            .meta(&chunk_name(&id, index))
            .map_err(PadError::Storage)?
            .filter(|b| b.len() == expected)
            .ok_or_else(|| PadError::Damaged(format!("pad {id} chunk {index} is missing")))?;
        let from = (pos - start) as usize;
        let to = ((end - start) as usize).min(expected);
        out.extend_from_slice(&bytes[from..to]);
        pos = start + to as u64;
    }
    Ok(out)
}

fn poly(key: &[u8], id: &PadId, at: u64, plain: &[u8], ct: &[u8]) -> Poly1305 {
    let mut head = [0u8; 24];
    head[..16].copy_from_slice(&id.0);
    head[16..].copy_from_slice(&at.to_be_bytes());
    let mut lens = [0u8; 16];
    lens[..8].copy_from_slice(&(plain.len() as u64).to_le_bytes());
    lens[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    let mut mac = Poly1305::new(poly1305::Key::from_slice(key));
    // Padded to blocks with the lengths last, as in RFC 8439's AEAD construction, so no two
    // inputs share a block sequence.
    mac.update_padded(&head);
    mac.update_padded(plain);
    mac.update_padded(ct);
    mac.update_padded(&lens);
    mac
}

fn mac(key: &[u8], id: &PadId, at: u64, plain: &[u8], ct: &[u8]) -> [u8; 16] {
    poly(key, id, at, plain, ct).finalize().into()
}

fn verify(
    key: &[u8],
    id: &PadId,
    at: u64,
    plain: &[u8],
    ct: &[u8],
    tag: &[u8; 16],
) -> Result<(), PadError> {
    // Constant-time comparison (universal-hash uses `subtle`).
    poly(key, id, at, plain, ct).verify(tag.into()).map_err(|_| PadError::Mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::tests::sample_unit;
    use std::collections::HashMap;

    /// Metadata in memory; `durable` is what a crash keeps.
    #[derive(Default, Clone)]
    struct Meta {
        entries: HashMap<String, Vec<u8>>,
        flushes: usize,
        fail: bool,
    }

    impl PadStorage for Meta {
        fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.entries.get(name).cloned())
        }
        fn put_durably(&mut self, entries: &[(&str, &[u8])]) -> Result<(), String> {
            if self.fail {
                return Err("disk full".into());
            }
            for (name, value) in entries {
                self.entries.insert(name.to_string(), value.to_vec());
            }
            self.flushes += 1;
            Ok(())
        }
    }

    fn dbid(s: &str) -> DatabaseId {
        s.parse().unwrap()
    }

    /// The offer frames of `owner`'s pad `id`, taken by `peer` (not yet accepted by the owner).
    fn deliver_offer(
        owner: &PadBook,
        owner_meta: &Meta,
        id: PadId,
        peer: &mut PadBook,
        peer_meta: &mut Meta,
    ) {
        for frame in owner.offer(id, owner_meta).unwrap() {
            match frame {
                Message::PadOffer { pad, len, offset, chunk } => {
                    peer.on_offer(owner.own, pad, len, offset, chunk).unwrap()
                }
                Message::PadComplete { pad, hash } => {
                    peer.on_complete(owner.own, pad, hash, 2, peer_meta).unwrap()
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Owner `a` hands a pad of `len` bytes to `b`: both books and stores.
    fn handed_over(len: usize) -> (PadBook, Meta, PadBook, Meta) {
        let (a, b) = (dbid("AAAAAAAAAAAAAAA"), dbid("BBBBBBBBBBBBBBB"));
        let (mut owner, mut owner_meta) = (PadBook::new(a), Meta::default());
        let (mut peer, mut peer_meta) = (PadBook::new(b), Meta::default());
        let material: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let id = owner.add_outbound(b, &material, 1, &mut owner_meta).unwrap();
        deliver_offer(&owner, &owner_meta, id, &mut peer, &mut peer_meta);
        assert_eq!(owner.status(&b).out_left, 0, "not usable before the peer confirms");
        assert!(owner.on_accepted(b, id, &mut owner_meta).unwrap());
        (owner, owner_meta, peer, peer_meta)
    }

    fn secret_unit(seq: u64, secret: &[u8]) -> TransferUnit {
        let mut unit = sample_unit(seq, b"customer 42 changed password");
        unit.sensitive = secret.to_vec();
        unit
    }

    #[test]
    fn a_sensitive_part_crosses_and_the_pad_is_not_reused() {
        let (mut owner, mut owner_meta, mut peer, mut peer_meta) = handed_over(200_000);
        let (a, b) = (owner.own, peer.own);
        let mut offsets = Vec::new();
        for seq in 1..=50 {
            let unit = secret_unit(seq, format!("hunter{seq}").as_bytes());
            let padded = owner.seal(&b, &unit, &mut owner_meta).unwrap().unwrap();
            assert!(!padded.unit.windows(6).any(|w| w == b"hunter"), "no secret in clear");
            assert!(!padded.ct.windows(6).any(|w| w == b"hunter"));
            offsets.push((padded.offset, padded.offset + 32 + padded.ct.len() as u64));
            let opened = peer.open(&a, &padded, 1 << 20, &mut peer_meta).unwrap();
            assert_eq!(opened, unit);
        }
        for pair in offsets.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "ranges never overlap: {pair:?}");
        }
        // 50 uses of ~40 bytes fit one reservation: one flush for the reservation, beyond the
        // two of the hand-over.
        assert_eq!(owner_meta.flushes, 3);
    }

    #[test]
    fn a_crash_wastes_the_reservation_and_never_reuses_bytes() {
        let (mut owner, mut owner_meta, _peer, _) = handed_over(100_000);
        let b = dbid("BBBBBBBBBBBBBBB");
        let first = owner.seal(&b, &secret_unit(1, b"pw1"), &mut owner_meta).unwrap().unwrap();
        // Crash: only the store survives.
        let (mut again, problem) = PadBook::load(owner.own, &owner_meta);
        assert_eq!(problem, None);
        let second = again.seal(&b, &secret_unit(2, b"pw2"), &mut owner_meta).unwrap().unwrap();
        assert!(second.offset >= first.offset + 35, "{} after {}", second.offset, first.offset);
        assert_eq!(second.offset, RESERVE_BYTES, "restarts at the durable reservation");
    }

    #[test]
    fn nothing_is_used_when_the_reservation_cannot_be_made_durable() {
        let (mut owner, mut owner_meta, _peer, _) = handed_over(100_000);
        let b = dbid("BBBBBBBBBBBBBBB");
        owner_meta.fail = true;
        assert!(matches!(
            owner.seal(&b, &secret_unit(1, b"pw"), &mut owner_meta),
            Err(PadError::Storage(_))
        ));
        owner_meta.fail = false;
        let padded = owner.seal(&b, &secret_unit(1, b"pw"), &mut owner_meta).unwrap().unwrap();
        assert_eq!(padded.offset, 0);
    }

    #[test]
    fn a_pad_runs_out_and_a_tampered_unit_is_refused() {
        let (mut owner, mut owner_meta, mut peer, mut peer_meta) =
            handed_over(MIN_PAD_BYTES as usize);
        let (a, b) = (owner.own, peer.own);
        let secret = vec![7u8; 1000];
        let mut sent = 0;
        while let Some(padded) = owner.seal(&b, &secret_unit(1, &secret), &mut owner_meta).unwrap()
        {
            sent += 1;
            let mut forged = padded.clone();
            forged.ct[0] ^= 1;
            assert_eq!(peer.open(&a, &forged, 1 << 20, &mut peer_meta), Err(PadError::Mac));
            let mut moved = padded.clone();
            moved.unit = secret_unit(2, b"x").encode_without_sensitive();
            assert_eq!(peer.open(&a, &moved, 1 << 20, &mut peer_meta), Err(PadError::Mac));
            assert!(peer.open(&b, &padded, 1 << 20, &mut peer_meta).is_err(), "another sender");
        }
        assert_eq!(sent, 3, "4 KiB hold three 1032-byte uses");
        assert!(owner.wants_new(&b, MIN_PAD_BYTES));
    }

    #[test]
    fn a_restored_directory_revokes_its_outbound_pads() {
        let (owner, owner_meta, _peer, _) = handed_over(10_000);
        let b = dbid("BBBBBBBBBBBBBBB");
        assert!(owner.status(&b).out_left > 0);
        let (restored, _) = PadBook::load(dbid("CCCCCCCCCCCCCCC"), &owner_meta);
        assert_eq!(restored.status(&b).out_left, 0);
    }

    #[test]
    fn a_peer_that_lost_its_pad_gets_it_revoked() {
        let (mut owner, mut owner_meta, peer, _) = handed_over(10_000);
        let b = peer.own;
        let held = peer.inbound(&owner.own);
        assert_eq!(owner.on_peer_lists(b, &held, &[], &mut owner_meta), Ok((0, 0)));
        assert_eq!(owner.on_peer_lists(b, &[], &[], &mut owner_meta), Ok((1, 0)));
        assert_eq!(owner.seal(&b, &secret_unit(1, b"pw"), &mut owner_meta), Ok(None));
        assert!(owner.live_outbound(&b).is_empty());
    }

    #[test]
    fn used_up_pads_are_erased_at_both_ends() {
        let (mut owner, mut owner_meta, mut peer, mut peer_meta) =
            handed_over(MIN_PAD_BYTES as usize);
        let (a, b) = (owner.own, peer.own);
        let id = owner.live_outbound(&b)[0];
        while owner.seal(&b, &secret_unit(1, &[5; 2000]), &mut owner_meta).unwrap().is_some() {}
        assert!(owner.live_outbound(&b).is_empty(), "used up");
        // The peer forgets it once the owner no longer lists it, and erases the bytes.
        let live = owner.live_outbound(&b);
        assert_eq!(peer.on_peer_lists(a, &[], &live, &mut peer_meta), Ok((0, 1)));
        assert!(peer.inbound(&a).is_empty());
        assert_eq!(peer_meta.entries[&chunk_name(&id, 0)], Vec::<u8>::new());
        // The owner retires it when a new pad is accepted.
        let fresh =
            owner.add_outbound(b, &[1; MIN_PAD_BYTES as usize], 3, &mut owner_meta).unwrap();
        assert!(owner.on_accepted(b, fresh, &mut owner_meta).unwrap());
        assert_eq!(owner_meta.entries[&chunk_name(&id, 0)], Vec::<u8>::new());
        assert_eq!(owner.live_outbound(&b), vec![fresh]);
        let (reloaded, _) = PadBook::load(a, &owner_meta);
        assert_eq!(reloaded.records.len(), 1);
    }

    #[test]
    fn bad_offers_and_damaged_records_are_errors_not_panics() {
        let a = dbid("AAAAAAAAAAAAAAA");
        let mut book = PadBook::new(dbid("BBBBBBBBBBBBBBB"));
        let id = PadId([1; 16]);
        let other = PadId([2; 16]);
        assert!(book.on_offer(a, id, MAX_PAD_BYTES + 1, 0, vec![0; 10]).is_err());
        assert!(book.on_offer(a, id, 10_000, 5, vec![0; 10]).is_err(), "must start at 0");
        book.on_offer(a, id, 10_000, 0, vec![0; 10]).unwrap();
        assert!(book.on_offer(a, id, 10_000, 20, vec![0; 10]).is_err(), "gap");
        book.on_offer(a, id, 10_000, 0, vec![0; 10]).unwrap();
        assert!(book.on_offer(a, other, 10_000, 10, vec![0; 10]).is_err(), "another pad");
        book.on_offer(a, id, 10_000, 0, vec![0; 10_000]).unwrap();
        let mut meta = Meta::default();
        assert_eq!(book.on_complete(a, id, [0; 32], 1, &mut meta), Err(PadError::Hash(id)));
        meta.entries.insert(META_PADS.into(), vec![0xff; 7]);
        let (empty, problem) = PadBook::load(a, &meta);
        assert!(matches!(problem, Some(PadError::Damaged(_))));
        assert!(empty.records.is_empty());
    }

    #[test]
    fn a_lost_acceptance_and_a_rolled_back_owner_are_caught_up_by_the_peers_list() {
        let (a, b) = (dbid("AAAAAAAAAAAAAAA"), dbid("BBBBBBBBBBBBBBB"));
        let (mut owner, mut owner_meta) = (PadBook::new(a), Meta::default());
        let (mut peer, mut peer_meta) = (PadBook::new(b), Meta::default());
        let id = owner.add_outbound(b, &[3; 20_000], 1, &mut owner_meta).unwrap();
        deliver_offer(&owner, &owner_meta, id, &mut peer, &mut peer_meta);
        // `PadAccepted` lost with the link: the peer's list accepts it.
        let snapshot = owner_meta.clone();
        owner.on_peer_lists(b, &peer.inbound(&a), &[], &mut owner_meta).unwrap();
        let first = owner.seal(&b, &secret_unit(1, b"pw-1"), &mut owner_meta).unwrap().unwrap();
        peer.open(&a, &first, 1 << 20, &mut peer_meta).unwrap();
        // The owner's disk is rolled back to before that use (a VM snapshot): same dbid.
        let (mut rolled, _) = PadBook::load(a, &snapshot);
        let mut rolled_meta = snapshot;
        rolled.on_peer_lists(b, &peer.inbound(&a), &[], &mut rolled_meta).unwrap();
        let second = rolled.seal(&b, &secret_unit(2, b"pw-2"), &mut rolled_meta).unwrap().unwrap();
        assert!(
            second.offset >= first.offset + 36,
            "never the same bytes: {} then {}",
            first.offset,
            second.offset
        );
        assert_eq!(peer.open(&a, &second, 1 << 20, &mut peer_meta).unwrap().sensitive, b"pw-2");
    }

    #[test]
    fn a_book_that_could_not_be_read_uses_and_stores_nothing() {
        struct Broken;
        impl PadStorage for Broken {
            fn meta(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
                Err("io error".into())
            }
            fn put_durably(&mut self, _: &[(&str, &[u8])]) -> Result<(), String> {
                Ok(())
            }
        }
        let (mut book, problem) = PadBook::load(dbid("AAAAAAAAAAAAAAA"), &Broken);
        assert!(matches!(problem, Some(PadError::Storage(_))));
        let b = dbid("BBBBBBBBBBBBBBB");
        assert_eq!(book.add_outbound(b, &[1; 5000], 1, &mut Broken), Err(PadError::Disabled));
        assert!(!book.wants_new(&b, 5000));
    }
}
