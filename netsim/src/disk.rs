//! Disk-full for the simulator: a [`Store`] wrapper whose writes fail while a switch the engine
//! holds is on.
//!
//! The engine owns one [`DiskFull`] switch per node and hands a clone to the factory at every
//! build; a [`Fault::DiskFull`](crate::Fault::DiskFull) flips it. A factory wraps the node's
//! `MemoryStore` in a [`FailingStore`] with that switch, so the node's type must be generic over
//! its store (the real core: `Node<S: Store>`).
//!
//! While full, every write (`insert_batch`, `insert_located`, `meta_put`, `set_cursor`,
//! `flush`) fails whole with `StoreError::Io` of kind `StorageFull` and changes nothing; reads
//! work. This models the store only: the production ledger also appends to the DATI daily logs
//! on disk, which the simulator does not run.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use meshnode::id::{DatabaseId, Physkey};
use meshnode::store::{
    BodyRef, InsertOutcome, MemoryStore, MetaWrite, Store, StoreError, VersionVector,
};
use meshnode::unit::TransferUnit;

/// A node's disk-full switch, shared by the engine and the node's [`FailingStore`].
/// (`Arc<AtomicBool>` rather than `Rc<Cell>` because `Store` requires `Send`.)
#[derive(Debug, Clone, Default)]
pub struct DiskFull(Arc<AtomicBool>);

impl DiskFull {
    /// A switch that is off (the disk has room).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether writes fail now.
    pub fn is_full(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Fills or frees the disk.
    pub fn set(&self, full: bool) {
        self.0.store(full, Ordering::Relaxed);
    }
}

/// A store whose writes fail while its [`DiskFull`] switch is on.
#[derive(Debug)]
pub struct FailingStore<S: Store = MemoryStore> {
    inner: S,
    disk: DiskFull,
}

impl<S: Store> FailingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, disk: DiskFull) -> Self {
        FailingStore { inner, disk }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps (on crash the engine then calls `MemoryStore::crash`).
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.disk.is_full() {
            return Err(StoreError::Io(io::Error::from(io::ErrorKind::StorageFull)));
        }
        Ok(())
    }
}

impl<S: Store> Store for FailingStore<S> {
    fn insert_batch(
        &mut self,
        units: &[TransferUnit],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.writable()?;
        self.inner.insert_batch(units, meta)
    }

    fn insert_located(
        &mut self,
        units: &[(TransferUnit, BodyRef)],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.writable()?;
        self.inner.insert_located(units, meta)
    }

    fn contains(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.inner.contains(origin, seq)
    }

    fn get(&self, origin: &DatabaseId, seq: u64) -> Result<Option<TransferUnit>, StoreError> {
        self.inner.get(origin, seq)
    }

    fn range(
        &self,
        origin: &DatabaseId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TransferUnit>, StoreError> {
        self.inner.range(origin, from, limit)
    }

    fn find_physkey(&self, physkey: &Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> {
        self.inner.find_physkey(physkey)
    }

    fn version_vector(&self) -> &VersionVector {
        self.inner.version_vector()
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta_get(name)
    }

    fn meta_put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.inner.meta_put(name, value)
    }

    fn cursor(&self, app: &str) -> Result<BTreeMap<DatabaseId, u64>, StoreError> {
        self.inner.cursor(app)
    }

    fn set_cursor(&mut self, app: &str, origin: &DatabaseId, seq: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.inner.set_cursor(app, origin, seq)
    }

    fn for_each_unit(&self, f: &mut dyn FnMut(&TransferUnit) -> bool) -> Result<(), StoreError> {
        self.inner.for_each_unit(f)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.writable()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fail_while_full_and_change_nothing() {
        let disk = DiskFull::new();
        let mut s = FailingStore::new(MemoryStore::new(), disk.clone());
        s.meta_put("a", b"1").unwrap();
        disk.set(true);
        assert!(
            matches!(s.meta_put("b", b"2"), Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::StorageFull)
        );
        assert!(s.flush().is_err());
        assert_eq!(s.meta_get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.meta_get("b").unwrap(), None);
        disk.set(false);
        s.flush().unwrap();
        assert_eq!(s.into_inner().unflushed(), 0);
    }
}
