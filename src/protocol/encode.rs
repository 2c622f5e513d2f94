//! Device-side frames (login, location, heartbeat, alarm) for `gt06 simulate` and tests,
//! and the server's command frame (0x80).
//!
//! Everything goes through [`frame`], which writes length, serial, CRC and stop bits the
//! way §2 defines them, so a frame built here is one `split` accepts and `decode` reads
//! back to the same values. These builders never emit the quirky shapes of §2.1 (tests
//! write those as hex) and never fail: values wider than their wire field are truncated,
//! and content too long for its form is cut to the largest length the form can declare.

use super::crc::crc16_x25;
use super::frame::Form;
use super::types::{Gps, Imei, Lbs, Location, Status};

/// Largest content a short frame can declare: LEN is one byte and counts proto, content,
/// serial and CRC.
const MAX_SHORT_CONTENT: usize = 0xFF - 5;
const MAX_LONG_CONTENT: usize = 0xFFFF - 5;

/// A whole frame: start bits, LEN, `proto`, `content`, `serial`, CRC-16/X-25, `0D 0A`.
pub fn frame(form: Form, proto: u8, content: &[u8], serial: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 11);
    frame_into(&mut out, form, proto, content, serial);
    out
}

/// [`frame`], appended to `out`: a session writes many answers into one buffer.
pub fn frame_into(out: &mut Vec<u8>, form: Form, proto: u8, content: &[u8], serial: u16) {
    if form == Form::Short && content.is_empty() {
        // The plain ack, one per location frame under load: built whole, copied once.
        let [s1, s2] = serial.to_be_bytes();
        let [c1, c2] = crc16_x25(&[5, proto, s1, s2]).to_be_bytes();
        out.extend_from_slice(&[0x78, 0x78, 5, proto, s1, s2, c1, c2, 0x0D, 0x0A]);
        return;
    }
    let max = match form {
        Form::Short => MAX_SHORT_CONTENT,
        Form::Long => MAX_LONG_CONTENT,
    };
    let content = content.get(..max).unwrap_or(content);
    let len = content.len() + 5;
    let start = out.len();
    out.reserve(len + 6);
    match form {
        Form::Short => {
            out.extend_from_slice(&[0x78, 0x78]);
            out.push(len as u8);
        }
        Form::Long => {
            out.extend_from_slice(&[0x79, 0x79]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    out.push(proto);
    out.extend_from_slice(content);
    out.extend_from_slice(&serial.to_be_bytes());
    let crc = crc16_x25(out.get(start + 2..).unwrap_or_default());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0x0D, 0x0A]);
}

/// Login with LEN 0x0D: the IMEI as `0` + 15 BCD digits.
pub fn login(imei: Imei, serial: u16) -> Vec<u8> {
    frame(Form::Short, 0x01, &imei_bcd(imei), serial)
}

/// 16 BCD nibbles, the first one 0, most significant digit first.
fn imei_bcd(imei: Imei) -> [u8; 8] {
    let mut v = imei.as_u64();
    let mut out = [0u8; 8];
    for byte in out.iter_mut().rev() {
        let lo = (v % 10) as u8;
        v /= 10;
        let hi = (v % 10) as u8;
        v /= 10;
        *byte = hi << 4 | lo;
    }
    out
}

/// 0x12 GPS + 2G LBS (LEN 0x1F).
pub fn location_0x12(gps: &Gps, lbs: &Lbs, serial: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(26);
    put_gps(&mut c, gps);
    put_lbs_2g(&mut c, lbs);
    frame(Form::Short, 0x12, &c, serial)
}

/// 0x22 GPS + 2G LBS + ACC + upload mode + re-upload (LEN 0x22), plus the mileage word
/// (LEN 0x26) when `loc.odometer_m` is set. A missing cell is sent as zeros.
pub fn location_0x22(loc: &Location, serial: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(33);
    put_gps(&mut c, &loc.gps);
    put_lbs_2g(&mut c, &loc.lbs.unwrap_or_default());
    c.push(u8::from(loc.acc.unwrap_or(false)));
    c.push(loc.upload_mode.unwrap_or(0));
    c.push(u8::from(loc.reupload.unwrap_or(false)));
    if let Some(odometer) = loc.odometer_m {
        c.extend_from_slice(&odometer.to_be_bytes());
    }
    frame(Form::Short, 0x22, &c, serial)
}

/// 0x13 heartbeat with LEN 0x0A (ST5).
pub fn heartbeat(status: &Status, serial: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(5);
    put_st5(&mut c, status, status.alarm_code.unwrap_or(0));
    frame(Form::Short, 0x13, &c, serial)
}

/// GPS alarm (`proto` 0x16 or 0x26; LEN 0x25): GPS, LBS length 9 + 2G LBS, ST5 with
/// `alarm_code` as the alarm byte. A missing cell is sent as zeros.
pub fn alarm(proto: u8, loc: &Location, status: &Status, alarm_code: u8, serial: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(32);
    put_gps(&mut c, &loc.gps);
    c.push(0x09);
    put_lbs_2g(&mut c, &loc.lbs.unwrap_or_default());
    put_st5(&mut c, status, alarm_code);
    frame(Form::Short, proto, &c, serial)
}

/// Server command 0x80 (§10): content length, the 4-byte server flag the device copies
/// into its answer, the `#`-terminated text, and the language word some firmware wants.
pub fn command(server_flag: u32, text: &str, language: Option<u16>, serial: u16) -> Vec<u8> {
    // The command-length byte counts flag + text, so the text is cut to fit one byte.
    let text = text.as_bytes();
    let text = text.get(..0xFF - 4).unwrap_or(text);
    let mut c = Vec::with_capacity(7 + text.len());
    c.push((4 + text.len()) as u8);
    c.extend_from_slice(&server_flag.to_be_bytes());
    c.extend_from_slice(text);
    if let Some(language) = language {
        c.extend_from_slice(&language.to_be_bytes());
    }
    frame(Form::Short, 0x80, &c, serial)
}

/// The 18-byte GPS block. An unknown time is sent as six zero bytes, which decodes back
/// to "no time".
fn put_gps(c: &mut Vec<u8>, gps: &Gps) {
    match gps.time {
        Some(t) => c.extend_from_slice(&[
            t.year.saturating_sub(2000) as u8,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
        ]),
        None => c.extend_from_slice(&[0; 6]),
    }
    c.push(0xC0 | (gps.satellites & 0x0F));
    c.extend_from_slice(&gps.lat_raw.unsigned_abs().to_be_bytes());
    c.extend_from_slice(&gps.lon_raw.unsigned_abs().to_be_bytes());
    c.push(gps.speed_kmh.min(0xFF) as u8);
    c.extend_from_slice(&course_word(gps).to_be_bytes());
}

/// Course in the low 10 bits, bit 10 north, bit 11 west, bit 12 fixed; the high bits
/// (ACC-valid, differential) are carried over from `course_status`.
fn course_word(gps: &Gps) -> u16 {
    let mut w = (gps.course_status & 0xE000) | (gps.course & 0x03FF);
    if gps.lat_raw >= 0 {
        w |= 1 << 10;
    }
    if gps.lon_raw < 0 {
        w |= 1 << 11;
    }
    if gps.fixed {
        w |= 1 << 12;
    }
    w
}

/// MCC (bit 15 set when the MNC needs two bytes), MNC, LAC u16, cell u24.
fn put_lbs_2g(c: &mut Vec<u8>, lbs: &Lbs) {
    if lbs.mnc > 0xFF {
        c.extend_from_slice(&((lbs.mcc & 0x7FFF) | 0x8000).to_be_bytes());
        c.extend_from_slice(&lbs.mnc.to_be_bytes());
    } else {
        c.extend_from_slice(&(lbs.mcc & 0x7FFF).to_be_bytes());
        c.push(lbs.mnc as u8);
    }
    c.extend_from_slice(&(lbs.lac as u16).to_be_bytes());
    let [_, c1, c2, c3] = (lbs.cell as u32).to_be_bytes();
    c.extend_from_slice(&[c1, c2, c3]);
}

/// Terminal info (the flag fields win over the same bits of `info`), voltage level,
/// GSM signal, alarm code, language.
fn put_st5(c: &mut Vec<u8>, status: &Status, alarm_code: u8) {
    let mut info = status.info & 0b0111_1000;
    info |= u8::from(status.relay_cut) << 7;
    info |= u8::from(status.charging) << 2;
    info |= u8::from(status.acc) << 1;
    info |= u8::from(status.armed);
    c.push(info);
    c.push(status.voltage_level.unwrap_or(0));
    c.push(status.gsm_signal.unwrap_or(0));
    c.push(alarm_code);
    c.push(status.language.unwrap_or(0));
}
