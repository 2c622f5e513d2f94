//! The one writer: a dedicated thread that takes write requests from every connection,
//! makes each group commit durable in the journal, applies it to memory, answers, and
//! now and then checkpoints: seals the in-memory tails into sled blocks.
//!
//! Why a thread and not a task: fsync and sled block; on a tokio worker they would stall
//! every session sharing it.
//!
//! **Architecture invariant:** a [`Durability`] is marked up to sequence `n` only after the
//! journal record holding request `n` was written and `fdatasync`ed.
//!
//! **Architecture invariant (sealing is crash-safe):** a checkpoint writes blocks and their
//! index in one sled transaction, flushes and fsyncs sled, and only then deletes the
//! journal segments it sealed. A crash before the deletion replays those segments into
//! tails; a replayed position whose fix time is already sealed is merged away when its
//! tail is sealed (the sealed copy wins) and hidden by reads until then, so each ACKed
//! position is readable exactly once.

use super::codec::{self, BlockMeta, Op, PositionRecord};
use super::guard::DiskGuard;
use super::journal::Journal;
use super::sealer::{Batch, Done, Sealer};
use super::{block, keys, merge_unique, EventRecord, Live, Opened, Store, StoreError};
use crate::ops::metrics::{Refused, METRICS};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Largest block, in positions (~24 KiB encoded at 6 B/position).
pub const BLOCK_MAX: usize = 4096;
/// Blocks smaller than this count as small: a device's trailing run of small blocks is
/// merged once it is [`MERGE_FANIN`] long, so quiet devices don't scatter tiny blocks.
pub const SMALL_BLOCK: u32 = 512;
pub const MERGE_FANIN: usize = 8;

/// Most operations one request may carry. A session sends what one socket read held as
/// one request (a few hundred frames under load), so the queue's per-request cost is paid
/// once per read, not once per frame; the cap keeps any one request well inside
/// [`WriterHandle`]'s bound.
pub const REQ_OPS_MAX: usize = 256;

/// One request: operations applied in order and made durable together; `ack` lets the
/// sender learn when they are.
#[derive(Debug)]
pub struct WriteReq {
    pub ops: Vec<Op>,
    pub ack: Option<(Arc<Durability>, u64)>,
    /// `ops` as the journal records them, encoded by the sender: sessions run on every
    /// core, the writer on one, and encoding was a third of its time at peak. `None`
    /// (never in practice) makes the writer encode them itself, and report the error.
    journal: Option<Vec<u8>>,
}

impl WriteReq {
    pub fn new(ops: Vec<Op>, ack: Option<(Arc<Durability>, u64)>) -> Self {
        let journal = super::journal::encode_ops(&ops).ok();
        WriteReq { ops, ack, journal }
    }

    pub fn one(op: Op, ack: Option<(Arc<Durability>, u64)>) -> Self {
        Self::new(vec![op], ack)
    }
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

    pub(crate) fn mark(&self, seq: u64) {
        self.tx.send_if_modified(|s| {
            let grew = seq > s.seq;
            s.seq = s.seq.max(seq);
            grew
        });
    }

    /// Nothing after this may be acknowledged: the writer's commit failed, or the session
    /// could not hand its data to the writer at all.
    pub fn fail(&self, reason: &'static str) {
        self.tx.send_if_modified(|s| {
            let first = s.failed.is_none();
            s.failed.get_or_insert(reason);
            first
        });
    }
}

/// Counters of the writer's work, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    /// Longest time between the start of two consecutive commits while requests waited.
    pub max_commit_gap_us: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_us_total: AtomicU64,
    pub checkpoint_us_max: AtomicU64,
}

/// The sending side, cloned into every session. Bounded in operations, not requests (a
/// request carries 1 to [`REQ_OPS_MAX`]): a sender first takes one permit per operation,
/// and the writer gives them back as it takes requests off the queue. When the disk is
/// slower than the fleet, `send` waits and sessions stop reading, so TCP pushes back on
/// devices.
#[derive(Clone)]
pub struct WriterHandle {
    tx: std_mpsc::Sender<WriteReq>,
    room: Arc<Semaphore>,
    pub stats: Arc<WriterStats>,
    guard: Arc<DiskGuard>,
}

impl WriterHandle {
    /// True while the disk guard refuses new positions and events: a session should not
    /// send them (the writer would refuse them and close the connection unanswered).
    pub fn disk_low(&self) -> bool {
        self.guard.is_low()
    }

    pub async fn send(&self, req: WriteReq) -> Result<(), StoreError> {
        let n = permits(&req)?;
        self.room
            .acquire_many(n)
            .await
            .map_err(|_| StoreError::Closed)?
            .forget();
        self.tx.send(req).map_err(|_| StoreError::Closed)
    }

    /// For callers outside the runtime (benchmarks, tools).
    pub fn blocking_send(&self, req: WriteReq) -> Result<(), StoreError> {
        block_on(self.send(req))
    }

    /// A handle with no writer behind it, for sessions' tests: the queue starts with no
    /// room, and the test plays the writer, giving room with the semaphore and taking
    /// requests from the receiver.
    #[cfg(test)]
    pub(crate) fn unattended() -> (WriterHandle, std_mpsc::Receiver<WriteReq>, Arc<Semaphore>) {
        let (tx, rx) = std_mpsc::channel();
        let room = Arc::new(Semaphore::new(0));
        let handle = WriterHandle {
            tx,
            room: room.clone(),
            stats: Arc::default(),
            guard: Arc::new(DiskGuard::new(&std::env::temp_dir())),
        };
        (handle, rx, room)
    }
}

fn permits(req: &WriteReq) -> Result<u32, StoreError> {
    match req.ops.len() {
        n @ 1..=REQ_OPS_MAX => Ok(n as u32),
        n => Err(StoreError::Request(n)),
    }
}

/// Runs `fut` to completion on this (non-runtime) thread, parking it while the future
/// waits: enough for [`WriterHandle::blocking_send`], whose only wait is for queue room.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// When the writer checkpoints and what it keeps.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub max_batch: usize,
    /// A group commit starts at least this long after the previous one started, unless
    /// a full group is already queued (see `Writer::pace`). Zero: as soon as the
    /// previous sync ends.
    pub min_commit_interval: Duration,
    /// Seal once this many positions are unsealed (bounds memory and replay time).
    pub checkpoint_positions: usize,
    /// Seal at least this often while anything is unsealed.
    pub checkpoint_interval: Duration,
    /// Seal when the journal since the last checkpoint grows past this many bytes.
    pub checkpoint_journal_bytes: u64,
    /// Journal segments are filled with zeros this long ahead of use (0: they only
    /// grow); see [`super::journal`] for why.
    pub journal_segment_bytes: u64,
    /// Drop blocks whose newest fix is older than this; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Where durable positions and events are published for `/api/live`.
    pub live: Option<crate::live::Hub>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch: 4096,
            min_commit_interval: Duration::ZERO,
            checkpoint_positions: 2_000_000,
            checkpoint_interval: Duration::from_secs(900),
            checkpoint_journal_bytes: 256 * 1024 * 1024,
            journal_segment_bytes: 32 * 1024 * 1024,
            retention: None,
            live: None,
        }
    }
}

/// Starts the writer thread. It ends, after a final checkpoint, when every
/// [`WriterHandle`] has been dropped; join the handle to wait for that.
pub fn spawn(
    opened: Opened,
    opts: WriterOptions,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let max_batch = opts.max_batch.max(1);
    let (tx, rx) = std_mpsc::channel();
    let room_ops = (max_batch * 2).max(REQ_OPS_MAX);
    let room = Arc::new(Semaphore::new(room_ops));
    let stats = Arc::new(WriterStats::default());
    let guard = opened.store.disk().clone();
    let mut journal = opened.journal;
    journal.fill_ahead(opts.journal_segment_bytes);
    let store = opened.store.clone();
    let mut w = Writer {
        stats: stats.clone(),
        guard: guard.clone(),
        store: opened.store,
        journal,
        rx,
        room: room.clone(),
        room_ops,
        opts: WriterOptions { max_batch, ..opts },
        last_checkpoint: Instant::now(),
        last_retention: None,
        checkpoint: None,
        headroom_ok: true,
        spill_lost: false,
        sealer: Sealer::spawn(store)?,
        written: Default::default(),
        generation: 0,
        stored_since_trim: 0,
    };
    let join = std::thread::Builder::new()
        .name("gt06-writer".into())
        .spawn(move || w.run())?;
    Ok((
        WriterHandle {
            tx,
            room,
            stats,
            guard,
        },
        join,
    ))
}

/// What a low disk refuses: data (positions, events), never status. One answer for the
/// sessions, which refuse before sending, and the writer, which refuses what was queued
/// when the disk turned low.
pub fn refused_when_low(op: &Op) -> Option<Refused> {
    match op {
        Op::Position { .. } => Some(Refused::Position),
        Op::Event { .. } => Some(Refused::Event),
        Op::Seen { .. } | Op::Info { .. } => None,
    }
}

/// A checkpoint under way.
struct Checkpoint {
    /// Names this checkpoint to the sealer; plans of another one are dropped.
    generation: u64,
    old_segments: Vec<std::path::PathBuf>,
    started: Instant,
    positions: usize,
    blocks: usize,
    /// Positions of the set sealed so far.
    sealed: usize,
    failed: bool,
    /// Every plan is applied; the sealer is making sled durable.
    syncing: bool,
}

/// Whether the writer must stop committing until the checkpoint under way is done:
/// `fresh` positions arrived since it began, `limit` is `checkpoint_positions`.
///
/// The sealer works beside the writer, so commits normally go on while a checkpoint
/// runs. But the journal holds both the set being sealed and the fresh positions until
/// they are sealed (and a restart replays them all): when a whole checkpoint's worth of
/// fresh positions has arrived first (a CPU too busy for the sealer), the writer waits
/// for it, the bounded request queue fills, and sessions stop reading: back-pressure
/// instead of a growing backlog. Unsealed positions stay below about
/// 2 × `checkpoint_positions`, in memory about a byte each (their rows are in the scratch
/// file). Waiting at half, as when sealing ran on this thread and its rows stayed in
/// memory, held commits for 2.5 s of a 15 s peak run.
fn must_wait_for_checkpoint(fresh: usize, limit: usize) -> bool {
    fresh >= limit.max(1)
}

/// Requests committed between two trims outside sealing. Tails grow by doubling, every
/// device at about the same moment, and leave the smaller buffers free; trimming those
/// every 250,000 requests cut peak RSS at 100 M positions from 259 to 224 MiB, but the
/// pages given back were the ones growing tails asked for next, and faulting them in
/// again cost a tenth of the write speed (BENCHMARKS.md, run 8).
const TRIM_EVERY_STORED: usize = 1_000_000;
/// Operations written since the last sync at or above which the next sync runs beside the
/// writer (see the end of [`Writer::run`]'s loop).
const PIPELINE_OPS: usize = 1024;
/// Free space a checkpoint needs besides twice the journal it seals.
const CHECKPOINT_HEADROOM: u64 = 16 * 1024 * 1024;

/// A group commit in the journal, not yet known durable.
struct Written {
    batch: Vec<WriteReq>,
    ops: usize,
    /// Where its record ends in the journal (see `Journal::written_end`).
    end: (u64, u64),
    /// When it was written.
    at: Instant,
}

struct Writer {
    stats: Arc<WriterStats>,
    guard: Arc<DiskGuard>,
    checkpoint: Option<Checkpoint>,
    store: Store,
    journal: Journal,
    /// A std channel, not tokio's: the writer is a thread, and waiting on it with a
    /// timeout wakes at once when a request comes (the first version polled in 1 ms
    /// sleeps, which added up to a millisecond to answers whenever the queue ran dry).
    rx: std_mpsc::Receiver<WriteReq>,
    /// The queue's bound in operations; see [`WriterHandle`].
    room: Arc<Semaphore>,
    /// The permits `room` started with.
    room_ops: usize,
    opts: WriterOptions,
    last_checkpoint: Instant,
    last_retention: Option<Instant>,
    /// Whether the last headroom check found room (to log changes only).
    headroom_ok: bool,
    /// Encodes checkpoints' blocks and makes sled durable, beside this thread.
    sealer: Sealer,
    /// Group commits written to the journal, oldest first, waiting for a sync to cover
    /// them before they are applied and answered.
    written: std::collections::VecDeque<Written>,
    /// Of the last checkpoint started.
    generation: u64,
    /// Requests committed since the last trim.
    stored_since_trim: usize,
    /// A tail's positions could not be read back from its scratch file: from then on no
    /// journal segment is retired (replay at the next start restores them), checkpoints
    /// report failure, and so `/health/ready` turns 503 and the watchdog restarts the unit.
    spill_lost: bool,
}

impl Drop for Writer {
    /// However the writer ends (all handles dropped, or a panic), a session waiting for
    /// room in its queue gets `StoreError::Closed` instead of waiting for ever: the
    /// bounded channel this replaced did that by itself.
    fn drop(&mut self) {
        self.room.close();
    }
}

impl Writer {
    fn run(&mut self) {
        let mut last_commit: Option<Instant> = None;
        loop {
            // What the sealer finished is applied between commits; then, before any wait,
            // a checkpoint starts if one is due.
            while let Some(done) = self.sealer.next(Duration::ZERO) {
                self.handle(done);
            }
            if self.sealing_pending() {
                if self.guard.is_low() {
                    self.abort_checkpoint();
                }
            } else if self.checkpoint_due() {
                self.start_checkpoint_logged();
            }
            // Group commit: wait for one request (or the checkpoint timer), take whatever
            // else is already queued, write them to the journal as one record; one
            // fdatasync covers them and whatever was written before it began. Under load
            // requests pile up during the sync and the next group grows by itself; while
            // a sync runs only what is already queued is taken (the sync is waited for
            // below). While a checkpoint runs, requests are waited for in turns of a
            // millisecond, so that the sealer's results are taken (at the top of the
            // loop) soon enough.
            let first = if self.sealing_pending() && self.must_wait() {
                self.wait_sealer();
                None
            } else if self.journal.syncing() {
                // A sync is under way: take what is queued now, then wait for the sync.
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else if self.sealing_pending() {
                match self.rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if self.store.fresh_unsealed() > 0 {
                // While the disk is low no checkpoint may start: look again in a second
                // rather than spin on a deadline that has passed.
                let wait = if self.guard.is_low() {
                    Duration::from_secs(1)
                } else {
                    self.opts
                        .checkpoint_interval
                        .saturating_sub(self.last_checkpoint.elapsed())
                };
                match self.rx.recv_timeout(wait) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            if let Some(first) = first {
                self.pace(last_commit);
                let mut batch = Vec::with_capacity(64);
                let mut ops = self.take(&mut batch, first);
                while ops < self.opts.max_batch {
                    match self.rx.try_recv() {
                        Ok(req) => ops += self.take(&mut batch, req),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                if let Some(prev) = last_commit {
                    // Only gaps while work was queued say anything about commit latency.
                    if batch.len() > 1 {
                        let gap = now.duration_since(prev).as_micros() as u64;
                        self.stats
                            .max_commit_gap_us
                            .fetch_max(gap, Ordering::Relaxed);
                    }
                }
                last_commit = Some(now);
                self.guard.refresh_if_stale();
                if self.guard.is_low() {
                    // Applied in order: what is written but not yet durable goes first.
                    self.drain();
                    self.commit_low(&batch);
                    self.stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
                } else {
                    self.write(batch, ops);
                }
            } else {
                self.guard.refresh_if_stale();
            }
            // The sync under way ends. What was written meanwhile is synced beside this
            // thread when it is a big group (under heavy load: the next one is written
            // while the disk works, and what the first sync made durable is applied and
            // answered meanwhile); a small one is synced here, as a commit always was:
            // at a fleet's steady pace, syncs back to back beside the writer made
            // heartbeat answers' p90 21 ms instead of 2.
            let synced = self.journal.finish_sync();
            if synced.is_ok() && self.journal.unsynced() {
                let unsynced_ops: usize = self
                    .written
                    .iter()
                    .rev()
                    .take_while(|w| w.end > self.journal.durable_end())
                    .map(|w| w.ops)
                    .sum();
                if unsynced_ops >= PIPELINE_OPS {
                    self.journal.start_sync();
                    self.settle(synced);
                } else {
                    self.settle(synced);
                    let synced = self.journal.sync_all();
                    self.settle(synced);
                }
            } else {
                self.settle(synced);
            }
        }
        self.drain();
        // Shutdown: finish any checkpoint under way, then seal what is left, so the next
        // open has nothing to replay. On a low disk nothing is sealed: the journal
        // already holds everything, and the next open replays it.
        self.guard.refresh_if_stale();
        if self.guard.is_low() || !self.headroom() {
            self.abort_checkpoint();
            // A sync under way is not abandoned: it only flushes what sled already holds.
            self.finish_checkpoint_under_way();
            tracing::info!(
                "store writer stopped; disk low, so nothing was sealed (the journal keeps it)"
            );
            return;
        }
        self.release_held_logged();
        self.finish_checkpoint_under_way();
        // Device records changed while the disk was low live only in memory: write them.
        if self.store.fresh_unsealed() > 0 || !self.store.live().dirty.is_empty() {
            self.start_checkpoint_logged();
            self.finish_checkpoint_under_way();
        }
        tracing::info!("store writer stopped");
    }

    /// Waits (in turns of at most 100 ms) for the sealer's next result and takes it.
    fn wait_sealer(&mut self) {
        match self.sealer.next(Duration::from_millis(100)) {
            Some(done) => self.handle(done),
            None => {
                if self.sealer.gone() {
                    self.sealer_gone();
                }
            }
        }
    }

    fn finish_checkpoint_under_way(&mut self) {
        while self.sealing_pending() {
            self.wait_sealer();
        }
    }

    /// The sealer thread ended (a panic: it never ends otherwise while the writer runs).
    /// The checkpoint under way fails (its journal segments stay) and none start again,
    /// so after a few `/health/ready` says `checkpoints_failing` and the unit restarts.
    fn sealer_gone(&mut self) {
        tracing::error!("the sealer thread stopped; checkpoints cannot complete until a restart (the journal keeps everything)");
        match self.checkpoint.as_ref().map(|c| c.syncing) {
            None => {}
            Some(true) => self.checkpoint_synced(Err(StoreError::Closed)),
            Some(false) => {
                self.checkpoint = None;
                self.store.gate().end_checkpoint();
                self.unseal_rest();
                self.store.checkpoint_result(false);
            }
        }
    }

    fn must_wait(&self) -> bool {
        must_wait_for_checkpoint(self.store.fresh_unsealed(), self.opts.checkpoint_positions)
    }

    /// Holds a group commit back until `min_commit_interval` after the previous one
    /// started. At a fleet's steady pace requests come one or two operations at a time,
    /// each from its own connection, and without a pause every sync covered only what
    /// arrived during the one before: ~1,000 syncs a second for 19,800 trackers at 1 Hz.
    /// Two milliseconds cut that to ~460 and gt06's CPU by a quarter to a third (fewer
    /// syncs, and fewer wake-ups of sessions and runtime workers: each sync's answers go
    /// out together), for ~1 ms more before each answer (BENCHMARKS.md, fifteenth
    /// session).
    /// Under heavy load it never waits: a full group already queued, or a sync running
    /// beside the writer (groups are big then), means waiting could only cost throughput.
    fn pace(&self, last_commit: Option<Instant>) {
        let Some(last) = last_commit else {
            return;
        };
        if self.journal.syncing() {
            return;
        }
        let wait = self.opts.min_commit_interval.saturating_sub(last.elapsed());
        let queued = self.room_ops.saturating_sub(self.room.available_permits());
        if !wait.is_zero() && queued < self.opts.max_batch {
            std::thread::sleep(wait);
        }
    }

    /// Moves a request off the queue into `batch`, giving its room back to senders.
    /// Returns how many operations it carries.
    fn take(&self, batch: &mut Vec<WriteReq>, req: WriteReq) -> usize {
        let n = req.ops.len();
        self.room.add_permits(n);
        batch.push(req);
        n
    }

    /// Has freed heap pages given back to the kernel, by the sealer: a trim takes
    /// milliseconds that commits should not wait. (Sealing trims by itself: it frees
    /// tails, the records decoded from them and the blocks encoded while fresh tails
    /// grow elsewhere in the heap; glibc kept all of it, and by the end of a checkpoint
    /// at 100 M positions that was ~50 MiB of RSS above what the store held,
    /// BENCHMARKS.md, run 8.)
    fn trim(&mut self) {
        self.stored_since_trim = 0;
        self.sealer.trim();
    }

    /// Writes a group commit to the journal; it is applied and answered once a sync
    /// covers it ([`Writer::settle`]).
    fn write(&mut self, batch: Vec<WriteReq>, ops: usize) {
        let at = Instant::now();
        // Requests come encoded by their senders; one that could not be is encoded
        // here, and the error, if it recurs, fails its group.
        let fallback: Vec<Result<Vec<u8>, StoreError>> = batch
            .iter()
            .filter(|r| r.journal.is_none())
            .map(|r| super::journal::encode_ops(&r.ops))
            .collect();
        let mut fallback_bytes = fallback.iter();
        let parts: Result<Vec<&[u8]>, StoreError> = batch
            .iter()
            .map(|r| match &r.journal {
                Some(b) => Ok(b.as_slice()),
                None => match fallback_bytes.next() {
                    Some(Ok(b)) => Ok(b.as_slice()),
                    Some(Err(e)) => Err(StoreError::Io(e.to_string())),
                    None => Err(StoreError::Io("journal encode".into())),
                },
            })
            .collect();
        let written = parts.and_then(|parts| self.journal.write_encoded(ops, &parts));
        match written {
            Ok(()) => self.written.push_back(Written {
                end: self.journal.written_end(),
                batch,
                ops,
                at,
            }),
            Err(e) => {
                // The journal dropped every record not yet durable: those groups fail
                // with this one.
                self.written.push_back(Written {
                    end: (u64::MAX, u64::MAX),
                    batch,
                    ops,
                    at,
                });
                self.settle(Err(e));
            }
        }
    }

    /// Applies and answers the groups the journal now holds durably, in order; after a
    /// failed write or sync (`result`), fails the rest: the journal dropped them.
    fn settle(&mut self, result: Result<(), StoreError>) {
        let durable = self.journal.durable_end();
        let n = self.written.iter().take_while(|w| w.end <= durable).count();
        let done: Vec<Written> = self.written.drain(..n).collect();
        if !done.is_empty() {
            let ops: usize = done.iter().map(|w| w.ops).sum();
            let since = done.iter().map(|w| w.at).min().unwrap_or_else(Instant::now);
            METRICS.commit(ops, since.elapsed());
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            {
                let mut live = self.store.live_mut();
                for req in done.iter().flat_map(|w| &w.batch) {
                    self.store.apply_all(&mut live, &req.ops);
                }
            }
            for w in &done {
                notify(&w.batch, None);
                if let Some(live) = &self.opts.live {
                    live.publish(&w.batch);
                }
            }
            self.stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
            self.stored_since_trim += ops;
        }
        if let Err(e) = result {
            let failed: Vec<Written> = self.written.drain(..).collect();
            let records: usize = failed.iter().map(|w| w.ops).sum();
            for w in &failed {
                notify(&w.batch, Some(&e));
            }
            self.stats.ops.fetch_add(records as u64, Ordering::Relaxed);
            METRICS.commit_failed();
            if matches!(e, StoreError::DiskFull) {
                self.guard.disk_full();
            }
            tracing::error!(reason = e.reason(), error = %e, records, "store commit failed");
        }
        if self.stored_since_trim >= TRIM_EVERY_STORED {
            self.trim();
        }
        if !self.guard.is_low() {
            self.release_held_logged();
        }
    }

    /// Makes everything written durable and applies it: before anything that must see
    /// every group applied (a checkpoint, a batch while the disk is low, the end).
    fn drain(&mut self) {
        if self.written.is_empty() && !self.journal.syncing() {
            return;
        }
        let synced = self.journal.sync_all();
        self.settle(synced);
    }

    /// A batch while the disk guard is low: nothing is journaled. Positions and events
    /// are refused, and their connections' durability fails (so nothing after them is
    /// answered and the device sends them again on a new connection); sessions check the
    /// guard first, so only requests that were already queued when it turned low get
    /// here. Status requests (logins, heartbeats, information reports) are applied to
    /// memory and marked, so devices keep being answered; the next checkpoint after the
    /// disk recovers writes the device records they changed.
    fn commit_low(&mut self, batch: &[WriteReq]) {
        let mut live = self.store.live_mut();
        for req in batch {
            let mut refused_any = false;
            for op in &req.ops {
                match refused_when_low(op) {
                    Some(kind) => {
                        METRICS.write_refused(kind);
                        refused_any = true;
                    }
                    None => self.store.apply(&mut live, op),
                }
            }
            // One refused operation fails the whole request's sequence number: nothing
            // sent after it on that connection may be answered.
            match (&req.ack, refused_any) {
                (Some((d, _)), true) => d.fail(self.guard.level().reason()),
                (Some((d, seq)), false) => d.mark(*seq),
                (None, _) => {}
            }
        }
    }

    /// Moves every tail of the sealing set back to the fresh tails. A tail that cannot be
    /// read back from its scratch file is then only in the journal: see `spill_lost`.
    fn unseal_rest(&mut self) {
        let mut lost = Ok(());
        {
            let mut live = self.store.live_mut();
            for (imei, mut tail) in std::mem::take(&mut live.sealing) {
                match tail.take_all() {
                    Ok(positions) => {
                        for p in positions {
                            live.insert(imei, &p);
                        }
                    }
                    Err(e) => lost = lost.and(Err(e)),
                }
            }
        }
        if let Err(e) = lost {
            self.spill_lost(&e);
        }
    }

    /// A tail could not be read back from its scratch file; see `spill_lost`.
    fn spill_lost(&mut self, error: &str) {
        if !self.spill_lost {
            tracing::error!(error, "unsealed positions unreadable from the scratch file: the journal keeps every segment until a restart replays them");
        }
        self.spill_lost = true;
        if let Some(c) = self.checkpoint.as_mut() {
            c.failed = true;
        }
    }

    /// Stops the checkpoint under way (the disk turned low, or sealing failed): what was
    /// not sealed goes back to the fresh tails, so the next checkpoint seals it, and the
    /// journal segments it came from are kept until then.
    fn abort_checkpoint(&mut self) {
        // Once syncing, every plan is in sled: the sync ends the checkpoint by itself.
        if self.checkpoint.as_ref().is_none_or(|c| c.syncing) {
            return;
        }
        self.checkpoint = None;
        self.sealer.cancel();
        self.store.gate().end_checkpoint();
        self.unseal_rest();
        tracing::warn!("checkpoint stopped: the disk is low; the journal keeps the data");
    }

    fn checkpoint_due(&mut self) -> bool {
        if self.guard.is_low() {
            return false;
        }
        let unsealed = self.store.fresh_unsealed();
        let due = unsealed >= self.opts.checkpoint_positions
            || self.journal.unsealed_bytes() >= self.opts.checkpoint_journal_bytes
            || (unsealed > 0 && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval);
        if due && !self.headroom() {
            // Try again in about a second (the interval test comes due then).
            self.last_checkpoint = Instant::now()
                .checked_sub(
                    self.opts
                        .checkpoint_interval
                        .saturating_sub(Duration::from_secs(1)),
                )
                .unwrap_or_else(Instant::now);
            return false;
        }
        due
    }

    /// Whether there is room for a checkpoint: sled 0.34, once a write of its own fails
    /// for lack of space, refuses every later write until it is reopened (the process
    /// restarts), so a checkpoint starts only with room for what it writes (twice the
    /// journal it seals, plus [`CHECKPOINT_HEADROOM`]), whatever `store.min_free_*` say.
    fn headroom(&mut self) -> bool {
        let need =
            CHECKPOINT_HEADROOM.saturating_add(self.journal.unsealed_bytes().saturating_mul(2));
        let ok = self.guard.free_now().is_none_or(|free| free >= need);
        if ok != self.headroom_ok {
            self.headroom_ok = ok;
            if ok {
                tracing::info!("room for checkpoints again");
            } else {
                tracing::warn!(need_mib = need >> 20, "checkpoints wait: too little free space to seal safely; the journal keeps taking data");
            }
        }
        ok
    }

    fn sealing_pending(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// Starts a checkpoint: the tails become the sealing set (readers still see them),
    /// new positions go to fresh tails, and new batches to a new journal segment. The
    /// older segments are deleted once the whole set is sealed and sled is durable.
    fn start_checkpoint_logged(&mut self) {
        // The sealing set must hold every group its journal segments hold.
        self.drain();
        if self.sealer.gone() {
            self.store.checkpoint_result(false);
            self.last_checkpoint = Instant::now();
            return;
        }
        if !self.store.gate().begin_checkpoint() {
            // A backup holds sled still; look again in a second, not in a whole interval.
            let again = self
                .opts
                .checkpoint_interval
                .saturating_sub(Duration::from_secs(1));
            self.last_checkpoint = Instant::now()
                .checked_sub(again)
                .unwrap_or_else(Instant::now);
            return;
        }
        // Events held during a backup go to sled before any segment holding them can go.
        if let Err(e) = self.store.release_held_events() {
            self.store.gate().end_checkpoint();
            tracing::error!(reason = e.reason(), error = %e, "checkpoint put off: events held during a backup cannot be written to sled");
            self.last_checkpoint = Instant::now();
            return;
        }
        match self.journal.rotate() {
            Ok(old) => {
                // Made before the lock: the fresh tails get a file of their own, and the
                // sealing set's one goes once its last chunk is sealed.
                let spill = self.store.new_spill();
                let mut live = self.store.live_mut();
                live.spill = spill;
                live.sealing = std::mem::take(&mut live.tails);
                live.sealing.values_mut().for_each(|t| t.shrink());
                live.unsealed = 0;
                let positions = live.sealing.values().map(|t| t.len()).sum::<usize>();
                drop(live);
                self.generation += 1;
                self.checkpoint = Some(Checkpoint {
                    generation: self.generation,
                    old_segments: old,
                    started: Instant::now(),
                    positions,
                    blocks: 0,
                    sealed: 0,
                    failed: false,
                    syncing: false,
                });
                self.sealer.seal(self.generation);
            }
            Err(e) => {
                self.store.gate().end_checkpoint();
                if matches!(e, StoreError::DiskFull) {
                    self.guard.disk_full();
                }
                self.store.checkpoint_result(false);
                tracing::error!(reason = e.reason(), error = %e, "cannot start a checkpoint")
            }
        }
        self.last_checkpoint = Instant::now();
    }

    fn release_held_logged(&mut self) {
        if let Err(e) = self.store.release_held_events() {
            tracing::error!(reason = e.reason(), error = %e, "events held during a backup not yet written to sled; the journal keeps them");
        }
    }

    /// Takes what the sealer finished: a batch of plans is applied, a finished sync
    /// completes the checkpoint; what belongs to an abandoned checkpoint is dropped.
    fn handle(&mut self, done: Done) {
        let current = self.checkpoint.as_ref().map(|c| c.generation);
        match done {
            Done::Batch(b) if Some(b.generation) == current => self.apply_batch(b),
            Done::Synced { generation, result } if Some(generation) == current => {
                self.checkpoint_synced(result)
            }
            _ => {}
        }
    }

    /// Writes one batch of plans to sled and takes its devices out of the sealing set,
    /// in one step under the lock: readers see the tails or the blocks, never neither.
    fn apply_batch(&mut self, b: Batch) {
        let started = Instant::now();
        // Handles of their own (sled trees are shared handles), so `self` stays free.
        let (blocks, index) = {
            let (blocks, index, _) = self.store.trees();
            (blocks.clone(), index.clone())
        };
        let store = self.store.clone();
        let mut live = store.live_mut();
        let mut failed = !b.unreadable.is_empty() || !b.lost.is_empty();
        let mut lost = Ok(());
        for (imei, e) in &b.unreadable {
            // Back to the fresh tails: readers keep seeing them, the next checkpoint
            // tries again, and their journal segments stay until then.
            tracing::error!(imei, error = %e, "cannot seal a device's positions");
            if let Some(mut tail) = live.sealing.remove(imei) {
                match tail.take_all() {
                    Ok(positions) => positions.iter().for_each(|p| {
                        live.insert(*imei, p);
                    }),
                    Err(e) => lost = lost.and(Err(e)),
                }
            }
        }
        for (imei, e) in &b.lost {
            live.sealing.remove(imei);
            lost = lost.and(Err(e.clone()));
        }
        let applied = apply_seal_ops(&blocks, &index, &mut live, &b.ops);
        if applied.is_ok() {
            for imei in &b.imeis {
                live.sealing.remove(imei);
            }
        }
        drop(live);
        let us = started.elapsed().as_micros() as u64;
        self.stats
            .checkpoint_us_max
            .fetch_max(us, Ordering::Relaxed);
        self.stats
            .checkpoint_us_total
            .fetch_add(us, Ordering::Relaxed);
        if let Err(e) = lost {
            self.spill_lost(&e);
        }
        let mut last = b.last;
        if let (Ok(()), Some(c)) = (&applied, self.checkpoint.as_mut()) {
            c.blocks += b.ops.iter().map(|o| o.write.len()).sum::<usize>();
            c.sealed += b.positions;
        }
        if let Err(e) = applied {
            tracing::error!(reason = e.reason(), error = %e, "sealing failed; the journal keeps the data");
            if matches!(e, StoreError::DiskFull) {
                self.guard.disk_full();
            }
            failed = true;
            // Devices not sealed must not stay in the sealing set: the next checkpoint
            // replaces that set, and would then retire the journal segments holding them.
            self.sealer.cancel();
            self.unseal_rest();
            last = true;
        }
        if let Some(c) = self.checkpoint.as_mut() {
            c.failed |= failed;
        }
        if last {
            self.plans_applied();
        }
    }

    /// Every plan of the checkpoint is applied: device records and retention go to sled,
    /// then the sealer makes sled durable.
    fn plans_applied(&mut self) {
        if !self.store.live().sealing.is_empty() {
            // Not planned (never expected): back to the fresh tails, segments kept.
            self.unseal_rest();
            if let Some(c) = self.checkpoint.as_mut() {
                c.failed = true;
            }
        }
        let result = self.persist_devices().and_then(|()| {
            if self.retention_due() {
                self.retention()
            } else {
                Ok(())
            }
        });
        match (result, self.checkpoint.as_mut()) {
            (Ok(()), Some(c)) => {
                c.syncing = true;
                self.sealer.sync(c.generation);
            }
            (result, _) => self.checkpoint_synced(result),
        }
    }

    fn persist_devices(&mut self) -> Result<(), StoreError> {
        let (_, _, devices) = self.store.trees();
        let mut live = self.store.live_mut();
        let mut dev_batch = sled::Batch::default();
        for imei in std::mem::take(&mut live.dirty) {
            if let Some(d) = live.devices.get(&imei) {
                dev_batch.insert(&keys::device(imei), codec::encode(d));
            }
        }
        devices.apply_batch(dev_batch)?;
        Ok(())
    }

    /// The checkpoint's sled writes are durable (or failed): only now are the journal
    /// segments the sealed set came from deleted.
    fn checkpoint_synced(&mut self, synced: Result<(), StoreError>) {
        let Some(c) = self.checkpoint.take() else {
            return;
        };
        let result = synced.and_then(|()| {
            if c.failed || self.spill_lost {
                // Something stayed unsealed: keep its journal segments for the next open.
                return Err(StoreError::Io("some positions could not be sealed".into()));
            }
            self.journal.remove(&c.old_segments)
        });
        self.store.checkpoint_result(result.is_ok());
        match result {
            Ok(()) => {
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    positions = c.positions,
                    blocks = c.blocks,
                    ms = c.started.elapsed().as_millis() as u64,
                    "checkpoint"
                );
            }
            Err(e) => {
                if matches!(e, StoreError::DiskFull) {
                    self.guard.disk_full();
                }
                tracing::error!(reason = e.reason(), error = %e, "checkpoint not completed; the journal keeps the data");
            }
        }
        self.store.gate().end_checkpoint();
    }

    fn retention_due(&self) -> bool {
        self.opts.retention.is_some()
            && self
                .last_retention
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
    }

    /// Drops whole blocks whose newest fix is older than the retention period.
    fn retention(&mut self) -> Result<(), StoreError> {
        let Some(keep) = self.opts.retention else {
            return Ok(());
        };
        self.last_retention = Some(Instant::now());
        let cutoff = crate::ingest::session::now_ms() - keep.as_millis() as i64;
        let (blocks, index, _) = self.store.trees();
        let mut live = self.store.live_mut();
        let mut all = Vec::new();
        for (imei, metas) in &live.index {
            let remove: Vec<i64> = metas
                .iter()
                .filter(|m| m.last_ms < cutoff)
                .map(|m| m.first_ms)
                .collect();
            if !remove.is_empty() {
                all.push(SealOps {
                    imei: *imei,
                    remove,
                    write: Vec::new(),
                });
            }
        }
        let dropped: usize = all.iter().map(|o| o.remove.len()).sum();
        apply_seal_ops(blocks, index, &mut live, &all)?;
        if dropped > 0 {
            tracing::info!(blocks = dropped, "retention dropped old blocks");
        }
        Ok(())
    }
}

fn notify(batch: &[WriteReq], err: Option<&StoreError>) {
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

/// What sealing one device's tail changes in the `blocks` tree.
pub(crate) struct SealOps {
    pub imei: u64,
    /// First fix times (keys) of blocks to delete.
    pub remove: Vec<i64>,
    pub write: Vec<(BlockMeta, Vec<u8>)>,
}

/// The UTC day of a time: blocks never span two, so retention drops whole blocks and is
/// exact to the day.
fn utc_day(t_ms: i64) -> i64 {
    t_ms.div_euclid(86_400_000)
}

/// Plans the sealing of `tail` (sorted, one per fix time) for `imei`: a tail that overlaps
/// sealed blocks is merged with them (the sealed position wins a tie); one that completes
/// a run of small blocks of the same day is merged with the run; the result is cut at UTC
/// day boundaries and into blocks of at most [`BLOCK_MAX`]. When a block cannot be read,
/// the error comes back with `tail`, untouched.
#[allow(clippy::type_complexity)]
pub(crate) fn seal_ops(
    metas: &[BlockMeta],
    imei: u64,
    tail: Vec<PositionRecord>,
    read: impl Fn(u64, i64) -> Result<Vec<PositionRecord>, StoreError>,
) -> Result<SealOps, (StoreError, Vec<PositionRecord>)> {
    let (Some(first), Some(last)) = (
        tail.first().map(|p| p.time_ms),
        tail.last().map(|p| p.time_ms),
    ) else {
        return Ok(SealOps {
            imei,
            remove: Vec::new(),
            write: Vec::new(),
        });
    };
    let overlapping: Vec<&BlockMeta> = metas
        .iter()
        .filter(|m| m.last_ms >= first && m.first_ms <= last)
        .collect();
    let mut remove = Vec::new();
    let merged = if !overlapping.is_empty() {
        let mut sealed = Vec::new();
        for m in overlapping {
            match read(imei, m.first_ms) {
                Ok(v) => sealed.extend(v),
                Err(e) => return Err((e, tail)),
            }
            remove.push(m.first_ms);
        }
        merge_unique(sealed, tail)
    } else if metas.last().is_some_and(|m| m.last_ms < first) {
        // Appending after the newest block: when this seal would make the device's
        // trailing run of small blocks MERGE_FANIN long, merge the run with it. Each
        // position is rewritten only a few times, and quiet devices don't keep many
        // tiny blocks.
        let run: Vec<&BlockMeta> = metas
            .iter()
            .rev()
            .take_while(|m| m.count < SMALL_BLOCK && utc_day(m.first_ms) == utc_day(first))
            .collect();
        let run_total: usize = run.iter().map(|m| m.count as usize).sum();
        if run.len() + 1 >= MERGE_FANIN && run_total + tail.len() <= BLOCK_MAX {
            let mut v = Vec::with_capacity(run_total + tail.len());
            for m in run.iter().rev() {
                match read(imei, m.first_ms) {
                    Ok(r) => v.extend(r),
                    Err(e) => return Err((e, tail)),
                }
                remove.push(m.first_ms);
            }
            v.extend(tail);
            v
        } else {
            tail
        }
    } else {
        tail
    };
    let write = merged
        .chunk_by(|a, b| utc_day(a.time_ms) == utc_day(b.time_ms))
        .flat_map(|day| day.chunks(BLOCK_MAX))
        .filter_map(|chunk| {
            let (f, l) = (chunk.first()?.time_ms, chunk.last()?.time_ms);
            let meta = BlockMeta {
                first_ms: f,
                last_ms: l,
                count: chunk.len() as u32,
            };
            Some((meta, block::encode_block(chunk)))
        })
        .collect();
    Ok(SealOps {
        imei,
        remove,
        write,
    })
}

/// Applies sealing plans to `blocks` and `block_index` in one sled transaction, then to
/// the in-memory index. The caller holds the `Live` write lock throughout, so readers see
/// either the old blocks or the new ones, never a gap.
pub(crate) fn apply_seal_ops(
    blocks: &sled::Tree,
    index: &sled::Tree,
    live: &mut Live,
    all: &[SealOps],
) -> Result<(), StoreError> {
    if all
        .iter()
        .all(|o| o.remove.is_empty() && o.write.is_empty())
    {
        return Ok(());
    }
    for ops in all {
        *live.block_changes.entry(ops.imei).or_default() += 1;
    }
    let result: Result<(), TransactionError<StoreError>> =
        (blocks, index).transaction(|(b, ix)| {
            for ops in all {
                for first in &ops.remove {
                    let k = keys::position(ops.imei, *first);
                    b.remove(&k[..])?;
                    ix.remove(&k[..])?;
                }
                for (meta, bytes) in &ops.write {
                    let k = keys::position(ops.imei, meta.first_ms);
                    b.insert(&k[..], bytes.as_slice())?;
                    ix.insert(&k[..], codec::encode(meta))?;
                }
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        });
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    })?;
    for ops in all {
        let metas = live.index.entry(ops.imei).or_default();
        metas.retain(|m| !ops.remove.contains(&m.first_ms));
        for (meta, _) in &ops.write {
            match metas.binary_search_by_key(&meta.first_ms, |m| m.first_ms) {
                Ok(i) => metas[i] = *meta,
                Err(i) => metas.insert(i, *meta),
            }
        }
        if metas.is_empty() {
            live.index.remove(&ops.imei);
        }
    }
    Ok(())
}

/// FNV-1a of the event's identity: equal for a re-sent identical alarm (idempotent),
/// different for two different events at the same instant.
pub(crate) fn discriminator(e: &EventRecord) -> u32 {
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
            ..PositionRecord::default()
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gt06-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn opts(checkpoint_positions: usize) -> WriterOptions {
        WriterOptions {
            max_batch: 16,
            checkpoint_positions,
            // Small segments: the tests move through many, filled ahead and not.
            journal_segment_bytes: 64 * 1024,
            ..WriterOptions::default()
        }
    }

    /// Opens the store in `dir` (fresh or not) and starts its writer.
    fn run_writer(
        dir: &std::path::Path,
        opts: WriterOptions,
    ) -> (Store, WriterHandle, std::thread::JoinHandle<()>) {
        let opened = Store::open(dir, Default::default()).unwrap();
        let store = opened.store.clone();
        let (handle, join) = spawn(opened, opts).unwrap();
        (store, handle, join)
    }

    fn write_all(handle: &WriterHandle, ops: Vec<Op>) {
        let d = Arc::new(Durability::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let n = ops.len() as u64;
            for (i, op) in ops.into_iter().enumerate() {
                handle
                    .send(WriteReq::one(op, Some((d.clone(), i as u64 + 1))))
                    .await
                    .unwrap();
            }
            d.subscribe().wait_for(|s| s.seq >= n).await.unwrap();
        });
    }

    fn times(store: &Store, imei: u64) -> Vec<i64> {
        store
            .positions(imei, 0, i64::MAX, 100_000)
            .unwrap()
            .0
            .iter()
            .map(|p| p.time_ms)
            .collect()
    }

    #[test]
    fn commits_wait_for_a_checkpoint_only_once_a_whole_checkpoint_arrived_during_it() {
        assert!(!must_wait_for_checkpoint(0, 1000));
        assert!(!must_wait_for_checkpoint(999, 1000));
        assert!(must_wait_for_checkpoint(1000, 1000));
        assert!(must_wait_for_checkpoint(5, 0));
        assert!(must_wait_for_checkpoint(1, 1));
    }

    #[test]
    fn requests_of_many_operations_are_bounded_by_operations_not_requests() {
        let dir = tempdir("many_ops");
        // max_batch 16: the queue holds REQ_OPS_MAX operations, whatever the requests.
        let (store, handle, join) = run_writer(&dir, opts(1_000_000));
        let positions = |range: std::ops::Range<i64>| -> Vec<Op> {
            range
                .map(|t| Op::Position {
                    imei: 7,
                    pos: pos(t * 1000),
                })
                .collect()
        };
        let too_many = WriteReq::new(positions(0..REQ_OPS_MAX as i64 + 1), None);
        assert!(matches!(
            handle.blocking_send(too_many),
            Err(StoreError::Request(n)) if n == REQ_OPS_MAX + 1
        ));
        let empty = WriteReq::new(Vec::new(), None);
        assert!(matches!(
            handle.blocking_send(empty),
            Err(StoreError::Request(0))
        ));
        // Twenty full requests through a queue with room for one: each waits for room.
        let d = Arc::new(Durability::default());
        let per = REQ_OPS_MAX as i64;
        for k in 0..20 {
            let req = WriteReq::new(
                positions(k * per..(k + 1) * per),
                Some((d.clone(), k as u64 + 1)),
            );
            handle.blocking_send(req).unwrap();
            assert!(handle.room.available_permits() <= REQ_OPS_MAX);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rx = d.subscribe();
        rt.block_on(async { rx.wait_for(|s| s.seq >= 20).await.map(|_| ()).unwrap() });
        let want: Vec<i64> = (0..20 * per).map(|t| t * 1000).collect();
        assert_eq!(times(&store, 7), want);
        drop(handle);
        join.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commit_waits_out_the_minimum_interval_unless_a_full_group_is_queued() {
        let dir = tempdir("pace");
        let interval = Duration::from_millis(500);
        let paced = WriterOptions {
            min_commit_interval: interval,
            ..opts(1_000_000)
        };
        let full_group = paced.max_batch as i64;
        let (store, handle, join) = run_writer(&dir, paced);
        let at = |t: i64| Op::Position {
            imei: 9,
            pos: pos(t * 1000),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The first commit has none before it: it does not wait.
        write_all(&handle, vec![at(0)]);
        let first_done = Instant::now();
        let commits = handle.stats.commits.load(Ordering::Relaxed);
        // Five requests right after it are held until the interval has passed since it
        // started, and then go as one group.
        let d = Arc::new(Durability::default());
        for k in 1..=5 {
            handle
                .blocking_send(WriteReq::one(at(k), Some((d.clone(), k as u64))))
                .unwrap();
        }
        let mut rx = d.subscribe();
        rt.block_on(async { rx.wait_for(|s| s.seq >= 5).await.map(|_| ()).unwrap() });
        let waited = first_done.elapsed();
        assert!(waited >= interval / 2, "not held back: {waited:?}");
        assert_eq!(handle.stats.commits.load(Ordering::Relaxed), commits + 1);
        // A full group (max_batch operations) goes at once, however recent the last one.
        let full = Instant::now();
        let d = Arc::new(Durability::default());
        let ops: Vec<Op> = (6..6 + full_group).map(at).collect();
        handle
            .blocking_send(WriteReq::new(ops, Some((d.clone(), 1))))
            .unwrap();
        let mut rx = d.subscribe();
        rt.block_on(async { rx.wait_for(|s| s.seq >= 1).await.map(|_| ()).unwrap() });
        let took = full.elapsed();
        assert!(took < interval / 2, "a full group waited {took:?}");
        let want: Vec<i64> = (0..6 + full_group).map(|t| t * 1000).collect();
        assert_eq!(times(&store, 9), want);
        drop(handle);
        join.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn acked_writes_are_readable_and_latest_never_moves_back() {
        let dir = tempdir("acked");
        let (store, handle, join) = run_writer(&dir, opts(1_000_000));
        let ops = [2_000, 1_000, 3_000, 2_500]
            .iter()
            .map(|t| Op::Position {
                imei: 42,
                pos: pos(*t),
            })
            .collect();
        write_all(&handle, ops);
        assert_eq!(times(&store, 42), [1_000, 2_000, 2_500, 3_000]);
        let (page, next) = store.positions(42, 0, i64::MAX, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(2_500));
        assert_eq!(
            store.device(42).unwrap().last_position.unwrap().time_ms,
            3_000
        );
        drop(handle);
        join.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn late_and_resent_positions_land_in_order_exactly_once_across_seals_and_reopen() {
        let dir = tempdir("late");
        {
            // Checkpoint every 10 positions, so sealing happens between the writes.
            let (store, handle, join) = run_writer(&dir, opts(10));
            let first: Vec<Op> = (0..25)
                .map(|i| Op::Position {
                    imei: 7,
                    pos: pos(i * 1000),
                })
                .collect();
            write_all(&handle, first);
            // A buffer upload: older points interleaved with ones already stored, twice.
            for _ in 0..2 {
                let late: Vec<Op> = (0..40)
                    .map(|i| Op::Position {
                        imei: 7,
                        pos: pos(i * 500),
                    })
                    .collect();
                write_all(&handle, late);
            }
            let mut want: Vec<i64> = (0..40).map(|i| i * 500).collect();
            want.extend((20..25).map(|i| i * 1000));
            assert_eq!(times(&store, 7), want);
            drop(handle);
            join.join().unwrap();
            assert_eq!(times(&store, 7), want);
            let report = store.verify().unwrap();
            assert!(report.bad.is_empty(), "{:?}", report.bad);
            assert_eq!(report.positions, 45);
        }
        let opened = crate::store::reopen(&dir).unwrap();
        let mut want: Vec<i64> = (0..40).map(|i| i * 500).collect();
        want.extend((20..25).map(|i| i * 1000));
        assert_eq!(times(&opened.store, 7), want);
        assert_eq!(opened.store.count_positions(), 45);
        drop(opened);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn identical_alarm_is_stored_once_and_different_ones_both() {
        let dir = tempdir("events");
        let (store, handle, join) = run_writer(&dir, opts(1000));
        let ev = |kind: &str| EventRecord {
            time_ms: 5_000,
            received_ms: 5_100,
            kind: kind.into(),
            lat_raw: Some(1),
            lon_raw: Some(2),
            text: None,
        };
        let ops = [ev("sos"), ev("sos"), ev("power_cut")]
            .into_iter()
            .map(|event| Op::Event { imei: 7, event })
            .collect();
        write_all(&handle, ops);
        drop(handle);
        join.join().unwrap();
        let got = store.events(Some(7), 0, i64::MAX, 100).unwrap();
        let mut kinds: Vec<_> = got.iter().map(|(_, e)| e.kind.clone()).collect();
        kinds.sort();
        assert_eq!(kinds, ["power_cut", "sos"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quiet_device_merges_its_small_blocks() {
        let dir = tempdir("small");
        let (store, handle, join) = run_writer(&dir, opts(3));
        // Ten seals of three positions: the eighth merges the first eight blocks.
        for round in 0..10 {
            let ops = (0..3)
                .map(|i| Op::Position {
                    imei: 9,
                    pos: pos(round * 10_000 + i * 1000),
                })
                .collect();
            write_all(&handle, ops);
            // One seal per round, so the merge policy (not timing) decides the blocks.
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.unsealed() > 0 {
                assert!(Instant::now() < deadline, "round {round} never sealed");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(handle);
        join.join().unwrap();
        let report = store.verify().unwrap();
        assert_eq!((report.blocks, report.positions), (3, 30));
        assert_eq!(times(&store, 9).len(), 30);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_while_sealing_merges_blocks_sees_every_acked_position() {
        let dir = tempdir("readseal");
        // Seals of ten positions: small blocks, merged every eighth seal, so blocks are
        // removed and rewritten under readers all the time.
        let (store, handle, join) = run_writer(&dir, opts(10));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) && reads < 200_000 {
                    let n = acked.load(Ordering::SeqCst) as usize;
                    let got = times(&store, 9);
                    assert!(got.windows(2).all(|w| w[0] < w[1]), "disorder or duplicate");
                    let want: Vec<i64> = (0..n as i64).map(|i| i * 1000).collect();
                    let have: std::collections::HashSet<i64> = got.iter().copied().collect();
                    let lost: Vec<_> = want.iter().filter(|t| !have.contains(t)).take(5).collect();
                    assert!(lost.is_empty(), "read {reads}: lost acked {lost:?} of {n}");
                    reads += 1;
                }
                reads
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for round in 0..300i64 {
            if Instant::now() > deadline {
                break;
            }
            let ops = (0..5)
                .map(|i| Op::Position {
                    imei: 9,
                    pos: pos((round * 5 + i) * 1000),
                })
                .collect();
            write_all(&handle, ops);
            acked.store(round as u64 * 5 + 5, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().expect("a read lost or reordered positions");
        assert!(reads > 10, "the reader hardly ran ({reads} reads)");
        drop(handle);
        join.join().unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_drops_whole_old_blocks_and_keeps_recent_ones() {
        let dir = tempdir("retention");
        let day = 86_400_000i64;
        let now = crate::ingest::session::now_ms();
        let opts = WriterOptions {
            retention: Some(Duration::from_secs(30 * 86_400)),
            // One checkpoint (at shutdown) seals everything; retention runs with it.
            ..opts(1_000_000)
        };
        let (store, handle, join) = run_writer(&dir, opts);
        // Device 1: a block from 60 days ago and one from today. Device 2: only old data.
        let old: Vec<Op> = (0..4)
            .map(|i| Op::Position {
                imei: 1,
                pos: pos(now - 60 * day + i * 1000),
            })
            .collect();
        write_all(&handle, old);
        let old2: Vec<Op> = (0..4)
            .map(|i| Op::Position {
                imei: 2,
                pos: pos(now - 45 * day + i * 1000),
            })
            .collect();
        write_all(&handle, old2);
        let recent: Vec<Op> = (0..4)
            .map(|i| Op::Position {
                imei: 1,
                pos: pos(now - day + i * 1000),
            })
            .collect();
        write_all(&handle, recent);
        drop(handle);
        join.join().unwrap();
        let left = times(&store, 1);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.iter().all(|t| *t > now - 2 * day));
        assert!(times(&store, 2).is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
