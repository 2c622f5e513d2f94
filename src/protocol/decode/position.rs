//! Location (0x10/0x11/0x12/0x22/0xA0), heartbeat (0x13/0x23) and GPS alarm
//! (0x16/0x26/0x27/0xA4) layouts (§7, §8).

use nom::combinator::opt;
use nom::number::complete::{be_u16, be_u32, be_u8};

use super::alarm;
use super::fields::{gps, lbs_2g, lbs_2g_cell_u32, lbs_4g, lbs_with_len, st5, status_from_info};
use super::Failure;
use crate::protocol::types::{Alarm, Lbs, Location, Status};

type E<'a> = nom::error::Error<&'a [u8]>;

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
                _ => {}
            }
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

pub(super) fn heartbeat(proto: u8, c: &[u8]) -> Result<Status, Failure> {
    match (proto, c.len()) {
        // GK310: terminal info [+ battery u16] [+ RSSI u8] + language u16.
        (0x23, 6) => {
            let (rest, info) = be_u8::<_, E>(c)?;
            let (rest, _battery) = be_u16::<_, E>(rest)?;
            let (rest, rssi) = be_u8::<_, E>(rest)?;
            let (_, language) = be_u16::<_, E>(rest)?;
            Ok(Status {
                gsm_signal: Some(rssi),
                language: Some(language as u8),
                ..status_from_info(info)
            })
        }
        (0x23, _) => Ok(status_from_info(be_u8::<_, E>(c)?.1)),
        // OBD6 and 22-byte 0x13 variants: only the info byte shares the ST5 layout.
        (_, 14 | 16) => Ok(status_from_info(be_u8::<_, E>(c)?.1)),
        (_, n) if n >= 5 => Ok(st5(c)?.1),
        _ => Ok(status_from_info(be_u8::<_, E>(c)?.1)),
    }
}

pub(super) fn alarm(proto: u8, c: &[u8]) -> Result<Alarm, Failure> {
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
    // 0x16 with LEN 0x29 appends a mileage word to the standard layout (§5.1).
    let odometer_m = if rest.len() == 4 {
        opt(be_u32::<_, E>)(rest)?.1
    } else {
        None
    };
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
        ..Location::default()
    };
    Ok(Alarm {
        location: Some(location),
        status,
        kind: alarm::kind(code, status.info),
    })
}
