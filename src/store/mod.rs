//! The store: positions, events and device state in sled, under the data directory.
//!
//! Layout: `DATA_DIR/db/` is the sled database with trees `positions` (key
//! [`keys::position`]), `events` ([`keys::event`]), `devices` ([`keys::device`]) and
//! `meta` (format version). Values are [`codec`] records.
//!
//! **Architecture invariant:** nothing outside this room names a sled type, and only the
//! [`writer`] thread writes. Reads ([`Store`]) may run anywhere, concurrently.

pub mod codec;
pub mod keys;
pub mod writer;

pub use codec::{DeviceRecord, EventRecord, LbsRecord, PositionRecord, StatusRecord};
pub use writer::{Durability, DurableState, Op, WriteReq, WriterHandle};

use std::path::{Path, PathBuf};

/// Format of the store as a whole (trees, keys, values). Recorded in `meta`.
pub const STORE_FORMAT: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} is in use by another process or unreadable: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store at {path} has format {found}, this build knows format {STORE_FORMAT}")]
    Format { path: PathBuf, found: u64 },
    #[error("disk full while writing the store")]
    DiskFull,
    #[error("store i/o failed: {0}")]
    Io(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("the store writer has stopped")]
    Closed,
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
        // ENOSPC / EDQUOT: name it, the operator's fix is different.
        if matches!(e.raw_os_error(), Some(28) | Some(122)) {
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

/// Read access to the store, cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    positions: sled::Tree,
    events: sled::Tree,
    devices: sled::Tree,
    db_file: PathBuf,
}

/// Open options that matter for memory and durability.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub cache_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Store {
    /// Opens (or creates) the store under `data_dir`.
    pub fn open(data_dir: &Path, opts: OpenOptions) -> Result<Store, StoreError> {
        let path = data_dir.join("db");
        let open_err = |detail: String| StoreError::Open {
            path: path.clone(),
            detail,
        };
        std::fs::create_dir_all(&path).map_err(|e| open_err(e.to_string()))?;
        // sled 0.34 defaults to a 1 GiB cache and a 500 ms background fsync: a memory
        // budget and a loss window chosen by someone else. The cache is ours; the loss
        // window is closed by the writer, which fsyncs after every group commit.
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let positions = tree("positions")?;
        let events = tree("events")?;
        let devices = tree("devices")?;
        let meta = tree("meta")?;
        match meta.get("format").map_err(|e| open_err(e.to_string()))? {
            None => {
                meta.insert("format", &STORE_FORMAT.to_be_bytes())
                    .map_err(|e| open_err(e.to_string()))?;
                db.flush().map_err(|e| open_err(e.to_string()))?;
            }
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                if found != STORE_FORMAT {
                    return Err(StoreError::Format { path, found });
                }
            }
        }
        Ok(Store {
            db,
            positions,
            events,
            devices,
            db_file: path.join("db"),
        })
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
        let mut out = Vec::with_capacity(limit.min(4096));
        if from_ms >= to_ms {
            return Ok((out, None));
        }
        let range = keys::position(imei, from_ms)..keys::position(imei, to_ms);
        for item in self.positions.range(range) {
            let (k, v) = item?;
            if out.len() == limit {
                return Ok((out, keys::split_time_key(&k).map(|(_, t)| t)));
            }
            out.push(codec::decode(&v)?);
        }
        Ok((out, None))
    }

    /// Every known device with its record, ordered by IMEI.
    pub fn devices(&self) -> Result<Vec<(u64, DeviceRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (k, v) = item?;
            if let Some(imei) = keys::split_device_key(&k) {
                out.push((imei, codec::decode(&v)?));
            }
        }
        Ok(out)
    }

    pub fn device(&self, imei: u64) -> Result<Option<DeviceRecord>, StoreError> {
        match self.devices.get(keys::device(imei))? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
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
        let mut push = |k: &[u8], v: &[u8]| -> Result<bool, StoreError> {
            if let Some((imei, t)) = keys::split_time_key(k) {
                if t >= from_ms && t < to_ms {
                    out.push((imei, codec::decode(v)?));
                }
            }
            Ok(out.len() < limit)
        };
        match imei {
            Some(imei) => {
                let range = keys::event(imei, from_ms, 0)..keys::event(imei, to_ms, 0);
                for item in self.events.range(range) {
                    let (k, v) = item?;
                    if !push(&k, &v)? {
                        break;
                    }
                }
            }
            None => {
                for item in self.events.iter() {
                    let (k, v) = item?;
                    if !push(&k, &v)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Number of stored positions (a full key scan: for tests and `verify`, not hot paths).
    pub fn count_positions(&self) -> usize {
        self.positions.len()
    }

    /// Cheap liveness probe for `/health/ready`: the store answers a read.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.devices.first()?;
        Ok(())
    }

    /// Flushes and fsyncs everything written so far; used at shutdown.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        std::fs::File::open(&self.db_file)?.sync_all()?;
        Ok(())
    }
}
