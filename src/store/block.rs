//! Position blocks: one sled value holding many consecutive positions of one device,
//! column-wise and delta-encoded, so a position costs a few bytes instead of ~200.
//!
//! This file is pure: bytes in, records out. It knows nothing about sled, keys or when a
//! block is sealed; `store::Writer` decides that, and the key (IMEI ‖ first fix time) is
//! built in `keys.rs`.
//!
//! # Layout (version 2; version 1 is read too)
//!
//! All integers marked *varint* are unsigned LEB128 (7 bits per byte, least significant
//! group first, high bit = "more follows", at most 10 bytes, the 10th byte must be 0 or 1).
//! `zz(x)` is zig-zag: `(x << 1) ^ (x >> 63)` on `i64`, so small negative numbers stay
//! small. Arithmetic on values is two's-complement `i64`, wrapping.
//!
//! ```text
//! block   := version:u8 = 2 (or 1)
//!            flags:u8              bit 0: payload is zstd-compressed; bits 1-7 must be 0
//!            count:varint          number of records, 0 ..= MAX_BLOCK_RECORDS
//!            first_ms:varint       zz(time_ms of the first record)
//!            span_ms:varint        (last time_ms - first time_ms) as u64, wrapping
//!            stored_len:varint     length of the payload bytes as stored
//!            [raw_len:varint]      only if flags bit 0: payload length after decompression
//!            payload:stored_len bytes
//!            crc:u32 little-endian CRC-32 (IEEE, as `crc32fast`) of every byte before it
//! ```
//! The value ends exactly after `crc`; anything shorter is `Truncated`, anything longer
//! is `Corrupt`. The length check and CRC-32 (which detects every single-bit error) make
//! every truncation and every single bit flip an error. `count = 0` has an empty payload.
//!
//! The (decompressed) payload is a sequence of columns, each holding one value per record
//! (or per record that has the field), in this order, with nothing after the last:
//!
//! | # | column | values | range |
//! |---|---|---|---|
//! | 1 | `time_ms` | count | `i64` |
//! | 2 | `received_ms - time_ms` (wrapping) | count | `i64` |
//! | 3, 4 | `lat_raw`, `lon_raw` | count | `i32` |
//! | 5, 6 | `speed_kmh`, `course` | count | `u16` |
//! | 7 | `satellites` | count | `u8` |
//! | 8 | `valid` | count | 0 or 1 |
//! | 9.. | each `Option` field in struct order: `invalid_reason`, `acc`, `odometer_m`, `lbs`, `alarm`, `reupload`, `battery_percent`, `gsm_signal`, `power_mv`, `battery_mv`, `temperature_dc`, `driver_id`, then (version 2 only) `altitude_m` (`i32`), `driving_time_s` (`u32`), `engine_time_s` (`u32`) | | |
//!
//! A version-1 block is exactly a version-2 block without the last three `Option`
//! columns: its records decode with those fields `None`.
//!
//! An `Option` field is a *presence* integer column (count values, each 0 = `None` or
//! 1 = `Some`), then, only if `k` = the number of 1s is > 0, its value column(s) with `k`
//! values: bools as 0/1, `u8`/`u16`/`u32`/`i32` in their range; `lbs` is four columns
//! `mcc` (`u16`), `mnc` (`u16`), `lac` (`u32`), `cell` (`u64` stored as the `i64` with the
//! same bits); strings are a string column.
//!
//! ## Integer column of `n` values `x[0..n]`
//! ```text
//! column := tag:u8  bits 0-1 mode (0 CONST, 1 VARINT, 2 BITPACK, 3 RLE)
//!                   bits 2-3 transform t (0 RAW, 1 DELTA, 2 DELTA2; 3 is invalid)
//!                   bit 4    scaled; bits 5-7 must be 0
//!           seed:varint × min(t, n)    zz of s[0..min(t, n)]
//!           [scale:varint]             if scaled: 2 ..= i64::MAX
//!           body                       the m = n - min(t, n) values s[min(t,n)..], each
//!                                      stored as y = s / scale (scale 1 if not scaled)
//! ```
//! `s` is `x` differenced `t` times: RAW `s = x`; DELTA `s = [x0, x1-x0, x2-x1, ..]`;
//! DELTA2 `s = [x0, x1-x0, d2-d1, d3-d2, ..]` with `di = xi - x(i-1)`. To decode, for
//! pass `j = t` down to 1, replace `s[i]` by `s[i-1] + s[i]` for `i = j, j+1, .. n-1` in
//! increasing order; the result is `x`. Bodies, with `y` the stored values:
//! - CONST: `zz(y):varint`; all m values are y.
//! - VARINT: m × `zz(y):varint`.
//! - BITPACK: chunks of 128 values (the last one shorter): `zz(base):varint`,
//!   `width:u8` (0 ..= 64), then `ceil(len × width / 8)` bytes holding `y - base`
//!   (as `u64`) in `width` bits each, value j at bits `j×width ..`, bit b being bit
//!   `b % 8` of byte `b / 8` (little-endian bit order). Width 0 means every y is base.
//! - RLE: pairs `zz(y):varint run:varint`, run ≥ 1, runs adding up to exactly m.
//!
//! ## String column of `k` values
//! `d:varint` (1 ..= k) distinct strings in order of first use, each `len:varint` +
//! UTF-8 bytes, then an integer column of k indices into that dictionary.
//!
//! The encoder tries every transform and mode (with and without the common scale) per
//! column and keeps the smallest, then tries zstd (level 3) on the payload and keeps it
//! only when smaller. Device times are whole seconds, so irregular time deltas pack as
//! seconds (scale 1000). Decode also checks that the first and last decoded `time_ms`
//! equal the header's.
//!
//! ## Measured (the tests print these with `--nocapture`)
//! 4,096 fixes of a moving vehicle every 10 s: 5.1 B/position (sled values of one
//! bincode record each: 56 B before sled's own ~150 B); parked: 1.7 B/position. zstd on
//! top gains nothing at 256–4,096 records and under 1 % at 50: the columns are already
//! packed. Decode (release): a day at 1 s (86,400 positions, 22 blocks) in 4–7 ms,
//! 12–22 M positions/s on the shared 2-core box, most of it building the records.
//!
//! ## Limits (hostile or damaged values cannot make decode allocate without bound)
//! - `count` ≤ [`MAX_BLOCK_RECORDS`]; the caller seals blocks well below it.
//! - `raw_len` ≤ count × 512 + 64 KiB (the encoder stores larger payloads uncompressed).
//! - the strings of all records, expanded, ≤ 64 MiB.

use super::codec::{LbsRecord, PositionRecord};
use std::collections::HashMap;

/// Written as the first byte of every block; the golden test pins the layout.
pub const BLOCK_VERSION: u8 = 2;
/// The layout before altitude, driving time and engine time; still decoded.
const BLOCK_VERSION_1: u8 = 1;

/// 131,072: a day at one position per second (86,400) fits; blocks are sealed at a few
/// thousand. Bounds what a damaged count can make decode allocate (~22 MiB of records).
pub const MAX_BLOCK_RECORDS: u32 = 1 << 17;

const FLAG_ZSTD: u8 = 1;
/// Level 3: zstd's default; higher levels gain little on already-packed columns.
const ZSTD_LEVEL: i32 = 3;
/// A record's columns take at most ~300 bytes even as 10-byte varints; strings aside.
const RAW_BYTES_PER_RECORD: usize = 512;
const RAW_BYTES_SLACK: usize = 64 * 1024;
/// Real strings are alarm names, reasons and RFID ids, a few dozen bytes each.
const STRING_BYTES_BUDGET: usize = 64 << 20;
/// Values per bitpacked chunk: small enough that one outlier (a course wrapping from 359
/// to 0, a stop) widens only its own chunk, large enough that the chunk header is cheap.
const CHUNK: usize = 128;

const MODE_CONST: u8 = 0;
const MODE_VARINT: u8 = 1;
const MODE_BITPACK: u8 = 2;
const MODE_RLE: u8 = 3;
const TAG_SCALED: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    pub count: u32,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Length of the whole block value in bytes.
    pub encoded_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block is truncated")]
    Truncated,
    /// `want` is the checksum stored in the block, `got` the one computed over it.
    #[error("block checksum mismatch: stored {want:#010x}, computed {got:#010x}")]
    Checksum { want: u32, got: u32 },
    #[error("block has format version {0}, this build reads 1 and {BLOCK_VERSION}")]
    Version(u8),
    #[error("block is corrupt: {0}")]
    Corrupt(&'static str),
}

impl BlockError {
    pub fn reason(&self) -> &'static str {
        match self {
            BlockError::Truncated => "block_truncated",
            BlockError::Checksum { .. } => "block_checksum",
            BlockError::Version(_) => "block_version",
            BlockError::Corrupt(_) => "block_corrupt",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Public entry points

/// Encodes `positions` (one device, strictly increasing `time_ms`) as one block.
///
/// Any input encodes and round-trips, sorted or not; only blocks over
/// [`MAX_BLOCK_RECORDS`] records are refused by [`decode_block`].
///
/// The encoder does not compress: zstd gained under 1 % on real-sized blocks and made
/// sealing 20–30 % slower (see the size test). Decoders still accept the zstd flag, so the
/// format keeps the option.
pub fn encode_block(positions: &[PositionRecord]) -> Vec<u8> {
    encode_block_with(positions, false)
}

fn encode_block_with(positions: &[PositionRecord], try_zstd: bool) -> Vec<u8> {
    debug_assert!(positions.len() <= MAX_BLOCK_RECORDS as usize);
    let raw = encode_payload(positions);
    let count = positions.len();

    let mut flags = 0u8;
    let mut stored = raw.as_slice();
    let compressed;
    if try_zstd && !raw.is_empty() && raw.len() <= raw_len_cap(count) {
        if let Ok(z) = zstd::bulk::compress(&raw, ZSTD_LEVEL) {
            compressed = z;
            if compressed.len() + varint_len(raw.len() as u64) < raw.len() {
                flags |= FLAG_ZSTD;
                stored = compressed.as_slice();
            }
        }
    }

    let first_ms = positions.first().map_or(0, |p| p.time_ms);
    let last_ms = positions.last().map_or(0, |p| p.time_ms);
    let mut out = Vec::with_capacity(stored.len() + 40);
    out.push(BLOCK_VERSION);
    out.push(flags);
    put_varint(&mut out, count as u64);
    put_varint(&mut out, zz(first_ms));
    put_varint(&mut out, last_ms.wrapping_sub(first_ms) as u64);
    put_varint(&mut out, stored.len() as u64);
    if flags & FLAG_ZSTD != 0 {
        put_varint(&mut out, raw.len() as u64);
    }
    out.extend_from_slice(stored);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a whole block, after checking its length and checksum.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<PositionRecord>, BlockError> {
    let header = checked_header(bytes)?;
    let stored = bytes
        .get(header.payload_start..header.payload_start + header.stored_len)
        .ok_or(BlockError::Truncated)?;
    let decompressed;
    let payload = match header.raw_len {
        None => stored,
        Some(raw_len) => {
            decompressed = zstd::bulk::decompress(stored, raw_len)
                .map_err(|_| BlockError::Corrupt("zstd payload does not decompress"))?;
            if decompressed.len() != raw_len {
                return Err(BlockError::Corrupt("zstd payload has the wrong length"));
            }
            decompressed.as_slice()
        }
    };
    let records = decode_payload(payload, header.count as usize, header.version)?;
    let first = records.first().map_or(0, |p| p.time_ms);
    let last = records.last().map_or(0, |p| p.time_ms);
    if first != header.first_ms || last != header.last_ms {
        return Err(BlockError::Corrupt("record times disagree with the header"));
    }
    Ok(records)
}

/// Count and time range from the header alone: no checksum, no payload decode.
pub fn block_summary(bytes: &[u8]) -> Result<BlockSummary, BlockError> {
    Ok(parse_header(bytes)?.summary(bytes.len()))
}

/// Header and checksum: proves the value is the one written, without decoding it.
pub fn verify_block(bytes: &[u8]) -> Result<BlockSummary, BlockError> {
    Ok(checked_header(bytes)?.summary(bytes.len()))
}

// ---------------------------------------------------------------------------------------
// Header

struct Header {
    version: u8,
    count: u32,
    first_ms: i64,
    last_ms: i64,
    stored_len: usize,
    raw_len: Option<usize>,
    payload_start: usize,
}

impl Header {
    fn summary(&self, encoded_len: usize) -> BlockSummary {
        BlockSummary {
            count: self.count,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            encoded_len,
        }
    }
}

fn raw_len_cap(count: usize) -> usize {
    count
        .saturating_mul(RAW_BYTES_PER_RECORD)
        .saturating_add(RAW_BYTES_SLACK)
}

/// Parses the header and checks that the value has exactly the length it declares.
fn parse_header(bytes: &[u8]) -> Result<Header, BlockError> {
    let mut r = Reader::new(bytes, BlockError::Truncated);
    let version = r.u8()?;
    if version != BLOCK_VERSION && version != BLOCK_VERSION_1 {
        return Err(BlockError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !FLAG_ZSTD != 0 {
        return Err(BlockError::Corrupt("unknown flags"));
    }
    let count = r.varint()?;
    if count > u64::from(MAX_BLOCK_RECORDS) {
        return Err(BlockError::Corrupt("record count over the limit"));
    }
    let first_ms = unzz(r.varint()?);
    let last_ms = first_ms.wrapping_add(r.varint()? as i64);
    let stored_len = r.varint()?;
    let raw_len = if flags & FLAG_ZSTD != 0 {
        let raw_len = r.varint()?;
        if raw_len > raw_len_cap(count as usize) as u64 {
            return Err(BlockError::Corrupt("decompressed length over the limit"));
        }
        Some(raw_len as usize)
    } else {
        None
    };
    let payload_start = r.pos;
    let rest = bytes.len() - payload_start;
    if stored_len.saturating_add(4) > rest as u64 {
        return Err(BlockError::Truncated);
    }
    if stored_len + 4 < rest as u64 {
        return Err(BlockError::Corrupt("bytes after the checksum"));
    }
    if count == 0 && (stored_len != 0 || raw_len.is_some()) {
        return Err(BlockError::Corrupt("empty block with a payload"));
    }
    Ok(Header {
        version,
        count: count as u32,
        first_ms,
        last_ms,
        stored_len: stored_len as usize,
        raw_len,
        payload_start,
    })
}

fn checked_header(bytes: &[u8]) -> Result<Header, BlockError> {
    let header = parse_header(bytes)?;
    // parse_header proved bytes.len() >= payload_start + stored_len + 4.
    let split = bytes.len().saturating_sub(4);
    let (body, tail) = bytes.split_at(split);
    let want = match <[u8; 4]>::try_from(tail) {
        Ok(b) => u32::from_le_bytes(b),
        Err(_) => return Err(BlockError::Truncated),
    };
    let got = crc32fast::hash(body);
    if want != got {
        return Err(BlockError::Checksum { want, got });
    }
    Ok(header)
}

// ---------------------------------------------------------------------------------------
// Primitives

fn zz(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzz(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Bytes of a varint by the value's leading zero bits: 1 per started group of 7 bits, 1
/// for zero. A table, because the column search asks this for every value several times.
const VARINT_LEN: [u8; 65] = {
    let mut t = [0u8; 65];
    let mut lz = 0;
    while lz <= 64 {
        let bits = 64 - lz;
        t[lz] = if bits == 0 { 1 } else { bits.div_ceil(7) as u8 };
        lz += 1;
    }
    t
};

#[inline(always)]
fn varint_len(v: u64) -> usize {
    VARINT_LEN[v.leading_zeros() as usize] as usize
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bits needed for `v` (0 for 0).
fn bit_width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// What running out of bytes means here: `Truncated` in the header, `Corrupt` inside
    /// a payload whose length the header already vouched for.
    short: BlockError,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], short: BlockError) -> Self {
        Reader {
            bytes,
            pos: 0,
            short,
        }
    }

    fn u8(&mut self) -> Result<u8, BlockError> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.short.clone())?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, BlockError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(BlockError::Corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short.clone())?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.short.clone())?;
        self.pos = end;
        Ok(s)
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

// ---------------------------------------------------------------------------------------
// Encoder

fn encode_payload(ps: &[PositionRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    if ps.is_empty() {
        return out;
    }
    // The always-present fields, gathered in one pass: records are large, and a pass per
    // column read each one eight times.
    let mut columns: [Vec<i64>; 8] = std::array::from_fn(|_| Vec::with_capacity(ps.len()));
    for p in ps {
        let row = [
            p.time_ms,
            p.received_ms.wrapping_sub(p.time_ms),
            i64::from(p.lat_raw),
            i64::from(p.lon_raw),
            i64::from(p.speed_kmh),
            i64::from(p.course),
            i64::from(p.satellites),
            i64::from(p.valid),
        ];
        for (column, v) in columns.iter_mut().zip(row) {
            column.push(v);
        }
    }
    for column in &columns {
        put_int_column(&mut out, column);
    }

    // Which optional fields any record has, in one more pass: most fields are absent
    // from a whole block, and their presence column (all 0) is then written as it is
    // without a pass of its own over the records.
    let mut has = [false; 15];
    for p in ps {
        let fields = [
            p.invalid_reason.is_some(),
            p.acc.is_some(),
            p.odometer_m.is_some(),
            p.lbs.is_some(),
            p.alarm.is_some(),
            p.reupload.is_some(),
            p.battery_percent.is_some(),
            p.gsm_signal.is_some(),
            p.power_mv.is_some(),
            p.battery_mv.is_some(),
            p.temperature_dc.is_some(),
            p.driver_id.is_some(),
            p.altitude_m.is_some(),
            p.driving_time_s.is_some(),
            p.engine_time_s.is_some(),
        ];
        for (h, f) in has.iter_mut().zip(fields) {
            *h |= f;
        }
    }
    // In the order of `has` (and of the layout).
    let mut has = has.into_iter();
    let mut opt = |out: &mut Vec<u8>, put: &dyn Fn(&mut Vec<u8>)| {
        if has.next().unwrap_or(true) {
            put(out)
        } else {
            // What `put_int_column` writes for a column of zeros.
            out.push(MODE_CONST);
            put_varint(out, zz(0));
        }
    };
    opt(&mut out, &|o| {
        put_opt_strings(o, ps, |p| p.invalid_reason.as_deref())
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.acc.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.odometer_m.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| {
            p.lbs.map(|l| {
                [
                    i64::from(l.mcc),
                    i64::from(l.mnc),
                    i64::from(l.lac),
                    l.cell as i64,
                ]
            })
        })
    });
    opt(&mut out, &|o| {
        put_opt_strings(o, ps, |p| p.alarm.as_deref())
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.reupload.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.battery_percent.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.gsm_signal.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.power_mv.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.battery_mv.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.temperature_dc.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_strings(o, ps, |p| p.driver_id.as_deref())
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.altitude_m.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.driving_time_s.map(|v| [i64::from(v)]))
    });
    opt(&mut out, &|o| {
        put_opt_ints(o, ps, |p| p.engine_time_s.map(|v| [i64::from(v)]))
    });
    out
}

/// Presence column, then (if any record has the field) one column per component.
/// Components come as an array so that a present field costs no allocation: sealing
/// runs this for every field of every position.
fn put_opt_ints<const N: usize>(
    out: &mut Vec<u8>,
    ps: &[PositionRecord],
    field: impl Fn(&PositionRecord) -> Option<[i64; N]>,
) {
    let mut presence = Vec::with_capacity(ps.len());
    let mut columns: [Vec<i64>; N] = std::array::from_fn(|_| Vec::new());
    let mut any = false;
    for p in ps {
        match field(p) {
            Some(parts) => {
                any = true;
                presence.push(1);
                for (column, v) in columns.iter_mut().zip(parts) {
                    column.push(v);
                }
            }
            None => presence.push(0),
        }
    }
    put_int_column(out, &presence);
    if !any {
        return;
    }
    for column in &columns {
        put_int_column(out, column);
    }
}

fn put_opt_strings<'a>(
    out: &mut Vec<u8>,
    ps: &'a [PositionRecord],
    field: impl Fn(&'a PositionRecord) -> Option<&'a str>,
) {
    let mut presence = Vec::with_capacity(ps.len());
    let mut dict: Vec<&str> = Vec::new();
    let mut index_of: HashMap<&str, i64> = HashMap::new();
    let mut indices = Vec::new();
    for p in ps {
        match field(p) {
            Some(s) => {
                presence.push(1);
                let idx = *index_of.entry(s).or_insert_with(|| {
                    dict.push(s);
                    dict.len() as i64 - 1
                });
                indices.push(idx);
            }
            None => presence.push(0),
        }
    }
    put_int_column(out, &presence);
    if indices.is_empty() {
        return;
    }
    put_varint(out, dict.len() as u64);
    for s in &dict {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    put_int_column(out, &indices);
}

/// `xs` differenced `t` times (see the module doc).
fn difference(xs: &[i64], t: usize) -> Vec<i64> {
    let mut s = xs.to_vec();
    for pass in 1..=t {
        for i in (pass..s.len()).rev() {
            s[i] = s[i].wrapping_sub(s[i - 1]);
        }
    }
    s
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What a column body would take in each mode, and the gcd of its values, measured in
/// one pass. The encoder tries three transforms and up to two scales per column: a pass
/// (and a copy) per mode per candidate made encoding the largest part of sealing.
#[derive(Debug, PartialEq, Eq)]
struct Sizes {
    /// `Some` when every value is the same.
    constant: Option<usize>,
    bitpack: usize,
    rle: usize,
    varint: usize,
    /// gcd of the absolute values (0 when all are 0); stops at 1, the answer by then.
    gcd: u64,
}

fn bitpack_chunk_size(min: i64, max: i64, len: usize) -> usize {
    varint_len(zz(min)) + 1 + (len * bit_width(max.wrapping_sub(min) as u64) as usize).div_ceil(8)
}

/// [`Sizes`] measured one value at a time. Plain fields, not options, and no branch on
/// the data where a select does: it runs once per value per candidate, and the search
/// over candidates was most of sealing's time (random runs mispredicted every branch).
#[derive(Clone, Copy)]
struct Measure {
    n: usize,
    /// Some value differed from the one before it.
    changed: bool,
    varint: usize,
    /// Bytes of the runs finished so far; the current run is `run_value` × `run_len`.
    rle: usize,
    run_value: i64,
    run_len: usize,
    bitpack: usize,
    min: i64,
    max: i64,
    chunk_len: usize,
    gcd: u64,
    /// Divisibility by `gcd` without dividing (see [`Divides`]).
    divides: Divides,
}

/// Whether a value is a multiple of a fixed `d`, by a shift and a multiply: the gcd of a
/// column is asked about every value, and usually holds. `d = 0` accepts only 0.
#[derive(Clone, Copy)]
struct Divides {
    mask: u64,
    shift: u32,
    inverse: u64,
    limit: u64,
}

impl Divides {
    fn new(d: u64) -> Divides {
        if d == 0 {
            return Divides {
                mask: 0,
                shift: 0,
                inverse: 1,
                limit: 0,
            };
        }
        let ExactDiv { shift, inverse } = ExactDiv::new(d);
        Divides {
            mask: (1u64 << shift) - 1,
            shift,
            inverse,
            // A multiple of the odd part times its inverse is its quotient, at most this;
            // any other value lands above it.
            limit: u64::MAX / (d >> shift),
        }
    }

    #[inline(always)]
    fn test(self, a: u64) -> bool {
        a & self.mask == 0 && (a >> self.shift).wrapping_mul(self.inverse) <= self.limit
    }
}

impl Measure {
    fn new() -> Measure {
        Measure {
            n: 0,
            changed: false,
            varint: 0,
            rle: 0,
            run_value: 0,
            run_len: 0,
            bitpack: 0,
            min: 0,
            max: 0,
            chunk_len: 0,
            gcd: 0,
            divides: Divides::new(0),
        }
    }

    #[inline(always)]
    fn push(&mut self, y: i64) {
        if self.n == 0 {
            self.run_value = y;
        }
        self.n += 1;
        self.varint += varint_len(zz(y));
        let changed = y != self.run_value;
        let finished = varint_len(zz(self.run_value)) + varint_len(self.run_len as u64);
        self.rle += if changed { finished } else { 0 };
        self.run_len = if changed { 1 } else { self.run_len + 1 };
        self.run_value = y;
        self.changed |= changed;
        if self.chunk_len == 0 {
            (self.min, self.max) = (y, y);
        } else {
            self.min = self.min.min(y);
            self.max = self.max.max(y);
        }
        self.chunk_len += 1;
        if self.chunk_len == CHUNK {
            self.bitpack += bitpack_chunk_size(self.min, self.max, CHUNK);
            self.chunk_len = 0;
        }
        if self.gcd != 1 {
            // Euclid only when the gcd drops, which happens a few times per column.
            let a = y.unsigned_abs();
            if !self.divides.test(a) {
                self.gcd = gcd(self.gcd, a);
                self.divides = Divides::new(self.gcd);
            }
        }
    }

    fn finish(mut self) -> Sizes {
        if self.n > 0 {
            self.rle += varint_len(zz(self.run_value)) + varint_len(self.run_len as u64);
        }
        if self.chunk_len > 0 {
            self.bitpack += bitpack_chunk_size(self.min, self.max, self.chunk_len);
        }
        Sizes {
            constant: (self.n > 0 && !self.changed).then(|| varint_len(zz(self.run_value))),
            bitpack: self.bitpack,
            rle: self.rle,
            varint: self.varint,
            gcd: self.gcd,
        }
    }
}

/// Exact division by a divisor fixed for a whole column, as a shift and a multiply: the
/// scaled candidates divide every value, and the values are multiples of it (it is their
/// gcd), for which this is exact.
#[derive(Clone, Copy)]
struct ExactDiv {
    shift: u32,
    inverse: u64,
}

impl ExactDiv {
    fn new(d: u64) -> ExactDiv {
        let shift = d.trailing_zeros();
        let odd = d >> shift;
        // Newton's iteration doubles the correct low bits each step: 3 → 6 → … → 96.
        let mut inverse = odd;
        for _ in 0..5 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
        }
        ExactDiv { shift, inverse }
    }

    #[inline(always)]
    fn div(self, y: i64) -> i64 {
        ((y >> self.shift) as u64).wrapping_mul(self.inverse) as i64
    }
}

/// [`Sizes`] of the bodies of all three transforms (see [`difference`]), unscaled. A
/// loop per transform: one fused loop kept three measures and spilled them.
fn plain_sizes(xs: &[i64]) -> [Sizes; 3] {
    let mut m = [Measure::new(); 3];
    xs.iter().for_each(|&x| m[0].push(x));
    xs.windows(2)
        .for_each(|w| m[1].push(w[1].wrapping_sub(w[0])));
    xs.windows(3).for_each(|w| {
        m[2].push(
            w[2].wrapping_sub(w[1])
                .wrapping_sub(w[1].wrapping_sub(w[0])),
        )
    });
    m.map(Measure::finish)
}

/// [`Sizes`] of the body of transform `t` (see [`difference`]) divided by `scale`, which
/// must divide every value of that body (their gcd does), without building it.
fn body_sizes(xs: &[i64], t: usize, scale: i64) -> Sizes {
    let div = ExactDiv::new(scale.unsigned_abs());
    let mut m = Measure::new();
    match t {
        0 => xs.iter().for_each(|&x| m.push(div.div(x))),
        1 => xs
            .windows(2)
            .for_each(|w| m.push(div.div(w[1].wrapping_sub(w[0])))),
        _ => xs.windows(3).for_each(|w| {
            let d2 = w[2]
                .wrapping_sub(w[1])
                .wrapping_sub(w[1].wrapping_sub(w[0]));
            m.push(div.div(d2))
        }),
    }
    m.finish()
}

fn chunk_base_width(chunk: &[i64]) -> (i64, u32) {
    let min = chunk.iter().copied().min().unwrap_or(0);
    let max = chunk.iter().copied().max().unwrap_or(0);
    (min, bit_width(max.wrapping_sub(min) as u64))
}

/// Runs of equal values: (value, run length).
fn runs(ys: &[i64]) -> impl Iterator<Item = (i64, usize)> + '_ {
    ys.chunk_by(|a, b| a == b).map(|run| (run[0], run.len()))
}

/// Writes `xs` as an integer column in its smallest transform/scale/mode.
fn put_int_column(out: &mut Vec<u8>, xs: &[i64]) {
    // Most columns of a block are one repeated value (absent fields, flags). Their
    // smallest form is always untransformed, unscaled MODE_CONST (every other candidate
    // adds seeds, a scale or body bytes, and ties go to the first candidate), so they
    // skip the search: it was most of the encoder's time.
    if let Some((&first, rest)) = xs.split_first() {
        if rest.iter().all(|&x| x == first) {
            out.push(MODE_CONST);
            put_varint(out, zz(first));
            return;
        }
    }
    put_searched_column(out, xs);
}

/// Writes `xs` in the transform/scale/mode that the full search finds smallest.
fn put_searched_column(out: &mut Vec<u8>, xs: &[i64]) {
    // (size, transform, scale, mode)
    let mut best: Option<(usize, usize, u64, u8)> = None;
    for (t, plain) in plain_sizes(xs).iter().enumerate() {
        // The seeds: the first `t` values of the transformed column.
        let seeds_len = match (t, xs) {
            (0, _) | (_, []) => 0,
            (1, [a, ..]) | (_, [a]) => varint_len(zz(*a)),
            (_, [a, b, ..]) => varint_len(zz(*a)) + varint_len(zz(b.wrapping_sub(*a))),
        };
        let g = plain.gcd;
        let scaled = (g >= 2 && g <= i64::MAX as u64).then(|| (g, body_sizes(xs, t, g as i64)));
        for (scale, sz) in std::iter::once((1, plain)).chain(scaled.as_ref().map(|(g, s)| (*g, s)))
        {
            let fixed = 1 + seeds_len + if scale == 1 { 0 } else { varint_len(scale) };
            let candidates = [
                (MODE_CONST, sz.constant),
                (MODE_BITPACK, Some(sz.bitpack)),
                (MODE_RLE, Some(sz.rle)),
                (MODE_VARINT, Some(sz.varint)),
            ];
            for (mode, size) in candidates {
                if let Some(size) = size {
                    let total = fixed + size;
                    if best.is_none_or(|(b, ..)| total < b) {
                        best = Some((total, t, scale, mode));
                    }
                }
            }
        }
    }
    let (_, t, scale, mode) = best.unwrap_or((0, 0, 1, MODE_VARINT));

    let s = difference(xs, t);
    let (seeds, body) = s.split_at(t.min(s.len()));
    let scaled_flag = if scale == 1 { 0 } else { TAG_SCALED };
    out.push(mode | ((t as u8) << 2) | scaled_flag);
    for &seed in seeds {
        put_varint(out, zz(seed));
    }
    if scale != 1 {
        put_varint(out, scale);
    }
    let div = ExactDiv::new(scale);
    let ys: Vec<i64> = body.iter().map(|&y| div.div(y)).collect();
    match mode {
        MODE_CONST => put_varint(out, zz(ys.first().copied().unwrap_or(0))),
        MODE_VARINT => {
            for &y in &ys {
                put_varint(out, zz(y));
            }
        }
        MODE_BITPACK => {
            for chunk in ys.chunks(CHUNK) {
                let (base, width) = chunk_base_width(chunk);
                put_varint(out, zz(base));
                out.push(width as u8);
                put_bits(out, chunk, base, width);
            }
        }
        _ => {
            for (v, n) in runs(&ys) {
                put_varint(out, zz(v));
                put_varint(out, n as u64);
            }
        }
    }
}

fn put_bits(out: &mut Vec<u8>, chunk: &[i64], base: i64, width: u32) {
    if width == 0 {
        return;
    }
    let mut acc: u128 = 0;
    let mut n_bits = 0u32;
    for &y in chunk {
        acc |= u128::from(y.wrapping_sub(base) as u64) << n_bits;
        n_bits += width;
        while n_bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n_bits -= 8;
        }
    }
    if n_bits > 0 {
        out.push(acc as u8);
    }
}

// ---------------------------------------------------------------------------------------
// Decoder

/// A decoded integer column: one value repeated, or one value per entry.
enum Col {
    Const(i64),
    Vals(Vec<i64>),
}

impl Col {
    /// The values as one per entry, for `n` entries.
    fn dense(self, n: usize) -> Vec<i64> {
        match self {
            Col::Const(v) => vec![v; n],
            Col::Vals(vs) => vs,
        }
    }
}

/// Reads an integer column of `n` values, each checked to lie in `lo..=hi`.
fn read_int_column(r: &mut Reader, n: usize, lo: i64, hi: i64) -> Result<Col, BlockError> {
    let tag = r.u8()?;
    if tag & 0xe0 != 0 {
        return Err(BlockError::Corrupt("unknown column tag bits"));
    }
    let mode = tag & 3;
    let t = usize::from((tag >> 2) & 3);
    if t == 3 {
        return Err(BlockError::Corrupt("unknown column transform"));
    }
    let n_seeds = t.min(n);
    let mut seeds = [0i64; 2];
    for seed in seeds.iter_mut().take(n_seeds) {
        *seed = unzz(r.varint()?);
    }
    let scale = if tag & TAG_SCALED != 0 {
        let scale = r.varint()?;
        if !(2..=i64::MAX as u64).contains(&scale) {
            return Err(BlockError::Corrupt("column scale out of range"));
        }
        scale as i64
    } else {
        1
    };
    let out_of_range = || BlockError::Corrupt("column value out of range");

    if t == 0 && mode == MODE_CONST {
        let v = unzz(r.varint()?).wrapping_mul(scale);
        if !(lo..=hi).contains(&v) {
            return Err(out_of_range());
        }
        return Ok(Col::Const(v));
    }

    let m = n - n_seeds;
    let mut s: Vec<i64> = Vec::with_capacity(n);
    s.extend_from_slice(&seeds[..n_seeds]);
    match mode {
        MODE_CONST => {
            let y = unzz(r.varint()?).wrapping_mul(scale);
            s.resize(n, y);
        }
        MODE_VARINT => {
            for _ in 0..m {
                s.push(unzz(r.varint()?).wrapping_mul(scale));
            }
        }
        MODE_BITPACK => {
            let mut left = m;
            while left > 0 {
                let len = left.min(CHUNK);
                let base = unzz(r.varint()?);
                let width = u32::from(r.u8()?);
                if width > 64 {
                    return Err(BlockError::Corrupt("bit width over 64"));
                }
                let data = r.take((len * width as usize).div_ceil(8))?;
                unpack_bits(data, len, width, base, scale, &mut s);
                left -= len;
            }
        }
        _ => {
            let mut left = m;
            while left > 0 {
                let y = unzz(r.varint()?).wrapping_mul(scale);
                let run = r.varint()?;
                if run == 0 || run > left as u64 {
                    return Err(BlockError::Corrupt("run length out of range"));
                }
                s.resize(s.len() + run as usize, y);
                left -= run as usize;
            }
        }
    }
    for pass in (1..=t).rev() {
        let mut prev = match s.get(pass - 1) {
            Some(&v) => v,
            None => break,
        };
        for v in s.iter_mut().skip(pass) {
            prev = prev.wrapping_add(*v);
            *v = prev;
        }
    }
    if (lo, hi) != (i64::MIN, i64::MAX) {
        let (min, max) = s.iter().fold((i64::MAX, i64::MIN), |(min, max), &v| {
            (min.min(v), max.max(v))
        });
        if min < lo || max > hi {
            return Err(out_of_range());
        }
    }
    Ok(Col::Vals(s))
}

/// Appends `len` values of `width` bits from `data` (exactly long enough), as
/// `(base + v) * scale`.
fn unpack_bits(data: &[u8], len: usize, width: u32, base: i64, scale: i64, out: &mut Vec<i64>) {
    if width == 0 {
        out.resize(out.len() + len, base.wrapping_mul(scale));
        return;
    }
    let mask = u64::MAX >> (64 - width);
    if width <= 56 {
        // Fast path: every value lies within the 8 bytes starting at its first byte
        // (shift ≤ 7, width ≤ 56); a zero-padded copy makes those 8 bytes always there.
        let mut padded = [0u8; CHUNK * 7 + 8];
        let n = data.len().min(CHUNK * 7);
        if let (Some(dst), Some(src)) = (padded.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        let width = width as usize;
        for j in 0..len {
            let bit = j * width;
            let word = padded
                .get(bit / 8..bit / 8 + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map_or(0, u64::from_le_bytes);
            let v = (word >> (bit % 8)) & mask;
            out.push(base.wrapping_add(v as i64).wrapping_mul(scale));
        }
        return;
    }
    let mut acc: u128 = 0;
    let mut n_bits = 0u32;
    let mut bytes = data.iter();
    for _ in 0..len {
        while n_bits < width {
            match bytes.next() {
                Some(&b) => {
                    acc |= u128::from(b) << n_bits;
                    n_bits += 8;
                }
                // Unreachable: `data` holds len × width bits.
                None => break,
            }
        }
        let v = (acc as u64) & mask;
        acc >>= width;
        n_bits = n_bits.saturating_sub(width);
        out.push(base.wrapping_add(v as i64).wrapping_mul(scale));
    }
}

/// An optional field: which records have it, and their values in record order.
struct OptCol {
    presence: Col,
    /// One column per component (four for `lbs`), `k` values each.
    values: Vec<Vec<i64>>,
    cursor: usize,
}

/// Presence column; returns it and the number of records that have the field.
fn read_presence(r: &mut Reader, n: usize) -> Result<(Col, usize), BlockError> {
    let presence = read_int_column(r, n, 0, 1)?;
    let k = match &presence {
        Col::Const(v) => *v as usize * n,
        Col::Vals(vs) => vs.iter().filter(|&&v| v == 1).count(),
    };
    Ok((presence, k))
}

impl OptCol {
    /// A field no record has (a column the block's version does not carry).
    fn absent() -> OptCol {
        OptCol {
            presence: Col::Const(0),
            values: Vec::new(),
            cursor: 0,
        }
    }

    fn read(r: &mut Reader, n: usize, ranges: &[(i64, i64)]) -> Result<OptCol, BlockError> {
        let (presence, k) = read_presence(r, n)?;
        let mut values = Vec::new();
        if k > 0 {
            for &(lo, hi) in ranges {
                values.push(read_int_column(r, k, lo, hi)?.dense(k));
            }
        }
        Ok(OptCol {
            presence,
            values,
            cursor: 0,
        })
    }

    /// Index into `values` for record `i`, if it has the field. Call once per record,
    /// in order.
    #[inline]
    fn next(&mut self, i: usize) -> Option<usize> {
        match &self.presence {
            Col::Const(0) => None,
            Col::Const(_) => Some(i),
            Col::Vals(p) => {
                if p.get(i) == Some(&1) {
                    self.cursor += 1;
                    Some(self.cursor - 1)
                } else {
                    None
                }
            }
        }
    }

    #[inline]
    fn value(&mut self, i: usize) -> Option<i64> {
        let j = self.next(i)?;
        self.values.first()?.get(j).copied()
    }
}

struct StrCol {
    opt: OptCol,
    dict: Vec<String>,
}

impl StrCol {
    fn read(r: &mut Reader, n: usize, budget: &mut usize) -> Result<StrCol, BlockError> {
        let (presence, k) = read_presence(r, n)?;
        let mut dict = Vec::new();
        let mut values = Vec::new();
        if k > 0 {
            let d = r.varint()?;
            if d == 0 || d > k as u64 {
                return Err(BlockError::Corrupt("string dictionary size out of range"));
            }
            dict.reserve(d as usize);
            for _ in 0..d {
                let len = r.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| BlockError::Corrupt("string length out of range"))?;
                let bytes = r.take(len)?;
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| BlockError::Corrupt("string is not UTF-8"))?;
                dict.push(s.to_owned());
            }
            let indices = read_int_column(r, k, 0, d as i64 - 1)?;
            let expanded: usize = match &indices {
                Col::Const(i) => dict
                    .get(*i as usize)
                    .map_or(0, |s| s.len())
                    .saturating_mul(k),
                Col::Vals(is) => is.iter().fold(0usize, |sum, &i| {
                    sum.saturating_add(dict.get(i as usize).map_or(0, |s| s.len()))
                }),
            };
            *budget = budget
                .checked_sub(expanded)
                .ok_or(BlockError::Corrupt("strings expand past the limit"))?;
            values.push(indices.dense(k));
        }
        Ok(StrCol {
            opt: OptCol {
                presence,
                values,
                cursor: 0,
            },
            dict,
        })
    }

    #[inline]
    fn value(&mut self, i: usize) -> Option<String> {
        let j = self.opt.value(i)?;
        self.dict.get(j as usize).cloned()
    }
}

fn decode_payload(
    payload: &[u8],
    n: usize,
    version: u8,
) -> Result<Vec<PositionRecord>, BlockError> {
    if n == 0 {
        return if payload.is_empty() {
            Ok(Vec::new())
        } else {
            Err(BlockError::Corrupt("empty block with a payload"))
        };
    }
    let r = &mut Reader::new(payload, BlockError::Corrupt("payload ends inside a column"));
    let full = (i64::MIN, i64::MAX);
    let int = |r: &mut Reader, (lo, hi): (i64, i64)| read_int_column(r, n, lo, hi);
    let i32s = (i64::from(i32::MIN), i64::from(i32::MAX));
    let u32s = (0, i64::from(u32::MAX));
    let u16s = (0, i64::from(u16::MAX));
    let u8s = (0, i64::from(u8::MAX));
    let bools = (0, 1);

    let time = int(r, full)?;
    let received = int(r, full)?;
    let lat = int(r, i32s)?;
    let lon = int(r, i32s)?;
    let speed = int(r, u16s)?;
    let course = int(r, u16s)?;
    let satellites = int(r, u8s)?;
    let valid = int(r, bools)?;
    let mut budget = STRING_BYTES_BUDGET;
    let mut invalid_reason = StrCol::read(r, n, &mut budget)?;
    let mut acc = OptCol::read(r, n, &[bools])?;
    let mut odometer = OptCol::read(r, n, &[u32s])?;
    let mut lbs = OptCol::read(r, n, &[u16s, u16s, u32s, full])?;
    let mut alarm = StrCol::read(r, n, &mut budget)?;
    let mut reupload = OptCol::read(r, n, &[bools])?;
    let mut battery_percent = OptCol::read(r, n, &[u8s])?;
    let mut gsm_signal = OptCol::read(r, n, &[u8s])?;
    let mut power_mv = OptCol::read(r, n, &[u32s])?;
    let mut battery_mv = OptCol::read(r, n, &[u32s])?;
    let mut temperature = OptCol::read(r, n, &[i32s])?;
    let mut driver_id = StrCol::read(r, n, &mut budget)?;
    // Version 1 ends here; its records have none of the later fields.
    let later = |r: &mut Reader, range| {
        if version == BLOCK_VERSION_1 {
            Ok(OptCol::absent())
        } else {
            OptCol::read(r, n, &[range])
        }
    };
    let mut altitude = later(r, i32s)?;
    let mut driving_time = later(r, u32s)?;
    let mut engine_time = later(r, u32s)?;
    if !r.is_empty() {
        return Err(BlockError::Corrupt("bytes after the last column"));
    }

    // Every column was checked for its length and range above: the slices below are
    // exactly `n` long (so indexing them by `i < n` cannot fail, and the compiler drops
    // the bounds checks), the `unwrap_or`s are never taken, the `as` casts never change
    // a value. One pass builds each record in place: decode speed is mostly this loop.
    let dense = |c: Col| c.dense(n);
    let (time, received, lat, lon) = (dense(time), dense(received), dense(lat), dense(lon));
    let (speed, course, satellites, valid) =
        (dense(speed), dense(course), dense(satellites), dense(valid));
    let short = || BlockError::Corrupt("column is short");
    let time = time.get(..n).ok_or_else(short)?;
    let received = received.get(..n).ok_or_else(short)?;
    let lat = lat.get(..n).ok_or_else(short)?;
    let lon = lon.get(..n).ok_or_else(short)?;
    let speed = speed.get(..n).ok_or_else(short)?;
    let course = course.get(..n).ok_or_else(short)?;
    let satellites = satellites.get(..n).ok_or_else(short)?;
    let valid = valid.get(..n).ok_or_else(short)?;
    let mut out = Vec::with_capacity(n);
    out.extend((0..n).map(|i| {
        let time_ms = time[i];
        let lbs = lbs.next(i).map(|j| {
            let part = |c: usize| {
                lbs.values
                    .get(c)
                    .and_then(|col| col.get(j))
                    .copied()
                    .unwrap_or(0)
            };
            LbsRecord {
                mcc: part(0) as u16,
                mnc: part(1) as u16,
                lac: part(2) as u32,
                cell: part(3) as u64,
            }
        });
        PositionRecord {
            time_ms,
            received_ms: time_ms.wrapping_add(received[i]),
            lat_raw: lat[i] as i32,
            lon_raw: lon[i] as i32,
            speed_kmh: speed[i] as u16,
            course: course[i] as u16,
            satellites: satellites[i] as u8,
            valid: valid[i] == 1,
            invalid_reason: invalid_reason.value(i),
            acc: acc.value(i).map(|v| v == 1),
            odometer_m: odometer.value(i).map(|v| v as u32),
            lbs,
            alarm: alarm.value(i),
            reupload: reupload.value(i).map(|v| v == 1),
            battery_percent: battery_percent.value(i).map(|v| v as u8),
            gsm_signal: gsm_signal.value(i).map(|v| v as u8),
            power_mv: power_mv.value(i).map(|v| v as u32),
            battery_mv: battery_mv.value(i).map(|v| v as u32),
            temperature_dc: temperature.value(i).map(|v| v as i32),
            driver_id: driver_id.value(i),
            altitude_m: altitude.value(i).map(|v| v as i32),
            driving_time_s: driving_time.value(i).map(|v| v as u32),
            engine_time_s: engine_time.value(i).map(|v| v as u32),
        }
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass [`sizes`] against each mode's definition, over the transform built
    /// the plain way: the encoder's choices (and so its bytes) rest on it.
    #[test]
    fn one_pass_sizes_match_each_modes_definition() {
        fn reference(ys: &[i64]) -> Sizes {
            let mut g = 0u64;
            for &y in ys {
                g = gcd(g, y.unsigned_abs());
                if g == 1 {
                    break;
                }
            }
            Sizes {
                constant: ys
                    .first()
                    .filter(|f| ys.iter().all(|y| y == *f))
                    .map(|f| varint_len(zz(*f))),
                bitpack: ys
                    .chunks(CHUNK)
                    .map(|c| {
                        let (base, width) = chunk_base_width(c);
                        varint_len(zz(base)) + 1 + (c.len() * width as usize).div_ceil(8)
                    })
                    .sum(),
                rle: runs(ys)
                    .map(|(v, n)| varint_len(zz(v)) + varint_len(n as u64))
                    .sum(),
                varint: ys.iter().map(|&y| varint_len(zz(y))).sum(),
                gcd: g,
            }
        }
        let mut rng = Rng::new(7);
        let mut columns: Vec<Vec<i64>> = vec![
            vec![],
            vec![5],
            vec![5, 5],
            vec![i64::MIN, i64::MAX, 0, -1],
            vec![0; 300],
            (0..1000).map(|i| 1_767_225_600_000 + i * 10_000).collect(),
        ];
        for _ in 0..300 {
            let n = rng.below(700) as usize;
            let spread = [0, 1, 3, 1000, i64::MAX][rng.below(5) as usize];
            let step = rng.range(-50, 50) * 6;
            let mut x = rng.range(-1_000_000, 1_000_000);
            columns.push(
                (0..n)
                    .map(|_| {
                        x = x
                            .wrapping_add(step)
                            .wrapping_add(rng.range(-spread, spread));
                        x
                    })
                    .collect(),
            );
        }
        for xs in &columns {
            for t in 0..=2 {
                let built = difference(xs, t);
                let body = &built[t.min(built.len())..];
                let plain = body_sizes(xs, t, 1);
                assert_eq!(plain, reference(body), "transform {t}");
                assert_eq!(plain_sizes(xs)[t], plain, "fused transform {t}");
                if plain.gcd >= 2 && plain.gcd <= i64::MAX as u64 {
                    let g = plain.gcd as i64;
                    let scaled: Vec<i64> = body.iter().map(|y| y / g).collect();
                    assert_eq!(
                        body_sizes(xs, t, g),
                        reference(&scaled),
                        "transform {t} / {g}"
                    );
                }
            }
        }
    }

    #[test]
    fn varint_len_is_what_put_varint_writes_and_exact_division_is_division() {
        let mut rng = Rng::new(11);
        let mut values: Vec<u64> = (0..64).flat_map(|b| [1u64 << b, (1u64 << b) - 1]).collect();
        values.extend([0, u64::MAX]);
        values.extend((0..1000).map(|_| rng.next() >> rng.below(64)));
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
        for _ in 0..2000 {
            let d = (rng.next() >> rng.below(64)).clamp(1, i64::MAX as u64);
            let q = rng.range(i64::MIN / d as i64, i64::MAX / d as i64);
            assert_eq!(ExactDiv::new(d).div(q * d as i64), q, "{q} * {d}");
            let a = rng.next() >> rng.below(64);
            assert_eq!(Divides::new(d).test(a), a % d == 0, "{a} % {d}");
            let m = (q.unsigned_abs()).wrapping_mul(d);
            assert_eq!(Divides::new(d).test(m), m % d == 0, "{m} % {d}");
        }
        assert!(Divides::new(0).test(0) && !Divides::new(0).test(1));
    }

    /// xorshift64*: deterministic, no extra crates.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Uniform in `lo..=hi`, any span.
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            let span = (i128::from(hi) - i128::from(lo) + 1) as u128;
            (i128::from(lo) + (u128::from(self.next()) % span) as i128) as i64
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn per_position(bytes: &[u8], n: usize) -> f64 {
        bytes.len() as f64 / n as f64
    }

    fn golden_records() -> Vec<PositionRecord> {
        let t0 = 1_763_870_400_000;
        vec![
            PositionRecord {
                time_ms: t0,
                received_ms: t0 + 1_500,
                lat_raw: 98_901_624,
                lon_raw: -43_231_720,
                speed_kmh: 61,
                course: 332,
                satellites: 9,
                valid: true,
                invalid_reason: None,
                acc: Some(true),
                odometer_m: Some(123_456),
                lbs: Some(LbsRecord {
                    mcc: 246,
                    mnc: 1,
                    lac: 110,
                    cell: 21_978,
                }),
                alarm: None,
                reupload: Some(false),
                battery_percent: Some(80),
                gsm_signal: Some(4),
                power_mv: Some(12_600),
                battery_mv: Some(4_100),
                temperature_dc: Some(-55),
                driver_id: Some("A1B2C3".into()),
                altitude_m: None,
                driving_time_s: None,
                engine_time_s: None,
            },
            PositionRecord {
                time_ms: t0 + 10_000,
                received_ms: t0 + 10_300,
                lat_raw: 98_903_871,
                lon_raw: -43_230_002,
                speed_kmh: 64,
                course: 335,
                satellites: 10,
                valid: true,
                invalid_reason: None,
                acc: Some(true),
                odometer_m: Some(123_595),
                lbs: Some(LbsRecord {
                    mcc: 246,
                    mnc: 1,
                    lac: 110,
                    cell: 21_978,
                }),
                alarm: Some("sos".into()),
                reupload: None,
                battery_percent: Some(79),
                gsm_signal: Some(3),
                power_mv: None,
                battery_mv: Some(4_090),
                temperature_dc: Some(-50),
                driver_id: Some("A1B2C3".into()),
                altitude_m: None,
                driving_time_s: None,
                engine_time_s: None,
            },
            PositionRecord {
                time_ms: t0 + 20_000,
                received_ms: t0 + 19_000,
                lat_raw: 98_903_871,
                lon_raw: -43_230_002,
                speed_kmh: 0,
                course: 2,
                satellites: 0,
                valid: false,
                invalid_reason: Some("no_device_time".into()),
                acc: Some(false),
                odometer_m: None,
                lbs: Some(LbsRecord {
                    mcc: 246,
                    mnc: 2,
                    lac: 111,
                    cell: 21_979,
                }),
                alarm: Some("power_cut".into()),
                reupload: Some(true),
                battery_percent: None,
                gsm_signal: Some(0),
                power_mv: Some(0),
                battery_mv: None,
                temperature_dc: None,
                driver_id: None,
                altitude_m: None,
                driving_time_s: None,
                engine_time_s: None,
            },
            PositionRecord {
                time_ms: t0 + 20_001,
                received_ms: i64::MAX,
                lat_raw: i32::MIN,
                lon_raw: i32::MAX,
                speed_kmh: u16::MAX,
                course: 359,
                satellites: u8::MAX,
                valid: true,
                invalid_reason: None,
                acc: None,
                odometer_m: Some(u32::MAX),
                lbs: Some(LbsRecord {
                    mcc: u16::MAX,
                    mnc: u16::MAX,
                    lac: u32::MAX,
                    cell: u64::MAX,
                }),
                alarm: None,
                reupload: None,
                battery_percent: Some(100),
                gsm_signal: None,
                power_mv: Some(u32::MAX),
                battery_mv: Some(u32::MAX),
                temperature_dc: Some(i32::MIN),
                driver_id: Some(String::new()),
                altitude_m: None,
                driving_time_s: None,
                engine_time_s: None,
            },
            PositionRecord {
                time_ms: t0 + 3_600_000,
                received_ms: 0,
                lat_raw: 0,
                lon_raw: 0,
                speed_kmh: 12,
                course: 0,
                satellites: 12,
                valid: true,
                invalid_reason: Some("ünïcødé ✓".into()),
                acc: None,
                odometer_m: None,
                lbs: None,
                alarm: Some("sos".into()),
                reupload: Some(false),
                battery_percent: Some(0),
                gsm_signal: Some(255),
                power_mv: None,
                battery_mv: Some(0),
                temperature_dc: Some(i32::MAX),
                driver_id: Some("Z".into()),
                altitude_m: None,
                driving_time_s: None,
                engine_time_s: None,
            },
        ]
    }

    /// [`golden_records`] with the fields version 2 added, on some records only.
    fn golden_records_v2() -> Vec<PositionRecord> {
        let mut records = golden_records();
        let later = [
            (Some(251), Some(3_600), Some(22_140)),
            (Some(-31), Some(3_610), None),
            (None, None, Some(22_200)),
            (Some(i32::MIN), Some(u32::MAX), Some(u32::MAX)),
            (Some(i32::MAX), Some(0), Some(0)),
        ];
        for (r, (altitude_m, driving_time_s, engine_time_s)) in records.iter_mut().zip(later) {
            r.altitude_m = altitude_m;
            r.driving_time_s = driving_time_s;
            r.engine_time_s = engine_time_s;
        }
        records
    }

    /// The shortcut for one repeated value writes what the full search would.
    #[test]
    fn constant_columns_skip_the_search_with_the_same_bytes() {
        let values = [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            1_000,
            1_700_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        for &v in &values {
            for n in [1usize, 2, 3, 7, 200] {
                let xs = vec![v; n];
                let (mut fast, mut searched) = (Vec::new(), Vec::new());
                put_int_column(&mut fast, &xs);
                put_searched_column(&mut searched, &xs);
                assert_eq!(fast, searched, "value {v}, {n} times");
            }
        }
    }

    #[test]
    fn an_absent_field_is_written_as_its_column_of_zeros_would_be() {
        // encode_payload writes these two bytes for a field no record has, without
        // building the column.
        for n in [1usize, 2, 4096] {
            let mut col = Vec::new();
            put_int_column(&mut col, &vec![0; n]);
            assert_eq!(col, [MODE_CONST, 0]);
            let mut strings = Vec::new();
            let ps = vec![PositionRecord::default(); n];
            put_opt_strings(&mut strings, &ps, |p| p.alarm.as_deref());
            assert_eq!(strings, col);
            let mut ints = Vec::new();
            put_opt_ints(&mut ints, &ps, |p| p.odometer_m.map(|v| [i64::from(v)]));
            assert_eq!(ints, col);
        }
    }

    /// Pins the layout: if this fails, the format changed; bump BLOCK_VERSION.
    #[test]
    fn golden_block_decodes_to_its_records() {
        const GOLDEN: &str = "02000580f8f2edd56680dddb01f3020780f8f2edd566a09c01020201be81b5030119b817df120263dab98589d5ccffff7fdc8fa0f5aa3305f0f9a85e8e2300fd9ca9de10808080801005cfa79d29ec1a00e28c9da910fdffffff0f017a800100feff07180200094c9f0a380b0001121400fe03180200011b02000114020e6e6f5f6465766963655f74696d650fc3bc6ec3af63c3b864c3a920e29c9301000202000107020001030200010b0580890f9602e8f4f0ff1f0200010f03ec0303feff070101020204feff0705dc010002a0feffff1f05b4d7020002b7d702020001160203736f7309706f7765725f6375740200010202000115020001020200011b020007d02719000200011701080600fe030200010d01f0c40100feffffff1f0200011b018840f43ffeffffff1f000200011b016d63ffffffff0ffeffffff0f0200011b030641314232433300015a020002900200011b01f6033dffffffff0ffeffffff0f0200011b01a038b438feffffff1f000200011d110f88179017a2c4889102001ce25baa";
        let records = golden_records_v2();
        assert_eq!(hex(&encode_block_with(&records, false)), GOLDEN);
        assert_eq!(decode_block(&encode_block(&records)).unwrap(), records);
        assert_eq!(decode_block(&unhex(GOLDEN)).unwrap(), records);
        let zstd = encode_block_with(&records, true);
        assert_eq!(decode_block(&zstd).unwrap(), records);
        let summary = verify_block(&unhex(GOLDEN)).unwrap();
        assert_eq!(
            summary,
            BlockSummary {
                count: 5,
                first_ms: records[0].time_ms,
                last_ms: records[4].time_ms,
                encoded_len: GOLDEN.len() / 2,
            }
        );
        assert_eq!(block_summary(&unhex(GOLDEN)).unwrap(), summary);
    }

    /// Blocks sealed before version 2 (pinned as that version wrote them) still decode,
    /// with the later fields `None`. The zstd form only has to decode, as another libzstd
    /// may compress the same payload to other (equally valid) bytes.
    #[test]
    fn version_1_golden_block_still_decodes() {
        const GOLDEN_V1: &str = "01000580f8f2edd56680dddb01c2020780f8f2edd566a09c01020201be81b5030119b817df120263dab98589d5ccffff7fdc8fa0f5aa3305f0f9a85e8e2300fd9ca9de10808080801005cfa79d29ec1a00e28c9da910fdffffff0f017a800100feff07180200094c9f0a380b0001121400fe03180200011b02000114020e6e6f5f6465766963655f74696d650fc3bc6ec3af63c3b864c3a920e29c9301000202000107020001030200010b0580890f9602e8f4f0ff1f0200010f03ec0303feff070101020204feff0705dc010002a0feffff1f05b4d7020002b7d702020001160203736f7309706f7765725f6375740200010202000115020001020200011b020007d02719000200011701080600fe030200010d01f0c40100feffffff1f0200011b018840f43ffeffffff1f000200011b016d63ffffffff0ffeffffff0f0200011b030641314232433300015a020002903ab1a462";
        const GOLDEN_V1_ZSTD: &str = "01010580f8f2edd56680dddb01ba02c20228b52ffd60420085090014110780f8f2edd566a09c01020201be81b5030119b817df120263dab98589d5ccffff7fdc8fa0f5aa3305f0f9a85e8e2300fd9ca9de10808080801005cfa79d29ec1a00e28c9da910fdffffff0f017a800100feff07180200094c9f0a380b0001121400fe03180200011b02000114020e6e6f5f6465766963655f74696d650fc3bc6ec3af63c3b864c3a920e29c9301000202000107020001030200010b0580890f9602e8f4f0ff1f0200010f03ec0303feff070101020204feff0705dc010002a0feffff1f05b4d7020002b7d7160203736f7309706f7765725f637574020001151b020007d02719000200011701080600fe0d01f0c4ff1b018840f43f1b016d63ff0f030641314232433300015a020002900b004385d40408bf50a522c45cadd897f74bb261ed8adf3a1b98c08ad12a3e0bcf";
        let records = golden_records();
        assert_eq!(unhex(GOLDEN_V1)[0], 1);
        assert_eq!(decode_block(&unhex(GOLDEN_V1)).unwrap(), records);
        assert_eq!(decode_block(&unhex(GOLDEN_V1_ZSTD)).unwrap(), records);
        assert_eq!(unhex(GOLDEN_V1_ZSTD)[1], FLAG_ZSTD);
        let summary = verify_block(&unhex(GOLDEN_V1)).unwrap();
        assert_eq!((summary.count, summary.last_ms), (5, records[4].time_ms));
    }

    /// One field's values in a random block: constant, full range, extremes, a random
    /// walk or small numbers, within `lo..=hi`.
    struct FieldGen {
        kind: u64,
        prev: i64,
        lo: i64,
        hi: i64,
    }

    impl FieldGen {
        fn new(rng: &mut Rng, lo: i64, hi: i64) -> FieldGen {
            FieldGen {
                kind: rng.below(5),
                prev: rng.range(lo, hi),
                lo,
                hi,
            }
        }
        fn next(&mut self, rng: &mut Rng) -> i64 {
            let v = match self.kind {
                0 => self.prev,
                1 => rng.range(self.lo, self.hi),
                2 => {
                    if rng.chance(50) {
                        self.lo
                    } else {
                        self.hi
                    }
                }
                3 => self
                    .prev
                    .saturating_add(rng.range(-3_000, 3_000))
                    .clamp(self.lo, self.hi),
                _ => rng.range(0, 10).clamp(self.lo, self.hi),
            };
            self.prev = v;
            v
        }
    }

    /// Presence of one optional field: all None, all Some, or mixed at a random density.
    struct Presence(u64, u64);

    impl Presence {
        fn new(rng: &mut Rng) -> Presence {
            Presence(rng.below(3), rng.below(101))
        }
        fn some(&self, rng: &mut Rng) -> bool {
            match self.0 {
                0 => false,
                1 => true,
                _ => rng.chance(self.1),
            }
        }
    }

    fn random_string(rng: &mut Rng) -> String {
        match rng.below(6) {
            0 => "sos".into(),
            1 => "power_cut".into(),
            2 => String::new(),
            3 => "ünïcødé ✓".into(),
            4 => format!("{:x}", rng.next()),
            _ => (0..rng.below(40))
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect(),
        }
    }

    fn random_block(rng: &mut Rng) -> Vec<PositionRecord> {
        let n = if rng.chance(20) {
            1 + rng.below(4)
        } else {
            1 + rng.below(3000)
        } as usize;
        let mut time = match rng.below(5) {
            0 => 0,
            1 => rng.range(0, 1 << 20),
            2 => (1 << 62) - rng.range(0, 1 << 30),
            3 => 1_763_870_400_000 + rng.range(0, 1 << 30),
            _ => -rng.range(0, 1 << 40),
        };
        let step_kind = rng.below(4);
        let received_kind = rng.below(4);
        let i64s = (i64::MIN, i64::MAX);
        let i32s = (i64::from(i32::MIN), i64::from(i32::MAX));
        let u32s = (0, i64::from(u32::MAX));
        let u16s = (0, i64::from(u16::MAX));
        let u8s = (0, i64::from(u8::MAX));
        let mut gen = |(lo, hi): (i64, i64)| FieldGen::new(rng, lo, hi);
        let mut received = gen(i64s);
        let mut lat = gen(i32s);
        let mut lon = gen(i32s);
        let mut speed = gen(u16s);
        let mut course = gen(u16s);
        let mut satellites = gen(u8s);
        let mut valid = gen((0, 1));
        let mut acc = gen((0, 1));
        let mut odometer = gen(u32s);
        let mut mcc = gen(u16s);
        let mut mnc = gen(u16s);
        let mut lac = gen(u32s);
        let mut cell = gen(i64s);
        let mut reupload = gen((0, 1));
        let mut battery_percent = gen(u8s);
        let mut gsm_signal = gen(u8s);
        let mut power_mv = gen(u32s);
        let mut battery_mv = gen(u32s);
        let mut temperature = gen(i32s);
        let mut altitude = gen(i32s);
        let mut driving_time = gen(u32s);
        let mut engine_time = gen(u32s);
        let presence: Vec<Presence> = (0..15).map(|_| Presence::new(rng)).collect();

        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            time += match step_kind {
                0 => 10_000,
                1 => 1_000 * rng.range(1, 120),
                2 => rng.range(1, 100_000),
                _ => rng.range(1, 1 << 40),
            };
            let received_ms = match received_kind {
                0 => time + rng.range(300, 2_000),
                1 => time - rng.range(0, 1 << 40),
                _ => received.next(rng),
            };
            let mut opt = |i: usize| presence[i].some(rng);
            let flags: Vec<bool> = (0..15).map(&mut opt).collect();
            let p = PositionRecord {
                time_ms: time,
                received_ms,
                lat_raw: lat.next(rng) as i32,
                lon_raw: lon.next(rng) as i32,
                speed_kmh: speed.next(rng) as u16,
                course: course.next(rng) as u16,
                satellites: satellites.next(rng) as u8,
                valid: valid.next(rng) == 1,
                invalid_reason: flags[0].then(|| random_string(rng)),
                acc: flags[1].then(|| acc.next(rng) == 1),
                odometer_m: flags[2].then(|| odometer.next(rng) as u32),
                lbs: flags[3].then(|| LbsRecord {
                    mcc: mcc.next(rng) as u16,
                    mnc: mnc.next(rng) as u16,
                    lac: lac.next(rng) as u32,
                    cell: cell.next(rng) as u64,
                }),
                alarm: flags[4].then(|| random_string(rng)),
                reupload: flags[5].then(|| reupload.next(rng) == 1),
                battery_percent: flags[6].then(|| battery_percent.next(rng) as u8),
                gsm_signal: flags[7].then(|| gsm_signal.next(rng) as u8),
                power_mv: flags[8].then(|| power_mv.next(rng) as u32),
                battery_mv: flags[9].then(|| battery_mv.next(rng) as u32),
                temperature_dc: flags[10].then(|| temperature.next(rng) as i32),
                driver_id: flags[11].then(|| random_string(rng)),
                altitude_m: flags[12].then(|| altitude.next(rng) as i32),
                driving_time_s: flags[13].then(|| driving_time.next(rng) as u32),
                engine_time_s: flags[14].then(|| engine_time.next(rng) as u32),
            };
            out.push(p);
        }
        out
    }

    #[test]
    fn random_blocks_round_trip_exactly() {
        let mut rng = Rng::new(1);
        let mut n_zstd = 0;
        for block_idx in 0..240 {
            let records = random_block(&mut rng);
            // Force the choice to be made, so both payload forms are exercised.
            let bytes = encode_block_with(&records, true);
            n_zstd += usize::from(bytes[1] & FLAG_ZSTD != 0);
            let back = decode_block(&bytes)
                .unwrap_or_else(|e| panic!("block {block_idx} does not decode: {e}"));
            assert!(back == records, "block {block_idx} changed in a round trip");
            let summary = verify_block(&bytes).unwrap();
            assert_eq!(summary.count as usize, records.len());
            assert_eq!(summary.first_ms, records[0].time_ms);
            assert_eq!(summary.last_ms, records[records.len() - 1].time_ms);
            assert_eq!(summary.encoded_len, bytes.len());
            assert_eq!(block_summary(&bytes).unwrap(), summary);
            // What encode_block writes (uncompressed) decodes the same.
            let plain = encode_block(&records);
            assert!(decode_block(&plain).unwrap() == records);
        }
        // Both payload forms were exercised.
        assert!(
            (1..240).contains(&n_zstd),
            "{n_zstd} of 240 blocks used zstd"
        );
    }

    #[test]
    fn unsorted_and_empty_input_still_round_trips() {
        let mut records = golden_records();
        records.reverse();
        records.push(records[0].clone());
        assert_eq!(decode_block(&encode_block(&records)).unwrap(), records);
        assert_eq!(decode_block(&encode_block(&[])).unwrap(), vec![]);
        let one = &golden_records()[3..4];
        assert_eq!(decode_block(&encode_block(one)).unwrap(), one);
    }

    /// A few dozen mixed records: about 200 bytes encoded.
    fn small_block() -> Vec<PositionRecord> {
        let mut rng = Rng::new(3);
        let mut records = moving_track(&mut rng, 24, 10_000);
        for (i, p) in records.iter_mut().enumerate() {
            p.alarm = (i % 7 == 3).then(|| "sos".to_string());
            p.battery_percent = (i % 3 != 0).then_some(90 - i as u8);
            p.odometer_m = Some(1_000 + 140 * i as u32);
        }
        records
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_block(&small_block());
        assert!(
            (150..=300).contains(&bytes.len()),
            "test block is {} bytes",
            bytes.len()
        );
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_block(&damaged).is_err(), "flip of bit {bit} decoded");
            assert!(
                verify_block(&damaged).is_err(),
                "flip of bit {bit} verified"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode_block(&small_block());
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(decode_block(cut).is_err(), "prefix of {len} bytes decoded");
            assert!(verify_block(cut).is_err(), "prefix of {len} bytes verified");
            assert!(
                block_summary(cut).is_err(),
                "prefix of {len} bytes summarized"
            );
        }
        assert_eq!(
            decode_block(&bytes[..bytes.len() - 1]),
            Err(BlockError::Truncated)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        for seed in 0..10_000u64 {
            let mut rng = Rng::new(seed);
            let len = rng.below(301) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if seed % 2 == 0 && !bytes.is_empty() {
                bytes[0] = BLOCK_VERSION;
            }
            let _ = decode_block(&bytes);
            let _ = verify_block(&bytes);
            let _ = block_summary(&bytes);
        }
    }

    /// Replaces the trailing checksum so the damage reaches the payload decoder.
    fn reseal(bytes: &mut [u8]) {
        let split = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..split]);
        bytes[split..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn damage_behind_a_valid_checksum_is_an_error_not_a_panic() {
        let mut rng = Rng::new(5);
        let mut sources = vec![encode_block_with(&small_block(), false)];
        for _ in 0..20 {
            let records = random_block(&mut rng);
            sources.push(encode_block_with(&records, false));
            // Some of these are zstd payloads: damage reaches the decompressor too.
            sources.push(encode_block(&records));
        }
        for _ in 0..3_000 {
            let src = &sources[rng.below(sources.len() as u64) as usize];
            let mut bytes = src.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() as u64 - 4) as usize;
                bytes[at] = rng.next() as u8;
            }
            reseal(&mut bytes);
            if let Ok(records) = decode_block(&bytes) {
                assert!(records.len() <= MAX_BLOCK_RECORDS as usize);
            }
        }
    }

    /// A header claiming `count` records, with the given payload, correctly sealed.
    fn forged(count: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![BLOCK_VERSION, 0];
        put_varint(&mut out, count);
        put_varint(&mut out, zz(1_000));
        put_varint(&mut out, 0);
        put_varint(&mut out, payload.len() as u64);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0; 4]);
        reseal(&mut out);
        out
    }

    #[test]
    fn huge_claimed_counts_are_refused_before_allocating() {
        for count in [4_000_000_000, u64::from(u32::MAX), u64::MAX] {
            let bytes = forged(count, &[0, 2]);
            assert_eq!(
                decode_block(&bytes),
                Err(BlockError::Corrupt("record count over the limit"))
            );
            assert!(block_summary(&bytes).is_err());
        }
        // Under the limit, a constant column cannot stand in for every column.
        let bytes = forged(u64::from(MAX_BLOCK_RECORDS), &[0, 2]);
        assert!(decode_block(&bytes).is_err());
        // A huge zstd length claim is refused from the header.
        let mut out = vec![BLOCK_VERSION, FLAG_ZSTD];
        for v in [10, zz(0), 0, 4, 1 << 40] {
            put_varint(&mut out, v);
        }
        out.extend_from_slice(&[0; 8]);
        reseal(&mut out);
        assert_eq!(
            decode_block(&out),
            Err(BlockError::Corrupt("decompressed length over the limit"))
        );
    }

    #[test]
    fn errors_name_their_reason() {
        let bytes = encode_block(&golden_records());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert_eq!(decode_block(&wrong_version), Err(BlockError::Version(9)));
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x40;
        let err = decode_block(&flipped).unwrap_err();
        assert_eq!(err.reason(), "block_checksum");
        assert_eq!(BlockError::Truncated.reason(), "block_truncated");
        assert_eq!(BlockError::Version(2).reason(), "block_version");
        assert_eq!(BlockError::Corrupt("x").reason(), "block_corrupt");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_block(&longer), Err(BlockError::Corrupt(_))));
    }

    /// One vehicle driving ~50 km/h with a drifting heading and speed, fixes on whole
    /// seconds every `interval_ms`, received 0.3–2 s later, 9–12 satellites, the serving
    /// cell changing about every 100 fixes, ACC on, nothing else reported.
    fn moving_track(rng: &mut Rng, n: usize, interval_ms: i64) -> Vec<PositionRecord> {
        let mut time_ms = 1_763_870_400_000;
        let (mut lat, mut lon) = (59.3293_f64, 18.0686_f64);
        let mut heading = 30.0_f64;
        let mut speed = 50.0_f64;
        let mut lbs = LbsRecord {
            mcc: 240,
            mnc: 1,
            lac: 11_020,
            cell: 1_234_567,
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            time_ms += interval_ms;
            heading = (heading + rng.range(-50, 50) as f64 / 10.0).rem_euclid(360.0);
            speed = (speed + rng.range(-30, 30) as f64 / 10.0).clamp(30.0, 70.0);
            let meters = speed / 3.6 * interval_ms as f64 / 1_000.0;
            let (sin, cos) = heading.to_radians().sin_cos();
            lat += meters * cos / 111_320.0;
            lon += meters * sin / (111_320.0 * lat.to_radians().cos());
            if rng.chance(1) {
                lbs.cell = rng.range(1_000_000, 9_999_999) as u64;
                if rng.chance(20) {
                    lbs.lac = rng.range(10_000, 12_000) as u32;
                }
            }
            out.push(PositionRecord {
                time_ms,
                received_ms: time_ms + rng.range(300, 2_000),
                lat_raw: (lat * 1_800_000.0).round() as i32,
                lon_raw: (lon * 1_800_000.0).round() as i32,
                speed_kmh: speed.round() as u16,
                course: heading.round() as u16 % 360,
                satellites: rng.range(9, 12) as u8,
                valid: true,
                acc: Some(true),
                lbs: Some(lbs),
                ..PositionRecord::default()
            });
        }
        out
    }

    fn parked_track(rng: &mut Rng, n: usize) -> Vec<PositionRecord> {
        let mut time_ms = 1_763_870_400_000;
        (0..n)
            .map(|_| {
                time_ms += 10_000;
                PositionRecord {
                    time_ms,
                    received_ms: time_ms + rng.range(300, 2_000),
                    lat_raw: 106_792_740,
                    lon_raw: 32_523_480,
                    speed_kmh: 0,
                    course: 214,
                    satellites: rng.range(9, 12) as u8,
                    valid: true,
                    acc: Some(false),
                    lbs: Some(LbsRecord {
                        mcc: 240,
                        mnc: 1,
                        lac: 11_020,
                        cell: 1_234_567,
                    }),
                    ..PositionRecord::default()
                }
            })
            .collect()
    }

    /// Sizes without zstd, with zstd forced on the payload, and what encode chose.
    fn report_sizes(name: &str, records: &[PositionRecord]) -> f64 {
        let n = records.len();
        let plain = encode_block_with(records, false);
        let raw = encode_payload(records);
        let zstd_len = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap().len();
        let chosen = encode_block(records);
        let one_value_each: usize = records
            .iter()
            .map(|p| super::super::codec::encode(p).len())
            .sum();
        eprintln!(
            "{name}: {n} positions, block {:.2} B/position (columns alone {:.2}, \
             columns + zstd {:.2}), chosen {:.2} B/position; bincode values {:.1} B/position",
            per_position(&plain, n),
            raw.len() as f64 / n as f64,
            (plain.len() - raw.len() + zstd_len) as f64 / n as f64,
            per_position(&chosen, n),
            one_value_each as f64 / n as f64,
        );
        assert_eq!(decode_block(&chosen).unwrap(), records);
        per_position(&chosen, n)
    }

    /// Not a test: `cargo test --release --lib encode_speed -- --ignored --nocapture`
    /// times sealing's encoder on full blocks of a moving and a parked track.
    #[test]
    #[ignore]
    fn encode_speed() {
        let mut rng = Rng::new(5);
        for (name, track) in [
            ("moving", moving_track(&mut rng, 4096, 1000)),
            ("parked", parked_track(&mut rng, 4096)),
        ] {
            // The fastest of 30 rounds: the machine is shared, and noise only adds.
            let mut ns = f64::MAX;
            let mut bytes = 0;
            for _ in 0..30 {
                let started = std::time::Instant::now();
                for _ in 0..10 {
                    bytes = encode_block(std::hint::black_box(&track)).len();
                }
                ns = ns.min(started.elapsed().as_nanos() as f64 / (10 * track.len()) as f64);
            }
            eprintln!(
                "{name}: {ns:.1} ns/position, {:.2} B/position",
                bytes as f64 / track.len() as f64
            );
        }
    }

    #[test]
    fn moving_vehicle_takes_at_most_6_bytes_per_position() {
        let records = moving_track(&mut Rng::new(11), 4_096, 10_000);
        let size = report_sizes("moving", &records);
        assert!(size <= 6.0, "{size:.2} B/position");
    }

    #[test]
    fn parked_vehicle_takes_at_most_2_bytes_per_position() {
        let records = parked_track(&mut Rng::new(12), 4_096);
        let size = report_sizes("parked", &records);
        assert!(size <= 2.0, "{size:.2} B/position");
    }

    /// Not asserted (speed claims live in benches); run with --release --nocapture.
    #[test]
    fn decode_throughput_of_a_day_is_printed() {
        let records = moving_track(&mut Rng::new(13), 86_400, 1_000);
        let blocks: Vec<Vec<u8>> = records.chunks(4_096).map(encode_block).collect();
        let bytes: usize = blocks.iter().map(Vec::len).sum();
        // One untimed round first, so the allocator has its pages.
        for block in &blocks {
            assert!(decode_block(block).is_ok());
        }
        let start = std::time::Instant::now();
        let mut decoded = 0;
        let rounds = 10;
        for _ in 0..rounds {
            for block in &blocks {
                decoded += decode_block(block).unwrap().len();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "decode: {} positions in {} blocks ({:.2} B/position at 1 s): {:.1} ms per day, \
             {:.1} M positions/s{}",
            records.len(),
            blocks.len(),
            bytes as f64 / records.len() as f64,
            secs * 1_000.0 / rounds as f64,
            decoded as f64 / secs / 1e6,
            if cfg!(debug_assertions) {
                " (debug build)"
            } else {
                ""
            },
        );
    }
}
