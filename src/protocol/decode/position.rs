//! Layouts built from the GPS block, a cell and/or the ST5 status (§7, §8): locations
//! (0x10/0x11/0x12/0x22/0xA0 and the vendor types of `other_location`), heartbeats
//! (0x13/0x23/0x36) and alarms (0x16/0x26/0x27/0xA4, 0x19/0xA5 without GPS, 0x32, 0xA3).
//!
//! A layout variant is chosen from the protocol number and the content size (§12.1), or
//! from the configured [`Model`] (§12.2), never from earlier frames.

use nom::combinator::opt;
use nom::number::complete::{be_i16, be_u16, be_u32, be_u8};

use super::alarm;
use super::fields::{
    gps, hex_string, lbs_2g, lbs_2g_cell_u32, lbs_4g, lbs_with_len, st5, status_from_info,
};
use super::Failure;
use crate::protocol::types::{Alarm, Lbs, Location, Status};
use crate::protocol::Model;

type E<'a> = nom::error::Error<&'a [u8]>;

/// The core location types: GPS, then a cell and a tail whose size says what it holds.
pub(super) fn location(proto: u8, c: &[u8]) -> Result<Location, Failure> {
    let (rest, gps) = gps(c)?;
    let mut loc = Location {
        gps,
        ..Location::default()
    };
    match proto {
        // GPS only; the two bytes some firmware appends carry nothing documented.
        0x10 => {}
        // GPS_LBS_6: MNC u16 and a u32 cell, only when the whole block is there (the
        // 365GPS "offline GPS" 0x11 carries three unexplained bytes instead).
        0x11 => {
            if rest.len() >= 10 {
                let (rest, mcc) = be_u16::<_, E>(rest)?;
                let (rest, mnc) = be_u16::<_, E>(rest)?;
                let (rest, lac) = be_u16::<_, E>(rest)?;
                let (_, cell) = be_u32::<_, E>(rest)?;
                loc.lbs = Some(Lbs {
                    mcc: mcc & 0x7FFF,
                    mnc,
                    lac: u32::from(lac),
                    cell: u64::from(cell),
                });
            }
        }
        // WETRUST (LEN 0x29, §12.1): odometer u32, a length-prefixed card, alarm u8,
        // card status u8, driving time u16 (seconds).
        0x12 if c.len() == 0x29 - 5 => {
            let (rest, lbs) = lbs_2g(rest)?;
            loc.lbs = Some(lbs);
            let (rest, odometer) = be_u32::<_, E>(rest)?;
            let (rest, card_len) = be_u8::<_, E>(rest)?;
            let (rest, _card) = nom::bytes::complete::take::<_, _, E>(card_len)(rest)?;
            let (rest, _alarm) = be_u8::<_, E>(rest)?;
            let (rest, _card_status) = be_u8::<_, E>(rest)?;
            let (_, driving) = be_u16::<_, E>(rest)?;
            loc.odometer_m = Some(odometer);
            loc.driving_time_s = Some(u32::from(driving));
        }
        // The optional tail is told apart by its size (§8.1).
        0x12 => {
            let (rest, lbs) = lbs_2g(rest)?;
            loc.lbs = Some(lbs);
            match rest.len() {
                3 => {
                    acc_mode_reupload(rest, &mut loc)?;
                }
                4 => loc.odometer_m = Some(be_u32::<_, E>(rest)?.1),
                7 => {
                    let rest = acc_mode_reupload(rest, &mut loc)?;
                    loc.odometer_m = Some(be_u32::<_, E>(rest)?.1);
                }
                // VXT01 (LEN 0x24): terminal info, power u16/100, RSSI, alarm extension.
                5 => {
                    let (rest, info) = be_u8::<_, E>(rest)?;
                    let (_, power) = be_u16::<_, E>(rest)?;
                    loc.acc = Some(status_from_info(info).acc);
                    loc.power_mv = Some(u32::from(power) * 10);
                }
                // S5 (LEN 0x2B): terminal info, power u16/100, RSSI, alarm, oil u16,
                // temperature u8 (bit 7 = below zero), odometer u32 in tens of metres.
                12 => {
                    let (rest, info) = be_u8::<_, E>(rest)?;
                    let (rest, power) = be_u16::<_, E>(rest)?;
                    let (rest, _rssi) = be_u8::<_, E>(rest)?;
                    let (rest, _alarm) = be_u8::<_, E>(rest)?;
                    let (rest, _oil) = be_u16::<_, E>(rest)?;
                    let (rest, temp) = be_u8::<_, E>(rest)?;
                    let (_, odometer) = be_u32::<_, E>(rest)?;
                    let degrees = i32::from(temp & 0x7F);
                    loc.acc = Some(status_from_info(info).acc);
                    loc.power_mv = Some(u32::from(power) * 10);
                    loc.temperature_dc =
                        Some(if temp & 0x80 != 0 { -degrees } else { degrees } * 10);
                    loc.odometer_m = Some(odometer.saturating_mul(10));
                }
                _ => {}
            }
        }
        // SEEWORLD 0x22 (LEN 0x2F): u32 cell, ACC/mode/re-upload, odometer, then travel
        // time, temperature and humidity we do not keep.
        0x22 if c.len() == 0x2F - 5 => {
            let (rest, lbs) = lbs_2g_cell_u32(rest)?;
            loc.lbs = Some(lbs);
            let rest = acc_mode_reupload(rest, &mut loc)?;
            let (rest, odometer) = be_u32::<_, E>(rest)?;
            let (rest, _travel_time) = be_u32::<_, E>(rest)?;
            let (_, temp) = be_u16::<_, E>(rest)?;
            loc.odometer_m = Some(odometer);
            // Hundredths of a degree, bit 15 = below zero; kept in tenths.
            let tenths = i32::from(temp & 0x7FFF) / 10;
            loc.temperature_dc = Some(if temp & 0x8000 != 0 { -tenths } else { tenths });
        }
        // 0x22 (2G) and 0xA0 (4G): LBS, ACC, upload mode, re-upload [+ mileage].
        _ => {
            let (rest, lbs) = if proto == 0xA0 {
                lbs_4g(rest)?
            } else {
                lbs_2g(rest)?
            };
            loc.lbs = Some(lbs);
            let rest = acc_mode_reupload(rest, &mut loc)?;
            loc.odometer_m = opt(be_u32::<_, E>)(rest)?.1;
        }
    }
    Ok(loc)
}

/// ACC u8, data upload mode u8, GPS re-upload u8; each optional so a frame cut short by
/// its firmware still yields its position.
fn acc_mode_reupload<'a>(rest: &'a [u8], loc: &mut Location) -> Result<&'a [u8], Failure> {
    let (rest, acc) = opt(be_u8::<_, E>)(rest)?;
    let (rest, mode) = opt(be_u8::<_, E>)(rest)?;
    let (rest, reupload) = opt(be_u8::<_, E>)(rest)?;
    loc.acc = acc.map(|b| b != 0);
    loc.upload_mode = mode;
    loc.reupload = reupload.map(|b| b != 0);
    Ok(rest)
}

/// 0x13 / 0x23 status: ST5 in the standard case, other slot layouts picked by size.
pub(super) fn heartbeat(proto: u8, c: &[u8]) -> Result<Status, Failure> {
    match (proto, c.len()) {
        // GK310: terminal info [+ battery u16] [+ RSSI u8] + language u16.
        (0x23, 6) => {
            let (rest, info) = be_u8::<_, E>(c)?;
            let (rest, battery) = be_u16::<_, E>(rest)?;
            let (rest, rssi) = be_u8::<_, E>(rest)?;
            let (_, language) = be_u16::<_, E>(rest)?;
            Ok(Status {
                battery_mv: Some(u32::from(battery) * 10),
                gsm_signal: Some(rssi),
                language: Some(language as u8),
                ..status_from_info(info)
            })
        }
        (0x23, _) => Ok(status_from_info(be_u8::<_, E>(c)?.1)),
        (_, 14) => heartbeat_obd6(c),
        (_, 16) => heartbeat_22_bytes(c),
        (_, n) if n >= 5 => Ok(st5(c)?.1),
        _ => Ok(status_from_info(be_u8::<_, E>(c)?.1)),
    }
}

/// GPS alarms: GPS, LBS with length byte, ST5 [, fence]; the kind comes from the alarm
/// byte, else the status bits.
pub(super) fn alarm(proto: u8, c: &[u8], model: Model) -> Result<Alarm, Failure> {
    let (rest, gps) = gps(c)?;
    // Variants chosen by exact size (§12.1): VXT01 0x16 (LEN 0x24) has no LBS length byte
    // and an alarm byte that means nothing; SEEWORLD 0x16 (LEN 0x26) has a u32 cell id.
    let vxt01 = proto == 0x16 && c.len() == 0x24 - 5;
    let seeworld = proto == 0x16 && c.len() == 0x26 - 5;
    let (rest, lbs) = if vxt01 {
        lbs_2g(rest).map(|(r, l)| (r, Some(l)))?
    } else if seeworld {
        let (rest, _len) = be_u8::<_, E>(rest)?;
        lbs_2g_cell_u32(rest).map(|(r, l)| (r, Some(l)))?
    } else {
        lbs_with_len(rest, proto == 0xA4)?
    };
    let fence_len = usize::from(matches!(proto, 0x27 | 0xA4));
    // Without a cell block, a frame longer than any known layout still ends in its status
    // (and fence) bytes: read them from the end rather than from zero padding.
    let status_at = if lbs.is_none() && rest.len() > 5 + fence_len + 4 {
        rest.len() - 5 - fence_len
    } else {
        0
    };
    let (rest, status) = st5(rest.get(status_at..).unwrap_or_default())?;
    let rest = rest.get(fence_len..).unwrap_or_default();
    // 0x16 with LEN 0x29 appends a mileage word to the standard layout (§5.1); TRX16I
    // (LEN 0x2D) an 8-byte RFID card.
    let odometer_m = if rest.len() == 4 {
        opt(be_u32::<_, E>)(rest)?.1
    } else {
        None
    };
    let driver_id = (proto == 0x16 && rest.len() == 8).then(|| hex_string(rest));
    let code = if vxt01 {
        0
    } else {
        status.alarm_code.unwrap_or(0)
    };
    let location = Location {
        gps,
        lbs,
        acc: Some(status.acc),
        odometer_m,
        driver_id,
        ..Location::default()
    };
    Ok(Alarm {
        cell: None,
        location: Some(location),
        status,
        kind: alarm::kind(model, code, status.info),
        media_files: None,
    })
}

/// Extended 0x13 layouts picked by size (§7): OBD6 (LEN 0x13) and the 22-byte form
/// (LEN 0x15). Only the info byte is shared with ST5.
fn heartbeat_obd6(c: &[u8]) -> Result<Status, Failure> {
    let (i, info) = be_u8::<_, E>(c)?;
    let (i, signal) = be_u16::<_, E>(i)?;
    let (i, alarm) = be_u8::<_, E>(i)?;
    let (i, language) = be_u8::<_, E>(i)?;
    let (i, battery_pct) = be_u8::<_, E>(i)?;
    let (i, mode) = be_u8::<_, E>(i)?;
    let (i, power) = be_u16::<_, E>(i)?;
    let (i, _reserved) = be_u8::<_, E>(i)?;
    let (i, _working_time) = be_u16::<_, E>(i)?;
    let (_, temp) = be_u16::<_, E>(i)?;
    Ok(Status {
        gsm_signal: Some((signal & 0x1F) as u8),
        alarm_code: Some(alarm),
        language: Some(language),
        battery_pct: Some(battery_pct),
        power_mv: Some(u32::from(power) * 10),
        // The temperature slot holds one only in mode 4.
        temperature_dc: (mode == 4).then_some(i32::from(temp as i16)),
        ..status_from_info(info)
    })
}

fn heartbeat_22_bytes(c: &[u8]) -> Result<Status, Failure> {
    let (i, info) = be_u8::<_, E>(c)?;
    let (i, _satellites) = be_u16::<_, E>(i)?;
    let (i, alarm) = be_u8::<_, E>(i)?;
    let (i, language) = be_u8::<_, E>(i)?;
    let (i, battery_pct) = be_u8::<_, E>(i)?;
    let (i, _mode) = be_u8::<_, E>(i)?;
    let (i, voltage) = be_u16::<_, E>(i)?;
    let (i, _reserved) = be_u8::<_, E>(i)?;
    let (i, _working_count) = be_u16::<_, E>(i)?;
    let (i, _working_time) = be_u16::<_, E>(i)?;
    let (_, temp) = be_u16::<_, E>(i)?;
    // Low 15 bits in tenths of a degree; bit 15 set means positive.
    let magnitude = i32::from(temp & 0x7FFF);
    Ok(Status {
        alarm_code: Some(alarm),
        language: Some(language),
        battery_pct: Some(battery_pct),
        battery_mv: Some(u32::from(voltage) * 10),
        temperature_dc: Some(if temp & 0x8000 != 0 {
            magnitude
        } else {
            -magnitude
        }),
        ..status_from_info(info)
    })
}

/// 0x36 Jimi 4G status: ST5, then modules `type u16, len u8, value` (0x0018 battery
/// u16/100 V, 0x006A battery %).
pub(super) fn status_modules(c: &[u8]) -> Result<Status, Failure> {
    let (mut i, mut status) = st5(c)?;
    while !i.is_empty() {
        let (rest, kind) = be_u16::<_, E>(i)?;
        let (rest, len) = be_u8::<_, E>(rest)?;
        let (rest, value) = nom::bytes::complete::take::<_, _, E>(len)(rest)?;
        match (kind, value) {
            (0x0018, [hi, lo]) => {
                status.battery_mv = Some(u32::from(u16::from_be_bytes([*hi, *lo])) * 10)
            }
            (0x006A, [pct]) => status.battery_pct = Some(*pct),
            _ => {}
        }
        i = rest;
    }
    Ok(status)
}

/// Alarms without GPS (0x19 2G, 0xA5 4G): the serving cell, then ST5.
pub(super) fn lbs_alarm(proto: u8, c: &[u8], model: Model) -> Result<Alarm, Failure> {
    let (rest, lbs) = if proto == 0xA5 {
        lbs_4g(c)?
    } else {
        lbs_2g(c)?
    };
    let (_, status) = st5(rest)?;
    Ok(Alarm {
        location: None,
        status,
        kind: alarm::kind(model, status.alarm_code.unwrap_or(0), status.info),
        cell: Some(lbs),
        media_files: None,
    })
}

/// Positions whose layout is a GPS block and a cell, with optional extras, chosen by
/// protocol number and size (§7, §12.1). `None` when the size matches no layout we read.
pub(super) fn other_location(proto: u8, c: &[u8]) -> Result<Option<Location>, Failure> {
    let (rest, gps) = gps(c)?;
    let mut loc = Location {
        gps,
        ..Location::default()
    };
    match (proto, c.len()) {
        // JI09: GPS, then a multi-cell list we do not keep.
        (0x1E, _) => {}
        // RFID 0x17 (LEN 0x28): cell, 8-byte card id, validity.
        (0x17, _) => {
            let (rest, lbs) = lbs_2g(rest)?;
            let (_, card) = nom::bytes::complete::take::<_, _, E>(8usize)(rest)?;
            loc.lbs = Some(lbs);
            loc.driver_id = Some(hex_string(card));
        }
        // SL4X 0x31 (LEN 0x2A): MNC u16, u32 cell, ACC/mode/re-upload, odometer, altitude.
        (0x31, 37) => {
            let (rest, lbs) = lbs_mnc16_cell32(rest)?;
            loc.lbs = Some(lbs);
            let rest = acc_mode_reupload(rest, &mut loc)?;
            let (rest, odometer) = be_u32::<_, E>(rest)?;
            loc.odometer_m = Some(odometer);
            loc.altitude_m = opt(be_i16::<_, E>)(rest)?.1.map(i32::from);
        }
        // 0x2D, 0x31: as 0x22.
        (0x2D | 0x31, _) => {
            let (rest, lbs) = lbs_2g(rest)?;
            loc.lbs = Some(lbs);
            acc_mode_reupload(rest, &mut loc)?;
        }
        // 0x37: cell, ACC, reason, re-upload, then modules we do not keep.
        (0x37, _) => {
            let (rest, lbs) = lbs_2g(rest)?;
            loc.lbs = Some(lbs);
            acc_mode_reupload(rest, &mut loc)?;
        }
        // 0xA2 on LW4G (LEN 0x40): GPS + 4G cell, then status we do not keep.
        (0xA2, 59) => loc.lbs = Some(lbs_4g(rest)?.1),
        // 0x24 SR411 mini (LEN 0x2E): cell and an ignition byte.
        (0x24, 41) => {
            let (rest, lbs) = lbs_2g(rest)?;
            loc.lbs = Some(lbs);
            loc.acc = opt(be_u8::<_, E>)(rest)?.1.map(|b| b != 0);
        }
        // 0x36 TRX16I (LEN 0x35): u32 cell, ACC/mode/re-upload, odometer, power,
        // battery, engine hours, then an 8-byte RFID.
        (0x36, 48) => {
            let (rest, lbs) = lbs_2g_cell_u32(rest)?;
            loc.lbs = Some(lbs);
            let rest = acc_mode_reupload(rest, &mut loc)?;
            let (rest, odometer) = be_u32::<_, E>(rest)?;
            let (rest, power) = be_u16::<_, E>(rest)?;
            let (rest, battery) = be_u8::<_, E>(rest)?;
            let (_, hours) = nom::number::complete::be_u24::<_, E>(rest)?;
            loc.engine_time_s = Some(hours.saturating_mul(60));
            loc.odometer_m = Some(odometer);
            loc.power_mv = Some(u32::from(power) * 10);
            loc.battery_mv = Some(u32::from(battery) * 100);
            loc.driver_id = c.get(c.len() - 8..).map(hex_string);
        }
        // 0x38 Jimi 4G: upload mode, re-upload, then a cell whose type byte says 2G or 4G.
        (0x38, _) => {
            let (rest, mode) = be_u8::<_, E>(rest)?;
            let (rest, reupload) = be_u8::<_, E>(rest)?;
            let (rest, cell_type) = be_u8::<_, E>(rest)?;
            loc.upload_mode = Some(mode);
            loc.reupload = Some(reupload != 0);
            loc.lbs = Some(if cell_type >= 3 {
                lbs_4g(rest)?.1
            } else {
                lbs_2g(rest)?.1
            });
        }
        _ => return Ok(None),
    }
    Ok(Some(loc))
}

/// MCC u16, MNC u16, LAC u16, cell u32 (SL4X).
fn lbs_mnc16_cell32(i: &[u8]) -> nom::IResult<&[u8], Lbs> {
    let (i, mcc) = be_u16(i)?;
    let (i, mnc) = be_u16(i)?;
    let (i, lac) = be_u16(i)?;
    let (i, cell) = be_u32(i)?;
    Ok((
        i,
        Lbs {
            mcc: mcc & 0x7FFF,
            mnc,
            lac: u32::from(lac),
            cell: u64::from(cell),
        },
    ))
}

/// 0x61 iButton: IMEI 8, GPS, cell with a u32 id, and the driver id sent as a u32 and a
/// u16 that together form one decimal number.
pub(super) fn ibutton_0x61(c: &[u8]) -> Result<Location, Failure> {
    let (rest, _imei) = nom::bytes::complete::take::<_, _, E>(8usize)(c)?;
    let (rest, gps) = gps(rest)?;
    let (rest, lbs) = lbs_2g_cell_u32(rest)?;
    let (rest, high) = be_u32::<_, E>(rest)?;
    let (_, low) = be_u16::<_, E>(rest)?;
    let driver = (u64::from(high) << 16) + u64::from(low);
    Ok(Location {
        gps,
        lbs: Some(lbs),
        driver_id: Some(driver.to_string()),
        ..Location::default()
    })
}

/// Status-location frames with an LBS length byte and ST5 but MNC u16 and a u32 cell:
/// SL4X short 0x32 (LEN 0x27/0x29).
pub(super) fn sl4x_0x32(c: &[u8], model: Model) -> Result<Alarm, Failure> {
    let (rest, gps) = gps(c)?;
    let (rest, _len) = be_u8::<_, E>(rest)?;
    let (rest, lbs) = lbs_mnc16_cell32(rest)?;
    let (rest, status) = st5(rest)?;
    let location = Location {
        gps,
        lbs: Some(lbs),
        acc: Some(status.acc),
        altitude_m: opt(be_i16::<_, E>)(rest)?.1.map(i32::from),
        ..Location::default()
    };
    Ok(Alarm {
        location: Some(location),
        status,
        kind: alarm::kind(model, status.alarm_code.unwrap_or(0), status.info),
        cell: None,
        media_files: None,
    })
}

/// SEEWORLD 0xA3 status, long form (LEN 0x18): terminal info, extension word, voltage
/// level, RSSI, power, language, sound, light, steps u32, battery %, charging, motion,
/// then bytes no source explains. The short form (LEN 0x0C) is ST5-like; only its info
/// byte is certain.
pub(super) fn seeworld_status_0xa3(c: &[u8]) -> Result<Status, Failure> {
    if c.len() < 0x18 - 5 {
        return heartbeat(0x13, c.get(..1).unwrap_or_default());
    }
    let (i, info) = be_u8::<_, E>(c)?;
    let (i, _extension) = be_u16::<_, E>(i)?;
    let (i, voltage_level) = be_u8::<_, E>(i)?;
    let (i, _rssi) = be_u8::<_, E>(i)?;
    let (i, _power) = be_u8::<_, E>(i)?;
    let (i, language) = be_u8::<_, E>(i)?;
    let (i, _sound) = be_u8::<_, E>(i)?;
    let (i, _light) = be_u8::<_, E>(i)?;
    let (i, steps) = be_u32::<_, E>(i)?;
    let (i, battery_pct) = be_u8::<_, E>(i)?;
    let (_, charging) = be_u8::<_, E>(i)?;
    Ok(Status {
        voltage_level: Some(voltage_level),
        language: Some(language),
        battery_pct: Some(battery_pct),
        steps: Some(steps),
        charging: charging != 0,
        ..status_from_info(info)
    })
}

/// 0xA3 on GK310: GPS, one unexplained byte, 4G cell, ST5 (peer vector 95).
pub(super) fn fence_0xa3(c: &[u8], model: Model) -> Result<Alarm, Failure> {
    let (rest, gps) = gps(c)?;
    let (rest, _unknown) = be_u8::<_, E>(rest)?;
    let (rest, lbs) = lbs_4g(rest)?;
    let (_, status) = st5(rest)?;
    let location = Location {
        gps,
        lbs: Some(lbs),
        acc: Some(status.acc),
        ..Location::default()
    };
    Ok(Alarm {
        location: Some(location),
        status,
        kind: alarm::kind(model, status.alarm_code.unwrap_or(0), status.info),
        cell: None,
        media_files: None,
    })
}

/// The position a 0x21 reply carries as text:
/// `Current position!Lat:N54.739332,Lon:E25.273270,Course:126.53,Speed:0.0000,DateTime:2017-05-26  10:27:47`.
pub(super) fn position_text(text: &str) -> Option<Location> {
    let body = text.strip_prefix("Current position!")?;
    let field = |key: &str| {
        body.split(',')
            .find_map(|f| f.trim().strip_prefix(key).map(str::trim))
    };
    let degrees = |v: &str, positive: char, negative: char| -> Option<i32> {
        let (sign, num) = match v.chars().next()? {
            c if c == positive => (1.0, v.get(1..)?),
            c if c == negative => (-1.0, v.get(1..)?),
            _ => (1.0, v),
        };
        let deg: f64 = num.parse().ok()?;
        Some((sign * deg * crate::protocol::types::COORD_SCALE).round() as i32)
    };
    let lat_raw = degrees(field("Lat:")?, 'N', 'S')?;
    let lon_raw = degrees(field("Lon:")?, 'E', 'W')?;
    let course = field("Course:")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let speed = field("Speed:")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let time = field("DateTime:").and_then(|v| {
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty());
        let mut next = || parts.next()?.parse::<u16>().ok();
        let t = crate::protocol::types::DeviceTime {
            year: next()?,
            month: next()? as u8,
            day: next()? as u8,
            hour: next()? as u8,
            minute: next()? as u8,
            second: next()? as u8,
        };
        t.is_valid().then_some(t)
    });
    let course = (course.round() as u16) % 360;
    Some(Location {
        gps: crate::protocol::types::Gps {
            time,
            satellites: 0,
            lat_raw,
            lon_raw,
            speed_kmh: speed.round().clamp(0.0, f64::from(u16::MAX)) as u16,
            course,
            fixed: true,
            course_status: course | 1 << 12,
        },
        ..Location::default()
    })
}

/// 0x13 with ST5's size on models that reuse its slots for the supply voltage (§12.2).
pub(super) fn heartbeat_by_model(model: Model, c: &[u8]) -> Result<Status, Failure> {
    let status = st5(c)?.1;
    Ok(match model {
        // R11: the voltage-level and signal bytes are one u16, volts × 100.
        Model::R11 => {
            let (rest, info) = be_u8::<_, E>(c)?;
            let (rest, power) = be_u16::<_, E>(rest)?;
            let (rest, gsm) = be_u8::<_, E>(rest)?;
            let (_, alarm) = be_u8::<_, E>(rest)?;
            Status {
                power_mv: Some(u32::from(power) * 10),
                gsm_signal: Some(gsm),
                alarm_code: Some(alarm),
                ..status_from_info(info)
            }
        }
        // LW*: the alarm/language word is the supply voltage, low 12 bits, volts × 10.
        Model::Lw => {
            let word =
                u16::from_be_bytes([status.alarm_code.unwrap_or(0), status.language.unwrap_or(0)]);
            Status {
                power_mv: Some(u32::from(word & 0x0FFF) * 100),
                alarm_code: None,
                language: None,
                ..status
            }
        }
        // SEEWORLD: the alarm byte is the supply voltage in whole volts.
        Model::Seeworld => Status {
            power_mv: status.alarm_code.map(|v| u32::from(v) * 1000),
            alarm_code: None,
            ..status
        },
        _ => status,
    })
}

/// NT-family 0x22/0x25 (§12.2): location source, IMEI, device time, GPS, an LBS block
/// with length byte (u32 cell on 0x25), terminal info, power u16/100, battery u8/10,
/// RSSI, alarm, language (one byte on 0x22, two on 0x25 in the captures), odometer u24,
/// engine hours u24 (minutes); 0x25 then a driver id (length, type, id).
pub(super) fn nt_location(proto: u8, c: &[u8]) -> Result<Location, Failure> {
    let (rest, _source) = be_u8::<_, E>(c)?;
    let (rest, _imei) = nom::bytes::complete::take::<_, _, E>(8usize)(rest)?;
    let (rest, _device_time) = nom::bytes::complete::take::<_, _, E>(6usize)(rest)?;
    let (rest, gps) = gps(rest)?;
    let (rest, lbs_len) = be_u8::<_, E>(rest)?;
    let (rest, lbs_bytes) =
        nom::bytes::complete::take::<_, _, E>(usize::from(lbs_len).saturating_sub(1).max(8))(rest)?;
    let lbs = if proto == 0x25 {
        lbs_2g_cell_u32(lbs_bytes).ok().map(|(_, l)| l)
    } else {
        lbs_2g(lbs_bytes).ok().map(|(_, l)| l)
    };
    let (rest, info) = be_u8::<_, E>(rest)?;
    let (rest, power) = be_u16::<_, E>(rest)?;
    let (rest, battery) = be_u8::<_, E>(rest)?;
    let (rest, _rssi) = be_u8::<_, E>(rest)?;
    let (rest, _alarm) = be_u8::<_, E>(rest)?;
    let language_len = if proto == 0x25 { 2usize } else { 1 };
    let (rest, _language) = nom::bytes::complete::take::<_, _, E>(language_len)(rest)?;
    let (rest, odometer) = nom::number::complete::be_u24::<_, E>(rest)?;
    let (rest, engine_minutes) = nom::number::complete::be_u24::<_, E>(rest)?;
    let driver_id = if proto == 0x25 {
        let (rest, len) = be_u8::<_, E>(rest)?;
        let (_, driver) = nom::bytes::complete::take::<_, _, E>(len)(rest)?;
        // The length counts a type byte before the id.
        driver.get(1..).map(hex_string)
    } else {
        None
    };
    Ok(Location {
        gps,
        lbs,
        acc: Some(status_from_info(info).acc),
        odometer_m: Some(odometer),
        power_mv: Some(u32::from(power) * 10),
        battery_mv: Some(u32::from(battery) * 100),
        engine_time_s: Some(engine_minutes.saturating_mul(60)),
        driver_id,
        ..Location::default()
    })
}
