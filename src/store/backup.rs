//! Backup dumps: a consistent logical copy of a store, written while the store keeps
//! taking group commits, and read back into a fresh store.
//!
//! Why not copy sled's files: sled rewrites its files in place whenever it is written, and
//! even a read may finish a node split, so a file copy of a live `db/` is torn (3 of 6 such
//! copies failed to open in the storage study). Instead, under a freeze ([`super::freeze`])
//! sled's logical contents cannot change, so scanning its trees one after the other gives
//! the state at the freeze; the journal segments that existed then, up to the length they
//! had then, hold everything committed since the last checkpoint. That pair is exactly what
//! a restart at the freeze would have opened, so restoring it needs nothing but the
//! ordinary open (journal replay) and a checkpoint.
//!
//! The dump format (version 1; integers little-endian): the 8-byte magic [`DUMP_MAGIC`],
//! then records `kind u8 | len u32 | crc32(body) u32 | body`:
//! - `J`: one journal record's payload (bincode 2 of `Vec<Op>`, as in the journal), oldest
//!   first; all of them come before any `T`;
//! - `T`: a tree entry, `tree u8 | key_len u16 | key | value`, trees in the order
//!   blocks (1), block_index (2), events (3), devices (4), keys ascending within a tree;
//! - `E`: the end, `journal_records u64 | entries u64` (a dump without it is incomplete);
//! - `X`: the producer gave up; the body is its reason in UTF-8, and nothing follows.
//!
//! [`Checker`] reads a dump without a store: it checks every record's checksum, every
//! block's checksum and its agreement with the index, and works out what a restore will
//! hold (positions per device, exactly once, with their time range). [`import`] builds a
//! fresh store from a dump and checks that it holds what the checker said.
//!
//! This room never decides where a dump goes or comes from (`ops::backup` and
//! `ops::control` do) and never writes a store that a writer thread holds.

use super::codec::{self, BlockMeta, DeviceRecord, EventRecord, Op};
use super::freeze::FreezeError;
use super::{block, journal, keys, writer, OpenOptions, Store, StoreError, VerifyReport};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File magic of a dump, with its format version as the last byte.
pub const DUMP_MAGIC: &[u8; 8] = b"GT06BAK\x01";
/// A record larger than this is not one we wrote (journal records are capped below it).
const MAX_BODY: u32 = 512 * 1024 * 1024;

const KIND_JOURNAL: u8 = b'J';
const KIND_ENTRY: u8 = b'T';
const KIND_END: u8 = b'E';
const KIND_REFUSED: u8 = b'X';

const TREE_BLOCKS: u8 = 1;
const TREE_INDEX: u8 = 2;
const TREE_EVENTS: u8 = 3;
const TREE_DEVICES: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0}")]
    Refused(String),
    #[error("the backup stream ended before its end record (after {0} records)")]
    Truncated(u64),
    #[error("backup data is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<FreezeError> for DumpError {
    fn from(e: FreezeError) -> Self {
        DumpError::Refused(e.to_string())
    }
}

/// One record of a dump.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Journal(Vec<u8>),
    Entry {
        tree: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    End {
        journal: u64,
        entries: u64,
    },
    Refused(String),
}

/// What one device holds: positions exactly once, and the fix-time range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSummary {
    pub positions: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl DeviceSummary {
    fn add_range(&mut self, n: u64, first: i64, last: i64) {
        self.positions += n;
        self.first_ms = Some(self.first_ms.map_or(first, |f| f.min(first)));
        self.last_ms = Some(self.last_ms.map_or(last, |l| l.max(last)));
    }
}

/// What a dump (or a store) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub devices: BTreeMap<u64, DeviceSummary>,
    pub events: u64,
}

impl Summary {
    pub fn positions(&self) -> u64 {
        self.devices.values().map(|d| d.positions).sum()
    }

    pub fn first_ms(&self) -> Option<i64> {
        self.devices.values().filter_map(|d| d.first_ms).min()
    }

    pub fn last_ms(&self) -> Option<i64> {
        self.devices.values().filter_map(|d| d.last_ms).max()
    }

    /// The first difference from `other`, said for an operator.
    pub fn difference(&self, other: &Summary) -> Option<String> {
        if self.events != other.events {
            return Some(format!("{} events, expected {}", self.events, other.events));
        }
        for (imei, want) in &other.devices {
            let got = self.devices.get(imei).copied().unwrap_or_default();
            if got != *want {
                return Some(format!(
                    "device {imei:015}: {} positions in {:?}..{:?}, expected {} in {:?}..{:?}",
                    got.positions,
                    got.first_ms,
                    got.last_ms,
                    want.positions,
                    want.first_ms,
                    want.last_ms
                ));
            }
        }
        if let Some(extra) = self.devices.keys().find(|k| !other.devices.contains_key(k)) {
            return Some(format!("device {extra:015} is not in the backup"));
        }
        None
    }
}

fn write_record(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..5].copy_from_slice(&(len as u32).to_le_bytes());
    head[5..9].copy_from_slice(&h.finalize().to_le_bytes());
    out.write_all(&head)?;
    for p in parts {
        out.write_all(p)?;
    }
    Ok(())
}

/// A dump that says only that the producer refused (e.g. another backup is running).
pub fn write_refusal(out: &mut impl Write, reason: &str) -> std::io::Result<()> {
    out.write_all(DUMP_MAGIC)?;
    write_record(out, KIND_REFUSED, &[reason.as_bytes()])?;
    out.flush()
}

/// A store held still for a backup; dropping it thaws the store.
pub struct Frozen {
    store: Store,
    /// Journal segments at the freeze, with their lengths then.
    segments: Vec<(PathBuf, u64)>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.store.inner.gate.thaw();
    }
}

impl Store {
    /// Freezes the store for a backup (waiting up to `wait` for a checkpoint under way).
    /// Commits go on; sealing waits until the returned value is dropped.
    pub fn freeze_for_backup(&self, wait: Duration) -> Result<Frozen, DumpError> {
        let dir = self.inner.journal_dir.clone();
        let end = self.inner.journal_end.clone();
        let listed = self.inner.gate.freeze(wait, || -> Result<_, StoreError> {
            // Where the records end first, then the files: a segment begun in between
            // holds only writes after the freeze, and is left out.
            let (end_seq, end_len) = *end.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for (seq, p) in journal::segments(&dir)? {
                if end_seq != 0 && seq > end_seq {
                    continue;
                }
                // The segment being written may hold zeros, or records committed after
                // this instant, past its durable end.
                let len = if seq == end_seq {
                    end_len
                } else {
                    std::fs::metadata(&p)?.len()
                };
                out.push((p, len));
            }
            Ok(out)
        })?;
        match listed {
            Ok(segments) => Ok(Frozen {
                store: self.clone(),
                segments,
            }),
            Err(e) => {
                self.inner.gate.thaw();
                Err(e.into())
            }
        }
    }

    /// Positions per device (with their time range) and the event count. Exact once
    /// everything is sealed; a re-sent position still in a tail counts twice until then.
    pub fn summary(&self) -> Summary {
        let live = self.live();
        let mut out = Summary::default();
        for imei in live.devices.keys() {
            out.devices.entry(*imei).or_default();
        }
        for (imei, metas) in &live.index {
            let d = out.devices.entry(*imei).or_default();
            for m in metas {
                d.add_range(m.count as u64, m.first_ms, m.last_ms);
            }
        }
        for tails in [&live.sealing, &live.tails] {
            for (imei, t) in tails {
                let all = t.range(i64::MIN, i64::MAX);
                if let (Some(f), Some(l)) = (all.first(), all.last()) {
                    let d = out.devices.entry(*imei).or_default();
                    d.add_range(all.len() as u64, f.time_ms, l.time_ms);
                }
            }
        }
        drop(live);
        out.events =
            self.inner.events.len() as u64 + self.inner.gate.held_events(&[], None).len() as u64;
        out
    }
}

impl Frozen {
    pub fn journal_segments(&self) -> usize {
        self.segments.len()
    }

    /// Writes the dump to `out`. `keep_going` is asked before every record and stops the
    /// export with its reason (a deadline, a shutdown), which is also sent as an `X` record.
    pub fn export(
        &self,
        out: &mut impl Write,
        keep_going: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(u64, u64), DumpError> {
        let mut stop: Option<String> = None;
        let mut check = |stop: &mut Option<String>| match keep_going() {
            Ok(()) => Ok(()),
            Err(why) => {
                *stop = Some(why.clone());
                Err(why)
            }
        };
        out.write_all(DUMP_MAGIC)?;
        let mut journal_records = 0u64;
        for (path, len) in &self.segments {
            let mut io_err: Option<std::io::Error> = None;
            let scanned = journal::scan_segment(path, *len, &mut |payload, old| {
                if let Err(why) = check(&mut stop) {
                    return Err(StoreError::Io(why));
                }
                // A dump holds today's `Op` layout only: a format-1 segment's records are
                // rewritten (and an unreadable one skipped, as replay would stop there).
                let current;
                let payload = if old {
                    let Some(ops) = journal::decode_ops(payload, true) else {
                        return Ok(false);
                    };
                    current = bincode::serde::encode_to_vec(&ops, bincode::config::standard())
                        .map_err(|e| StoreError::Io(e.to_string()))?;
                    &current[..]
                } else {
                    payload
                };
                if let Err(e) = write_record(out, KIND_JOURNAL, &[payload]) {
                    let msg = e.to_string();
                    io_err = Some(e);
                    return Err(StoreError::Io(msg));
                }
                journal_records += 1;
                Ok(true)
            });
            if let Some(e) = io_err {
                return Err(e.into());
            }
            if let Some(why) = stop.take() {
                let _ = write_record(out, KIND_REFUSED, &[why.as_bytes()]);
                return Err(DumpError::Refused(why));
            }
            let (_, _, bad, _) = scanned?;
            if bad > 0 && Some(path) != self.segments.last().map(|(p, _)| p) {
                tracing::warn!(segment = %path.display(), "backup: a damaged journal record was skipped, as replay would");
            }
        }
        let mut entries = 0u64;
        let inner = &self.store.inner;
        for (id, tree) in [
            (TREE_BLOCKS, &inner.blocks),
            (TREE_INDEX, &inner.block_index),
            (TREE_EVENTS, &inner.events),
            (TREE_DEVICES, &inner.devices),
        ] {
            for item in tree.iter() {
                if let Err(why) = check(&mut stop) {
                    let _ = write_record(out, KIND_REFUSED, &[why.as_bytes()]);
                    return Err(DumpError::Refused(why));
                }
                let (k, v) = item.map_err(StoreError::from)?;
                let klen = (k.len() as u16).to_le_bytes();
                write_record(out, KIND_ENTRY, &[&[id], &klen, &k, &v])?;
                entries += 1;
            }
        }
        let mut end = [0u8; 16];
        end[..8].copy_from_slice(&journal_records.to_le_bytes());
        end[8..].copy_from_slice(&entries.to_le_bytes());
        write_record(out, KIND_END, &[&end])?;
        out.flush()?;
        Ok((journal_records, entries))
    }
}

/// Reads the records of a dump, checking the magic and every record's checksum.
pub struct DumpReader<R: Read> {
    r: R,
    started: bool,
    records: u64,
}

impl<R: Read> DumpReader<R> {
    pub fn new(r: R) -> Self {
        DumpReader {
            r,
            started: false,
            records: 0,
        }
    }

    /// The next record; a stream that stops before the end record is an error.
    pub fn next_record(&mut self) -> Result<Record, DumpError> {
        if !self.started {
            let mut magic = [0u8; 8];
            self.read_exact(&mut magic)?;
            if &magic != DUMP_MAGIC {
                return Err(DumpError::Damaged(
                    "not a gt06 backup (bad magic or unknown version)".into(),
                ));
            }
            self.started = true;
        }
        let mut head = [0u8; 9];
        self.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let crc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        if len > MAX_BODY {
            return Err(self.damaged("record length out of range"));
        }
        let mut body = vec![0u8; len as usize];
        self.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            return Err(self.damaged("record checksum mismatch"));
        }
        self.records += 1;
        match head[0] {
            KIND_JOURNAL => Ok(Record::Journal(body)),
            KIND_ENTRY => {
                if body.len() < 3 {
                    return Err(self.damaged("short tree entry"));
                }
                let klen = u16::from_le_bytes([body[1], body[2]]) as usize;
                if body.len() < 3 + klen {
                    return Err(self.damaged("short tree entry"));
                }
                Ok(Record::Entry {
                    tree: body[0],
                    key: body[3..3 + klen].to_vec(),
                    value: body[3 + klen..].to_vec(),
                })
            }
            KIND_END if body.len() == 16 => {
                let n = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&body[i..i + 8]);
                    u64::from_le_bytes(b)
                };
                Ok(Record::End {
                    journal: n(0),
                    entries: n(8),
                })
            }
            KIND_REFUSED => Ok(Record::Refused(String::from_utf8_lossy(&body).into_owned())),
            _ => Err(self.damaged("unknown record kind")),
        }
    }

    fn damaged(&self, what: &str) -> DumpError {
        DumpError::Damaged(format!("{what} at record {}", self.records + 1))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DumpError> {
        match self.r.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(DumpError::Truncated(self.records))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Checks a dump record by record and works out what a restore of it holds.
#[derive(Default)]
pub struct Checker {
    /// Fix times per device from the journal part (sorted and deduplicated once the
    /// trees begin).
    journal_times: HashMap<u64, Vec<i64>>,
    journal_sorted: bool,
    /// Event keys from the journal part not (yet) seen in the events tree.
    journal_events: HashSet<Vec<u8>>,
    /// Journal fix times already in a block, per device.
    sealed_twice: HashMap<u64, u64>,
    blocks: Vec<([u8; 16], BlockMeta)>,
    index_seen: usize,
    last_block: Option<(u64, i64)>,
    tree: u8,
    last_key: Option<Vec<u8>>,
    journal_records: u64,
    entries: u64,
    summary: Summary,
    ended: bool,
}

impl Checker {
    pub fn feed(&mut self, rec: &Record) -> Result<(), DumpError> {
        let bad = |s: String| Err(DumpError::Damaged(s));
        if self.ended {
            return bad("records after the end record".into());
        }
        match rec {
            Record::Refused(why) => Err(DumpError::Refused(why.clone())),
            Record::Journal(payload) => {
                if self.tree != 0 {
                    return bad("journal record after the trees".into());
                }
                let ops = decode_ops(payload)?;
                for op in &ops {
                    let imei = op_imei(op);
                    self.summary.devices.entry(imei).or_default();
                    match op {
                        Op::Position { pos, .. } => self
                            .journal_times
                            .entry(imei)
                            .or_default()
                            .push(pos.time_ms),
                        Op::Event { event, .. } => {
                            let k = keys::event(imei, event.time_ms, writer::discriminator(event));
                            self.journal_events.insert(k.to_vec());
                        }
                        _ => {}
                    }
                }
                self.journal_records += 1;
                Ok(())
            }
            Record::Entry { tree, key, value } => {
                self.sort_journal();
                if *tree < self.tree || !(TREE_BLOCKS..=TREE_DEVICES).contains(tree) {
                    return bad(format!("tree {tree} out of order"));
                }
                if *tree != self.tree {
                    self.tree = *tree;
                    self.last_key = None;
                }
                if self.last_key.as_ref().is_some_and(|k| k >= key) {
                    return bad(format!("keys out of order in tree {tree}"));
                }
                self.last_key = Some(key.clone());
                self.entries += 1;
                match *tree {
                    TREE_BLOCKS => self.block(key, value),
                    TREE_INDEX => self.index(key, value),
                    TREE_EVENTS => {
                        codec::decode::<EventRecord>(value).map_err(StoreError::from)?;
                        self.journal_events.remove(key.as_slice());
                        self.summary.events += 1;
                        Ok(())
                    }
                    _ => {
                        let Some(imei) = keys::split_device_key(key) else {
                            return bad("bad device key".into());
                        };
                        codec::decode::<DeviceRecord>(value).map_err(StoreError::from)?;
                        self.summary.devices.entry(imei).or_default();
                        Ok(())
                    }
                }
            }
            Record::End { journal, entries } => {
                if (*journal, *entries) != (self.journal_records, self.entries) {
                    return bad(format!(
                        "end record counts {journal} journal records and {entries} entries, the dump has {} and {}",
                        self.journal_records, self.entries
                    ));
                }
                if self.index_seen != self.blocks.len() {
                    return bad(format!(
                        "{} blocks have no index entry",
                        self.blocks.len() - self.index_seen
                    ));
                }
                self.sort_journal();
                for (imei, times) in &self.journal_times {
                    let twice = self.sealed_twice.get(imei).copied().unwrap_or(0);
                    let fresh = times.len() as u64 - twice;
                    // Every journal time is in the restored store (sealed already or
                    // not), so the range covers them all.
                    if let (Some(f), Some(l)) = (times.first(), times.last()) {
                        let d = self.summary.devices.entry(*imei).or_default();
                        d.add_range(fresh, *f, *l);
                    }
                }
                self.summary.events += self.journal_events.len() as u64;
                self.ended = true;
                Ok(())
            }
        }
    }

    fn sort_journal(&mut self) {
        if !self.journal_sorted {
            for v in self.journal_times.values_mut() {
                v.sort_unstable();
                v.dedup();
            }
            self.journal_sorted = true;
        }
    }

    fn block(&mut self, key: &[u8], value: &[u8]) -> Result<(), DumpError> {
        let Some((imei, first)) = keys::split_time_key(key) else {
            return Err(DumpError::Damaged("bad block key".into()));
        };
        let where_ = || format!("device {imei:015} block at {first}");
        let s = block::verify_block(value)
            .map_err(|e| DumpError::Damaged(format!("{}: {e}", where_())))?;
        let list = block::decode_block(value)
            .map_err(|e| DumpError::Damaged(format!("{}: {e}", where_())))?;
        if s.first_ms != first {
            return Err(DumpError::Damaged(format!(
                "{}: key and block disagree",
                where_()
            )));
        }
        if let Some((prev_imei, prev_last)) = self.last_block {
            if prev_imei == imei && prev_last >= first {
                return Err(DumpError::Damaged(format!(
                    "{}: overlaps the previous block",
                    where_()
                )));
            }
        }
        self.last_block = Some((imei, s.last_ms));
        if let Some(times) = self.journal_times.get(&imei) {
            let lo = times.partition_point(|t| *t < s.first_ms);
            let hi = times.partition_point(|t| *t <= s.last_ms);
            let twice = times[lo..hi]
                .iter()
                .filter(|t| list.binary_search_by_key(*t, |p| p.time_ms).is_ok())
                .count() as u64;
            *self.sealed_twice.entry(imei).or_default() += twice;
        }
        self.summary.devices.entry(imei).or_default().add_range(
            s.count as u64,
            s.first_ms,
            s.last_ms,
        );
        let mut k = [0u8; 16];
        k.copy_from_slice(&key[..16]);
        self.blocks.push((
            k,
            BlockMeta {
                first_ms: s.first_ms,
                last_ms: s.last_ms,
                count: s.count,
            },
        ));
        Ok(())
    }

    fn index(&mut self, key: &[u8], value: &[u8]) -> Result<(), DumpError> {
        let meta: BlockMeta = codec::decode(value).map_err(StoreError::from)?;
        let agrees = self
            .blocks
            .get(self.index_seen)
            .is_some_and(|(k, m)| k.as_slice() == key && *m == meta);
        if !agrees {
            let who = keys::split_time_key(key)
                .map(|(i, t)| format!("device {i:015} block at {t}"))
                .unwrap_or_else(|| "a block".into());
            return Err(DumpError::Damaged(format!(
                "{who}: block and index disagree"
            )));
        }
        self.index_seen += 1;
        Ok(())
    }

    /// What the dump holds; `None` until its end record was checked.
    pub fn summary(&self) -> Option<&Summary> {
        self.ended.then_some(&self.summary)
    }
}

fn decode_ops(payload: &[u8]) -> Result<Vec<Op>, DumpError> {
    bincode::serde::decode_from_slice::<Vec<Op>, _>(payload, bincode::config::standard())
        .map(|(ops, _)| ops)
        .map_err(|e| DumpError::Damaged(format!("journal record does not decode: {e}")))
}

fn op_imei(op: &Op) -> u64 {
    match op {
        Op::Position { imei, .. }
        | Op::Event { imei, .. }
        | Op::Seen { imei, .. }
        | Op::Info { imei, .. } => *imei,
    }
}

/// Reads a whole dump and checks it (see [`Checker`]).
pub fn check(r: impl Read) -> Result<Summary, DumpError> {
    let mut reader = DumpReader::new(r);
    let mut checker = Checker::default();
    loop {
        let rec = reader.next_record()?;
        checker.feed(&rec)?;
        if let Some(s) = checker.summary() {
            return Ok(s.clone());
        }
    }
}

/// Builds a store in `dir` (empty or absent) from a dump: the trees as they were, the
/// journal records replayed and sealed, then verified and compared with what the dump
/// says it holds.
pub fn import(r: impl Read, dir: &Path) -> Result<(Summary, VerifyReport), DumpError> {
    let mut reader = DumpReader::new(r);
    let mut checker = Checker::default();
    {
        let mut opened = Store::open(dir, OpenOptions::default())?;
        if opened.store.count_positions() > 0 || !opened.store.devices().is_empty() {
            return Err(DumpError::Refused(format!(
                "{} already holds a store",
                dir.display()
            )));
        }
        let inner = opened.store.inner.clone();
        let mut pending: Vec<Op> = Vec::new();
        let mut batch = sled::Batch::default();
        let mut batch_tree = 0u8;
        let mut batch_len = 0usize;
        let tree_of = |id: u8| match id {
            TREE_BLOCKS => &inner.blocks,
            TREE_INDEX => &inner.block_index,
            TREE_EVENTS => &inner.events,
            _ => &inner.devices,
        };
        loop {
            let rec = reader.next_record()?;
            checker.feed(&rec)?;
            match rec {
                Record::Journal(payload) => {
                    pending.extend(decode_ops(&payload)?);
                    // One fsync per 50,000 requests, not per original group commit.
                    if pending.len() >= 50_000 {
                        opened.journal.append(&pending)?;
                        pending.clear();
                    }
                }
                Record::Entry { tree, key, value } => {
                    if tree != batch_tree || batch_len >= 1000 {
                        if batch_len > 0 {
                            tree_of(batch_tree)
                                .apply_batch(std::mem::take(&mut batch))
                                .map_err(StoreError::from)?;
                        }
                        batch_tree = tree;
                        batch_len = 0;
                    }
                    batch.insert(key, value);
                    batch_len += 1;
                }
                Record::End { .. } => break,
                Record::Refused(why) => return Err(DumpError::Refused(why)),
            }
        }
        if batch_len > 0 {
            tree_of(batch_tree)
                .apply_batch(batch)
                .map_err(StoreError::from)?;
        }
        if !pending.is_empty() {
            opened.journal.append(&pending)?;
        }
        opened.store.sync()?;
    }
    let want = checker.summary().cloned().ok_or(DumpError::Truncated(0))?;
    // Open as a server would (loads the index, replays the journal), then seal it all so
    // the restored store starts with nothing to replay.
    let opened = super::reopen(dir)?;
    let store = opened.store.clone();
    let (handle, join) =
        writer::spawn(opened, writer::WriterOptions::default()).map_err(StoreError::from)?;
    drop(handle);
    join.join()
        .map_err(|_| DumpError::Store(StoreError::Io("the store writer panicked".into())))?;
    let report = store.verify()?;
    if let Some(b) = report.bad.first() {
        return Err(DumpError::Damaged(format!(
            "restored store does not verify: device {:015} block at {}: {}",
            b.imei, b.first_ms, b.problem
        )));
    }
    let got = store.summary();
    if let Some(diff) = got.difference(&want) {
        return Err(DumpError::Damaged(format!(
            "restored store disagrees with the backup: {diff}"
        )));
    }
    Ok((got, report))
}

/// True when a process holds the store in `data_dir` open (sled's lock on `db/db`).
pub fn in_use(data_dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(data_dir.join("db").join("db")) else {
        return false;
    };
    // SAFETY: a valid descriptor owned by `f`; the lock, if taken, goes with it.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::PositionRecord;
    use crate::store::{Durability, WriteReq};
    use std::sync::Arc;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gt06-backup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn pos(t: i64) -> PositionRecord {
        PositionRecord {
            time_ms: t,
            received_ms: t + 500,
            lat_raw: 1,
            lon_raw: 2,
            valid: true,
            ..PositionRecord::default()
        }
    }

    fn write_all(handle: &writer::WriterHandle, ops: Vec<Op>) {
        let d = Arc::new(Durability::default());
        let n = ops.len() as u64;
        for (i, op) in ops.into_iter().enumerate() {
            handle
                .blocking_send(WriteReq::one(op, Some((d.clone(), i as u64 + 1))))
                .unwrap();
        }
        let mut rx = d.subscribe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { rx.wait_for(|s| s.seq >= n).await.unwrap() });
    }

    fn positions(imei: u64, times: impl Iterator<Item = i64>) -> Vec<Op> {
        times.map(|t| Op::Position { imei, pos: pos(t) }).collect()
    }

    fn sos(imei: u64, t: i64) -> Op {
        Op::Event {
            imei,
            event: EventRecord {
                time_ms: t,
                received_ms: t,
                kind: "sos".into(),
                lat_raw: None,
                lon_raw: None,
                text: None,
            },
        }
    }

    #[test]
    fn a_dump_taken_while_commits_go_on_restores_what_was_committed_before_the_freeze() {
        let src = tempdir("src");
        let dst = tempdir("dst");
        let opened = Store::open(&src, OpenOptions::default()).unwrap();
        let store = opened.store.clone();
        let opts = writer::WriterOptions {
            max_batch: 64,
            checkpoint_positions: 100,
            ..Default::default()
        };
        let (handle, join) = writer::spawn(opened, opts).unwrap();
        // Sealed blocks, then a re-sent stretch that is both sealed and in the journal.
        write_all(&handle, positions(1, (0..500).map(|i| i * 1000)));
        write_all(&handle, positions(2, (0..250).map(|i| i * 1000)));
        write_all(&handle, vec![sos(1, 7_000)]);
        write_all(&handle, positions(1, (480..520).map(|i| i * 1000)));
        let frozen = store.freeze_for_backup(Duration::from_secs(10)).unwrap();
        // After the freeze: more positions (enough for a checkpoint) and an event.
        write_all(&handle, positions(3, (0..300).map(|i| i * 1000)));
        write_all(&handle, vec![sos(2, 9_000)]);
        assert_eq!(
            store.events(None, 0, i64::MAX, 10).unwrap().len(),
            2,
            "an event committed during the freeze is not readable"
        );
        let mut dump = Vec::new();
        frozen.export(&mut dump, &mut || Ok(())).unwrap();
        drop(frozen);
        let want = check(dump.as_slice()).unwrap();
        assert_eq!(want.devices[&1].positions, 520);
        assert_eq!(want.devices[&1].first_ms, Some(0));
        assert_eq!(want.devices[&1].last_ms, Some(519_000));
        assert_eq!(want.devices[&2].positions, 250);
        assert!(
            !want.devices.contains_key(&3),
            "a write after the freeze is in the dump"
        );
        assert_eq!(want.events, 1);
        let (got, report) = import(dump.as_slice(), &dst).unwrap();
        assert_eq!(got, want);
        assert!(report.bad.is_empty());
        // The source went on: the freeze ended and sealing resumed.
        write_all(&handle, positions(3, (300..400).map(|i| i * 1000)));
        drop(handle);
        join.join().unwrap();
        assert_eq!(store.unsealed(), 0);
        assert_eq!(store.summary().devices[&3].positions, 400);
        assert_eq!(store.events(None, 0, i64::MAX, 10).unwrap().len(), 2);
        drop(store);
        let restored = crate::store::reopen(&dst).unwrap();
        assert_eq!(
            restored.replay.batches, 0,
            "the restore left work for replay"
        );
        assert_eq!(restored.store.summary(), want);
        drop(restored);
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[test]
    fn a_flipped_byte_a_cut_or_a_refusal_is_reported_not_restored() {
        let src = tempdir("flip");
        let opened = Store::open(&src, OpenOptions::default()).unwrap();
        let store = opened.store.clone();
        let (handle, join) = writer::spawn(opened, writer::WriterOptions::default()).unwrap();
        write_all(&handle, positions(5, (0..50).map(|i| i * 1000)));
        drop(handle);
        join.join().unwrap();
        let mut dump = Vec::new();
        let frozen = store.freeze_for_backup(Duration::from_secs(1)).unwrap();
        frozen.export(&mut dump, &mut || Ok(())).unwrap();
        drop(frozen);
        assert_eq!(check(dump.as_slice()).unwrap().positions(), 50);
        for at in [3, 20, dump.len() / 2, dump.len() - 3] {
            let mut bad = dump.clone();
            bad[at] ^= 0x01;
            assert!(
                check(bad.as_slice()).is_err(),
                "flip at {at} went unnoticed"
            );
        }
        assert!(matches!(
            check(&dump[..dump.len() - 1]),
            Err(DumpError::Truncated(_))
        ));
        let mut refused = Vec::new();
        write_refusal(&mut refused, "another backup is running").unwrap();
        let e = check(refused.as_slice()).unwrap_err();
        assert_eq!(e.to_string(), "another backup is running");
        // A deadline stops an export with its reason.
        let frozen = store.freeze_for_backup(Duration::from_secs(1)).unwrap();
        let mut out = Vec::new();
        let e = frozen
            .export(&mut out, &mut || Err("too slow".into()))
            .unwrap_err();
        assert_eq!(e.to_string(), "too slow");
        assert_eq!(check(out.as_slice()).unwrap_err().to_string(), "too slow");
        drop(frozen);
        drop(store);
        let _ = std::fs::remove_dir_all(&src);
    }
}
