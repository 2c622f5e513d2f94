//! The sealer: a thread beside the writer that does a checkpoint's heavy work, so group
//! commits (and so every answer to a device) never wait behind it.
//!
//! For each device of the sealing set it reads the tail (its scratch-file chunks too)
//! and any sealed blocks the tail must merge with, and encodes the new blocks; it hands
//! those plans ([`SealOps`]) to the writer, which applies them to sled and to memory in
//! one short step under the lock. When every plan is applied, the writer asks it to make
//! sled durable, and the writer retires the journal segments once that is done. It also
//! gives freed heap pages back to the kernel (`malloc_trim` takes milliseconds).
//!
//! Must never write sled or change [`Live`](super::Live): it only reads the sealing set,
//! which nothing changes while a checkpoint runs (new positions go to the fresh tails),
//! and the block index of those devices, which only the writer's applying of these very
//! plans changes. Plans of an abandoned checkpoint are dropped by the writer.

use super::writer::{seal_ops, SealOps};
use super::{memory, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A batch of plans is handed over once it holds this many positions (or every device
/// of the set is planned): the writer applies one batch per sled transaction.
const BATCH_POSITIONS: usize = 64 * 1024;
/// Devices planned per batch at most, so a set of many quiet devices still comes in
/// steps the writer applies between commits.
const BATCH_DEVICES: usize = 256;
/// Batches planned ahead of the writer's applying: encoded blocks wait in memory.
const AHEAD: usize = 2;
/// Positions sealed between two returns of freed heap pages to the kernel. A trim costs
/// 5–35 ms on the 100 M benchmark's heap.
const TRIM_EVERY: usize = 250_000;

enum Job {
    /// Plan every device of the sealing set of checkpoint `generation`.
    Seal(u64),
    /// Flush and fsync sled for checkpoint `generation`.
    Sync(u64),
    /// Give freed heap pages back to the kernel.
    Trim,
}

/// What the sealer hands the writer.
pub(crate) enum Done {
    Batch(Batch),
    Synced {
        generation: u64,
        result: Result<(), StoreError>,
    },
}

/// Plans for some devices of the sealing set of checkpoint `generation`.
pub(crate) struct Batch {
    pub generation: u64,
    /// Every device this batch covers, planned or not: the writer takes them all out of
    /// the sealing set.
    pub imeis: Vec<u64>,
    pub ops: Vec<SealOps>,
    /// Devices whose sealed blocks could not be read: not planned; the writer moves their
    /// tails back to the fresh ones.
    pub unreadable: Vec<(u64, StoreError)>,
    /// Devices whose tail could not be read back from its scratch file.
    pub lost: Vec<(u64, String)>,
    pub positions: usize,
    /// The last batch of its checkpoint.
    pub last: bool,
}

pub(crate) struct Sealer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    /// The checkpoint the writer wants planned; the sealer drops a job as soon as this
    /// moves past it.
    wanted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sealer {
    pub fn spawn(store: Store) -> std::io::Result<Sealer> {
        let (jobs, jobs_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::sync_channel(AHEAD);
        let wanted = Arc::new(AtomicU64::new(0));
        let w = wanted.clone();
        let thread = std::thread::Builder::new()
            .name("gt06-sealer".into())
            .spawn(move || run(&store, &jobs_rx, &done_tx, &w))?;
        Ok(Sealer {
            jobs: Some(jobs),
            done,
            wanted,
            thread: Some(thread),
        })
    }

    /// Starts planning the sealing set of checkpoint `generation` (any other job is
    /// dropped).
    pub fn seal(&self, generation: u64) {
        self.wanted.store(generation, Ordering::Relaxed);
        self.send(Job::Seal(generation));
    }

    /// Drops the planning under way: its batches are not wanted any more.
    pub fn cancel(&self) {
        self.wanted.store(0, Ordering::Relaxed);
    }

    pub fn sync(&self, generation: u64) {
        self.send(Job::Sync(generation));
    }

    pub fn trim(&self) {
        self.send(Job::Trim);
    }

    fn send(&self, job: Job) {
        // The thread only ends when this handle drops; a panic there is seen by the
        // writer as a checkpoint that never ends (`/health/ready` reports it).
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    /// Whether the thread has ended: it only does when this handle drops, or by a panic.
    pub fn gone(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// What is ready, waiting at most `wait` for it.
    pub fn next(&self, wait: Duration) -> Option<Done> {
        if wait.is_zero() {
            self.done.try_recv().ok()
        } else {
            self.done.recv_timeout(wait).ok()
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.cancel();
        self.jobs = None;
        // Unblocks a send to a full hand-over queue.
        while self.done.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            // Drain while it winds down: it may have one more batch to hand over.
            while !t.is_finished() {
                while self.done.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

fn run(
    store: &Store,
    jobs: &mpsc::Receiver<Job>,
    done: &mpsc::SyncSender<Done>,
    wanted: &AtomicU64,
) {
    let mut since_trim = 0usize;
    while let Ok(job) = jobs.recv() {
        let handed = match job {
            Job::Seal(generation) => plan(store, generation, done, wanted, &mut since_trim),
            Job::Sync(generation) => {
                let result = store.sync();
                let ok = done.send(Done::Synced { generation, result }).is_ok();
                // The sealing set and the blocks encoded from it were just freed.
                memory::trim();
                since_trim = 0;
                ok
            }
            Job::Trim => {
                memory::trim();
                since_trim = 0;
                true
            }
        };
        if !handed {
            return;
        }
    }
}

/// Plans the sealing set of `generation` in batches. False when the writer is gone.
fn plan(
    store: &Store,
    generation: u64,
    done: &mpsc::SyncSender<Done>,
    wanted: &AtomicU64,
    since_trim: &mut usize,
) -> bool {
    let imeis: Vec<u64> = store.live().sealing.keys().copied().collect();
    let still_wanted = || wanted.load(Ordering::Relaxed) == generation;
    let mut batch = Batch::new(generation);
    let mut left = imeis.len();
    if left == 0 {
        batch.last = true;
        return !still_wanted() || done.send(Done::Batch(batch)).is_ok();
    }
    for imei in imeis {
        if !still_wanted() {
            return true;
        }
        left -= 1;
        // The tail is cloned under the read lock (its rows and chunk handles: a few KiB),
        // and read back and encoded without it.
        let snapshot = {
            let live = store.live();
            live.sealing.get(&imei).map(|t| {
                let metas = live.index.get(&imei).cloned().unwrap_or_default();
                (t.clone(), metas)
            })
        };
        batch.imeis.push(imei);
        if let Some((mut tail, metas)) = snapshot {
            match tail.take_all() {
                Err(e) => batch.lost.push((imei, e)),
                Ok(positions) => {
                    batch.positions += positions.len();
                    match seal_ops(&metas, imei, positions, |i, f| store.read_block(i, f)) {
                        Ok(ops) => batch.ops.push(ops),
                        Err((e, _)) => batch.unreadable.push((imei, e)),
                    }
                }
            }
        }
        if left == 0 || batch.positions >= BATCH_POSITIONS || batch.imeis.len() >= BATCH_DEVICES {
            batch.last = left == 0;
            let positions = batch.positions;
            let full = std::mem::replace(&mut batch, Batch::new(generation));
            if done.send(Done::Batch(full)).is_err() {
                return false;
            }
            // What this batch decoded and encoded was just freed (its blocks once the
            // writer has applied them).
            *since_trim += positions;
            if *since_trim >= TRIM_EVERY {
                memory::trim();
                *since_trim = 0;
            }
        }
    }
    true
}

impl Batch {
    fn new(generation: u64) -> Batch {
        Batch {
            generation,
            imeis: Vec::new(),
            ops: Vec::new(),
            unreadable: Vec::new(),
            lost: Vec::new(),
            positions: 0,
            last: false,
        }
    }
}
