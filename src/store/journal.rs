//! The journal: an append-only log of group commits, fsynced before anyone is answered,
//! replayed at open, and deleted once a checkpoint has sealed what it holds into sled.
//!
//! Files: `DATA_DIR/journal/<seq as 16 hex digits>.wal`. Each starts with the 8-byte
//! magic [`MAGIC`]; then records `len: u32 LE | crc32(payload): u32 LE | payload`, one per
//! group commit, where payload is bincode 2 (standard) of `Vec<Op>`. Segments with the
//! format-1 magic [`MAGIC_V1`] (written before store values reached version 3) hold
//! `Vec<OpV2>`: they replay, and new batches go to a new segment, never after them.
//!
//! Segments are written in place: a background thread fills the next one with zeros
//! (`spare.tmp`) ahead of need, and the records overwrite those zeros; a zero length
//! ends a segment's records. Why: `fdatasync` after an append that grows the file must
//! also commit the filesystem's journal (the new size, the new blocks), which on ext4
//! made each group commit ~2.2 ms where an overwrite of written blocks takes ~0.7 ms
//! (BENCHMARKS.md, eighth session). A segment grows past its zeros only when no spare
//! is ready (a nearly full disk, a spare still being written): slower, never wrong.
//!
//! Why a journal and not one sled key per unsealed position: a sequential append plus one
//! `fdatasync` per batch is the cheapest durable write there is, and it keeps sled (whose
//! memory grows with every write) off the hot path.
//!
//! This room never decides *when* to checkpoint; the writer does.

use super::codec::{Op, OpV2};
use super::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// File magic, with the journal format version as its last byte.
pub const MAGIC: &[u8; 8] = b"GT06WAL\x02";
/// Format 1: the same records, holding version-2 requests.
pub const MAGIC_V1: &[u8; 8] = b"GT06WAL\x01";
/// A record larger than this is not one we wrote: treat it as a torn or corrupt tail.
const MAX_RECORD: u32 = 256 * 1024 * 1024;
/// The spare segment's name while it is being filled; not a `.wal`, so replay skips it.
const SPARE: &str = "spare.tmp";
/// Spares are written only while the disk has this many segments' worth free: the zeros
/// must never be what fills a disk that the disk guard is watching.
const SPARE_FREE_FACTOR: u64 = 8;
/// After a segment filled faster than this (bytes per second: ~110,000 positions/s) no
/// spare is filled: the zeros would double the disk's writes just when it is busiest,
/// and with `fdatasync` running beside the writer a growing segment costs throughput
/// less than they do (peak ingest 1.36–1.42 M positions/s growing against 1.28–1.30 M
/// with spares, alternating runs). Below it spares keep each commit's sync short.
const SPARE_MAX_RATE: u64 = 4 << 20;
/// A spare is written and synced this many bytes at a time, with [`SPARE_PAUSE`] after
/// each step: a 32 MiB spare took 0.13-0.15 s here, far less than the 8 s or more the
/// segment before it takes to fill below [`SPARE_MAX_RATE`].
const SPARE_STEP: usize = 1 << 20;
const SPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

pub struct Journal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Bytes in the current segment.
    len: u64,
    /// Of those, the ones known durable (`fdatasync`ed). Records past it are written but
    /// may not survive a crash; the segment only changes once it is all durable.
    durable: u64,
    /// `file` for the syncer thread (the same open file), made once per segment.
    sync_file: Option<Arc<File>>,
    /// Runs `fdatasync` while the writer goes on: started at the first [`Journal::start_sync`].
    syncer: Option<Syncer>,
    /// Where the sync under way will put `durable`, and whether the syncer runs it (else
    /// it is run when waited for).
    in_flight: Option<(u64, bool)>,
    /// The file may hold bytes past `len` (an append failed and cutting them back failed
    /// too): they are cut before anything else is appended.
    dirty: bool,
    /// Bytes of records since the last [`Journal::rotate`] (in every segment since, and
    /// at open in every segment replayed): what the next checkpoint seals.
    unsealed: u64,
    /// Size of a segment filled ahead of use; 0 when segments only grow.
    segment_bytes: u64,
    /// The current segment holds written zeros up to here (0: it grows as written).
    zeros_to: u64,
    /// When the current segment was started.
    segment_started: std::time::Instant,
    /// A segment filled faster than this (bytes per second) gets no spare after it.
    spare_max_rate: u64,
    spare: Option<Spare>,
    /// Where the end of the durable records is published for a backup's freeze.
    end: Option<End>,
    /// Test hook: the next append writes this many bytes of its record, then fails as if
    /// the disk were full.
    #[cfg(test)]
    fail_after: Option<usize>,
}

/// The segment being written and where its durable records end, as `(seq, bytes)`: a
/// backup frozen at some instant takes the records up to there and not the ones written
/// after, which the segment's file length (its zeros included) cannot tell.
pub type End = Arc<std::sync::Mutex<(u64, u64)>>;

/// What replay found, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: usize,
    pub batches: usize,
    /// Bytes dropped from the end of the last segment (a write cut short by a crash).
    pub torn_tail_bytes: u64,
    /// Records that failed their checksum before the last segment's end (real damage).
    pub corrupt_records: usize,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// The segments in `dir` with their sequence numbers, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(stem, 16) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes a directory entry (a created or deleted file) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Replays every segment of `dir` in order, like [`Journal::open`], but changes nothing:
/// no directory is created, a torn tail is counted and left in place, no segment is
/// started. For `gt06 verify` and `doctor`, which must not alter what they inspect.
pub fn replay_read_only(
    dir: &Path,
    mut apply: impl FnMut(Vec<Op>),
) -> Result<ReplayStats, StoreError> {
    let segs = if dir.is_dir() {
        segments(dir)?
    } else {
        Vec::new()
    };
    let mut stats = ReplayStats {
        segments: segs.len(),
        ..ReplayStats::default()
    };
    let last = segs.len().saturating_sub(1);
    for (i, (_, path)) in segs.iter().enumerate() {
        let (good, total, corrupt, _) = replay_segment(path, &mut apply, &mut stats.batches)?;
        if i == last {
            stats.torn_tail_bytes = total - good;
        } else if good < total {
            stats.corrupt_records += corrupt.max(1);
        }
    }
    Ok(stats)
}

impl Journal {
    /// Opens `dir` (creating it), replays every segment in order and calls `apply` with
    /// each batch, then leaves the journal ready to append to its newest segment.
    pub fn open(
        dir: &Path,
        mut apply: impl FnMut(Vec<Op>),
    ) -> Result<(Journal, ReplayStats), StoreError> {
        std::fs::create_dir_all(dir)?;
        // A spare left by a crash may be half written: it is made again.
        match std::fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let segs = segments(dir)?;
        let mut stats = ReplayStats {
            segments: segs.len(),
            ..ReplayStats::default()
        };
        let last = segs.len().saturating_sub(1);
        let mut good_len = 0;
        let mut last_is_old = false;
        let mut unsealed = 0;
        for (i, (_, path)) in segs.iter().enumerate() {
            let (good, total, corrupt, old) = replay_segment(path, &mut apply, &mut stats.batches)?;
            unsealed += good.saturating_sub(MAGIC.len() as u64);
            if i == last {
                good_len = good;
                last_is_old = old;
                stats.torn_tail_bytes = total - good;
            } else if good < total {
                stats.corrupt_records += corrupt.max(1);
            }
        }
        let (seq, file, len) = match segs.last() {
            // An older format's segment is kept as it is until a checkpoint retires it.
            Some((seq, _)) if last_is_old => {
                let file = create_segment(dir, seq + 1)?;
                (seq + 1, file, MAGIC.len() as u64)
            }
            Some((seq, path)) => {
                let file = OpenOptions::new().read(true).write(true).open(path)?;
                if good_len < MAGIC.len() as u64 {
                    // Crashed while creating the segment: write the header again.
                    file.set_len(0)?;
                    (&file).write_all(MAGIC)?;
                    good_len = MAGIC.len() as u64;
                } else {
                    // Cut the torn tail (and any zeros: this segment now grows) so the
                    // next batch follows the last good one.
                    file.set_len(good_len)?;
                }
                file.sync_all()?;
                (*seq, file, good_len)
            }
            None => {
                let file = create_segment(dir, 1)?;
                (1, file, MAGIC.len() as u64)
            }
        };
        let mut j = Journal {
            dir: dir.to_path_buf(),
            file,
            seq,
            len,
            durable: len,
            sync_file: None,
            syncer: None,
            in_flight: None,
            dirty: false,
            unsealed,
            segment_bytes: 0,
            zeros_to: 0,
            segment_started: std::time::Instant::now(),
            spare_max_rate: SPARE_MAX_RATE,
            spare: None,
            end: None,
            #[cfg(test)]
            fail_after: None,
        };
        use std::io::Seek;
        j.file.seek(std::io::SeekFrom::Start(j.len))?;
        Ok((j, stats))
    }

    /// Appends one group commit and makes it durable (`fdatasync`).
    pub fn append(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.append_refs(&ops.iter().collect::<Vec<_>>())
    }

    /// [`Journal::append`] for borrowed requests (serializes exactly like `&[Op]`).
    pub fn append_refs(&mut self, ops: &[&Op]) -> Result<(), StoreError> {
        let payload = bincode::serde::encode_to_vec(ops, bincode::config::standard())
            .map_err(|e| StoreError::Io(format!("journal encode: {e}")))?;
        self.write_payload(&[&payload])?;
        self.sync_all()
    }

    /// Writes one group commit of `count` operations already encoded by [`encode_ops`]
    /// (in order in `parts`), the same bytes [`Journal::append`] writes, but does not
    /// make it durable: [`Journal::start_sync`] and [`Journal::finish_sync`] (or
    /// [`Journal::sync_all`]) do, so the writer can write and apply the next group while
    /// the disk syncs this one. Encoding happens where there is CPU to spare (in the
    /// sessions) rather than on the one writer thread.
    ///
    /// On an error, every record not yet durable is gone (the segment is cut back to
    /// [`Journal::durable_end`]), this one included.
    pub fn write_encoded(&mut self, count: usize, parts: &[&[u8]]) -> Result<(), StoreError> {
        // A sequence is its length (bincode's varint of a u64), then its elements.
        let len = bincode::encode_to_vec(count as u64, bincode::config::standard())
            .map_err(|e| StoreError::Io(format!("journal encode: {e}")))?;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(len.as_slice());
        all.extend_from_slice(parts);
        self.write_payload(&all)
    }

    /// Writes one record whose payload is `parts` concatenated (not synced).
    fn write_payload(&mut self, parts: &[&[u8]]) -> Result<(), StoreError> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let mut crc = crc32fast::Hasher::new();
        let mut rec = Vec::with_capacity(payload_len + 8);
        rec.extend_from_slice(&(payload_len as u32).to_le_bytes());
        rec.extend_from_slice(&[0; 4]);
        for part in parts {
            crc.update(part);
            rec.extend_from_slice(part);
        }
        rec[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        if self.dirty {
            self.cut_back()?;
        }
        let past_zeros = self.len + rec.len() as u64 > self.zeros_to;
        if past_zeros && self.len > MAGIC.len() as u64 && self.spare_ready() {
            // Full, or never filled ahead: the batches go on in the spare. The segment
            // left behind is sealed with the others at the next checkpoint, all durable
            // first. If the move fails (no descriptor, say), this segment grows: slower,
            // and nothing lost.
            self.sync_all()?;
            if let Err(e) = self.next_segment() {
                tracing::warn!(error = %e, "journal: cannot move on to the segment filled ahead; the current one grows");
            }
        }
        // A failed write (ENOSPC, EIO) may have left part of the record in the file.
        // Replay stops at the first bad record, so a torn one left in front of the next
        // batch would hide every later commit: cut it off now, and if even that fails,
        // before the next append.
        if let Err(e) = self.write_record(&rec) {
            self.lose_undurable();
            return Err(e.into());
        }
        self.len += rec.len() as u64;
        self.unsealed += rec.len() as u64;
        Ok(())
    }

    /// Starts making everything written so far durable, on the syncer thread, unless a
    /// sync is under way or nothing waits for one.
    pub fn start_sync(&mut self) {
        if self.in_flight.is_some() || self.len <= self.durable {
            return;
        }
        let file = match &self.sync_file {
            Some(f) => Some(f.clone()),
            None => self
                .file
                .try_clone()
                .ok()
                .map(|f| self.sync_file.insert(Arc::new(f)).clone()),
        };
        // Without a descriptor to spare or a thread, the sync runs when waited for.
        let threaded = file.is_some_and(|f| {
            let syncer = self.syncer.get_or_insert_with(Syncer::start);
            syncer.jobs.send(f).is_ok()
        });
        if !threaded {
            self.syncer = None;
        }
        self.in_flight = Some((self.len, threaded));
    }

    /// Whether records were written since the last sync began.
    pub fn unsynced(&self) -> bool {
        self.len > self.in_flight.map_or(self.durable, |(target, _)| target)
    }

    /// Whether a sync is under way.
    pub fn syncing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the sync under way. Ok: everything written before it started is
    /// durable. An error: everything not durable is gone, as for a failed write.
    pub fn finish_sync(&mut self) -> Result<(), StoreError> {
        let Some((target, threaded)) = self.in_flight else {
            return Ok(());
        };
        let result = match self
            .syncer
            .as_ref()
            .filter(|_| threaded)
            .map(|s| s.done.recv())
        {
            Some(Ok(r)) => r,
            // Not on the syncer, or it has gone: sync here.
            _ => {
                self.syncer = None;
                self.file.sync_data()
            }
        };
        self.in_flight = None;
        match result {
            Ok(()) => {
                self.durable = self.durable.max(target);
                self.publish_end();
                Ok(())
            }
            Err(e) => {
                self.lose_undurable();
                Err(e.into())
            }
        }
    }

    /// Makes everything written so far durable, waiting for it, on this thread (a sync
    /// under way on the syncer is waited for first).
    pub fn sync_all(&mut self) -> Result<(), StoreError> {
        self.finish_sync()?;
        if self.len > self.durable {
            // Run when waited for, here: no hand-over to the syncer and back.
            self.in_flight = Some((self.len, false));
        }
        self.finish_sync()
    }

    /// Where the durable records end: `(segment, bytes)`, ordered as written.
    pub fn durable_end(&self) -> (u64, u64) {
        (self.seq, self.durable)
    }

    /// Where the records written so far end, as [`Journal::durable_end`].
    pub fn written_end(&self) -> (u64, u64) {
        (self.seq, self.len)
    }

    /// After a failed write or sync: the records not known durable are dropped (the file
    /// is cut back to the durable ones, now or before the next write). A sync under way
    /// is waited for first, since what it covers may have become durable.
    fn lose_undurable(&mut self) {
        if self.in_flight.is_some() {
            // Its own failure is this same loss; its success moves `durable` on.
            let _ = self.finish_sync();
        }
        self.unsealed = self.unsealed.saturating_sub(self.len - self.durable);
        self.len = self.durable;
        self.dirty = true;
        let _ = self.cut_back();
    }

    /// From now on, publishes where the durable records end to `to` (see [`End`]).
    pub fn publish_end_to(&mut self, to: End) {
        self.end = Some(to);
        self.publish_end();
    }

    fn publish_end(&self) {
        if let Some(end) = &self.end {
            *end.lock().unwrap_or_else(|p| p.into_inner()) = (self.seq, self.durable);
        }
    }

    fn write_record(&mut self, rec: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after.take() {
            self.file.write_all(&rec[..n.min(rec.len())])?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all(rec)
    }

    /// Truncates the segment back to its last good record and puts the cursor there.
    /// (Zeros past it go too: a disk that refused a write is no place to keep them.)
    fn cut_back(&mut self) -> Result<(), StoreError> {
        use std::io::Seek;
        self.zeros_to = 0;
        self.file.set_len(self.len)?;
        self.file.seek(std::io::SeekFrom::Start(self.len))?;
        self.dirty = false;
        Ok(())
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of records the next checkpoint seals (every segment since the last
    /// [`Journal::rotate`]).
    pub fn unsealed_bytes(&self) -> u64 {
        self.unsealed
    }

    /// Fills segments `bytes` long ahead of use from now on (0: segments only grow). The
    /// first spare is started at once; until it is ready, the current segment grows.
    pub fn fill_ahead(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
        if bytes > 0 && self.spare.is_none() {
            self.spare = Some(Spare::start(&self.dir, bytes));
        }
    }

    /// Whether a spare is filled and ready to take the next batch.
    fn spare_ready(&mut self) -> bool {
        self.spare.as_mut().and_then(|s| s.poll()) == Some(true)
    }

    /// True when the current segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// Starts a new segment for the batches that follow and returns the older segments,
    /// which the caller deletes with [`Journal::remove`] once what they hold is sealed.
    pub fn rotate(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        // Segments left behind hold durable records only.
        self.sync_all()?;
        if self.dirty {
            // A segment that is no longer the last must end on a good record.
            self.cut_back()?;
        }
        self.next_segment()?;
        let next = self.seq;
        self.unsealed = 0;
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(s, _)| *s < next)
            .map(|(_, p)| p)
            .collect())
    }

    /// Moves to segment `seq + 1`: the spare if one is ready, else a file that grows.
    fn next_segment(&mut self) -> Result<(), StoreError> {
        let next = self.seq + 1;
        let secs = self.segment_started.elapsed().as_secs_f64();
        let busy = self.len as f64 > self.spare_max_rate as f64 * secs;
        let (file, zeros_to) = if self.spare_ready() {
            let path = segment_path(&self.dir, next);
            std::fs::rename(self.dir.join(SPARE), &path)?;
            // Whatever follows, the spare is used up; a segment `next` that is not
            // taken now is made again (truncated) by the next move.
            self.spare = None;
            sync_dir(&self.dir)?;
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(MAGIC.len() as u64))?;
            (file, self.segment_bytes)
        } else {
            (create_segment(&self.dir, next)?, 0)
        };
        self.file = file;
        self.sync_file = None;
        self.seq = next;
        self.len = MAGIC.len() as u64;
        self.durable = self.len;
        self.zeros_to = zeros_to;
        self.segment_started = std::time::Instant::now();
        self.publish_end();
        // A spare that failed (a nearly full disk) is tried again here, at most once per
        // segment, not at every batch.
        let failed = self.spare.as_mut().and_then(|s| s.poll()) == Some(false);
        if self.segment_bytes > 0 && !busy && (self.spare.is_none() || failed) {
            self.spare = Some(Spare::start(&self.dir, self.segment_bytes));
        }
        Ok(())
    }

    /// Deletes sealed segments, durably.
    pub fn remove(&self, paths: &[PathBuf]) -> Result<(), StoreError> {
        for p in paths {
            std::fs::remove_file(p)?;
        }
        sync_dir(&self.dir)
    }
}

impl Drop for Journal {
    /// A clean end leaves no zeros behind: the current segment is cut to its records
    /// (what a copied data directory or a backup then holds) and the spare is deleted.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.cancel();
        }
        if self.zeros_to > 0 {
            let _ = self.file.set_len(self.len);
        }
    }
}

/// The thread that runs `fdatasync` for the journal: one job at a time, each the file
/// to sync (the job is sent after the writes it must cover).
struct Syncer {
    jobs: std::sync::mpsc::Sender<Arc<File>>,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
}

impl Syncer {
    fn start() -> Syncer {
        let (jobs, rx) = std::sync::mpsc::channel::<Arc<File>>();
        let (tx, done) = std::sync::mpsc::channel();
        // If the thread cannot start, `jobs` is closed: the caller then syncs itself.
        let _ = std::thread::Builder::new()
            .name("gt06-journal-sync".into())
            .spawn(move || {
                while let Ok(file) = rx.recv() {
                    if tx.send(file.sync_data()).is_err() {
                        return;
                    }
                }
            });
        Syncer { jobs, done }
    }
}

/// The next segment, being filled with zeros on a thread of its own.
struct Spare {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// How filling it ended, once it has.
    ok: Option<bool>,
}

impl Spare {
    fn start(dir: &Path, bytes: u64) -> Spare {
        let path = dir.join(SPARE);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (path.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("gt06-journal-spare".into())
            .spawn(move || fill_spare(&p, bytes, &s))
            .ok();
        let ok = thread.is_none().then_some(false);
        Spare {
            path,
            stop,
            thread,
            ok,
        }
    }

    /// None while the spare is being filled, then whether it was (a failed one is
    /// deleted).
    fn poll(&mut self) -> Option<bool> {
        if self.ok.is_none() && self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let ok = matches!(self.thread.take().map(|t| t.join()), Some(Ok(Ok(()))));
            if !ok {
                let _ = std::fs::remove_file(&self.path);
            }
            self.ok = Some(ok);
        }
        self.ok
    }

    fn cancel(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `bytes` of zeros (the magic first) to `path` and makes them durable, unless the
/// disk is short of room or `stop` is raised.
fn fill_spare(path: &Path, bytes: u64, stop: &AtomicBool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (free, _) = super::guard::statvfs(dir)?;
    if free < bytes.saturating_mul(SPARE_FREE_FACTOR) {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; SPARE_STEP];
    let mut at = 0u64;
    while at < bytes {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("stopped"));
        }
        let n = (bytes - at).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        at += n as u64;
        // Each step is made durable before the next is written: on ext4 a commit's
        // `fdatasync` also flushes every other file's newly placed dirty blocks, so a
        // whole segment of zeros waiting for writeback held the group commit beside it up
        // 36-41 ms (`benches/spare_stall.py`). One step's worth holds it up about 2 ms at
        // most, and the pause lets the commits' syncs in between.
        file.sync_data()?;
        std::thread::sleep(SPARE_PAUSE);
    }
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(MAGIC)?;
    file.sync_all()
}

fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replays one segment; returns (bytes up to the last good record, file length, number
/// of bad records seen, whether it is a format-1 segment).
fn replay_segment(
    path: &Path,
    apply: &mut impl FnMut(Vec<Op>),
    batches: &mut usize,
) -> Result<(u64, u64, usize, bool), StoreError> {
    scan_segment(path, u64::MAX, &mut |payload, old| {
        Ok(match decode_ops(payload, old) {
            Some(ops) => {
                *batches += 1;
                apply(ops);
                true
            }
            None => false,
        })
    })
}

/// Operations as a journal payload holds them, without the count in front: what
/// [`Journal::append_encoded`] takes. The format is serde + bincode 2 (standard config)
/// of each `Op`; positions, nearly all of a fleet's operations, are written by
/// [`wire::position_op`], which produces those very bytes in a fifth of the time (every
/// session pays this per position; serde's field-by-field dispatch was a fifth of the
/// sessions' CPU at peak).
pub fn encode_ops(ops: &[Op]) -> Result<Vec<u8>, StoreError> {
    // ~70 bytes per position: one allocation for most requests.
    let mut out = Vec::with_capacity(ops.len() * 80);
    for op in ops {
        match op {
            Op::Position { imei, pos } => wire::position_op(&mut out, *imei, pos),
            _ => bincode::serde::encode_into_std_write(op, &mut out, bincode::config::standard())
                .map(|_| ())
                .map_err(|e| StoreError::Io(format!("journal encode: {e}")))?,
        }
    }
    Ok(out)
}

/// bincode 2's standard encoding (little-endian, variable-length integers) written by
/// hand for the one hot type. `decode_ops` reads it back with serde like any other op,
/// and a test holds the two encoders to the same bytes.
mod wire {
    use crate::store::codec::PositionRecord;

    /// `Op::Position`'s index among the variants of `Op`.
    const POSITION_VARIANT: u32 = 0;

    /// `Op::Position { imei, pos }`, field by field in declaration order.
    pub fn position_op(out: &mut Vec<u8>, imei: u64, p: &PositionRecord) {
        if p.invalid_reason.is_none() && p.alarm.is_none() && p.driver_id.is_none() {
            // No strings: at most `Fixed::CAP` bytes, built on the stack and copied
            // once (a `Vec::push` per byte was most of this function's time).
            let mut f = Fixed::default();
            fields(&mut f, imei, p);
            out.extend_from_slice(&f.b[..f.n]);
        } else {
            fields(out, imei, p);
        }
    }

    /// Where the bytes go: a `Vec`, or a fixed array when they are known to fit.
    trait Sink {
        fn byte(&mut self, b: u8);
        fn bytes(&mut self, b: &[u8]);
    }

    impl Sink for Vec<u8> {
        #[inline(always)]
        fn byte(&mut self, b: u8) {
            self.push(b);
        }
        #[inline(always)]
        fn bytes(&mut self, b: &[u8]) {
            self.extend_from_slice(b);
        }
    }

    /// Big enough for a position without strings: 127 bytes at most (every integer in
    /// its widest form, every option present).
    struct Fixed {
        b: [u8; Fixed::CAP],
        n: usize,
    }

    impl Fixed {
        const CAP: usize = 160;
    }

    impl Default for Fixed {
        fn default() -> Self {
            Fixed {
                b: [0; Fixed::CAP],
                n: 0,
            }
        }
    }

    impl Sink for Fixed {
        #[inline(always)]
        fn byte(&mut self, b: u8) {
            self.b[self.n] = b;
            self.n += 1;
        }
        #[inline(always)]
        fn bytes(&mut self, b: &[u8]) {
            self.b[self.n..self.n + b.len()].copy_from_slice(b);
            self.n += b.len();
        }
    }

    /// An unsigned integer: one byte up to 250, else a marker (251: u16, 252: u32,
    /// 253: u64) and the value's little-endian bytes.
    #[inline(always)]
    fn uint(out: &mut impl Sink, v: u64) {
        if v <= 250 {
            out.byte(v as u8);
        } else if v <= u64::from(u16::MAX) {
            out.byte(251);
            out.bytes(&(v as u16).to_le_bytes());
        } else if v <= u64::from(u32::MAX) {
            out.byte(252);
            out.bytes(&(v as u32).to_le_bytes());
        } else {
            out.byte(253);
            out.bytes(&v.to_le_bytes());
        }
    }

    /// A signed integer: zig-zag (which gives the same number at any width), then as
    /// unsigned.
    #[inline(always)]
    fn int(out: &mut impl Sink, v: i64) {
        uint(out, ((v << 1) ^ (v >> 63)) as u64);
    }

    #[inline(always)]
    fn opt<S: Sink, T: Copy>(out: &mut S, v: Option<T>, put: impl Fn(&mut S, T)) {
        match v {
            None => out.byte(0),
            Some(x) => {
                out.byte(1);
                put(out, x);
            }
        }
    }

    fn opt_str(out: &mut impl Sink, v: &Option<String>) {
        match v {
            None => out.byte(0),
            Some(s) => {
                out.byte(1);
                uint(out, s.len() as u64);
                out.bytes(s.as_bytes());
            }
        }
    }

    #[inline(always)]
    fn fields<S: Sink>(out: &mut S, imei: u64, p: &PositionRecord) {
        uint(out, u64::from(POSITION_VARIANT));
        uint(out, imei);
        int(out, p.time_ms);
        int(out, p.received_ms);
        int(out, i64::from(p.lat_raw));
        int(out, i64::from(p.lon_raw));
        uint(out, u64::from(p.speed_kmh));
        uint(out, u64::from(p.course));
        // u8 and bool are one raw byte each.
        out.byte(p.satellites);
        out.byte(u8::from(p.valid));
        opt_str(out, &p.invalid_reason);
        opt(out, p.acc, |o, b| o.byte(u8::from(b)));
        opt(out, p.odometer_m, |o, v| uint(o, u64::from(v)));
        opt(out, p.lbs, |o, l| {
            uint(o, u64::from(l.mcc));
            uint(o, u64::from(l.mnc));
            uint(o, u64::from(l.lac));
            uint(o, l.cell);
        });
        opt_str(out, &p.alarm);
        opt(out, p.reupload, |o, b| o.byte(u8::from(b)));
        opt(out, p.battery_percent, |o, v| o.byte(v));
        opt(out, p.gsm_signal, |o, v| o.byte(v));
        opt(out, p.power_mv, |o, v| uint(o, u64::from(v)));
        opt(out, p.battery_mv, |o, v| uint(o, u64::from(v)));
        opt(out, p.temperature_dc, |o, v| int(o, i64::from(v)));
        opt_str(out, &p.driver_id);
        opt(out, p.altitude_m, |o, v| int(o, i64::from(v)));
        opt(out, p.driving_time_s, |o, v| uint(o, u64::from(v)));
        opt(out, p.engine_time_s, |o, v| uint(o, u64::from(v)));
    }
}

/// One record's payload as requests; `old` for a format-1 segment (`Vec<OpV2>`).
pub fn decode_ops(payload: &[u8], old: bool) -> Option<Vec<Op>> {
    let config = bincode::config::standard();
    if old {
        bincode::serde::decode_from_slice::<Vec<OpV2>, _>(payload, config)
            .ok()
            .map(|(ops, _)| ops.into_iter().map(Op::from).collect())
    } else {
        bincode::serde::decode_from_slice::<Vec<Op>, _>(payload, config)
            .ok()
            .map(|(ops, _)| ops)
    }
}

/// Reads the records of one segment within its first `limit` bytes, checking each one's
/// checksum, and hands each payload to `f` with whether the segment is format 1 (see
/// [`decode_ops`]); `f` answers false for a payload it cannot use. Stops at the first
/// bad record. Returns (bytes up to the last good record, bytes considered, number of
/// bad records seen, whether the segment is format 1).
pub fn scan_segment(
    path: &Path,
    limit: u64,
    f: &mut impl FnMut(&[u8], bool) -> Result<bool, StoreError>,
) -> Result<(u64, u64, usize, bool), StoreError> {
    let file = File::open(path)?;
    let total = file.metadata()?.len().min(limit);
    let mut r = BufReader::with_capacity(1 << 20, file.take(total));
    let mut magic = [0u8; 8];
    let old = match r.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => false,
        Ok(()) if &magic == MAGIC_V1 => true,
        _ => return Ok((0, total, 1, false)),
    };
    let mut good = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        if total - good < 8 {
            // A header cut short, or the last few zeros of a segment filled ahead.
            let end = if last_nonzero(&mut r)? == 0 {
                good
            } else {
                total
            };
            return Ok((good, end, 0, old));
        }
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            return Ok((good, total, 0, old));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 && crc == 0 {
            // The zeros of a segment filled ahead of use (no record is empty: it holds
            // at least its count). What follows is zeros unless a write was torn.
            let end = good + 8 + last_nonzero(&mut r)?;
            return Ok(if end == good + 8 {
                (good, good, 0, old)
            } else {
                (good, end, 1, old)
            });
        }
        if len > MAX_RECORD || good + 8 + len as u64 > total {
            return Ok((good, torn_end(good, &head, &[], &mut r, total)?, 1, old));
        }
        payload.resize(len as usize, 0);
        if r.read_exact(&mut payload).is_err() {
            return Ok((good, total, 1, old));
        }
        if crc32fast::hash(&payload) != crc || !f(&payload, old)? {
            return Ok((
                good,
                torn_end(good, &head, &payload, &mut r, total)?,
                1,
                old,
            ));
        }
        good += 8 + len as u64;
    }
}

/// Where the bytes of a bad record at `good` end: at the file's end for a segment that
/// grows, at the last nonzero byte before the zeros for one filled ahead of use (so a
/// torn write is reported by its own size, not the segment's).
fn torn_end(
    good: u64,
    head: &[u8; 8],
    payload: &[u8],
    r: &mut impl Read,
    total: u64,
) -> Result<u64, StoreError> {
    let after = last_nonzero(r)?;
    let within = if after > 0 {
        8 + payload.len() as u64 + after
    } else if let Some(i) = last_nonzero_in(payload) {
        8 + i as u64 + 1
    } else {
        // A header cut short inside the zeros: its own last written byte.
        last_nonzero_in(head).map_or(0, |i| i as u64 + 1)
    };
    Ok((good + within).min(total))
}

/// Reads `r` to its end; returns the length of what it held up to its last nonzero byte.
fn last_nonzero(r: &mut impl Read) -> Result<u64, StoreError> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut end) = (0u64, 0u64);
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(end),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(i) = last_nonzero_in(&buf[..n]) {
            end = at + i as u64 + 1;
        }
        at += n as u64;
    }
}

fn last_nonzero_in(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&x| x != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::PositionRecord;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gt06-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn op(t: i64) -> Op {
        Op::Position {
            imei: 7,
            pos: PositionRecord {
                time_ms: t,
                ..PositionRecord::default()
            },
        }
    }

    fn replay(d: &Path) -> (Journal, Vec<Vec<Op>>, ReplayStats) {
        let mut got = Vec::new();
        let (j, stats) = Journal::open(d, |b| got.push(b)).unwrap();
        (j, got, stats)
    }

    #[test]
    fn positions_written_by_hand_are_the_bytes_serde_writes() {
        use crate::store::codec::LbsRecord;
        // Each integer at the edges of bincode's length classes (250/251, u16, u32),
        // negative ones, every option absent and present, strings of both length classes.
        let edges: [i64; 12] = [
            0,
            1,
            -1,
            125,
            -126,
            250,
            251,
            65_535,
            65_536,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            -4_294_967_296,
        ];
        let mut n = 0;
        for (k, &e) in edges.iter().enumerate() {
            for present in [false, true] {
                let u = e.unsigned_abs();
                let pos = PositionRecord {
                    time_ms: e.wrapping_mul(1_000_003),
                    received_ms: i64::MIN + k as i64,
                    lat_raw: e as i32,
                    lon_raw: (e as i32).wrapping_neg(),
                    speed_kmh: u as u16,
                    course: (u >> 3) as u16,
                    satellites: u as u8,
                    valid: present,
                    invalid_reason: present.then(|| "x".repeat(u as usize % 300)),
                    acc: present.then_some(k % 2 == 0),
                    odometer_m: present.then_some(u as u32),
                    lbs: present.then_some(LbsRecord {
                        mcc: u as u16,
                        mnc: 251,
                        lac: u as u32,
                        cell: u64::MAX - u,
                    }),
                    alarm: present.then(|| "sos".into()),
                    reupload: present.then_some(true),
                    battery_percent: present.then_some(u as u8),
                    gsm_signal: present.then_some(255),
                    power_mv: present.then_some(u as u32),
                    battery_mv: present.then_some(u32::MAX),
                    temperature_dc: present.then_some(e as i32),
                    driver_id: present.then(|| "äö".into()),
                    altitude_m: present.then_some((e as i32).wrapping_neg()),
                    driving_time_s: present.then_some(65_536),
                    engine_time_s: present.then_some(250),
                };
                let op = Op::Position {
                    imei: u.wrapping_mul(86_000_000_007),
                    pos,
                };
                let want = bincode::serde::encode_to_vec(&op, bincode::config::standard()).unwrap();
                assert_eq!(
                    encode_ops(std::slice::from_ref(&op)).unwrap(),
                    want,
                    "{op:?}"
                );
                n += 1;
            }
        }
        assert_eq!(n, 24);
    }

    #[test]
    fn records_of_pre_encoded_operations_are_the_bytes_append_writes() {
        // Counts on both sides of bincode's one-byte length limit (250).
        for (k, n) in [1usize, 3, 250, 251, 700].into_iter().enumerate() {
            let ops: Vec<Op> = (0..n as i64).map(op).collect();
            let a = dir(&format!("enc-a{k}"));
            let b = dir(&format!("enc-b{k}"));
            let (mut ja, _, _) = replay(&a);
            let (mut jb, _, _) = replay(&b);
            ja.append(&ops).unwrap();
            // Split into requests of up to 64 as sessions send them.
            let parts: Vec<Vec<u8>> = ops.chunks(64).map(|c| encode_ops(c).unwrap()).collect();
            let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            jb.write_encoded(n, &refs).unwrap();
            jb.sync_all().unwrap();
            drop((ja, jb));
            let seg = |d: &Path| std::fs::read(segment_path(d, 1)).unwrap();
            assert_eq!(seg(&a), seg(&b), "{n} operations");
            let (_, got, _) = replay(&b);
            assert_eq!(got, vec![ops]);
            let _ = std::fs::remove_dir_all(&a);
            let _ = std::fs::remove_dir_all(&b);
        }
    }

    #[test]
    fn batches_come_back_in_order_across_segments() {
        let d = dir("order");
        let (mut j, got, _) = replay(&d);
        assert!(got.is_empty());
        j.append(&[op(1), op(2)]).unwrap();
        let old = j.rotate().unwrap();
        assert_eq!(old.len(), 1);
        j.append(&[op(3)]).unwrap();
        drop(j);
        let (_, got, stats) = replay(&d);
        assert_eq!(got.len(), 2);
        assert_eq!(stats.segments, 2);
        assert!(matches!(&got[1][0], Op::Position { pos, .. } if pos.time_ms == 3));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_tail_is_cut_and_appending_continues_after_the_last_good_batch() {
        let d = dir("torn");
        let (mut j, _, _) = replay(&d);
        j.append(&[op(1)]).unwrap();
        j.append(&[op(2)]).unwrap();
        let path = segment_path(&d, 1);
        let full = std::fs::metadata(&path).unwrap().len();
        drop(j);
        // Every cut inside the second record loses that record only.
        for cut in (full - 20)..full {
            let bytes = std::fs::read(&path).unwrap();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let (mut j, got, stats) = replay(&d);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert!(stats.torn_tail_bytes > 0);
            j.append(&[op(9)]).unwrap();
            drop(j);
            let (_, got, _) = replay(&d);
            assert_eq!(got.len(), 2);
            assert!(matches!(&got[1][0], Op::Position { pos, .. } if pos.time_ms == 9));
            std::fs::write(&path, &bytes).unwrap();
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_append_leaves_no_torn_record_in_front_of_later_ones() {
        let d = dir("enospc");
        let (mut j, _, _) = replay(&d);
        j.append(&[op(1)]).unwrap();
        let good = j.len();
        // Every cut of the record: a few header bytes, the header, most of the payload,
        // and all of it (the write went through, the fdatasync did not).
        for n in [3, 8, 12, 1_000] {
            j.fail_after = Some(n);
            let err = j.append(&[op(2), op(3)]).unwrap_err();
            assert_eq!(err.reason(), "disk_full");
            let path = segment_path(&d, 1);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "cut {n}");
            assert_eq!(j.len(), good);
        }
        j.append(&[op(4)]).unwrap();
        drop(j);
        let (_, got, stats) = replay(&d);
        assert_eq!(got.len(), 2, "{stats:?}");
        assert!(matches!(&got[1][0], Op::Position { pos, .. } if pos.time_ms == 4));
        assert_eq!((stats.torn_tail_bytes, stats.corrupt_records), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_sync_covers_what_was_written_before_it_began_and_a_failure_drops_the_rest() {
        let d = dir("pipelined");
        let (mut j, _, _) = replay(&d);
        let rec = |j: &mut Journal, t: i64| {
            let bytes = encode_ops(&[op(t)]).unwrap();
            j.write_encoded(1, &[&bytes]).unwrap();
            j.written_end()
        };
        let start = j.durable_end();
        let one = rec(&mut j, 1);
        assert_eq!(j.durable_end(), start, "written is not durable");
        j.start_sync();
        assert!(j.syncing());
        let two = rec(&mut j, 2);
        j.finish_sync().unwrap();
        assert!(!j.syncing());
        assert_eq!(
            j.durable_end(),
            one,
            "the sync began before the second record"
        );
        j.start_sync();
        j.finish_sync().unwrap();
        assert_eq!(j.durable_end(), two);
        // Written, not synced, then a write fails: both are dropped from the file.
        rec(&mut j, 3);
        j.fail_after = Some(5);
        assert!(j
            .write_encoded(1, &[&encode_ops(&[op(4)]).unwrap()])
            .is_err());
        assert_eq!((j.durable_end(), j.written_end()), (two, two));
        assert_eq!(std::fs::metadata(segment_path(&d, 1)).unwrap().len(), two.1);
        rec(&mut j, 5);
        j.sync_all().unwrap();
        drop(j);
        let (_, got, stats) = replay(&d);
        let times: Vec<i64> = got
            .iter()
            .flatten()
            .map(|o| match o {
                Op::Position { pos, .. } => pos.time_ms,
                _ => -1,
            })
            .collect();
        assert_eq!(times, [1, 2, 5]);
        assert_eq!((stats.torn_tail_bytes, stats.corrupt_records), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn flipped_bit_stops_replay_at_the_damaged_record() {
        let d = dir("flip");
        let (mut j, _, _) = replay(&d);
        j.append(&[op(1)]).unwrap();
        let first_end = j.len();
        j.append(&[op(2)]).unwrap();
        drop(j);
        let path = segment_path(&d, 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first_end as usize + 10] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let (_, got, _) = replay(&d);
        assert_eq!(got.len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A segment of journal format 1 (as a version-2 build left it after a crash)
    /// replays, and new batches go to a segment of their own.
    #[test]
    fn format_1_segment_replays_and_is_not_appended_to() {
        use crate::store::codec::{OpV2, PositionRecordV2};
        let d = dir("format1");
        std::fs::create_dir_all(&d).unwrap();
        let old = vec![OpV2::Position {
            imei: 7,
            pos: PositionRecordV2 {
                time_ms: 41,
                driver_id: Some("A1".into()),
                ..PositionRecordV2::default()
            },
        }];
        let payload = bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend((payload.len() as u32).to_le_bytes());
        bytes.extend(crc32fast::hash(&payload).to_le_bytes());
        bytes.extend(&payload);
        std::fs::write(segment_path(&d, 1), &bytes).unwrap();

        let (mut j, got, stats) = replay(&d);
        assert_eq!(
            (got.len(), stats.corrupt_records, stats.torn_tail_bytes),
            (1, 0, 0)
        );
        assert!(matches!(&got[0][0], Op::Position { imei: 7, pos }
            if pos.time_ms == 41 && pos.driver_id.as_deref() == Some("A1") && pos.altitude_m.is_none()));
        j.append(&[op(42)]).unwrap();
        drop(j);
        assert_eq!(std::fs::read(segment_path(&d, 1)).unwrap(), bytes);
        let (_, got, stats) = replay(&d);
        assert_eq!((got.len(), stats.segments), (2, 2));
        assert!(matches!(&got[1][0], Op::Position { pos, .. } if pos.time_ms == 42));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Waits (bounded) for the spare to be filled.
    fn spare_filled(j: &mut Journal) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !j.spare_ready() {
            assert!(std::time::Instant::now() < until, "no spare after 10 s");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn segments_filled_ahead_are_written_in_place_and_cut_to_their_records_at_the_end() {
        let d = dir("ahead");
        let (mut j, _, _) = replay(&d);
        j.spare_max_rate = u64::MAX;
        j.fill_ahead(4096);
        j.append(&[op(0)]).unwrap();
        let mut sent = 1;
        for round in 0..6 {
            spare_filled(&mut j);
            // More than one 4 KiB segment each round.
            for k in 0..120 {
                j.append(&[op(round * 1000 + k), op(-1)]).unwrap();
                sent += 1;
                let on_disk = std::fs::metadata(segment_path(&d, j.seq)).unwrap().len();
                if j.zeros_to > 0 {
                    assert_eq!(on_disk, 4096, "written in place");
                    assert!(j.len() <= 4096);
                }
            }
        }
        assert!(j.seq >= 7, "moved on when full: {}", j.seq);
        let bytes = j.unsealed_bytes();
        let last = segment_path(&d, j.seq);
        let records_end = j.len();
        drop(j);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), records_end);
        assert!(!d.join(SPARE).exists());
        let (j, got, stats) = replay(&d);
        assert_eq!(got.len(), sent);
        assert_eq!((stats.torn_tail_bytes, stats.corrupt_records), (0, 0));
        assert_eq!(j.unsealed_bytes(), bytes);
        let times: Vec<i64> = got
            .iter()
            .map(|b| match &b[0] {
                Op::Position { pos, .. } => pos.time_ms,
                _ => unreachable!(),
            })
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "in order");
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A crash while a record was being written into a segment's zeros: the torn bytes
    /// are reported by their own size, and the segment's earlier records all replay.
    #[test]
    fn a_torn_record_in_the_zeros_is_cut_and_counted_by_its_own_size() {
        // A record whose end never reached the disk, one whose first page did not, and
        // a header cut short (what `ops::verify_and_doctor…` writes).
        let record: &[u8] = &[9, 0, 0, 0, 7, 7, 7, 7, 1, 2, 3];
        let header: &[u8] = &[40, 0, 0, 0, 1, 2];
        for (k, (torn, header_lost)) in [(record, false), (record, true), (header, false)]
            .into_iter()
            .enumerate()
        {
            let d = dir(&format!("ahead-torn-{k}"));
            let (mut j, _, _) = replay(&d);
            j.spare_max_rate = u64::MAX;
            j.fill_ahead(64 * 1024);
            j.append(&[op(1)]).unwrap();
            spare_filled(&mut j);
            j.append(&[op(2)]).unwrap();
            j.append(&[op(3)]).unwrap();
            let (seq, end) = (j.seq, j.len());
            assert!(j.zeros_to > 0);
            // Keep the zeros a kill would have kept.
            std::mem::forget(j);
            let path = segment_path(&d, seq);
            let mut bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), 64 * 1024);
            let at = end as usize;
            bytes[at..at + torn.len()].copy_from_slice(torn);
            if header_lost {
                bytes[at..at + 8].fill(0);
            }
            std::fs::write(&path, &bytes).unwrap();
            let _ = std::fs::remove_file(d.join(SPARE));
            let (mut j, got, stats) = replay(&d);
            assert_eq!(got.len(), 3, "{stats:?}");
            assert_eq!(stats.torn_tail_bytes, torn.len() as u64, "case {k}");
            assert_eq!(stats.corrupt_records, 0);
            j.append(&[op(4)]).unwrap();
            drop(j);
            let (j, got, stats) = replay(&d);
            assert_eq!(got.len(), 4);
            assert_eq!((stats.torn_tail_bytes, stats.corrupt_records), (0, 0));
            drop(j);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn removed_segments_are_not_replayed() {
        let d = dir("remove");
        let (mut j, _, _) = replay(&d);
        j.append(&[op(1)]).unwrap();
        let old = j.rotate().unwrap();
        j.remove(&old).unwrap();
        j.append(&[op(2)]).unwrap();
        drop(j);
        let (_, got, stats) = replay(&d);
        assert_eq!((got.len(), stats.segments), (1, 1));
        let _ = std::fs::remove_dir_all(&d);
    }
}
