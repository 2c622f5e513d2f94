//! The store: positions, events and device state, under the data directory.
//!
//! Layout of `DATA_DIR`:
//! - `journal/*.wal` — every group commit, fsynced before anyone is answered ([`journal`]);
//! - `db/` — sled, with trees `blocks` (key IMEI ‖ first fix time → a columnar block of that
//!   device's consecutive positions, [`block`]), `block_index` (same key → [`BlockMeta`]),
//!   `events` ([`keys::event`]), `devices` (IMEI → [`DeviceRecord`]) and `meta` (format).
//!
//! Positions not yet sealed into blocks ("tails") and the device records live in memory,
//! shared with readers; the journal makes them durable until a checkpoint writes them to
//! sled. Reads merge blocks and tails.
//!
//! **Architecture invariant:** nothing outside this room names a sled type, and only the
//! [`writer`] thread writes. Reads ([`Store`]) may run anywhere, concurrently.

pub mod backup;
pub mod block;
pub mod codec;
pub mod freeze;
pub mod guard;
pub mod imei_map;
pub mod journal;
pub mod keys;
pub mod memory;
mod sealer;

/// Failed checkpoints in a row after which the store counts as stuck.
pub const CHECKPOINT_FAILURES_STUCK: u32 = 3;
pub mod sledfile;
pub mod tail;
pub mod writer;

pub use codec::{
    BlockMeta, DeviceRecord, EventRecord, LbsRecord, Op, PositionRecord, StatusRecord,
};
pub use writer::{refused_when_low, Durability, DurableState, WriteReq, WriterHandle, REQ_OPS_MAX};

use imei_map::{ImeiMap, ImeiSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Format of the store as a whole (files, trees, keys, values). Recorded in `meta`.
/// 1: the foundation (one sled key per position, tree `positions`); 2: journal + blocks.
pub const STORE_FORMAT: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} is in use by another process or unreadable: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store at {path} has format {found}, this build knows formats 1 and {STORE_FORMAT}")]
    Format { path: PathBuf, found: u64 },
    #[error("disk full while writing the store")]
    DiskFull,
    #[error("store i/o failed: {0}")]
    Io(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("the store writer has stopped")]
    Closed,
    /// A caller's bug, not the disk's: a request must carry 1 to `REQ_OPS_MAX` operations.
    #[error("a write request carried {0} operations")]
    Request(usize),
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "store_open",
            StoreError::Format { .. } => "store_format",
            StoreError::DiskFull => "disk_full",
            StoreError::Io(_) => "store_io",
            StoreError::Corrupt(_) => "store_corrupt",
            StoreError::Closed => "store_closed",
            StoreError::Request(_) => "store_request",
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => io.into(),
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT: name it, the operator's fix is different. sled wraps the OS
        // error in one of its own, so look inside too.
        let inner = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        let full = |code: Option<i32>| matches!(code, Some(libc::ENOSPC) | Some(libc::EDQUOT));
        if full(e.raw_os_error()) || full(inner) || e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::DiskFull
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

impl From<codec::CodecError> for StoreError {
    fn from(e: codec::CodecError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<block::BlockError> for StoreError {
    fn from(e: block::BlockError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// What lives in memory and is shared between the writer and readers.
#[derive(Default)]
pub(crate) struct Live {
    /// Unsealed positions per device, sorted by fix time, one per fix time.
    pub tails: ImeiMap<tail::Tail>,
    /// Positions in `tails`.
    pub unsealed: usize,
    /// Tails a checkpoint is sealing right now (still visible to readers).
    pub sealing: ImeiMap<tail::Tail>,
    pub devices: ImeiMap<DeviceRecord>,
    /// Sealed blocks per device, sorted by first fix time (mirrors `block_index`).
    pub index: ImeiMap<Vec<BlockMeta>>,
    /// Devices whose record changed since the last checkpoint.
    pub dirty: ImeiSet,
    /// Per device, bumped under the write lock before every change to its blocks: a
    /// reader that decoded blocks after dropping the read lock knows by it whether they
    /// moved meanwhile.
    pub block_changes: ImeiMap<u64>,
    /// Where `tails` write their older rows out (one file per checkpoint: the sealing
    /// set's chunks keep theirs); none for a read-only store.
    pub spill: Option<Arc<tail::Spill>>,
}

impl Live {
    /// Adds a position to its device's tail; the first position stored for a fix time wins.
    /// Returns false when that fix time was already there (a re-sent position).
    pub fn insert(&mut self, imei: u64, pos: &PositionRecord) -> bool {
        self.insert_all(imei, std::slice::from_ref(pos)) == 1
    }

    /// [`Live::insert`] for several positions of one device: its tail is looked up once.
    /// Returns how many were added.
    fn insert_all<'a>(
        &mut self,
        imei: u64,
        positions: impl IntoIterator<Item = &'a PositionRecord>,
    ) -> usize {
        let tail = self.tails.entry(imei).or_default();
        let added = positions
            .into_iter()
            .filter(|p| tail.insert(p, self.spill.as_ref()))
            .count();
        self.unsealed += added;
        added
    }
}

struct Inner {
    db: sled::Db,
    blocks: sled::Tree,
    block_index: sled::Tree,
    events: sled::Tree,
    devices: sled::Tree,
    live: RwLock<Live>,
    /// Where spill files are made ([`tail::Spill`]); none for a read-only store.
    spill_dir: Option<PathBuf>,
    db_file: PathBuf,
    journal_dir: PathBuf,
    /// Lets a backup hold sled still while commits go on ([`freeze`]).
    gate: freeze::Gate,
    /// Free space of the data directory: the writer and sessions consult it.
    guard: Arc<guard::DiskGuard>,
    /// Checkpoints that failed since the last one that completed (the writer counts).
    checkpoint_failures: std::sync::atomic::AtomicU32,
    /// Where the journal's durable records end (the writer's journal publishes it).
    journal_end: journal::End,
}

/// Read access to the store, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Reads of blocks without the lock before one that holds it (see [`Store::positions`]).
const OPTIMISTIC_READS: u32 = 3;

/// sled's page cache by default. Positions sit in blocks of up to 4,096, so the pages
/// sled caches are few and large, and reads decode blocks the OS page cache holds anyway:
/// at 100 M positions 16 MiB read a device's day as fast as 64 MiB did and kept RSS
/// ~50 MiB lower while writing (BENCHMARKS.md, store section).
pub const DEFAULT_CACHE_MB: u64 = 16;

/// Open options that matter for memory.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub cache_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: DEFAULT_CACHE_MB * 1024 * 1024,
        }
    }
}

/// A freshly opened store and its journal; the journal goes to the writer.
pub struct Opened {
    pub store: Store,
    pub journal: journal::Journal,
    pub replay: journal::ReplayStats,
    /// Positions moved out of a foundation-layout store by this open (0 if none).
    pub migrated: u64,
}

/// A damaged block found by [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    pub imei: u64,
    pub first_ms: i64,
    pub last_ms: Option<i64>,
    pub problem: String,
}

/// What [`Store::verify`] found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub blocks: u64,
    /// Bytes of all block values (what the codec wrote, before sled's own overhead).
    pub block_bytes: u64,
    pub positions: u64,
    pub events: u64,
    pub devices: u64,
    pub bad: Vec<BadBlock>,
}

impl Store {
    /// Opens (or creates) the store under `data_dir`, replaying the journal.
    pub fn open(data_dir: &Path, opts: OpenOptions) -> Result<Opened, StoreError> {
        let (store, found) = Store::open_db(data_dir, opts, false)?;
        let migrated = if found == Some(1) {
            store.migrate_v1()?
        } else {
            0
        };
        if found != Some(STORE_FORMAT) {
            store
                .inner
                .db
                .open_tree("meta")?
                .insert("format", &STORE_FORMAT.to_be_bytes())?;
            store.sync()?;
        }
        let (mut journal, replay) = journal::Journal::open(&data_dir.join("journal"), |ops| {
            store.apply_all(&mut store.live_mut(), &ops);
        })?;
        journal.publish_end_to(store.inner.journal_end.clone());
        Ok(Opened {
            store,
            journal,
            replay,
            migrated,
        })
    }

    /// Opens a store to look at it (`gt06 verify`, `doctor`): the journal is replayed
    /// into memory but not cut or extended, nothing is migrated or marked, and no store
    /// is created where there is none. sled 0.34 has no read-only mode: it writes a new
    /// snapshot file whenever it opens a store and recovers its log after a crash, which
    /// changes no data; the journal, and sled's log of a cleanly closed store, stay byte
    /// for byte (`tests/it/ops.rs`). A foundation-format store is refused here: `serve`
    /// migrates it.
    pub fn open_read_only(
        data_dir: &Path,
        opts: OpenOptions,
    ) -> Result<(Store, journal::ReplayStats), StoreError> {
        let (store, found) = Store::open_db(data_dir, opts, true)?;
        if found == Some(1) {
            return Err(StoreError::Open {
                path: data_dir.join("db"),
                detail:
                    "a first-release store (format 1); `gt06 serve` migrates it when it opens it"
                        .into(),
            });
        }
        // Replayed events wait in the gate's memory (reads see them) instead of going
        // into the events tree; nobody thaws a read-only store.
        let _ = store.inner.gate.freeze(std::time::Duration::ZERO, || ());
        let replay = journal::replay_read_only(&data_dir.join("journal"), |ops| {
            store.apply_all(&mut store.live_mut(), &ops);
        })?;
        Ok((store, replay))
    }

    /// Opens sled and the trees; returns the store format found (`None`: a new store).
    fn open_db(
        data_dir: &Path,
        opts: OpenOptions,
        read_only: bool,
    ) -> Result<(Store, Option<u64>), StoreError> {
        let path = data_dir.join("db");
        let open_err = |detail: String| StoreError::Open {
            path: path.clone(),
            detail,
        };
        if read_only {
            if !path.join("db").is_file() {
                return Err(open_err("no store here".into()));
            }
        } else {
            std::fs::create_dir_all(&path).map_err(|e| open_err(e.to_string()))?;
        }
        let log = path.join("db");
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            sledfile::check_log(&log).map_err(StoreError::Corrupt)?;
        }
        // sled 0.34 defaults to a 1 GiB cache and a 500 ms background fsync: a memory
        // budget and a loss window chosen by someone else. The cache is ours; durability
        // comes from the journal and the fsync at every checkpoint.
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let meta = tree("meta")?;
        let found = meta
            .get("format")
            .map_err(|e| open_err(e.to_string()))?
            .map(|v| {
                v.as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX)
            });
        if !matches!(found, None | Some(1) | Some(STORE_FORMAT)) {
            return Err(StoreError::Format {
                path,
                found: found.unwrap_or(0),
            });
        }
        let spill_dir = (!read_only).then(|| data_dir.to_path_buf());
        let inner = Inner {
            blocks: tree("blocks")?,
            block_index: tree("block_index")?,
            events: tree("events")?,
            devices: tree("devices")?,
            live: RwLock::new(Live {
                spill: spill_dir.as_deref().and_then(tail::Spill::create),
                ..Live::default()
            }),
            spill_dir,
            db_file: path.join("db"),
            journal_dir: data_dir.join("journal"),
            gate: freeze::Gate::default(),
            db,
            guard: Arc::new(guard::DiskGuard::new(data_dir)),
            checkpoint_failures: Default::default(),
            journal_end: Default::default(),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        store.load_live()?;
        Ok((store, found))
    }

    fn live(&self) -> RwLockReadGuard<'_, Live> {
        // A panic while holding the lock would leave plain data behind, still usable.
        self.inner.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A spill file for the tails of a new checkpoint generation.
    pub(crate) fn new_spill(&self) -> Option<Arc<tail::Spill>> {
        self.inner
            .spill_dir
            .as_deref()
            .and_then(tail::Spill::create)
    }

    pub(crate) fn live_mut(&self) -> RwLockWriteGuard<'_, Live> {
        self.inner.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads device records and the block index into memory.
    fn load_live(&self) -> Result<(), StoreError> {
        let mut live = self.live_mut();
        for item in self.inner.devices.iter() {
            let (k, v) = item?;
            if let Some(imei) = keys::split_device_key(&k) {
                live.devices.insert(imei, codec::decode(&v)?);
            }
        }
        for item in self.inner.block_index.iter() {
            let (k, v) = item?;
            if let Some((imei, _)) = keys::split_time_key(&k) {
                live.index.entry(imei).or_default().push(codec::decode(&v)?);
            }
        }
        Ok(())
    }

    /// Applies journaled operations to memory, in order: [`Store::apply`] for each, with
    /// a run of one device's positions (a read's worth, under load) taken together: its
    /// device entry and tail are looked up once and only its newest position is copied
    /// as the last one, which is what applying them one by one leaves there.
    pub(crate) fn apply_all(&self, live: &mut Live, ops: &[Op]) {
        let mut rest = ops;
        while let Some((first, after)) = rest.split_first() {
            let Op::Position { imei, .. } = first else {
                self.apply(live, first);
                rest = after;
                continue;
            };
            let run = rest.iter().map_while(|op| match op {
                Op::Position { imei: i, pos } if i == imei => Some(pos),
                _ => None,
            });
            let len = run.clone().count();
            apply_positions(live, *imei, run);
            rest = rest.get(len..).unwrap_or_default();
        }
    }

    /// Applies one journaled request to memory (and events to their tree). Used by the
    /// writer after the journal fsync and by replay at open; applying twice is harmless.
    pub(crate) fn apply(&self, live: &mut Live, op: &Op) {
        match op {
            Op::Position { imei, pos } => apply_positions(live, *imei, std::iter::once(pos)),
            Op::Event { imei, event } => {
                device_entry(live, *imei, event.received_ms);
                let key = keys::event(*imei, event.time_ms, writer::discriminator(event));
                if let Err(e) = self
                    .inner
                    .gate
                    .put_event(&self.inner.events, key.to_vec(), event)
                {
                    tracing::error!(error = %e, "event not written to the events tree");
                }
            }
            Op::Seen {
                imei,
                at_ms,
                login,
                status,
            } => {
                let dev = device_entry(live, *imei, *at_ms);
                if let Some((type_id, tz)) = login {
                    dev.type_id = *type_id;
                    dev.tz_offset_min = *tz;
                }
                if let Some(s) = status {
                    dev.status = Some(carry_over(*s, dev.status.as_ref()));
                }
            }
            Op::Info {
                imei,
                at_ms,
                power_mv,
                battery_mv,
                battery_percent,
                temperature_dc,
                iccid,
                door_open,
                humidity_dpct,
                network_gen,
                tag_temperature_dc,
            } => {
                let dev = device_entry(live, *imei, *at_ms);
                let st = dev.status.get_or_insert_with(StatusRecord::default);
                st.time_ms = st.time_ms.max(*at_ms);
                st.power_mv = power_mv.or(st.power_mv);
                st.battery_mv = battery_mv.or(st.battery_mv);
                st.battery_percent = battery_percent.or(st.battery_percent);
                st.temperature_dc = temperature_dc.or(st.temperature_dc);
                st.door_open = door_open.or(st.door_open);
                st.humidity_dpct = humidity_dpct.or(st.humidity_dpct);
                st.network_gen = network_gen.or(st.network_gen);
                st.tag_temperature_dc = tag_temperature_dc.or(st.tag_temperature_dc);
                if iccid.is_some() {
                    dev.iccid.clone_from(iccid);
                }
            }
        }
    }

    pub(crate) fn read_block(
        &self,
        imei: u64,
        first_ms: i64,
    ) -> Result<Vec<PositionRecord>, StoreError> {
        match self.inner.blocks.get(keys::position(imei, first_ms))? {
            Some(v) => Ok(block::decode_block(&v)?),
            None => Ok(Vec::new()),
        }
    }

    /// Positions of one device with `from_ms <= time < to_ms`, oldest first, at most
    /// `limit`; the second value is the time of the next position when there are more.
    pub fn positions(
        &self,
        imei: u64,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<(Vec<PositionRecord>, Option<i64>), StoreError> {
        if from_ms >= to_ms || limit == 0 {
            return Ok((Vec::new(), None));
        }
        let in_range = |p: &PositionRecord| p.time_ms >= from_ms && p.time_ms < to_ms;
        // Blocks are decoded without the lock, so commits don't wait behind a read; a
        // seal that merged or rewrote this device's blocks meanwhile (the blocks read
        // would mix two layouts and miss positions) shows in the device's change count,
        // and the read starts over. The last try holds the lock throughout.
        let mut attempt = 0;
        let (sealed, tail) = loop {
            attempt += 1;
            let live = self.live();
            let generation = live.block_changes.get(&imei).copied();
            let metas: Vec<BlockMeta> = live
                .index
                .get(&imei)
                .map(|v| {
                    v.iter()
                        .filter(|m| m.last_ms >= from_ms && m.first_ms < to_ms)
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            let part = |m: &ImeiMap<tail::Tail>| {
                m.get(&imei)
                    .map(|t| t.range(from_ms, to_ms))
                    .unwrap_or_default()
            };
            let tail = merge_unique(part(&live.sealing), part(&live.tails));
            // Dropped here, unless this is the last try.
            let held = (attempt >= OPTIMISTIC_READS).then_some(live);
            // Blocks of a device never overlap, so their positions come out in order;
            // stop decoding once a page (plus the one that tells `next`) is certain.
            let want = limit + 1;
            let mut sealed = Vec::new();
            for m in &metas {
                if sealed.len() >= want {
                    break;
                }
                sealed.extend(
                    self.read_block(imei, m.first_ms)?
                        .into_iter()
                        .filter(in_range),
                );
            }
            if held.is_some() || self.live().block_changes.get(&imei).copied() == generation {
                break (sealed, tail);
            }
        };
        let mut out = merge_unique(sealed, tail);
        let next = if out.len() > limit {
            let n = out[limit].time_ms;
            out.truncate(limit);
            Some(n)
        } else {
            None
        };
        Ok((out, next))
    }

    /// Every known device with its record, ordered by IMEI.
    pub fn devices(&self) -> Vec<(u64, DeviceRecord)> {
        let live = self.live();
        let mut out: Vec<_> = live.devices.iter().map(|(k, v)| (*k, v.clone())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    pub fn device(&self, imei: u64) -> Option<DeviceRecord> {
        self.live().devices.get(&imei).cloned()
    }

    /// Events with `from_ms <= time < to_ms`, of one device or all, oldest first per
    /// device, at most `limit`.
    pub fn events(
        &self,
        imei: Option<u64>,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let mut out = Vec::new();
        let (lo, hi) = match imei {
            Some(imei) => (
                keys::event(imei, from_ms, 0).to_vec(),
                Some(keys::event(imei, to_ms, 0).to_vec()),
            ),
            None => (Vec::new(), None),
        };
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match &hi {
            Some(hi) => Box::new(self.inner.events.range(lo.as_slice()..hi.as_slice())),
            None => Box::new(self.inner.events.iter()),
        };
        for item in iter {
            let (k, v) = item?;
            if let Some((imei, t)) = keys::split_time_key(&k) {
                if t >= from_ms && t < to_ms {
                    out.push((k.to_vec(), imei, codec::decode(&v)?));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        // Events committed during a backup wait in the freeze gate; the first `limit` of
        // the union are among the first `limit` from sled plus those.
        let held = self.inner.gate.held_events(&lo, hi.as_deref());
        if !held.is_empty() {
            for (k, e) in held {
                if let Some((imei, t)) = keys::split_time_key(&k) {
                    if t >= from_ms && t < to_ms {
                        out.push((k, imei, e));
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.dedup_by(|a, b| a.0 == b.0);
            out.truncate(limit);
        }
        Ok(out.into_iter().map(|(_, imei, e)| (imei, e)).collect())
    }

    /// Positions stored (sealed and unsealed). A re-sent position is counted twice until
    /// the checkpoint that merges it away.
    pub fn count_positions(&self) -> u64 {
        let live = self.live();
        let sealed: u64 = live.index.values().flatten().map(|m| m.count as u64).sum();
        let sealing: u64 = live.sealing.values().map(|t| t.len() as u64).sum();
        sealed + sealing + live.unsealed as u64
    }

    /// Positions not yet sealed into blocks (including a checkpoint's set under way).
    pub fn unsealed(&self) -> usize {
        let live = self.live();
        live.unsealed + live.sealing.values().map(|t| t.len()).sum::<usize>()
    }

    /// Positions in the fresh tails only (what counts toward the next checkpoint).
    pub(crate) fn fresh_unsealed(&self) -> usize {
        self.live().unsealed
    }

    /// The disk guard of this store's data directory (off until configured).
    pub fn disk(&self) -> &Arc<guard::DiskGuard> {
        &self.inner.guard
    }

    /// Checkpoints failed in a row, when that looks like more than a passing problem.
    /// sled 0.34 refuses every write after one of its own writes failed (a full disk
    /// does that), and only reopening clears it: the journal keeps everything, but
    /// nothing is sealed and memory grows until the process restarts. Reported on
    /// `/health/ready`; the systemd watchdog stops pinging on it so the unit restarts.
    pub fn checkpoints_failing(&self) -> Option<u32> {
        let n = self
            .inner
            .checkpoint_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        (n >= CHECKPOINT_FAILURES_STUCK).then_some(n)
    }

    pub(crate) fn checkpoint_result(&self, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if ok {
            self.inner.checkpoint_failures.store(0, Relaxed);
        } else {
            self.inner.checkpoint_failures.fetch_add(1, Relaxed);
        }
    }

    /// Server time (ms) of the newest position received, over every device.
    pub fn newest_received_ms(&self) -> Option<i64> {
        let live = self.live();
        live.devices
            .values()
            .filter_map(|d| d.last_position.as_ref().map(|p| p.received_ms))
            .max()
    }

    /// Cheap liveness probe for `/health/ready`: sled answers a read.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.inner.devices.first()?;
        Ok(())
    }

    /// Flushes sled and fsyncs its data file.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        std::fs::File::open(&self.inner.db_file)?.sync_all()?;
        Ok(())
    }

    /// Reads every block and checks its checksum, its agreement with the index, and that
    /// a device's blocks are in order without overlap (so no fix time is stored twice).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let live = self.live();
        report.devices = live.devices.len() as u64;
        let mut last: Option<(u64, i64)> = None;
        for item in self.inner.blocks.iter() {
            let (k, v) = item?;
            let Some((imei, first_ms)) = keys::split_time_key(&k) else {
                continue;
            };
            report.blocks += 1;
            report.block_bytes += v.len() as u64;
            let bad = |problem: String, last_ms| BadBlock {
                imei,
                first_ms,
                last_ms,
                problem,
            };
            match block::verify_block(&v)
                .map_err(StoreError::from)
                .and_then(|s| {
                    let list = block::decode_block(&v)?;
                    Ok((s, list))
                }) {
                Err(e) => report.bad.push(bad(e.to_string(), None)),
                Ok((s, list)) => {
                    report.positions += list.len() as u64;
                    let indexed = live
                        .index
                        .get(&imei)
                        .and_then(|v| v.iter().find(|m| m.first_ms == first_ms));
                    if indexed.is_none_or(|m| m.count != s.count || m.last_ms != s.last_ms)
                        || s.first_ms != first_ms
                    {
                        report
                            .bad
                            .push(bad("block and index disagree".into(), Some(s.last_ms)));
                    }
                    if let Some((prev_imei, prev_last)) = last {
                        if prev_imei == imei && prev_last >= first_ms {
                            report
                                .bad
                                .push(bad("overlaps the previous block".into(), Some(s.last_ms)));
                        }
                    }
                    last = Some((imei, s.last_ms));
                }
            }
        }
        report.events = self.inner.events.len() as u64;
        Ok(report)
    }

    /// Converts a foundation store (one key per position in tree `positions`) into blocks.
    fn migrate_v1(&self) -> Result<u64, StoreError> {
        let old = self.inner.db.open_tree("positions")?;
        let mut moved = 0u64;
        let mut current: Option<u64> = None;
        let mut run: Vec<PositionRecord> = Vec::new();
        let flush = |imei: u64, run: &mut Vec<PositionRecord>| -> Result<(), StoreError> {
            let mut live = self.live_mut();
            let metas = live.index.get(&imei).map(Vec::as_slice).unwrap_or(&[]);
            let ops = writer::seal_ops(metas, imei, std::mem::take(run), |i, f| {
                self.read_block(i, f)
            })
            .map_err(|(e, _)| e)?;
            writer::apply_seal_ops(
                &self.inner.blocks,
                &self.inner.block_index,
                &mut live,
                std::slice::from_ref(&ops),
            )
        };
        for item in old.iter() {
            let (k, v) = item?;
            let Some((imei, _)) = keys::split_time_key(&k) else {
                continue;
            };
            if current != Some(imei) || run.len() >= writer::BLOCK_MAX {
                if let Some(prev) = current {
                    flush(prev, &mut run)?;
                }
                current = Some(imei);
            }
            run.push(codec::decode_v1_position(&v)?);
            moved += 1;
        }
        if let Some(prev) = current {
            flush(prev, &mut run)?;
        }
        self.sync()?;
        self.inner.db.drop_tree("positions")?;
        tracing::info!(
            positions = moved,
            "migrated a foundation-format store to blocks"
        );
        Ok(moved)
    }

    pub(crate) fn gate(&self) -> &freeze::Gate {
        &self.inner.gate
    }

    /// After a backup's freeze, moves the events it held into sled. Writer thread only.
    pub(crate) fn release_held_events(&self) -> Result<usize, StoreError> {
        self.inner.gate.release_held(&self.inner.events)
    }

    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree, &sled::Tree) {
        (
            &self.inner.blocks,
            &self.inner.block_index,
            &self.inner.devices,
        )
    }
}

/// Opens a store this process has just closed. sled 0.34 finishes writing its last
/// buffers on its own I/O threads after the handle is dropped, and those keep the file
/// and its lock for a moment: an immediate open can find the store "in use" by this very
/// process (seen once in CI). So a lock refusal is retried for a bounded few seconds.
pub(crate) fn reopen(dir: &Path) -> Result<Opened, StoreError> {
    retry_while_locked(
        || Store::open(dir, OpenOptions::default()),
        |e| matches!(e, StoreError::Open { .. }),
    )
}

/// Calls `open` again while it fails with an error `locked` recognises, for up to 5 s.
fn retry_while_locked<T, E>(
    mut open: impl FnMut() -> Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open() {
            Err(e) if locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A new status report replaces the old one, except for what heartbeats and alarms do
/// not report (door, humidity, network, tag temperature come in information frames;
/// steps only from some wearables): those stay until a report says otherwise.
fn carry_over(mut new: StatusRecord, old: Option<&StatusRecord>) -> StatusRecord {
    if let Some(old) = old {
        new.steps = new.steps.or(old.steps);
        new.door_open = new.door_open.or(old.door_open);
        new.humidity_dpct = new.humidity_dpct.or(old.humidity_dpct);
        new.network_gen = new.network_gen.or(old.network_gen);
        new.tag_temperature_dc = new.tag_temperature_dc.or(old.tag_temperature_dc);
    }
    new
}

/// Positions of one device, in the order they were journaled.
fn apply_positions<'a, I>(live: &mut Live, imei: u64, positions: I)
where
    I: Iterator<Item = &'a PositionRecord> + Clone,
{
    let mut all = positions.clone();
    let Some(first) = all.next() else {
        return;
    };
    // Applied one at a time, each position at least as new as the last one replaces it:
    // what stays is the last of the newest, and only if that is at least as new as what
    // was there.
    let (mut newest, mut received) = (first, first.received_ms);
    for p in all {
        if p.time_ms >= newest.time_ms {
            newest = p;
        }
        received = received.max(p.received_ms);
    }
    let dev = device_entry(live, imei, first.received_ms);
    dev.last_seen_ms = dev.last_seen_ms.max(received);
    if dev
        .last_position
        .as_ref()
        .is_none_or(|p| newest.time_ms >= p.time_ms)
    {
        dev.last_position = Some(newest.clone());
    }
    // A position already sealed (re-sent, or replayed after a crash during a checkpoint)
    // is not looked up here: sealing merges it with its block, the sealed copy wins, and
    // reads merge by time. Checking every replayed position against its block would
    // decode a block per position.
    live.insert_all(imei, positions);
}

fn device_entry(live: &mut Live, imei: u64, at_ms: i64) -> &mut DeviceRecord {
    live.dirty.insert(imei);
    let dev = live.devices.entry(imei).or_insert_with(|| DeviceRecord {
        first_seen_ms: at_ms,
        ..DeviceRecord::default()
    });
    dev.last_seen_ms = dev.last_seen_ms.max(at_ms);
    dev
}

/// Merges two time-sorted lists into one, one position per fix time; `a` wins a tie
/// (sealed data is what was stored first).
pub(crate) fn merge_unique(a: Vec<PositionRecord>, b: Vec<PositionRecord>) -> Vec<PositionRecord> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut ai = a.into_iter().peekable();
    let mut bi = b.into_iter().peekable();
    loop {
        match (ai.peek(), bi.peek()) {
            (Some(x), Some(y)) => {
                if x.time_ms < y.time_ms {
                    out.extend(ai.next());
                } else if y.time_ms < x.time_ms {
                    out.extend(bi.next());
                } else {
                    out.extend(ai.next());
                    bi.next();
                }
            }
            (Some(_), None) => out.extend(ai.by_ref()),
            (None, Some(_)) => out.extend(bi.by_ref()),
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gt06-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn checkpoints_count_as_failing_only_after_several_in_a_row() {
        let dir = tempdir("ckfail");
        let store = Store::open(&dir, OpenOptions::default()).unwrap().store;
        assert_eq!(store.checkpoints_failing(), None);
        for _ in 1..CHECKPOINT_FAILURES_STUCK {
            store.checkpoint_result(false);
        }
        assert_eq!(
            store.checkpoints_failing(),
            None,
            "one-off failures are not stuck"
        );
        store.checkpoint_result(false);
        assert_eq!(store.checkpoints_failing(), Some(CHECKPOINT_FAILURES_STUCK));
        store.checkpoint_result(true);
        assert_eq!(
            store.checkpoints_failing(),
            None,
            "a completed checkpoint clears it"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store exactly as the foundation wrote it: format 1, one key per position.
    fn write_foundation_store(dir: &Path, imei: u64, times: &[i64]) {
        let db = sled::open(dir.join("db")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", &1u64.to_be_bytes())
            .unwrap();
        let positions = db.open_tree("positions").unwrap();
        for t in times {
            let v1 = codec::PositionRecordV1 {
                time_ms: *t,
                received_ms: *t + 700,
                lat_raw: 98_901_624,
                lon_raw: 43_231_720,
                speed_kmh: 40,
                course: 90,
                satellites: 7,
                valid: true,
                invalid_reason: None,
                acc: Some(true),
                odometer_m: None,
                lbs: None,
                alarm: None,
                reupload: None,
            };
            let mut value = vec![1u8];
            value.extend(bincode::serde::encode_to_vec(&v1, bincode::config::standard()).unwrap());
            positions.insert(keys::position(imei, *t), value).unwrap();
        }
        db.flush().unwrap();
    }

    #[test]
    fn foundation_store_is_migrated_to_blocks_on_open() {
        let dir = tempdir("migrate");
        let times: Vec<i64> = (0..5000).map(|i| 1_700_000_000_000 + i * 1000).collect();
        write_foundation_store(&dir, 864_717_003_283_581, &times);
        let opened = reopen(&dir).unwrap();
        assert_eq!(opened.migrated, 5000);
        let store = opened.store.clone();
        drop(opened);
        let (got, next) = store
            .positions(864_717_003_283_581, 0, i64::MAX, 100_000)
            .unwrap();
        assert_eq!(got.iter().map(|p| p.time_ms).collect::<Vec<_>>(), times);
        assert_eq!((got[0].speed_kmh, got[0].acc), (40, Some(true)));
        assert_eq!(next, None);
        let report = store.verify().unwrap();
        assert!(report.bad.is_empty());
        assert_eq!(report.positions, 5000);
        drop(store);
        // Opened again: format 2 now, nothing migrated twice.
        let opened = reopen(&dir).unwrap();
        assert_eq!(opened.migrated, 0);
        assert_eq!(opened.store.count_positions(), 5000);
        drop(opened);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_bit_or_a_cut_in_a_block_is_reported_by_device_and_time_and_the_rest_reads() {
        let dir = tempdir("flip");
        let a = 111_111_111_111_111u64;
        let b = 222_222_222_222_222u64;
        let times: Vec<i64> = (0..3000).map(|i| 1_700_000_000_000 + i * 1000).collect();
        write_foundation_store(&dir, a, &times);
        {
            // Closed by `write_foundation_store` a moment ago: see `reopen`.
            let db = retry_while_locked(
                || sled::open(dir.join("db")),
                |e| matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock),
            )
            .unwrap();
            let positions = db.open_tree("positions").unwrap();
            for (k, v) in positions.iter().map(|r| r.unwrap()).collect::<Vec<_>>() {
                let mut k2 = k.to_vec();
                k2[..8].copy_from_slice(&b.to_be_bytes());
                positions.insert(k2, v).unwrap();
            }
            db.flush().unwrap();
        }
        let store = reopen(&dir).unwrap().store;
        // Damage the first block of device `a`: one bit in the middle of its value.
        let first = store.live().index[&a][0];
        let key = keys::position(a, first.first_ms);
        let mut v = store.inner.blocks.get(key).unwrap().unwrap().to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x10;
        store.inner.blocks.insert(key, v).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
        assert_eq!(
            (report.bad[0].imei, report.bad[0].first_ms),
            (a, first.first_ms)
        );
        // Device b, and device a's other blocks, still read.
        assert_eq!(
            store.positions(b, 0, i64::MAX, 100_000).unwrap().0.len(),
            3000
        );
        let later = first.last_ms + 1;
        assert_eq!(
            store
                .positions(a, later, i64::MAX, 100_000)
                .unwrap()
                .0
                .len(),
            3000 - first.count as usize
        );
        assert!(store.positions(a, 0, i64::MAX, 10).is_err());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn runs_of_positions_apply_as_one_at_a_time_would() {
        let pos = |time_ms: i64, received_ms: i64, lat_raw: i32| Op::Position {
            imei: if lat_raw < 0 { 2 } else { 1 },
            pos: PositionRecord {
                time_ms,
                received_ms,
                lat_raw,
                valid: true,
                ..PositionRecord::default()
            },
        };
        let seen = Op::Seen {
            imei: 1,
            at_ms: 50,
            login: None,
            status: None,
        };
        // Out of order, a repeated fix time (the first stored wins the tail, the later
        // one the "last position"), a receipt time that goes back, another device in
        // between, and a run older than what the device already has.
        let ops = vec![
            pos(5_000, 40, 1),
            pos(7_000, 41, 2),
            pos(7_000, 39, 3),
            pos(3_000, 42, 4),
            seen,
            pos(9_000, 45, -1),
            pos(8_000, 44, -2),
            pos(6_000, 60, 5),
            pos(2_000, 61, 6),
        ];
        let dirs = [tempdir("apply-one"), tempdir("apply-all")];
        let one_by_one = Store::open(&dirs[0], OpenOptions::default()).unwrap().store;
        let all = Store::open(&dirs[1], OpenOptions::default()).unwrap().store;
        for (cut, ops) in [(4, &ops[..]), (0, &ops[..])] {
            // Applied twice over (replay after a crash does that), in two requests.
            let (a, b) = ops.split_at(cut);
            for op in ops {
                one_by_one.apply(&mut one_by_one.live_mut(), op);
            }
            all.apply_all(&mut all.live_mut(), a);
            all.apply_all(&mut all.live_mut(), b);
        }
        let (x, y) = (one_by_one.live(), all.live());
        for imei in [1, 2] {
            assert_eq!(x.devices.get(&imei), y.devices.get(&imei), "device {imei}");
            let tail = |l: &Live| l.tails.get(&imei).map(|t| t.range(i64::MIN, i64::MAX));
            assert_eq!(tail(&x), tail(&y), "tail of {imei}");
        }
        let dev = y.devices.get(&1).unwrap();
        let last = dev.last_position.as_ref().unwrap();
        assert_eq!((last.time_ms, last.lat_raw), (7_000, 3));
        assert_eq!((dev.first_seen_ms, dev.last_seen_ms), (40, 61));
        assert_eq!((x.unsealed, y.unsealed), (7, 7));
        drop((x, y));
        drop((one_by_one, all));
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_heartbeat_keeps_what_only_information_frames_report() {
        let old = StatusRecord {
            time_ms: 1,
            power_mv: Some(12_000),
            steps: Some(600),
            door_open: Some(true),
            humidity_dpct: Some(750),
            network_gen: Some(4),
            tag_temperature_dc: Some(290),
            ..StatusRecord::default()
        };
        let new = StatusRecord {
            time_ms: 2,
            acc: true,
            steps: Some(601),
            ..StatusRecord::default()
        };
        let got = carry_over(new, Some(&old));
        assert_eq!((got.time_ms, got.acc, got.power_mv), (2, true, None));
        assert_eq!(got.steps, Some(601));
        assert_eq!(
            (
                got.door_open,
                got.humidity_dpct,
                got.network_gen,
                got.tag_temperature_dc
            ),
            (Some(true), Some(750), Some(4), Some(290))
        );
        assert_eq!(carry_over(new, None), new);
    }
}
