//! The journal: an append-only log of group commits, fsynced before anyone is answered,
//! replayed at open, and deleted once a checkpoint has sealed what it holds into sled.
//!
//! Files: `DATA_DIR/journal/<seq as 16 hex digits>.wal`. Each starts with the 8-byte
//! magic [`MAGIC`]; then records `len: u32 LE | crc32(payload): u32 LE | payload`, one per
//! group commit, where payload is bincode 2 (standard) of `Vec<Op>`. Segments with the
//! format-1 magic [`MAGIC_V1`] (written before store values reached version 3) hold
//! `Vec<OpV2>`: they replay, and new batches go to a new segment, never after them.
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

/// File magic, with the journal format version as its last byte.
pub const MAGIC: &[u8; 8] = b"GT06WAL\x02";
/// Format 1: the same records, holding version-2 requests.
pub const MAGIC_V1: &[u8; 8] = b"GT06WAL\x01";
/// A record larger than this is not one we wrote: treat it as a torn or corrupt tail.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

pub struct Journal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Bytes in the current segment.
    len: u64,
    /// The file may hold bytes past `len` (an append failed and cutting them back failed
    /// too): they are cut before anything else is appended.
    dirty: bool,
    /// Test hook: the next append writes this many bytes of its record, then fails as if
    /// the disk were full.
    #[cfg(test)]
    fail_after: Option<usize>,
}

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

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
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
        let segs = segments(dir)?;
        let mut stats = ReplayStats {
            segments: segs.len(),
            ..ReplayStats::default()
        };
        let last = segs.len().saturating_sub(1);
        let mut good_len = 0;
        let mut last_is_old = false;
        for (i, (_, path)) in segs.iter().enumerate() {
            let (good, total, corrupt, old) = replay_segment(path, &mut apply, &mut stats.batches)?;
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
                    // Cut the torn tail so the next batch follows the last good one.
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
            dirty: false,
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
        self.append_payload(&[&payload])
    }

    /// [`Journal::append`] for operations already encoded by [`encode_ops`]: `count`
    /// operations in `parts`, in order. Writes the same bytes as `append` would, so the
    /// encoding can happen where there is CPU to spare (in the sessions) rather than on
    /// the one writer thread.
    pub fn append_encoded(&mut self, count: usize, parts: &[&[u8]]) -> Result<(), StoreError> {
        // A sequence is its length (bincode's varint of a u64), then its elements.
        let len = bincode::encode_to_vec(count as u64, bincode::config::standard())
            .map_err(|e| StoreError::Io(format!("journal encode: {e}")))?;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(len.as_slice());
        all.extend_from_slice(parts);
        self.append_payload(&all)
    }

    /// Writes one record whose payload is `parts` concatenated, and `fdatasync`s.
    fn append_payload(&mut self, parts: &[&[u8]]) -> Result<(), StoreError> {
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
        // A failed write or fdatasync (ENOSPC, EIO) may have left part of the record, or
        // all of it, in the file. Replay stops at the first bad record, so a torn one
        // left in front of the next batch would hide every later commit: cut it off now,
        // and if even that fails, before the next append.
        let written = self.write_record(&rec).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.dirty = true;
            let _ = self.cut_back();
            return Err(e.into());
        }
        self.len += rec.len() as u64;
        Ok(())
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
    fn cut_back(&mut self) -> Result<(), StoreError> {
        use std::io::Seek;
        self.file.set_len(self.len)?;
        self.file.seek(std::io::SeekFrom::Start(self.len))?;
        self.dirty = false;
        Ok(())
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the current segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// Starts a new segment for the batches that follow and returns the older segments,
    /// which the caller deletes with [`Journal::remove`] once what they hold is sealed.
    pub fn rotate(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        if self.dirty {
            // A segment that is no longer the last must end on a good record.
            self.cut_back()?;
        }
        let next = self.seq + 1;
        let file = create_segment(&self.dir, next)?;
        self.file = file;
        self.seq = next;
        self.len = MAGIC.len() as u64;

        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(s, _)| *s < next)
            .map(|(_, p)| p)
            .collect())
    }

    /// Deletes sealed segments, durably.
    pub fn remove(&self, paths: &[PathBuf]) -> Result<(), StoreError> {
        for p in paths {
            std::fs::remove_file(p)?;
        }
        sync_dir(&self.dir)
    }
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

/// One record's payload as requests; `old` for a format-1 segment (`Vec<OpV2>`).
/// Operations as a journal payload holds them, without the count in front: what
/// [`Journal::append_encoded`] takes.
pub fn encode_ops(ops: &[Op]) -> Result<Vec<u8>, StoreError> {
    // ~70 bytes per position: one allocation for most requests.
    let mut out = Vec::with_capacity(ops.len() * 80);
    for op in ops {
        bincode::serde::encode_into_std_write(op, &mut out, bincode::config::standard())
            .map_err(|e| StoreError::Io(format!("journal encode: {e}")))?;
    }
    Ok(out)
}

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
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            return Ok((good, total, 0, old));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD || good + 8 + len as u64 > total {
            return Ok((good, total, 1, old));
        }
        payload.resize(len as usize, 0);
        if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok((good, total, 1, old));
        }
        if !f(&payload, old)? {
            return Ok((good, total, 1, old));
        }
        good += 8 + len as u64;
    }
}

/// The segments in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    Ok(segments(dir)?.into_iter().map(|(_, p)| p).collect())
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
            jb.append_encoded(n, &refs).unwrap();
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
