//! nom parsers for the building blocks shared by many message layouts (§5): date/time,
//! the 18-byte GPS block, 2G/4G cell blocks and the ST5 status block.
//!
//! Each parser reads exactly its block and nothing else, so layouts compose them in wire
//! order. None of them can panic: short input is a nom error that `decode` turns into
//! `DecodeError::Truncated`.

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u32, be_u64, be_u8};
use nom::IResult;

use crate::protocol::types::{DeviceTime, Gps, Lbs, Status, WifiAp};

pub(crate) type In<'a> = &'a [u8];

/// Six binary bytes `YY MM DD hh mm ss`; `None` when they do not form a real date (all
/// zero before the first fix, month 0, hour 25…), so garbage never becomes a timestamp.
pub(crate) fn time_binary(i: In) -> IResult<In, Option<DeviceTime>> {
    let (i, b) = take(6usize)(i)?;
    let t = match *b {
        [yy, mo, dd, hh, mi, ss] => DeviceTime {
            year: 2000 + u16::from(yy),
            month: mo,
            day: dd,
            hour: hh,
            minute: mi,
            second: ss,
        },
        _ => return Ok((i, None)),
    };
    Ok((i, t.is_valid().then_some(t)))
}

/// Converts one BCD byte (`0x26` → 26); `None` if a nibble is not a decimal digit.
pub(crate) fn bcd(b: u8) -> Option<u8> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

/// Six BCD bytes (365GPS 0x17/0x69 only).
pub(crate) fn time_bcd(i: In) -> IResult<In, Option<DeviceTime>> {
    let (i, b) = take(6usize)(i)?;
    let t = (|| {
        let [yy, mo, dd, hh, mi, ss] = *b else {
            return None;
        };
        let t = DeviceTime {
            year: 2000 + u16::from(bcd(yy)?),
            month: bcd(mo)?,
            day: bcd(dd)?,
            hour: bcd(hh)?,
            minute: bcd(mi)?,
            second: bcd(ss)?,
        };
        t.is_valid().then_some(t)
    })();
    Ok((i, t))
}

/// Course/status word bits (§5.2).
const COURSE_FIXED: u16 = 1 << 12;
const COURSE_WEST: u16 = 1 << 11;
const COURSE_NORTH: u16 = 1 << 10;
const COURSE_MASK: u16 = 0x03FF;

/// Applies the hemisphere bits of the course word to the unsigned wire coordinates.
/// North set = positive latitude, west set = negative longitude (the asymmetry is the
/// protocol's, §14 fact 4).
pub(crate) fn signed_coords(lat: u32, lon: u32, course_status: u16) -> (i32, i32) {
    let lat = i32::try_from(lat).unwrap_or(i32::MAX);
    let lon = i32::try_from(lon).unwrap_or(i32::MAX);
    let lat = if course_status & COURSE_NORTH != 0 {
        lat
    } else {
        -lat
    };
    let lon = if course_status & COURSE_WEST != 0 {
        -lon
    } else {
        lon
    };
    (lat, lon)
}

/// Builds a [`Gps`] from the course word and the other decoded fields.
pub(crate) fn gps_from_parts(
    time: Option<DeviceTime>,
    satellites: u8,
    lat: u32,
    lon: u32,
    speed_kmh: u16,
    course_status: u16,
) -> Gps {
    let (lat_raw, lon_raw) = signed_coords(lat, lon, course_status);
    Gps {
        time,
        satellites,
        lat_raw,
        lon_raw,
        speed_kmh,
        course: course_status & COURSE_MASK,
        fixed: course_status & COURSE_FIXED != 0,
        course_status,
    }
}

/// The 18-byte GPS block: time 6, info 1 (low nibble = satellites), lat 4, lon 4,
/// speed 1 (km/h), course/status 2.
pub(crate) fn gps(i: In) -> IResult<In, Gps> {
    let (i, time) = time_binary(i)?;
    let (i, info) = be_u8(i)?;
    let (i, lat) = be_u32(i)?;
    let (i, lon) = be_u32(i)?;
    let (i, speed) = be_u8(i)?;
    let (i, course_status) = be_u16(i)?;
    Ok((
        i,
        gps_from_parts(time, info & 0x0F, lat, lon, u16::from(speed), course_status),
    ))
}

/// MCC with the "bit 15 set ⇒ MNC is two bytes" rule (§5.3).
pub(crate) fn mcc_mnc(i: In) -> IResult<In, (u16, u16)> {
    let (i, mcc) = be_u16(i)?;
    if mcc & 0x8000 != 0 {
        let (i, mnc) = be_u16(i)?;
        Ok((i, (mcc & 0x7FFF, mnc)))
    } else {
        let (i, mnc) = be_u8(i)?;
        Ok((i, (mcc, u16::from(mnc))))
    }
}

/// 2G serving cell: MCC, MNC 1|2, LAC u16, cell u24.
pub(crate) fn lbs_2g(i: In) -> IResult<In, Lbs> {
    let (i, (mcc, mnc)) = mcc_mnc(i)?;
    let (i, lac) = be_u16(i)?;
    let (i, cell) = be_u24(i)?;
    Ok((
        i,
        Lbs {
            mcc,
            mnc,
            lac: u32::from(lac),
            cell: u64::from(cell),
        },
    ))
}

/// 2G serving cell with a u32 cell id (SEEWORLD, 0x11 GPS_LBS_6 with `mnc_u16`).
pub(crate) fn lbs_2g_cell_u32(i: In) -> IResult<In, Lbs> {
    let (i, (mcc, mnc)) = mcc_mnc(i)?;
    let (i, lac) = be_u16(i)?;
    let (i, cell) = be_u32(i)?;
    Ok((
        i,
        Lbs {
            mcc,
            mnc,
            lac: u32::from(lac),
            cell: u64::from(cell),
        },
    ))
}

/// 4G serving cell: MCC, MNC 1|2, LAC u32, cell u64.
pub(crate) fn lbs_4g(i: In) -> IResult<In, Lbs> {
    let (i, (mcc, mnc)) = mcc_mnc(i)?;
    let (i, lac) = be_u32(i)?;
    let (i, cell) = be_u64(i)?;
    Ok((
        i,
        Lbs {
            mcc,
            mnc,
            lac,
            cell,
        },
    ))
}

/// An LBS block preceded by its length byte (alarm types). The length usually counts
/// itself (9 for 2G) but some firmware leaves itself out (8), so the cell is parsed by its
/// own layout and only bytes the length claims beyond it are skipped. Length 0 = no cell.
pub(crate) fn lbs_with_len(i: In, four_g: bool) -> IResult<In, Option<Lbs>> {
    let (i, len) = be_u8(i)?;
    if len == 0 {
        return Ok((i, None));
    }
    let before = i.len();
    let (i, lbs) = if four_g { lbs_4g(i)? } else { lbs_2g(i)? };
    let used = before - i.len();
    let extra = usize::from(len).saturating_sub(1).saturating_sub(used);
    let (i, _) = take(extra.min(i.len()))(i)?;
    Ok((i, Some(lbs)))
}

/// Terminal information byte bits (§5.4).
const INFO_ARMED: u8 = 1 << 0;
const INFO_ACC: u8 = 1 << 1;
const INFO_CHARGING: u8 = 1 << 2;
const INFO_RELAY_CUT: u8 = 1 << 7;

/// A [`Status`] carrying only the terminal information byte.
pub(crate) fn status_from_info(info: u8) -> Status {
    Status {
        info,
        acc: info & INFO_ACC != 0,
        charging: info & INFO_CHARGING != 0,
        relay_cut: info & INFO_RELAY_CUT != 0,
        armed: info & INFO_ARMED != 0,
        ..Status::default()
    }
}

/// ST5: terminal info, voltage level, GSM signal, alarm code, language.
pub(crate) fn st5(i: In) -> IResult<In, Status> {
    let (i, info) = be_u8(i)?;
    let (i, volt) = be_u8(i)?;
    let (i, gsm) = be_u8(i)?;
    let (i, alarm) = be_u8(i)?;
    let (i, language) = be_u8(i)?;
    Ok((
        i,
        Status {
            voltage_level: Some(volt),
            gsm_signal: Some(gsm),
            alarm_code: Some(alarm),
            language: Some(language),
            ..status_from_info(info)
        },
    ))
}

/// One WiFi access point: MAC 6, RSSI 1.
pub(crate) fn wifi_ap(i: In) -> IResult<In, WifiAp> {
    let (i, mac) = take(6usize)(i)?;
    let (i, rssi) = be_u8(i)?;
    let mac = <[u8; 6]>::try_from(mac).unwrap_or_default();
    Ok((i, WifiAp { mac, rssi }))
}

/// A WiFi count byte and that many access points. Devices that ran out of room send a
/// count their frame cannot hold: only the access points present are returned.
pub(crate) fn wifi_list(i: In) -> IResult<In, Vec<WifiAp>> {
    let (mut i, n) = be_u8(i)?;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        match wifi_ap(i) {
            Ok((rest, ap)) => {
                out.push(ap);
                i = rest;
            }
            Err(_) => break,
        }
    }
    Ok((i, out))
}

/// Lowercase hex of `bytes` (ids the devices send as raw bytes).
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decimal digits of BCD `bytes`, dropping `f` filler nibbles and, when `skip_first`,
/// the leading nibble (IMEI/IMSI style). `None` if another non-digit nibble appears.
pub(crate) fn bcd_digits(bytes: &[u8], skip_first: bool) -> Option<String> {
    let mut out = String::with_capacity(bytes.len() * 2);
    let nibbles = bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]);
    for nibble in nibbles.skip(usize::from(skip_first)) {
        match nibble {
            0..=9 => out.push(char::from(b'0' + nibble)),
            0x0F => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Text of a device string: printable ASCII with surrounding NULs, spaces and CR/LF
/// removed; `None` if it holds other bytes (then callers fall back to hex).
pub(crate) fn ascii_text(bytes: &[u8]) -> Option<String> {
    let trimmed = bytes
        .iter()
        .position(|b| !matches!(b, 0 | b' ' | b'\r' | b'\n'))
        .map(|start| {
            let end = bytes
                .iter()
                .rposition(|b| !matches!(b, 0 | b' ' | b'\r' | b'\n'))
                .map_or(bytes.len(), |e| e + 1);
            bytes.get(start..end).unwrap_or_default()
        })
        .unwrap_or_default();
    trimmed
        .iter()
        .all(|b| (0x20..0x7F).contains(b))
        .then(|| String::from_utf8_lossy(trimmed).into_owned())
}
