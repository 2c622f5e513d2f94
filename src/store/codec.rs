//! Value bytes: a format-version byte, then bincode 2 (standard config) of a record.
//!
//! The only `serde` derives of the store live here. Changing a record's layout means
//! bumping [`VERSION`] and handling the old one; the golden-value test fails loudly first.

use serde::{Deserialize, Serialize};

/// Layout version written as the first byte of every value.
pub const VERSION: u8 = 2;

/// One stored position. Coordinates stay in the wire's 1/1,800,000° integers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PositionRecord {
    /// Fix time (device clock, made UTC), ms since the epoch. Also in the key.
    pub time_ms: i64,
    /// Server receipt time, ms since the epoch.
    pub received_ms: i64,
    pub lat_raw: i32,
    pub lon_raw: i32,
    pub speed_kmh: u16,
    pub course: u16,
    pub satellites: u8,
    /// The receiver had a fix and the time is believable.
    pub valid: bool,
    /// Why `valid` is false when it is not just "no GPS fix" (e.g. `no_device_time`).
    pub invalid_reason: Option<String>,
    pub acc: Option<bool>,
    pub odometer_m: Option<u32>,
    pub lbs: Option<LbsRecord>,
    /// Alarm name when this position came with an alarm.
    pub alarm: Option<String>,
    /// The device marked this point as re-sent from its buffer.
    pub reupload: Option<bool>,
    /// Battery charge in percent, when the frame carried it.
    pub battery_percent: Option<u8>,
    /// GSM signal on the vendor's 0–4 scale (some devices send other scales).
    pub gsm_signal: Option<u8>,
    /// External (vehicle) power in millivolts.
    pub power_mv: Option<u32>,
    /// Internal battery in millivolts.
    pub battery_mv: Option<u32>,
    /// Temperature in tenths of a degree Celsius.
    pub temperature_dc: Option<i32>,
    /// Driver / RFID identifier as the device sent it.
    pub driver_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbsRecord {
    pub mcc: u16,
    pub mnc: u16,
    pub lac: u32,
    pub cell: u64,
}

/// Device state reported by heartbeats and alarm frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusRecord {
    pub time_ms: i64,
    pub acc: bool,
    pub charging: bool,
    pub relay_cut: bool,
    pub armed: bool,
    pub voltage_level: Option<u8>,
    pub battery_percent: Option<u8>,
    pub gsm_signal: Option<u8>,
    /// External (vehicle) power in millivolts.
    pub power_mv: Option<u32>,
    /// Internal battery in millivolts.
    pub battery_mv: Option<u32>,
    /// Tenths of a degree Celsius.
    pub temperature_dc: Option<i32>,
}

/// An alarm or other event. Events are few and kept in their own tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time_ms: i64,
    pub received_ms: i64,
    /// snake_case event type, e.g. `sos`, `power_cut`.
    pub kind: String,
    pub lat_raw: Option<i32>,
    pub lon_raw: Option<i32>,
    /// What the device said, for events that carry text (command replies).
    pub text: Option<String>,
}

/// What the store knows about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceRecord {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub type_id: Option<u16>,
    pub tz_offset_min: Option<i16>,
    /// Newest position by fix time (re-sent history never moves it backwards).
    pub last_position: Option<PositionRecord>,
    pub status: Option<StatusRecord>,
    /// SIM card number, from the device's information report.
    pub iccid: Option<String>,
}

/// One journaled request: what a connection asked the store to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// An information report: the fields it carries update the device's status.
    Info {
        imei: u64,
        at_ms: i64,
        power_mv: Option<u32>,
        battery_mv: Option<u32>,
        battery_percent: Option<u8>,
        temperature_dc: Option<i32>,
        iccid: Option<String>,
    },
}

/// Where a block is and what it covers, kept in the `block_index` tree beside `blocks`
/// so that finding a device's blocks never needs to read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u32,
}

/// The foundation's (value version 1) position layout, kept only to migrate old stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRecordV1 {
    pub time_ms: i64,
    pub received_ms: i64,
    pub lat_raw: i32,
    pub lon_raw: i32,
    pub speed_kmh: u16,
    pub course: u16,
    pub satellites: u8,
    pub valid: bool,
    pub invalid_reason: Option<String>,
    pub acc: Option<bool>,
    pub odometer_m: Option<u32>,
    pub lbs: Option<LbsRecord>,
    pub alarm: Option<String>,
    pub reupload: Option<bool>,
}

impl From<PositionRecordV1> for PositionRecord {
    fn from(v: PositionRecordV1) -> Self {
        PositionRecord {
            time_ms: v.time_ms,
            received_ms: v.received_ms,
            lat_raw: v.lat_raw,
            lon_raw: v.lon_raw,
            speed_kmh: v.speed_kmh,
            course: v.course,
            satellites: v.satellites,
            valid: v.valid,
            invalid_reason: v.invalid_reason,
            acc: v.acc,
            odometer_m: v.odometer_m,
            lbs: v.lbs,
            alarm: v.alarm,
            reupload: v.reupload,
            ..PositionRecord::default()
        }
    }
}

/// Decodes a foundation-era position value (version byte 1).
pub fn decode_v1_position(bytes: &[u8]) -> Result<PositionRecord, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != 1 {
        return Err(CodecError::Version(version));
    }
    let (v, _): (PositionRecordV1, _) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(v.into())
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is empty")]
    Empty,
    #[error("value has format version {0}, this build reads {VERSION}")]
    Version(u8),
    #[error("value does not decode: {0}")]
    Decode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serializing plain structs into a Vec cannot fail; an empty body would be caught
    // by the decoder's checks rather than panic here.
    if let Ok(body) = bincode::serde::encode_to_vec(v, config()) {
        out.extend_from_slice(&body);
    }
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let (v, _) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PositionRecord {
        PositionRecord {
            time_ms: 1_445_350_871_000,
            received_ms: 1_445_350_872_500,
            lat_raw: 98_901_624,
            lon_raw: -43_231_720,
            speed_kmh: 61,
            course: 332,
            satellites: 5,
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
            ..PositionRecord::default()
        }
    }

    /// Pins the on-disk layout: if this fails, the format changed; bump VERSION.
    #[test]
    fn golden_position_value_decodes() {
        const GOLDEN: &str = "02fdb01f400ba1020000fd682b400ba1020000fcf03cca0bfccf5327053dfb4c01050100010101fc40e2010001f6016efbda55000100000000000000";
        let bytes = encode(&sample());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN);
        assert_eq!(decode::<PositionRecord>(&bytes).unwrap(), sample());
    }

    /// The foundation's layout, as its golden test pinned it, still decodes for migration.
    #[test]
    fn foundation_value_decodes_for_migration() {
        let v1 = "01fdb01f400ba1020000fd682b400ba1020000fcf03cca0bfccf5327053dfb4c01050100010101fc40e2010001f6016efbda55000100";
        let bytes: Vec<u8> = (0..v1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decode_v1_position(&bytes).unwrap(), sample());
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(matches!(
            decode::<PositionRecord>(&bytes),
            Err(CodecError::Version(9))
        ));
        assert!(matches!(
            decode::<PositionRecord>(&[]),
            Err(CodecError::Empty)
        ));
    }
}
