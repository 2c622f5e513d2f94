//! 0x70 modular GPS frames (§7): a run of modules `type u16, length u16, value`. The GPS
//! module makes it a position, a known event module an alarm; otherwise it is device
//! information.

use nom::bytes::complete::take;
use nom::number::complete::{be_i16, be_u16, be_u32, be_u8};

use super::fields::{bcd_digits, gps_from_parts};
use super::Failure;
use crate::protocol::types::{Alarm, AlarmKind, DeviceTime, Info, Location, Message, Status};

type E<'a> = nom::error::Error<&'a [u8]>;

pub(super) fn modular_0x70(c: &[u8]) -> Result<Message, Failure> {
    let mut i = c;
    let mut info = Info::default();
    let mut loc: Option<Location> = None;
    let mut odometer_m = None;
    let mut event = None;
    while !i.is_empty() {
        let (rest, kind) = be_u16::<_, E>(i)?;
        let (rest, len) = be_u16::<_, E>(rest)?;
        let (rest, value) = take::<_, _, E>(len)(rest)?;
        match kind {
            0x0002 => info.imsi = bcd_digits(value, true),
            0x0003 => info.iccid = bcd_digits(value, false),
            0x0018 => info.battery_mv = be_u16::<_, E>(value).ok().map(|(_, v)| u32::from(v) * 10),
            0x002C => info.time = be_u32::<_, E>(value).ok().and_then(|(_, t)| unix_time(t)),
            // The reference says little-endian; the captures (two reports of one device
            // three weeks apart: 61 633 m, then 62 045 m) only make sense big-endian.
            0x002E => odometer_m = be_u32::<_, E>(value).ok().map(|(_, v)| v),
            0x0033 => loc = Some(gps_module(value)?),
            0x0034 => event = event.or(value.first().copied().and_then(event_kind)),
            0x007F => info.tag_temperature_dc = ble_tag_temperature(value),
            _ => {}
        }
        i = rest;
    }
    Ok(match (loc, event) {
        (loc, Some(kind)) => Message::Alarm(Alarm {
            location: loc.map(|l| Location { odometer_m, ..l }),
            status: Status::default(),
            kind: Some(kind),
            cell: None,
            media_files: None,
        }),
        (Some(loc), None) => Message::Location(Location { odometer_m, ..loc }),
        (None, None) => Message::Info(info),
    })
}

/// Unix seconds → calendar time; 0 means "no time".
fn unix_time(seconds: u32) -> Option<DeviceTime> {
    (seconds != 0).then(|| DeviceTime::from_unix_ms_utc(i64::from(seconds) * 1000))
}

/// Module 0x33: Unix time, satellites, altitude i16, lat, lon, speed, course word.
fn gps_module(v: &[u8]) -> Result<Location, Failure> {
    let (v, time) = be_u32::<_, E>(v)?;
    let (v, satellites) = be_u8::<_, E>(v)?;
    let (v, altitude) = be_i16::<_, E>(v)?;
    let (v, lat) = be_u32::<_, E>(v)?;
    let (v, lon) = be_u32::<_, E>(v)?;
    let (v, speed) = be_u8::<_, E>(v)?;
    let (_, course_status) = be_u16::<_, E>(v)?;
    let gps = gps_from_parts(
        unix_time(time),
        satellites,
        lat,
        lon,
        u16::from(speed),
        course_status,
    );
    Ok(Location {
        gps,
        altitude_m: Some(i32::from(altitude)),
        ..Location::default()
    })
}

/// Module 0x7F, a Bluetooth sensor tag: MAC 6, three bytes we do not interpret, then the
/// temperature as i16 tenths of a degree Celsius (the peer-vector capture reads 29.0 °C
/// there), then bytes we do not interpret. Only the first tag of the module is read.
fn ble_tag_temperature(v: &[u8]) -> Option<i32> {
    let t = v.get(9..11)?;
    Some(i32::from(i16::from_be_bytes([*t.first()?, *t.get(1)?])))
}

/// Module 0x34 event codes (§11.4) that name an alarm; other events are not alarms.
fn event_kind(code: u8) -> Option<AlarmKind> {
    Some(match code {
        0x10 => AlarmKind::Door,
        0x12 => AlarmKind::Removing,
        0x14 => AlarmKind::GeofenceEnter,
        0x15 => AlarmKind::GeofenceExit,
        0x1A => AlarmKind::LowBattery,
        0x1B => AlarmKind::Overspeed,
        0x1D => AlarmKind::PowerOff,
        0x20 => AlarmKind::Vibration,
        0x21 => AlarmKind::PowerCut,
        0x23 => AlarmKind::Tampering,
        _ => return None,
    })
}
