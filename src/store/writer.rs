//! The one writer: a dedicated thread that takes write requests from every connection,
//! applies them in group commits, makes each commit durable, then tells the connections.
//!
//! Why a thread and not a task: sled's writes and `flush` block, and an fsync takes
//! milliseconds; on a tokio worker that would stall every session sharing it.
//!
//! **Architecture invariant:** a [`Durability`] is marked up to sequence `n` only after
//! the commit holding request `n` of that connection was flushed *and* fsynced, so an
//! answer that waits for `n` never promises data a power cut could still take.

use super::{
    codec, keys, DeviceRecord, EventRecord, PositionRecord, StatusRecord, Store, StoreError,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What a connection asks the store to record.
#[derive(Debug, Clone)]
pub enum Op {
    Position {
        imei: u64,
        pos: PositionRecord,
    },
    Event {
        imei: u64,
        event: EventRecord,
    },
    /// The device spoke: refresh `last_seen`, and record login details or status.
    Seen {
        imei: u64,
        at_ms: i64,
        login: Option<(Option<u16>, Option<i16>)>,
        status: Option<StatusRecord>,
    },
}

/// One request; `ack` lets the sender learn when it is durable.
#[derive(Debug)]
pub struct WriteReq {
    pub op: Op,
    pub ack: Option<(Arc<Durability>, u64)>,
}

/// How far a connection's writes are durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// Highest sequence number of this connection known to be on disk.
    pub seq: u64,
    /// Set when a commit holding this connection's data failed; nothing after it may
    /// be acknowledged.
    pub failed: Option<&'static str>,
}

/// Per-connection durability signal, written by the writer, awaited by the session.
#[derive(Debug)]
pub struct Durability {
    tx: watch::Sender<DurableState>,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            tx: watch::Sender::new(DurableState::default()),
        }
    }
}

impl Durability {
    pub fn subscribe(&self) -> watch::Receiver<DurableState> {
        self.tx.subscribe()
    }

    fn mark(&self, seq: u64) {
        self.tx.send_if_modified(|s| {
            let grew = seq > s.seq;
            s.seq = s.seq.max(seq);
            grew
        });
    }

    fn fail(&self, reason: &'static str) {
        self.tx.send_if_modified(|s| {
            let first = s.failed.is_none();
            s.failed.get_or_insert(reason);
            first
        });
    }
}

/// The sending side, cloned into every session. Bounded: when the disk is slower than
/// the fleet, `send` waits and sessions stop reading, so TCP pushes back on devices.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteReq>,
}

impl WriterHandle {
    pub async fn send(&self, req: WriteReq) -> Result<(), StoreError> {
        self.tx.send(req).await.map_err(|_| StoreError::Closed)
    }
}

/// Starts the writer thread. It ends, after a final commit, when every
/// [`WriterHandle`] has been dropped; join the handle to wait for that.
pub fn spawn(
    store: Store,
    max_batch: usize,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(max_batch.max(1) * 2);
    let devices = store
        .devices()
        .map(|v| v.into_iter().collect::<HashMap<_, _>>())
        .unwrap_or_default();
    let mut w = Writer {
        store,
        rx,
        max_batch: max_batch.max(1),
        devices,
    };
    let join = std::thread::Builder::new()
        .name("gt06-writer".into())
        .spawn(move || w.run())?;
    Ok((WriterHandle { tx }, join))
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<WriteReq>,
    max_batch: usize,
    /// Device records, kept here so a batch updates each touched device once.
    devices: HashMap<u64, DeviceRecord>,
}

impl Writer {
    fn run(&mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Group commit: wait for one request, take whatever else is already queued (up to
        // max_batch), commit them with one flush. Under load, requests pile up during the
        // flush and the next batch grows by itself; idle, a lone request costs one flush.
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            self.notify(&batch, result.as_ref().err());
            if let Err(e) = result {
                tracing::error!(reason = e.reason(), error = %e, records = batch.len(), "store commit failed");
            }
            batch.clear();
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(reason = e.reason(), error = %e, "final store sync failed");
        }
        tracing::info!("store writer stopped");
    }

    fn commit(&mut self, batch: &[WriteReq]) -> Result<(), StoreError> {
        let mut positions = sled::Batch::default();
        let mut events = sled::Batch::default();
        let mut touched: Vec<u64> = Vec::new();
        for req in batch {
            match &req.op {
                Op::Position { imei, pos } => {
                    positions.insert(&keys::position(*imei, pos.time_ms), codec::encode(pos));
                    let dev = self.device(*imei, pos.received_ms, &mut touched);
                    let newer = dev
                        .last_position
                        .as_ref()
                        .is_none_or(|p| pos.time_ms >= p.time_ms);
                    if newer {
                        dev.last_position = Some(pos.clone());
                    }
                }
                Op::Event { imei, event } => {
                    let key = keys::event(*imei, event.time_ms, discriminator(event));
                    events.insert(&key, codec::encode(event));
                    self.device(*imei, event.received_ms, &mut touched);
                }
                Op::Seen {
                    imei,
                    at_ms,
                    login,
                    status,
                } => {
                    let dev = self.device(*imei, *at_ms, &mut touched);
                    if let Some((type_id, tz)) = login {
                        dev.type_id = *type_id;
                        dev.tz_offset_min = *tz;
                    }
                    if let Some(s) = status {
                        dev.status = Some(*s);
                    }
                }
            }
        }
        self.store.positions.apply_batch(positions)?;
        self.store.events.apply_batch(events)?;
        let mut devices = sled::Batch::default();
        for imei in touched {
            if let Some(d) = self.devices.get(&imei) {
                devices.insert(&keys::device(imei), codec::encode(d));
            }
        }
        self.store.devices.apply_batch(devices)?;
        // sled's flush ends in sync_file_range, which does not survive a power cut
        // (sled issue #1452); fsync the data file ourselves before anyone is told.
        self.store.sync()
    }

    /// The device's record, created on first sight, with `last_seen` moved forward.
    fn device(&mut self, imei: u64, at_ms: i64, touched: &mut Vec<u64>) -> &mut DeviceRecord {
        if !touched.contains(&imei) {
            touched.push(imei);
        }
        let dev = self.devices.entry(imei).or_insert_with(|| DeviceRecord {
            first_seen_ms: at_ms,
            ..DeviceRecord::default()
        });
        dev.last_seen_ms = dev.last_seen_ms.max(at_ms);
        dev
    }

    fn notify(&self, batch: &[WriteReq], err: Option<&StoreError>) {
        let mut highest: HashMap<*const Durability, (&Arc<Durability>, u64)> = HashMap::new();
        for req in batch {
            if let Some((d, seq)) = &req.ack {
                let e = highest.entry(Arc::as_ptr(d)).or_insert((d, *seq));
                e.1 = e.1.max(*seq);
            }
        }
        for (d, seq) in highest.into_values() {
            match err {
                None => d.mark(seq),
                Some(e) => d.fail(e.reason()),
            }
        }
    }
}

/// FNV-1a of the event's identity: equal for a re-sent identical alarm (idempotent),
/// different for two different events at the same instant.
fn discriminator(e: &EventRecord) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(e.kind.as_bytes());
    eat(&e.lat_raw.unwrap_or(0).to_be_bytes());
    eat(&e.lon_raw.unwrap_or(0).to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(t: i64) -> PositionRecord {
        PositionRecord {
            time_ms: t,
            received_ms: t + 500,
            lat_raw: 1,
            lon_raw: 2,
            speed_kmh: 3,
            course: 4,
            satellites: 5,
            valid: true,
            invalid_reason: None,
            acc: None,
            odometer_m: None,
            lbs: None,
            alarm: None,
            reupload: None,
            ..PositionRecord::default()
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gt06-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn acked_writes_are_readable_and_latest_never_moves_back() {
        let dir = tempdir("acked");
        let store = Store::open(&dir, Default::default()).unwrap();
        let (handle, join) = spawn(store.clone(), 16).unwrap();
        let d = Arc::new(Durability::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for (seq, t) in [(1, 2_000), (2, 1_000), (3, 3_000), (4, 2_500)] {
                let op = Op::Position {
                    imei: 42,
                    pos: pos(t),
                };
                handle
                    .send(WriteReq {
                        op,
                        ack: Some((d.clone(), seq)),
                    })
                    .await
                    .unwrap();
            }
            let mut rx = d.subscribe();
            rx.wait_for(|s| s.seq >= 4).await.unwrap();
        });
        let (got, next) = store.positions(42, 0, i64::MAX, 10).unwrap();
        assert_eq!(
            got.iter().map(|p| p.time_ms).collect::<Vec<_>>(),
            [1_000, 2_000, 2_500, 3_000]
        );
        assert_eq!(next, None);
        let (page, next) = store.positions(42, 0, i64::MAX, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(2_500));
        let dev = store.device(42).unwrap().unwrap();
        assert_eq!(dev.last_position.unwrap().time_ms, 3_000);
        drop(handle);
        join.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn identical_alarm_is_stored_once_and_different_ones_both() {
        let dir = tempdir("events");
        let store = Store::open(&dir, Default::default()).unwrap();
        let (handle, join) = spawn(store.clone(), 16).unwrap();
        let ev = |kind: &str| EventRecord {
            time_ms: 5_000,
            received_ms: 5_100,
            kind: kind.into(),
            lat_raw: Some(1),
            lon_raw: Some(2),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for e in [ev("sos"), ev("sos"), ev("power_cut")] {
                handle
                    .send(WriteReq {
                        op: Op::Event { imei: 7, event: e },
                        ack: None,
                    })
                    .await
                    .unwrap();
            }
        });
        drop(handle);
        join.join().unwrap();
        let got = store.events(Some(7), 0, i64::MAX, 100).unwrap();
        let mut kinds: Vec<_> = got.iter().map(|(_, e)| e.kind.clone()).collect();
        kinds.sort();
        assert_eq!(kinds, ["power_cut", "sos"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
