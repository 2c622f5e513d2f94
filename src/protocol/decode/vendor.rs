//! Vendor-specific layouts that share little with the GT06 core: JC100/JC400 dashcam
//! alarms (0x95), X1 GPS (0x34) and AZ735 long-form 0x32/0x33.

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u32, be_u8};

use super::fields::{ascii_text, gps, gps_from_parts, time_binary};
use super::Failure;
use crate::protocol::types::{
    Alarm, AlarmKind, Cell, CellReport, Info, Lbs, Location, Message, Status,
};

type E<'a> = nom::error::Error<&'a [u8]>;

/// 0x95 event codes (§11.3). The short form's 0x01 is a general alarm, the long form's SOS.
fn dashcam_event(code: u8, long: bool) -> AlarmKind {
    match code {
        0x01 if long => AlarmKind::Sos,
        0x0E => AlarmKind::LowBattery,
        0x80 => AlarmKind::Vibration,
        0x87 => AlarmKind::Overspeed,
        0x88 => AlarmKind::PowerCut,
        0x90 => AlarmKind::HardAcceleration,
        0x91 => AlarmKind::HardBraking,
        0x92 => AlarmKind::HardCornering,
        0x93 => AlarmKind::Accident,
        other => AlarmKind::Other(other),
    }
}

/// 0x95: short (time, event) or long: GPS without satellites and speed, or the JC400
/// layout marked by `FF FF` (version, time, satellites, lat, lon, course word, speed u16,
/// power u16/10); then event, event data and the names of the files the camera recorded
/// (ASCII, comma-separated).
pub(super) fn dashcam_0x95(c: &[u8]) -> Result<Alarm, Failure> {
    if c.len() <= 7 {
        let (i, _time) = time_binary(c)?;
        let (_, event) = be_u8::<_, E>(i)?;
        return Ok(Alarm {
            location: None,
            status: Status::default(),
            kind: Some(dashcam_event(event, false)),
            cell: None,
            media_files: None,
        });
    }
    let (location, status, rest) = if c.starts_with(&[0xFF, 0xFF]) {
        let (i, _marker) = be_u16::<_, E>(c)?;
        let (i, _version) = be_u8::<_, E>(i)?;
        let (i, time) = time_binary(i)?;
        let (i, satellites) = be_u8::<_, E>(i)?;
        let (i, lat) = be_u32::<_, E>(i)?;
        let (i, lon) = be_u32::<_, E>(i)?;
        let (i, course_status) = be_u16::<_, E>(i)?;
        let (i, speed) = be_u16::<_, E>(i)?;
        let (i, power) = be_u16::<_, E>(i)?;
        let gps = gps_from_parts(time, satellites & 0x0F, lat, lon, speed, course_status);
        let status = Status {
            power_mv: Some(u32::from(power) * 100),
            ..Status::default()
        };
        (
            Location {
                gps,
                ..Location::default()
            },
            status,
            i,
        )
    } else {
        let (i, time) = time_binary(c)?;
        let (i, lat) = be_u32::<_, E>(i)?;
        let (i, lon) = be_u32::<_, E>(i)?;
        let (i, course_status) = be_u16::<_, E>(i)?;
        let gps = gps_from_parts(time, 0, lat, lon, 0, course_status);
        (
            Location {
                gps,
                ..Location::default()
            },
            Status::default(),
            i,
        )
    };
    let (rest, event) = be_u8::<_, E>(rest)?;
    Ok(Alarm {
        location: Some(location),
        status,
        kind: Some(dashcam_event(event, true)),
        cell: None,
        media_files: media_files(rest),
    })
}

/// The file list after a long 0x95's event byte: event data (binary, zeros in the
/// captures) and then the names as ASCII; `None` when no name follows.
fn media_files(rest: &[u8]) -> Option<String> {
    let start = rest.iter().position(|b| b.is_ascii_graphic())?;
    ascii_text(rest.get(start..)?).filter(|t| !t.is_empty())
}

/// 0x34 on X1: data/alarm u32, GPS, terminal info u16, odometer u32, MCC u16, MNC u8,
/// LAC u16, cell u32, then driver, voltages and I/O we do not keep.
pub(super) fn x1_0x34(c: &[u8]) -> Result<Location, Failure> {
    let (i, _data_alarm) = be_u32::<_, E>(c)?;
    let (i, gps) = gps(i)?;
    let (i, _info) = be_u16::<_, E>(i)?;
    let (i, odometer) = be_u32::<_, E>(i)?;
    let (i, mcc) = be_u16::<_, E>(i)?;
    let (i, mnc) = be_u8::<_, E>(i)?;
    let (i, lac) = be_u16::<_, E>(i)?;
    let (_, cell) = be_u32::<_, E>(i)?;
    Ok(Location {
        gps,
        lbs: Some(Lbs {
            mcc,
            mnc: u16::from(mnc),
            lac: u32::from(lac),
            cell: u64::from(cell),
        }),
        odometer_m: Some(odometer),
        ..Location::default()
    })
}

/// AZ735 long-form 0x32 (report) / 0x33 (alarm): time; a GPS part whose length byte may be
/// 0; an LBS part with length byte (MCC, MNC, LAC, cell u24, RSSI); length-prefixed
/// neighbour cells (LAC, cell u24, RSSI); length-prefixed WiFi; a status byte.
pub(super) fn az735_long(proto: u8, c: &[u8]) -> Result<Message, Failure> {
    let (i, time) = time_binary(c)?;
    let (i, gps_len) = be_u8::<_, E>(i)?;
    let (i, gps_part) = take::<_, _, E>(gps_len)(i)?;
    let gps = if gps_part.len() >= 12 {
        let (g, info) = be_u8::<_, E>(gps_part)?;
        let (g, lat) = be_u32::<_, E>(g)?;
        let (g, lon) = be_u32::<_, E>(g)?;
        let (g, speed) = be_u8::<_, E>(g)?;
        let (_, course_status) = be_u16::<_, E>(g)?;
        Some(gps_from_parts(
            time,
            info & 0x0F,
            lat,
            lon,
            u16::from(speed),
            course_status,
        ))
    } else {
        None
    };
    let (i, lbs_len) = be_u8::<_, E>(i)?;
    let (i, lbs_part) = take::<_, _, E>(lbs_len)(i)?;
    let mut cells = Vec::new();
    let mut mcc_mnc = (0u16, 0u16);
    if lbs_part.len() >= 9 {
        let (l, mcc) = be_u16::<_, E>(lbs_part)?;
        let (l, mnc) = be_u8::<_, E>(l)?;
        let (l, lac) = be_u16::<_, E>(l)?;
        let (l, cell) = be_u24::<_, E>(l)?;
        let (_, rssi) = be_u8::<_, E>(l)?;
        mcc_mnc = (mcc, u16::from(mnc));
        let lbs = Lbs {
            mcc,
            mnc: u16::from(mnc),
            lac: u32::from(lac),
            cell: u64::from(cell),
        };
        cells.push(Cell {
            lbs,
            rssi: Some(rssi),
        });
    }
    let (i, n_len) = be_u8::<_, E>(i)?;
    let (i, neighbours) = take::<_, _, E>(n_len)(i)?;
    for entry in neighbours.chunks_exact(6) {
        let (e, lac) = be_u16::<_, E>(entry)?;
        let (e, cell) = be_u24::<_, E>(e)?;
        let (_, rssi) = be_u8::<_, E>(e)?;
        if lac != 0 || cell != 0 {
            let (mcc, mnc) = mcc_mnc;
            let lbs = Lbs {
                mcc,
                mnc,
                lac: u32::from(lac),
                cell: u64::from(cell),
            };
            cells.push(Cell {
                lbs,
                rssi: Some(rssi),
            });
        }
    }
    let (i, wifi_len) = be_u8::<_, E>(i)?;
    let (i, _wifi) = take::<_, _, E>(wifi_len)(i)?;
    let status = i.first().copied();
    // 0x33 status: A0 armed, A1 disarmed, A2/A3 low battery, A4 alarm, A5 door.
    let kind = match (proto, status) {
        (0x33, Some(0xA2 | 0xA3)) => Some(AlarmKind::LowBattery),
        (0x33, Some(0xA4)) => Some(AlarmKind::Other(0xA4)),
        (0x33, Some(0xA5)) => Some(AlarmKind::Door),
        _ => None,
    };
    let serving = cells.first().map(|c| c.lbs);
    if let Some(kind) = kind {
        return Ok(Message::Alarm(Alarm {
            location: gps.map(|gps| Location {
                gps,
                lbs: serving,
                ..Location::default()
            }),
            status: Status::default(),
            kind: Some(kind),
            cell: serving,
            media_files: None,
        }));
    }
    Ok(match gps {
        Some(gps) => Message::Location(Location {
            gps,
            lbs: serving,
            ..Location::default()
        }),
        None if !cells.is_empty() => Message::Cells(CellReport {
            time,
            cells,
            ..CellReport::default()
        }),
        None => Message::Info(Info {
            time,
            armed: match status {
                Some(0xA0) => Some(true),
                Some(0xA1) => Some(false),
                _ => None,
            },
            ..Info::default()
        }),
    })
}
