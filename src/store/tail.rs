//! A device's unsealed positions, kept compact in memory until a checkpoint seals them.
//!
//! Why compact: the fewer checkpoints, the fewer sled writes (which is what makes sled
//! grow on disk and in memory), so the store holds millions of unsealed positions. A
//! [`PositionRecord`] is 192 bytes; a [`Row`] is 32, with the cell id in a per-device
//! dictionary (it changes every few minutes) and rare fields in a side list.

use super::codec::{LbsRecord, PositionRecord};

/// No cell in the dictionary for this row.
const NO_LBS: u16 = u16::MAX;
/// Cells looked up from the newest backwards before a new entry is added.
const LBS_LOOKBACK: usize = 8;
/// The row has no entry in the tail's `extras`.
const NO_EXTRA: u32 = u32::MAX;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// Positions of one device, sorted by fix time, one per fix time.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    rows: Vec<Row>,
    cells: Vec<LbsRecord>,
    extras: Vec<Extra>,
}

impl Tail {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a position; the first one stored for a fix time wins. Returns false for a
    /// fix time already present.
    pub fn insert(&mut self, p: &PositionRecord) -> bool {
        let row = self.pack(p);
        match self.rows.last() {
            None => self.rows.push(row),
            Some(last) if last.time_ms < row.time_ms => self.rows.push(row),
            Some(_) => match self.rows.binary_search_by_key(&row.time_ms, |r| r.time_ms) {
                Ok(_) => return false,
                Err(i) => self.rows.insert(i, row),
            },
        }
        true
    }

    /// Positions with `from_ms <= time < to_ms`, oldest first.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> Vec<PositionRecord> {
        let start = self.rows.partition_point(|r| r.time_ms < from_ms);
        self.rows[start..]
            .iter()
            .take_while(|r| r.time_ms < to_ms)
            .map(|r| self.unpack(r))
            .collect()
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
    }

    /// Everything, oldest first, emptying the tail.
    pub fn take_all(&mut self) -> Vec<PositionRecord> {
        let rows = std::mem::take(&mut self.rows);
        let out = rows.iter().map(|r| self.unpack(r)).collect();
        self.cells = Vec::new();
        self.extras = Vec::new();
        out
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
            assert!(tail.insert(&p));
        }
        assert!(
            !tail.insert(&plain(20)),
            "a second position at the same fix time is refused"
        );
        let got = tail.range(0, i64::MAX);
        assert_eq!(got, vec![full(10), plain(20), plain(30), far]);
        assert_eq!(tail.range(20, 30), vec![plain(20)]);
        assert_eq!(tail.take_all().len(), 4);
        assert!(tail.is_empty());
    }
}
