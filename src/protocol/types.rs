//! The typed results of decoding: what a frame *means*, in units, with no wire layout left.
//!
//! Coordinates stay in the wire's integer unit (1/1,800,000 degree, signed after the
//! hemisphere bits are applied) so nothing is lost to floating point between the socket
//! and the disk; `lat_deg()`/`lon_deg()` convert at the edge.

use std::fmt;

/// Wire scale of latitude/longitude: degrees × 1,800,000 (minutes × 30,000).
pub const COORD_SCALE: f64 = 1_800_000.0;

/// A 15-digit IMEI. Built only by parsing, so holding one means it is well-formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Imei(u64);

impl Imei {
    /// Largest 15-digit number.
    const MAX: u64 = 999_999_999_999_999;

    /// Parses exactly 15 ASCII digits (no Luhn check: real devices fail it).
    pub fn parse(s: &str) -> Option<Imei> {
        if s.len() != 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok().map(Imei)
    }

    /// Accepts a number already known to have at most 15 digits.
    pub fn from_u64(v: u64) -> Option<Imei> {
        (v <= Self::MAX).then_some(Imei(v))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:015}", self.0)
    }
}

impl fmt::Debug for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imei({:015})", self.0)
    }
}

/// A calendar time as the device wrote it (binary fields, or BCD already converted),
/// before any time-zone decision. `year` is the full year (2000 + YY).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DeviceTime {
    /// Milliseconds since the Unix epoch if these fields are read as UTC; `None` for
    /// impossible dates (month 0, day 0, all-zero "no GPS time yet", hour 25…).
    pub fn to_unix_ms_utc(&self) -> Option<i64> {
        if !self.is_valid() {
            return None;
        }
        let (y, m, d) = (self.year as i64, self.month as i64, self.day as i64);
        let days = days_from_civil(y, m, d);
        let secs =
            days * 86_400 + self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64;
        Some(secs * 1000)
    }

    /// Whether these fields are a real date and time of day ([`DeviceTime::to_unix_ms_utc`]
    /// is `Some` exactly then): what the decoders check, without the arithmetic.
    pub fn is_valid(&self) -> bool {
        let (y, m, d) = (self.year as i64, self.month as i64, self.day as i64);
        (1..=12).contains(&m)
            && d >= 1
            && d <= days_in_month(y, m)
            && self.hour <= 23
            && self.minute <= 59
            && self.second <= 59
    }

    /// The UTC calendar fields of a Unix time in ms (used to build the 0x8A time reply).
    pub fn from_unix_ms_utc(ms: i64) -> DeviceTime {
        let secs = ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        DeviceTime {
            year: y.clamp(0, u16::MAX as i64) as u16,
            month: m as u8,
            day: d as u8,
            hour: (sod / 3600) as u8,
            minute: (sod % 3600 / 60) as u8,
            second: (sod % 60) as u8,
        }
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One GPS fix (the 18-byte GPS block of §5.2), signs applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gps {
    /// Device's date/time fields; `None` when they are all zero or impossible.
    pub time: Option<DeviceTime>,
    pub satellites: u8,
    /// Degrees × 1,800,000, negative = south.
    pub lat_raw: i32,
    /// Degrees × 1,800,000, negative = west.
    pub lon_raw: i32,
    pub speed_kmh: u16,
    /// Degrees clockwise from north, 0–359 (low 10 bits of the course word).
    pub course: u16,
    /// Bit 12 of the course word: the receiver had a fix.
    pub fixed: bool,
    /// The whole course/status word as sent, for flags not modelled yet.
    pub course_status: u16,
}

impl Gps {
    pub fn lat_deg(&self) -> f64 {
        self.lat_raw as f64 / COORD_SCALE
    }
    pub fn lon_deg(&self) -> f64 {
        self.lon_raw as f64 / COORD_SCALE
    }
}

/// Serving cell. 2G frames carry u16 LAC / u24 cell; 4G frames u32 / u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Lbs {
    pub mcc: u16,
    pub mnc: u16,
    pub lac: u32,
    pub cell: u64,
}

/// The terminal-information byte and its neighbours (§5.4, §5.5), as sent in
/// heartbeats and alarm frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// Terminal information byte, raw.
    pub info: u8,
    /// Bit 1 of the info byte: ACC/ignition on.
    pub acc: bool,
    /// Bit 2: charging / external power connected.
    pub charging: bool,
    /// Bit 7: oil/electricity cut (relay engaged).
    pub relay_cut: bool,
    /// Bit 0: armed.
    pub armed: bool,
    /// Voltage level 0–6 (vendor scale), when present.
    pub voltage_level: Option<u8>,
    /// GSM signal 0–4 (vendor scale), when present.
    pub gsm_signal: Option<u8>,
    /// Alarm code byte (§11.1), when present; 0 = none.
    pub alarm_code: Option<u8>,
    pub language: Option<u8>,
    /// External supply voltage in millivolts, from layouts that send it (OBD6 0x13 …).
    pub power_mv: Option<u32>,
    /// Internal battery voltage in millivolts (GK310 0x23 …).
    pub battery_mv: Option<u32>,
    /// Battery charge in percent, from layouts that send a percentage rather than the
    /// 0–6 voltage level.
    pub battery_pct: Option<u8>,
    /// Temperature in tenths of a degree Celsius.
    pub temperature_dc: Option<i32>,
    /// Pedometer count of wearable trackers (SEEWORLD 0xA3 status).
    pub steps: Option<u32>,
}

impl Status {
    /// Battery percentage: the one the device sent, else the vendor voltage scale mapped
    /// the way Traccar maps it (0–6 → 0–100 %, 7–100 taken as a percentage).
    pub fn battery_percent(&self) -> Option<u8> {
        if self.battery_pct.is_some() {
            return self.battery_pct;
        }
        match self.voltage_level? {
            v @ 0..=6 => Some((v as u16 * 100 / 6) as u8),
            v @ 7..=100 => Some(v),
            _ => None,
        }
    }
}

/// What an alarm is about, named as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmKind {
    Sos,
    PowerCut,
    Vibration,
    GeofenceEnter,
    GeofenceExit,
    Overspeed,
    Tow,
    LowBattery,
    PowerOff,
    Tampering,
    Door,
    Removing,
    HardAcceleration,
    HardBraking,
    HardCornering,
    Accident,
    Fall,
    AccOn,
    AccOff,
    /// An alarm code we carry but do not name yet.
    Other(u8),
}

impl AlarmKind {
    /// The stable snake_case name used in JSON and event types.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlarmKind::Sos => "sos",
            AlarmKind::PowerCut => "power_cut",
            AlarmKind::Vibration => "vibration",
            AlarmKind::GeofenceEnter => "geofence_enter",
            AlarmKind::GeofenceExit => "geofence_exit",
            AlarmKind::Overspeed => "overspeed",
            AlarmKind::Tow => "tow",
            AlarmKind::LowBattery => "low_battery",
            AlarmKind::PowerOff => "power_off",
            AlarmKind::Tampering => "tampering",
            AlarmKind::Door => "door",
            AlarmKind::Removing => "removing",
            AlarmKind::HardAcceleration => "hard_acceleration",
            AlarmKind::HardBraking => "hard_braking",
            AlarmKind::HardCornering => "hard_cornering",
            AlarmKind::Accident => "accident",
            AlarmKind::Fall => "fall",
            AlarmKind::AccOn => "acc_on",
            AlarmKind::AccOff => "acc_off",
            AlarmKind::Other(_) => "other",
        }
    }
}

/// A location report: GPS plus whatever the frame carried beside it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Location {
    pub gps: Gps,
    pub lbs: Option<Lbs>,
    /// ACC from an explicit ACC byte (0x22/0xA0) or the status byte.
    pub acc: Option<bool>,
    /// Odometer/mileage in metres, when sent.
    pub odometer_m: Option<u32>,
    /// 0x22-style "GPS re-upload" byte: 1 = buffered/historical point.
    pub reupload: Option<bool>,
    pub upload_mode: Option<u8>,
    /// Driver / RFID card id as hex or text (0x17 RFID variant, 0x61 iButton …).
    pub driver_id: Option<String>,
    /// Altitude in metres, from the few layouts that send it (0x70 GPS module, SL4X).
    pub altitude_m: Option<i32>,
    /// Driving time the device counted, in seconds (WETRUST 0x12).
    pub driving_time_s: Option<u32>,
    /// Total engine running time in seconds (NT-family 0x22/0x25, TRX16I 0x36 send it
    /// in minutes).
    pub engine_time_s: Option<u32>,
    /// External supply voltage in millivolts (VXT01, S5, TRX16I layouts).
    pub power_mv: Option<u32>,
    /// Internal battery voltage in millivolts (TRX16I).
    pub battery_mv: Option<u32>,
    /// Temperature in tenths of a degree Celsius (S5, SEEWORLD).
    pub temperature_dc: Option<i32>,
}

/// Login (0x01).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login {
    pub imei: Imei,
    pub type_id: Option<u16>,
    /// Offset from the login's time-zone word in minutes (east positive), if present.
    pub tz_offset_min: Option<i16>,
}

/// An alarm frame (0x16/0x26/0x27/0xA4 …): where, the status around it, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub location: Option<Location>,
    pub status: Status,
    /// `None` when the frame carried alarm code 0 and no status-bit alarm.
    pub kind: Option<AlarmKind>,
    /// Serving cell of alarms sent without GPS (0x19, 0xA5); `None` when `location`
    /// carries the cell or there is none.
    pub cell: Option<Lbs>,
    /// Names of the video/photo files a dash-cam recorded for this alarm, comma-separated
    /// as sent (0x95 long form).
    pub media_files: Option<String>,
}

/// One cell of a multi-cell LBS list. Each carries its own MCC/MNC so a list can be used
/// without the frame around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cell {
    pub lbs: Lbs,
    /// Signal strength as sent (0x00 weakest … 0xFF strongest on 0x28-style lists).
    pub rssi: Option<u8>,
}

/// One WiFi access point seen by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WifiAp {
    pub mac: [u8; 6],
    /// Signal strength byte as sent.
    pub rssi: u8,
}

/// A network-only position report (LBS lists, WiFi): no GPS fix, so it locates the device
/// only through a cell/WiFi lookup done elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CellReport {
    /// Device time of the measurement, when the frame carries one.
    pub time: Option<DeviceTime>,
    /// Serving cell first, then neighbours; empty slots (LAC 0) are left out.
    pub cells: Vec<Cell>,
    pub wifi: Vec<WifiAp>,
    /// 365GPS 0x17 and similar: measured while offline and sent later.
    pub buffered: bool,
}

/// Device information without a position (0x94 information transfer, 0xF1/0xF2 status
/// records, unsolicited `<ICCID:…>` strings …). Every field is what the frame said, in
/// the unit its name gives; absent fields were not sent.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Info {
    /// External supply voltage in millivolts.
    pub power_mv: Option<u32>,
    /// Internal battery voltage in millivolts.
    pub battery_mv: Option<u32>,
    pub battery_pct: Option<u8>,
    /// SIM card ICCID, decimal digits.
    pub iccid: Option<String>,
    /// SIM IMSI, decimal digits.
    pub imsi: Option<String>,
    /// Radio technology in use: "2G" or "4G".
    pub network: Option<&'static str>,
    pub door_open: Option<bool>,
    pub ignition: Option<bool>,
    pub charging: Option<bool>,
    pub armed: Option<bool>,
    pub moving: Option<bool>,
    /// Tenths of a degree Celsius.
    pub temperature_dc: Option<i32>,
    /// Relative humidity in tenths of a percent.
    pub humidity_dpct: Option<u32>,
    /// Temperature a paired Bluetooth sensor tag reported, tenths of a degree Celsius
    /// (0x70 module 0x7F).
    pub tag_temperature_dc: Option<i32>,
    /// RFID / iButton / driver card id.
    pub driver_id: Option<String>,
    /// Free text the device reported (status string, fuel sensor, serial data).
    pub text: Option<String>,
    /// Device time of the record, when sent.
    pub time: Option<DeviceTime>,
}

/// Everything a decoded frame can mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Login(Login),
    /// 0x13 status / heartbeat (and 0x23, 0x08).
    Heartbeat(Status),
    /// 0x10/0x11/0x12/0x22/0xA0 … positions.
    Location(Location),
    Alarm(Alarm),
    /// Cell/WiFi-only position reports (0x17/0x69 365GPS, 0x28, 0x2C, 0xA1 …).
    Cells(CellReport),
    /// Device information without a position (0x94, 0xF1, 0xF2 …).
    Info(Info),
    /// The device's answer to a server command (0x15 short form, 0x21 long form).
    /// `flag` is the 4-byte server flag of the command it answers.
    CommandReply {
        flag: u32,
        text: String,
    },
    /// A protocol number we recognise as carrying nothing to store, with why.
    Ignored {
        proto: u8,
        reason: &'static str,
    },
    /// A protocol number we do not decode. Logged and counted, never stored.
    Unknown {
        proto: u8,
    },
}

impl Message {
    /// Short stable name of the message kind (log field, metric label, `decode` output).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Login(_) => "login",
            Message::Heartbeat(_) => "heartbeat",
            Message::Location(_) => "location",
            Message::Alarm(_) => "alarm",
            Message::Cells(_) => "cells",
            Message::Info(_) => "info",
            Message::CommandReply { .. } => "command_reply",
            Message::Ignored { .. } => "ignored",
            Message::Unknown { .. } => "unknown",
        }
    }
}
