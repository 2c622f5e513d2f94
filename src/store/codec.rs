//! Value bytes: a format-version byte, then bincode 2 (standard config) of a record.
//!
//! The only `serde` derives of the store live here. Changing a record's layout means
//! bumping [`VERSION`] and handling the old one; the golden-value test fails loudly first.
//! Version 2 values (before altitude, driving and engine time, steps, door, humidity,
//! network and tag temperature) still decode through [`Versioned::from_v2`]; the journal
//! keeps its own version in its file magic and reads version-1 segments as [`OpV2`].

use serde::{Deserialize, Serialize};

/// Layout version written as the first byte of every value.
pub const VERSION: u8 = 3;

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
    /// Altitude in metres.
    pub altitude_m: Option<i32>,
    /// Driving time the device counted, in seconds.
    pub driving_time_s: Option<u32>,
    /// Total engine running time in seconds.
    pub engine_time_s: Option<u32>,
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
    /// Pedometer count (wearables).
    pub steps: Option<u32>,
    pub door_open: Option<bool>,
    /// Relative humidity in tenths of a percent.
    pub humidity_dpct: Option<u32>,
    /// Radio generation in use: 2 (2G), 3, 4 (4G).
    pub network_gen: Option<u8>,
    /// Temperature of a paired Bluetooth sensor tag, tenths of a degree Celsius.
    pub tag_temperature_dc: Option<i32>,
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
        door_open: Option<bool>,
        humidity_dpct: Option<u32>,
        network_gen: Option<u8>,
        tag_temperature_dc: Option<i32>,
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

/// Version-2 layouts, kept to read values and journal segments written before version 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PositionRecordV2 {
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
    pub battery_percent: Option<u8>,
    pub gsm_signal: Option<u8>,
    pub power_mv: Option<u32>,
    pub battery_mv: Option<u32>,
    pub temperature_dc: Option<i32>,
    pub driver_id: Option<String>,
}

impl From<PositionRecordV2> for PositionRecord {
    fn from(v: PositionRecordV2) -> Self {
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
            battery_percent: v.battery_percent,
            gsm_signal: v.gsm_signal,
            power_mv: v.power_mv,
            battery_mv: v.battery_mv,
            temperature_dc: v.temperature_dc,
            driver_id: v.driver_id,
            ..PositionRecord::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusRecordV2 {
    pub time_ms: i64,
    pub acc: bool,
    pub charging: bool,
    pub relay_cut: bool,
    pub armed: bool,
    pub voltage_level: Option<u8>,
    pub battery_percent: Option<u8>,
    pub gsm_signal: Option<u8>,
    pub power_mv: Option<u32>,
    pub battery_mv: Option<u32>,
    pub temperature_dc: Option<i32>,
}

impl From<StatusRecordV2> for StatusRecord {
    fn from(v: StatusRecordV2) -> Self {
        StatusRecord {
            time_ms: v.time_ms,
            acc: v.acc,
            charging: v.charging,
            relay_cut: v.relay_cut,
            armed: v.armed,
            voltage_level: v.voltage_level,
            battery_percent: v.battery_percent,
            gsm_signal: v.gsm_signal,
            power_mv: v.power_mv,
            battery_mv: v.battery_mv,
            temperature_dc: v.temperature_dc,
            ..StatusRecord::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceRecordV2 {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub type_id: Option<u16>,
    pub tz_offset_min: Option<i16>,
    pub last_position: Option<PositionRecordV2>,
    pub status: Option<StatusRecordV2>,
    pub iccid: Option<String>,
}

impl From<DeviceRecordV2> for DeviceRecord {
    fn from(v: DeviceRecordV2) -> Self {
        DeviceRecord {
            first_seen_ms: v.first_seen_ms,
            last_seen_ms: v.last_seen_ms,
            type_id: v.type_id,
            tz_offset_min: v.tz_offset_min,
            last_position: v.last_position.map(Into::into),
            status: v.status.map(Into::into),
            iccid: v.iccid,
        }
    }
}

/// Journal requests as journal format 1 wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpV2 {
    Position {
        imei: u64,
        pos: PositionRecordV2,
    },
    Event {
        imei: u64,
        event: EventRecord,
    },
    Seen {
        imei: u64,
        at_ms: i64,
        login: Option<(Option<u16>, Option<i16>)>,
        status: Option<StatusRecordV2>,
    },
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

impl From<OpV2> for Op {
    fn from(v: OpV2) -> Self {
        match v {
            OpV2::Position { imei, pos } => Op::Position {
                imei,
                pos: pos.into(),
            },
            OpV2::Event { imei, event } => Op::Event { imei, event },
            OpV2::Seen {
                imei,
                at_ms,
                login,
                status,
            } => Op::Seen {
                imei,
                at_ms,
                login,
                status: status.map(Into::into),
            },
            OpV2::Info {
                imei,
                at_ms,
                power_mv,
                battery_mv,
                battery_percent,
                temperature_dc,
                iccid,
            } => Op::Info {
                imei,
                at_ms,
                power_mv,
                battery_mv,
                battery_percent,
                temperature_dc,
                iccid,
                door_open: None,
                humidity_dpct: None,
                network_gen: None,
                tag_temperature_dc: None,
            },
        }
    }
}

/// A stored value type, and how its version-2 layout becomes the current one.
pub trait Versioned: for<'de> Deserialize<'de> {
    fn from_v2(body: &[u8]) -> Result<Self, CodecError>;
}

fn body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, CodecError> {
    let (v, _) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(v)
}

impl Versioned for PositionRecord {
    fn from_v2(b: &[u8]) -> Result<Self, CodecError> {
        body::<PositionRecordV2>(b).map(Into::into)
    }
}

impl Versioned for DeviceRecord {
    fn from_v2(b: &[u8]) -> Result<Self, CodecError> {
        body::<DeviceRecordV2>(b).map(Into::into)
    }
}

/// Unchanged since version 2.
impl Versioned for EventRecord {
    fn from_v2(b: &[u8]) -> Result<Self, CodecError> {
        body(b)
    }
}

/// Unchanged since version 2.
impl Versioned for BlockMeta {
    fn from_v2(b: &[u8]) -> Result<Self, CodecError> {
        body(b)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is empty")]
    Empty,
    #[error("value has format version {0}, this build reads 2 and {VERSION}")]
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

pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        VERSION => body(rest),
        2 => T::from_v2(rest),
        v => Err(CodecError::Version(v)),
    }
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

    fn sample_v3() -> PositionRecord {
        PositionRecord {
            altitude_m: Some(-31),
            driving_time_s: Some(3_600),
            engine_time_s: Some(22_140),
            ..sample()
        }
    }

    /// Pins the on-disk layout: if this fails, the format changed; bump VERSION.
    #[test]
    fn golden_position_value_decodes() {
        const GOLDEN: &str = "03fdb01f400ba1020000fd682b400ba1020000fcf03cca0bfccf5327053dfb4c01050100010101fc40e2010001f6016efbda55000100000000000000013d01fb100e01fb7c56";
        let bytes = encode(&sample_v3());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN);
        assert_eq!(decode::<PositionRecord>(&bytes).unwrap(), sample_v3());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Values written by version 2 (as its golden test pinned them) still decode.
    #[test]
    fn version_2_values_still_decode() {
        const GOLDEN_V2: &str = "02fdb01f400ba1020000fd682b400ba1020000fcf03cca0bfccf5327053dfb4c01050100010101fc40e2010001f6016efbda55000100000000000000";
        assert_eq!(
            decode::<PositionRecord>(&unhex(GOLDEN_V2)).unwrap(),
            sample()
        );
        // A device record of version 2, with a position and a status inside.
        let v2 = DeviceRecordV2 {
            first_seen_ms: 5,
            last_seen_ms: 9,
            type_id: Some(0x100F),
            tz_offset_min: Some(-240),
            last_position: Some(PositionRecordV2 {
                time_ms: 7,
                driver_id: Some("A1".into()),
                ..PositionRecordV2::default()
            }),
            status: Some(StatusRecordV2 {
                time_ms: 8,
                power_mv: Some(12_600),
                ..StatusRecordV2::default()
            }),
            iccid: Some("8966".into()),
        };
        let mut bytes = vec![2];
        bytes.extend(bincode::serde::encode_to_vec(&v2, config()).unwrap());
        let got = decode::<DeviceRecord>(&bytes).unwrap();
        assert_eq!(got.type_id, Some(0x100F));
        assert_eq!(
            got.last_position
                .as_ref()
                .map(|p| (p.time_ms, p.driver_id.clone(), p.altitude_m)),
            Some((7, Some("A1".into()), None))
        );
        assert_eq!(
            got.status.map(|s| (s.time_ms, s.power_mv, s.steps)),
            Some((8, Some(12_600), None))
        );
        assert_eq!(got.iccid.as_deref(), Some("8966"));
        // Events and block metadata did not change between the versions.
        let meta = BlockMeta {
            first_ms: 1,
            last_ms: 2,
            count: 3,
        };
        let mut bytes = vec![2];
        bytes.extend(bincode::serde::encode_to_vec(meta, config()).unwrap());
        assert_eq!(decode::<BlockMeta>(&bytes).unwrap(), meta);
    }

    /// The foundation's layout, as its golden test pinned it, still decodes for migration.
    #[test]
    fn foundation_value_decodes_for_migration() {
        let v1 = "01fdb01f400ba1020000fd682b400ba1020000fcf03cca0bfccf5327053dfb4c01050100010101fc40e2010001f6016efbda55000100";
        let bytes = unhex(v1);
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
