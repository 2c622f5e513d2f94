//! A device's unsealed positions until a checkpoint seals them: the newest few compact in
//! memory, older ones in a scratch file.
//!
//! Why: the fewer checkpoints, the fewer sled writes (which is what makes sled grow on
//! disk and in memory), so the store holds millions of unsealed positions, and held in
//! memory they were what made a server's RSS climb for the whole checkpoint interval. A
//! [`PositionRecord`] is 192 bytes; a [`Row`] is 32, with the cell id in a per-device
//! dictionary (it changes every few minutes) and rare fields in a side list. Once a tail
//! holds [`SPILL_ROWS`] rows they are written as they are (32 bytes a row, plus 16 per
//! distinct cell; the sealed block format took the writer twice the CPU per position at
//! peak) into the
//! [`Spill`] file, and only the chunk's place stays in memory: under a byte per
//! position, and at most [`SPILL_ROWS`] rows per device.
//!
//! The spill file is scratch, never a source of truth: it is unlinked from the start (it
//! goes with the process, nothing to clean up or back up), nothing is fsynced, and the
//! journal holds every position until it is sealed. Without one (a filesystem without
//! `O_TMPFILE`, a read-only store, a failed write) rows simply stay in memory.

use super::codec::{LbsRecord, PositionRecord};
use crate::ops::metrics::METRICS;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// No cell in the dictionary for this row.
const NO_LBS: u16 = u16::MAX;
/// Cells looked up from the newest backwards before a new entry is added.
const LBS_LOOKBACK: usize = 8;
/// The row has no entry in the tail's `extras`.
const NO_EXTRA: u32 = u32::MAX;
/// Rows a tail keeps in memory before writing them out as one chunk. Small enough that a
/// fleet's tails stay a few MiB whatever the checkpoint interval (1,000 devices × 64 ×
/// 32 bytes), large enough that a chunk is one write of a few hundred bytes.
pub const SPILL_ROWS: usize = 64;
/// One warning per process when spilling fails; rows then stay in memory.
static SPILL_WARNED: AtomicBool = AtomicBool::new(false);

/// The scratch file tails spill to: one per checkpoint generation, unlinked, freed when
/// the last chunk in it is sealed or dropped. Chunks are gathered in memory and written
/// [`SPILL_WRITE`] at a time: a `pwrite` per chunk of 64 rows was a fifth of the
/// writer's time at peak.
#[derive(Debug)]
pub struct Spill {
    file: File,
    /// Chunks at or past `pending.at` are still in memory, the others in the file.
    pending: std::sync::Mutex<Pending>,
    /// Bytes in the file and in memory together: where the next chunk goes.
    end: AtomicU64,
    /// Written out once this much is gathered.
    write_at: usize,
    /// A failed write keeps what was gathered, up to this much; past it a chunk is
    /// refused (and its rows stay in their tail).
    keep_max: usize,
}

#[derive(Debug, Default)]
struct Pending {
    at: u64,
    bytes: Vec<u8>,
    /// After a failed write, the next is tried once this much is gathered, not at
    /// every chunk.
    retry_at: usize,
}

/// Bytes of chunks gathered before they are written to the scratch file.
const SPILL_WRITE: usize = 64 * 1024;
/// Bytes of chunks kept in memory while the scratch file cannot be written.
const SPILL_KEEP_MAX: usize = 4 << 20;

impl Spill {
    /// An unnamed file in `dir`, or None (logged) when the filesystem cannot make one.
    pub fn create(dir: &Path) -> Option<Arc<Spill>> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match opened {
            Ok(file) => Some(Arc::new(Spill::on(file, SPILL_WRITE, SPILL_KEEP_MAX))),
            Err(e) => {
                if !SPILL_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %dir.display(), error = %e, "no scratch file for unsealed positions; they stay in memory until sealed");
                }
                None
            }
        }
    }

    fn on(file: File, write_at: usize, keep_max: usize) -> Spill {
        Spill {
            file,
            pending: Default::default(),
            end: AtomicU64::new(0),
            write_at,
            keep_max,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a chunk; returns where it is. An error when it cannot be written and too
    /// much is already waiting in memory: the chunk is not taken.
    fn write(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let mut p = self.pending();
        let at = p.at + p.bytes.len() as u64;
        p.bytes.extend_from_slice(bytes);
        if p.bytes.len() >= self.write_at.max(p.retry_at) {
            if let Err(e) = self.file.write_all_at(&p.bytes, p.at) {
                if p.bytes.len() > self.keep_max {
                    let keep = p.bytes.len() - bytes.len();
                    p.bytes.truncate(keep);
                    return Err(e);
                }
                p.retry_at = p.bytes.len() + self.write_at.max(1);
            } else {
                p.at += p.bytes.len() as u64;
                p.bytes.clear();
                p.retry_at = 0;
            }
        }
        self.end.store(at + bytes.len() as u64, Ordering::Relaxed);
        METRICS.scratch_bytes(bytes.len() as u64, 0);
        Ok(at)
    }

    /// The `len` bytes of the chunk at `at`.
    fn read(&self, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
        {
            let p = self.pending();
            if at >= p.at {
                let from = (at - p.at) as usize;
                return p
                    .bytes
                    .get(from..from + len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("scratch chunk past the end"));
            }
        }
        // Before `pending.at`: written, and a chunk is never split between the two.
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        METRICS.scratch_bytes(0, *self.end.get_mut());
    }
}

/// Where a run of a tail's rows went: a block in a spill file.
#[derive(Debug, Clone)]
struct Chunk {
    spill: Arc<Spill>,
    at: u64,
    len: u32,
    count: u32,
    first_ms: i64,
    last_ms: i64,
}

impl Chunk {
    /// The chunk's rows as a tail of their own (rows, their cells and extras).
    fn load(&self) -> Result<Tail, String> {
        let buf = self
            .spill
            .read(self.at, self.len as usize)
            .map_err(|e| e.to_string())?;
        chunk_decode(&buf).ok_or_else(|| "a scratch chunk does not decode".to_string())
    }

    /// As [`Chunk::load`], or an empty tail with an error line: for reads, which then miss
    /// these positions this once (sealing uses [`Tail::take_all`], which fails instead).
    fn load_logged(&self) -> Tail {
        self.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, count = self.count, "unsealed positions unreadable from the scratch file");
            Tail::default()
        })
    }
}

/// Positions gathered chunk by chunk, then the rows, sorted by fix time. Live fixes come
/// in order already; history that arrived late does not. Stable, so on a tie the earlier
/// write (a chunk before the rows) is kept, as `insert` would have; ties only arise if a
/// chunk could not be read back when a position was inserted.
fn in_order(mut out: Vec<PositionRecord>) -> Vec<PositionRecord> {
    if !out.windows(2).all(|w| w[0].time_ms < w[1].time_ms) {
        out.sort_by_key(|p| p.time_ms);
        out.dedup_by_key(|p| p.time_ms);
    }
    out
}

/// A chunk as written: row count u32, cell count u32, the rows at [`ROW_BYTES`] each and
/// the cells at [`CELL_BYTES`] each (fixed-width little-endian fields in declaration
/// order), then the extras as bincode. Fixed widths, not bincode: the writer writes every
/// position out this way and the sealer reads every one back, and serde's field-by-field
/// path was a fifth of the writer's time at peak.
fn chunk_encode(t: &Tail) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::with_capacity(8 + t.rows.len() * ROW_BYTES + t.cells.len() * CELL_BYTES + 1);
    out.extend_from_slice(&(t.rows.len() as u32).to_le_bytes());
    out.extend_from_slice(&(t.cells.len() as u32).to_le_bytes());
    for r in &t.rows {
        out.extend_from_slice(&r.time_ms.to_le_bytes());
        out.extend_from_slice(&r.recv_delta.to_le_bytes());
        out.extend_from_slice(&r.lat_raw.to_le_bytes());
        out.extend_from_slice(&r.lon_raw.to_le_bytes());
        out.extend_from_slice(&r.speed_kmh.to_le_bytes());
        out.extend_from_slice(&r.course.to_le_bytes());
        out.extend_from_slice(&r.lbs.to_le_bytes());
        out.push(r.satellites);
        out.push(r.flags);
        out.extend_from_slice(&r.extra.to_le_bytes());
    }
    for c in &t.cells {
        out.extend_from_slice(&c.mcc.to_le_bytes());
        out.extend_from_slice(&c.mnc.to_le_bytes());
        out.extend_from_slice(&c.lac.to_le_bytes());
        out.extend_from_slice(&c.cell.to_le_bytes());
    }
    bincode::serde::encode_into_std_write(&t.extras, &mut out, bincode::config::standard())
        .map_err(std::io::Error::other)?;
    Ok(out)
}

const ROW_BYTES: usize = 32;
const CELL_BYTES: usize = 16;

/// Reads [`chunk_encode`]'s bytes back; None when they are not that.
fn chunk_decode(b: &[u8]) -> Option<Tail> {
    let mut r = Fields(b);
    let (n_rows, n_cells) = (r.u32()? as usize, r.u32()? as usize);
    // Counts are checked against the bytes before anything is allocated for them.
    if n_rows.checked_mul(ROW_BYTES)? + n_cells.checked_mul(CELL_BYTES)? > r.0.len() {
        return None;
    }
    let mut rows = Vec::with_capacity(n_rows);
    for _ in 0..n_rows {
        rows.push(Row {
            time_ms: r.i64()?,
            recv_delta: r.u32()? as i32,
            lat_raw: r.u32()? as i32,
            lon_raw: r.u32()? as i32,
            speed_kmh: r.u16()?,
            course: r.u16()?,
            lbs: r.u16()?,
            satellites: r.u8()?,
            flags: r.u8()?,
            extra: r.u32()?,
        });
    }
    let mut cells = Vec::with_capacity(n_cells);
    for _ in 0..n_cells {
        cells.push(LbsRecord {
            mcc: r.u16()?,
            mnc: r.u16()?,
            lac: r.u32()?,
            cell: r.i64()? as u64,
        });
    }
    let (extras, used): (Vec<Extra>, usize) =
        bincode::serde::decode_from_slice(r.0, bincode::config::standard()).ok()?;
    (used == r.0.len()).then_some(Tail {
        rows,
        cells,
        extras,
        ..Tail::default()
    })
}

/// Little-endian fields off the front of a byte slice.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    time_ms: i64,
    /// `received_ms - time_ms`, when it fits; otherwise the full value is in `extra`.
    recv_delta: i32,
    lat_raw: i32,
    lon_raw: i32,
    speed_kmh: u16,
    course: u16,
    lbs: u16,
    satellites: u8,
    /// bit 0 valid, 1 acc known, 2 acc, 3 reupload known, 4 reupload.
    flags: u8,
    /// Index into the tail's `extras`, or [`NO_EXTRA`]. An index rather than a box: four
    /// bytes instead of eight, which with a million rows per checkpoint is RSS.
    extra: u32,
}

/// Fields most positions don't carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Extra {
    received_ms: Option<i64>,
    lbs: Option<LbsRecord>,
    invalid_reason: Option<String>,
    odometer_m: Option<u32>,
    alarm: Option<String>,
    battery_percent: Option<u8>,
    gsm_signal: Option<u8>,
    power_mv: Option<u32>,
    battery_mv: Option<u32>,
    temperature_dc: Option<i32>,
    driver_id: Option<String>,
    altitude_m: Option<i32>,
    driving_time_s: Option<u32>,
    engine_time_s: Option<u32>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        *self == Extra::default()
    }
}

/// Positions of one device, one per fix time: rows in memory (sorted by fix time) and
/// chunks written out before them (each sorted; in the order written, so their times
/// may interleave with each other's and the rows' when history arrives late).
#[derive(Clone, Debug, Default)]
pub struct Tail {
    rows: Vec<Row>,
    cells: Vec<LbsRecord>,
    extras: Vec<Extra>,
    spilled: Vec<Chunk>,
    /// Positions in `spilled`.
    spilled_count: usize,
    /// Newest fix time in `spilled`: a later one needs no look there.
    spilled_last_ms: i64,
    /// Rows at which the next spill is tried (0: [`SPILL_ROWS`]); doubled after a failure.
    spill_at: usize,
}

impl Tail {
    pub fn len(&self) -> usize {
        self.rows.len() + self.spilled_count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a position; the first one stored for a fix time wins. Returns false for a
    /// fix time already present. With `spill`, a full set of rows is written out to it.
    pub fn insert(&mut self, p: &PositionRecord, spill: Option<&Arc<Spill>>) -> bool {
        if self.spilled_has(p.time_ms) {
            return false;
        }
        let row = self.pack(p);
        match self.rows.last() {
            None => self.rows.push(row),
            Some(last) if last.time_ms < row.time_ms => self.rows.push(row),
            Some(_) => match self.rows.binary_search_by_key(&row.time_ms, |r| r.time_ms) {
                Ok(_) => return false,
                Err(i) => self.rows.insert(i, row),
            },
        }
        if let Some(spill) = spill {
            if self.rows.len() >= self.spill_at.max(SPILL_ROWS) {
                self.spill(spill);
            }
        }
        true
    }

    /// Whether a chunk already holds `time_ms`. Live fixes are newer than every chunk and
    /// skip this; only history arriving late reads a chunk back.
    fn spilled_has(&self, time_ms: i64) -> bool {
        if self.spilled.is_empty() || time_ms > self.spilled_last_ms {
            return false;
        }
        self.spilled
            .iter()
            .filter(|c| c.first_ms <= time_ms && time_ms <= c.last_ms)
            .any(|c| {
                c.load_logged()
                    .rows
                    .binary_search_by_key(&time_ms, |r| r.time_ms)
                    .is_ok()
            })
    }

    /// Writes the rows out as one chunk and forgets them, keeping the rows' room.
    fn spill(&mut self, spill: &Arc<Spill>) {
        let (Some(first), Some(last)) = (self.rows.first(), self.rows.last()) else {
            return;
        };
        let (first_ms, last_ms, count) = (first.time_ms, last.time_ms, self.rows.len());
        let written = chunk_encode(self).and_then(|bytes| Ok((spill.write(&bytes)?, bytes.len())));
        match written {
            Ok((at, len)) => {
                self.spilled_last_ms = if self.spilled.is_empty() {
                    last_ms
                } else {
                    self.spilled_last_ms.max(last_ms)
                };
                self.spilled.push(Chunk {
                    spill: spill.clone(),
                    at,
                    len: len as u32,
                    count: count as u32,
                    first_ms,
                    last_ms,
                });
                self.spilled_count += count;
                self.rows.clear();
                self.cells.clear();
                self.extras.clear();
                self.spill_at = 0;
            }
            Err(e) => {
                // Kept in memory; tried again at twice the rows, so a full disk costs one
                // failed write per doubling, not one per position.
                self.spill_at = self.rows.len() * 2;
                if !SPILL_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "unsealed positions not written to the scratch file; they stay in memory until sealed");
                }
            }
        }
    }

    /// Positions with `from_ms <= time < to_ms`, oldest first.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> Vec<PositionRecord> {
        match to_ms.checked_sub(1) {
            Some(last_ms) => self.between(from_ms, last_ms),
            None => Vec::new(),
        }
    }

    /// Positions with `from_ms <= time <= last_ms`, oldest first; a chunk that cannot be
    /// read is missed this once (logged).
    fn between(&self, from_ms: i64, last_ms: i64) -> Vec<PositionRecord> {
        // `load_logged` never fails, so neither does this.
        self.gather(from_ms, last_ms, |c| Ok(c.load_logged()))
            .unwrap_or_default()
    }

    /// Positions with `from_ms <= time <= last_ms` from the chunks, each read by `load`,
    /// and the rows, oldest first; the first error of `load`.
    fn gather(
        &self,
        from_ms: i64,
        last_ms: i64,
        load: impl Fn(&Chunk) -> Result<Tail, String>,
    ) -> Result<Vec<PositionRecord>, String> {
        let chunks: Vec<&Chunk> = self
            .spilled
            .iter()
            .filter(|c| c.last_ms >= from_ms && c.first_ms <= last_ms)
            .collect();
        if chunks.is_empty() {
            return Ok(self.rows_between(from_ms, last_ms).collect());
        }
        let room = chunks.iter().map(|c| c.count as usize).sum::<usize>() + self.rows.len();
        let mut out = Vec::with_capacity(room);
        for c in chunks {
            out.extend(load(c)?.rows_between(from_ms, last_ms));
        }
        out.extend(self.rows_between(from_ms, last_ms));
        Ok(in_order(out))
    }

    /// The rows in memory with `from_ms <= time <= last_ms`, unpacked.
    fn rows_between(
        &self,
        from_ms: i64,
        last_ms: i64,
    ) -> impl Iterator<Item = PositionRecord> + '_ {
        let start = self.rows.partition_point(|r| r.time_ms < from_ms);
        self.rows[start..]
            .iter()
            .take_while(move |r| r.time_ms <= last_ms)
            .map(|r| self.unpack(r))
    }

    /// Gives back the room kept for growth. A tail stops growing once a checkpoint takes it
    /// for sealing, and doubling leaves a quarter of it unused on average: with millions
    /// of rows in the sealing set that is tens of MiB of RSS. A tail that happens to be
    /// nearly full is not copied to save the little left.
    pub fn shrink(&mut self) {
        if self.rows.capacity() - self.rows.len() > self.rows.len() / 8 {
            self.rows.shrink_to_fit();
        }
        self.cells.shrink_to_fit();
        self.extras.shrink_to_fit();
        self.spilled.shrink_to_fit();
    }

    /// Everything, oldest first, emptying the tail (its chunks are dropped: the spill
    /// file is freed with its last one). An error when a chunk cannot be read back: the
    /// tail is emptied all the same, and its positions are then only in the journal.
    pub fn take_all(&mut self) -> Result<Vec<PositionRecord>, String> {
        std::mem::take(self).gather(i64::MIN, i64::MAX, Chunk::load)
    }

    fn cell_index(&mut self, lbs: LbsRecord) -> Option<u16> {
        let n = self.cells.len();
        if let Some(i) = self.cells[n.saturating_sub(LBS_LOOKBACK)..]
            .iter()
            .rposition(|c| *c == lbs)
        {
            return Some((n.saturating_sub(LBS_LOOKBACK) + i) as u16);
        }
        if n >= NO_LBS as usize {
            return None;
        }
        self.cells.push(lbs);
        Some(n as u16)
    }

    /// Borrows the record: the writer keeps it for the device's latest position too, and
    /// a copy per position for packing was a visible part of its time under load.
    fn pack(&mut self, p: &PositionRecord) -> Row {
        let mut extra = Extra {
            invalid_reason: p.invalid_reason.clone(),
            odometer_m: p.odometer_m,
            alarm: p.alarm.clone(),
            battery_percent: p.battery_percent,
            gsm_signal: p.gsm_signal,
            power_mv: p.power_mv,
            battery_mv: p.battery_mv,
            temperature_dc: p.temperature_dc,
            driver_id: p.driver_id.clone(),
            altitude_m: p.altitude_m,
            driving_time_s: p.driving_time_s,
            engine_time_s: p.engine_time_s,
            ..Extra::default()
        };
        let recv_delta = match i32::try_from(p.received_ms.wrapping_sub(p.time_ms)) {
            Ok(d) if p.received_ms.checked_sub(p.time_ms).is_some() => d,
            _ => {
                extra.received_ms = Some(p.received_ms);
                0
            }
        };
        let lbs = match p.lbs {
            None => NO_LBS,
            Some(l) => match self.cell_index(l) {
                Some(i) => i,
                None => {
                    extra.lbs = Some(l);
                    NO_LBS
                }
            },
        };
        let bit = |b: bool, n: u8| if b { 1 << n } else { 0 };
        let flags = bit(p.valid, 0)
            | bit(p.acc.is_some(), 1)
            | bit(p.acc == Some(true), 2)
            | bit(p.reupload.is_some(), 3)
            | bit(p.reupload == Some(true), 4);
        Row {
            time_ms: p.time_ms,
            recv_delta,
            lat_raw: p.lat_raw,
            lon_raw: p.lon_raw,
            speed_kmh: p.speed_kmh,
            course: p.course,
            lbs,
            satellites: p.satellites,
            flags,
            extra: if extra.is_empty() || self.extras.len() >= NO_EXTRA as usize {
                NO_EXTRA
            } else {
                self.extras.push(extra);
                (self.extras.len() - 1) as u32
            },
        }
    }

    fn unpack(&self, r: &Row) -> PositionRecord {
        let x = self.extras.get(r.extra as usize);
        let flag = |n: u8| r.flags & (1 << n) != 0;
        let opt = |known: u8, value: u8| flag(known).then(|| flag(value));
        PositionRecord {
            time_ms: r.time_ms,
            received_ms: x
                .and_then(|x| x.received_ms)
                .unwrap_or(r.time_ms + r.recv_delta as i64),
            lat_raw: r.lat_raw,
            lon_raw: r.lon_raw,
            speed_kmh: r.speed_kmh,
            course: r.course,
            satellites: r.satellites,
            valid: flag(0),
            acc: opt(1, 2),
            reupload: opt(3, 4),
            lbs: match r.lbs {
                NO_LBS => x.and_then(|x| x.lbs),
                i => self.cells.get(i as usize).copied(),
            },
            invalid_reason: x.and_then(|x| x.invalid_reason.clone()),
            odometer_m: x.and_then(|x| x.odometer_m),
            alarm: x.and_then(|x| x.alarm.clone()),
            battery_percent: x.and_then(|x| x.battery_percent),
            gsm_signal: x.and_then(|x| x.gsm_signal),
            power_mv: x.and_then(|x| x.power_mv),
            battery_mv: x.and_then(|x| x.battery_mv),
            temperature_dc: x.and_then(|x| x.temperature_dc),
            driver_id: x.and_then(|x| x.driver_id.clone()),
            altitude_m: x.and_then(|x| x.altitude_m),
            driving_time_s: x.and_then(|x| x.driving_time_s),
            engine_time_s: x.and_then(|x| x.engine_time_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(t: i64) -> PositionRecord {
        PositionRecord {
            time_ms: t,
            received_ms: t - 5,
            lat_raw: i32::MIN,
            lon_raw: i32::MAX,
            speed_kmh: 300,
            course: 359,
            satellites: 12,
            valid: false,
            invalid_reason: Some("time_in_future".into()),
            acc: Some(false),
            odometer_m: Some(u32::MAX),
            lbs: Some(LbsRecord {
                mcc: 0x7fff,
                mnc: 999,
                lac: u32::MAX,
                cell: u64::MAX,
            }),
            alarm: Some("sos".into()),
            reupload: Some(true),
            battery_percent: Some(100),
            gsm_signal: Some(4),
            power_mv: Some(12_345),
            battery_mv: Some(4_100),
            temperature_dc: Some(-405),
            driver_id: Some("0123ABCD".into()),
            altitude_m: Some(-412),
            driving_time_s: Some(7_200),
            engine_time_s: Some(u32::MAX),
        }
    }

    fn at(t: i64) -> PositionRecord {
        PositionRecord {
            time_ms: t,
            received_ms: t + 700,
            lat_raw: 1_000 + t as i32,
            lon_raw: 2_000 - t as i32,
            valid: t % 3 != 0,
            lbs: Some(LbsRecord {
                mcc: 250,
                mnc: 1,
                lac: 7,
                cell: (t / 100) as u64,
            }),
            ..PositionRecord::default()
        }
    }

    #[test]
    fn rows_written_out_read_back_as_if_they_had_stayed_in_memory() {
        let made = Spill::create(&std::env::temp_dir()).expect("O_TMPFILE in the temp dir");
        // Chunks all still in memory (the default: a few KiB here), all in the file, and
        // some in each.
        for write_at in [SPILL_WRITE, 0, 5_000] {
            let file = made.file.try_clone().unwrap();
            file.set_len(0).unwrap();
            read_back_as_kept(Arc::new(Spill::on(file, write_at, SPILL_KEEP_MAX)));
        }
    }

    fn read_back_as_kept(spill: Arc<Spill>) {
        let mut spilled = Tail::default();
        let mut kept = Tail::default();
        // Live fixes, then history arriving late into the spilled range, then re-sends
        // of positions already written out and of positions still in memory.
        let mut times: Vec<i64> = (0..300).map(|i| 1_000 + i * 2).collect();
        times.extend((0..100).map(|i| 1_001 + i * 4));
        times.extend([1_000, 1_200, 1_598, 1_401]);
        times.push(full(5_000).time_ms);
        for &t in &times {
            let p = if t == 5_000 { full(t) } else { at(t) };
            assert_eq!(
                spilled.insert(&p, Some(&spill)),
                kept.insert(&p, None),
                "insert of {t}"
            );
            assert!(
                spilled.rows.len() < SPILL_ROWS,
                "rows in memory are bounded"
            );
        }
        assert_eq!(spilled.len(), 402);
        assert_eq!(spilled.len(), kept.len());
        assert!(
            spilled.spilled.len() >= 5,
            "{} chunks",
            spilled.spilled.len()
        );
        for (from, to) in [
            (i64::MIN, i64::MAX),
            (1_000, 1_001),
            (1_100, 1_300),
            (1_401, 1_402),
            (1_599, 5_000),
            (1_599, 5_001),
        ] {
            assert_eq!(
                spilled.range(from, to),
                kept.range(from, to),
                "{from}..{to}"
            );
        }
        // Every field of a record survives the scratch file.
        assert_eq!(spilled.range(5_000, 5_001), vec![full(5_000)]);
        let all = spilled.take_all().unwrap();
        assert_eq!(all, kept.take_all().unwrap());
        assert!(spilled.is_empty());
        assert_eq!(Arc::strong_count(&spill), 1, "no chunk keeps the file");
    }

    #[test]
    fn rows_that_cannot_be_written_out_stay_in_memory() {
        let path = std::env::temp_dir().join(format!("gt06-spill-ro-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        // A read-only handle: every write fails, and nothing is kept in memory instead.
        let spill = Arc::new(Spill::on(File::open(&path).unwrap(), 0, 0));
        let _ = std::fs::remove_file(&path);
        let mut tail = Tail::default();
        for t in 0..(SPILL_ROWS as i64 * 3) {
            assert!(tail.insert(&at(t), Some(&spill)));
        }
        assert!(tail.spilled.is_empty());
        assert_eq!(tail.len(), SPILL_ROWS * 3);
        // Tried again at twice the rows after each failure, not at every insert.
        assert_eq!(tail.spill_at, SPILL_ROWS * 4);
        let times: Vec<i64> = tail.take_all().unwrap().iter().map(|p| p.time_ms).collect();
        assert_eq!(times, (0..SPILL_ROWS as i64 * 3).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_the_file_refuses_are_kept_in_memory_up_to_a_bound() {
        let path = std::env::temp_dir().join(format!("gt06-spill-keep-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        // Every write fails; up to 3 chunks' worth waits in memory, still readable.
        let spill = Arc::new(Spill::on(File::open(&path).unwrap(), 0, 3 * 2_100));
        let _ = std::fs::remove_file(&path);
        let mut tail = Tail::default();
        let n = SPILL_ROWS as i64 * 5;
        for t in 0..n {
            assert!(tail.insert(&at(t), Some(&spill)));
        }
        assert_eq!(tail.spilled.len(), 3, "three chunks taken, then refused");
        assert!(tail.rows.len() > SPILL_ROWS, "the rest stayed in the tail");
        assert_eq!(tail.range(0, 10), (0..10).map(at).collect::<Vec<_>>());
        let times: Vec<i64> = tail.take_all().unwrap().iter().map(|p| p.time_ms).collect();
        assert_eq!(times, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn records_are_the_size_the_module_doc_says() {
        assert_eq!(std::mem::size_of::<PositionRecord>(), 192);
    }

    #[test]
    fn rows_stay_small() {
        assert!(
            std::mem::size_of::<Row>() <= 32,
            "{}",
            std::mem::size_of::<Row>()
        );
    }

    #[test]
    fn every_field_round_trips_and_order_is_by_time() {
        let mut tail = Tail::default();
        let plain = |t| PositionRecord {
            time_ms: t,
            received_ms: t + 900,
            valid: true,
            lbs: Some(LbsRecord {
                mcc: 1,
                mnc: 2,
                lac: 3,
                cell: 4,
            }),
            ..PositionRecord::default()
        };
        let far = PositionRecord {
            received_ms: i64::MAX,
            ..plain(50)
        };
        for p in [plain(30), full(10), plain(20), far.clone()] {
            assert!(tail.insert(&p, None));
        }
        assert!(
            !tail.insert(&plain(20), None),
            "a second position at the same fix time is refused"
        );
        let got = tail.range(0, i64::MAX);
        assert_eq!(got, vec![full(10), plain(20), plain(30), far]);
        assert_eq!(tail.range(20, 30), vec![plain(20)]);
        assert_eq!(tail.take_all().unwrap().len(), 4);
        assert!(tail.is_empty());
    }
}
