//! Device information without a position: 0x94 information transfer (§8.7), 0xF1/0xF2
//! status records, 0x9B serial pass-through, 0x8C OBD text, and the command replies
//! 0x15/0x21 (§10).

use nom::bytes::complete::take;
use nom::number::complete::{be_i32, be_u16, be_u32, be_u8};

use super::fields::{ascii_text, bcd_digits, hex_string, time_binary};
use super::Failure;
use crate::protocol::types::{DeviceTime, Info, Message};
use crate::protocol::Form;

type E<'a> = nom::error::Error<&'a [u8]>;

/// Volts × 100 on the wire → millivolts.
fn centivolts_to_mv(v: u16) -> u32 {
    u32::from(v) * 10
}

/// 0x94: a sub-type byte and its data. The short-form 0x94 some firmware sends carries
/// only the external voltage.
pub(super) fn info_0x94(form: Form, c: &[u8]) -> Result<Info, Failure> {
    if form == Form::Short {
        let (_, power) = be_u16::<_, E>(c)?;
        return Ok(Info {
            power_mv: Some(centivolts_to_mv(power)),
            ..Info::default()
        });
    }
    let (data, sub) = be_u8::<_, E>(c)?;
    let mut info = Info::default();
    match sub {
        0x00 => info.power_mv = Some(centivolts_to_mv(be_u16::<_, E>(data)?.1)),
        0x04 => {
            let text = String::from_utf8_lossy(data).into_owned();
            info.iccid = status_text_field(&text, "ICCID")
                .map(|v| v.trim_end_matches(['F', 'f']).to_string());
            info.text = Some(text);
        }
        0x05 => {
            // Optional event time, then flags: bit 0 door open.
            let flags = if data.len() >= 7 {
                info.time = time_binary(data)?.1;
                data.get(6).copied()
            } else {
                data.first().copied()
            };
            info.door_open = flags.map(|f| f & 0x01 != 0);
        }
        0x0A => {
            let (rest, _imei) = take::<_, _, E>(8usize)(data)?;
            let (rest, imsi) = take::<_, _, E>(8usize)(rest)?;
            let (_, iccid) = take::<_, _, E>(10usize)(rest)?;
            info.imsi = bcd_digits(imsi, true);
            info.iccid = bcd_digits(iccid, false);
        }
        0x0B => match data {
            [tech] => info.network = Some(if *tech == 1 { "4G" } else { "2G" }),
            _ => info.power_mv = Some(centivolts_to_mv(be_u16::<_, E>(data)?.1)),
        },
        // Fuel sensor: `!AIOIL,…`, sometimes after a 6-byte time.
        0x0D => {
            let text = match data.iter().position(|&b| b == b'!') {
                Some(6) => {
                    info.time = time_binary(data)?.1;
                    data.get(6..).unwrap_or_default()
                }
                _ => data,
            };
            info.text = Some(String::from_utf8_lossy(text).into_owned());
        }
        // RFID / serial data: text, or a binary card id framed as STX len id… ETX.
        0x1B => match ascii_text(data) {
            Some(text) => info.text = Some(text),
            None => {
                let id = match data {
                    [0x02, _, a, b, c, d, .., 0x03] => hex_string(&[*a, *b, *c, *d]),
                    _ => hex_string(data),
                };
                info.driver_id = Some(id);
            }
        },
        0x1E => {
            let (rest, temp) = be_i32::<_, E>(data)?;
            let (_, humidity) = be_i32::<_, E>(rest)?;
            info.temperature_dc = Some(temp);
            info.humidity_dpct = u32::try_from(humidity).ok();
        }
        _ => info.text = Some(hex_string(data)),
    }
    Ok(info)
}

/// The value of `KEY=value;` in a 0x94 status string.
fn status_text_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(';').find_map(|field| {
        let (k, v) = field.split_once('=')?;
        (k.trim() == key).then_some(v.trim())
    })
}

/// 0xF1 device status: Unix time, then records `id u16, len u8, value`.
pub(super) fn status_0xf1(c: &[u8]) -> Result<Info, Failure> {
    let (mut i, unix_s) = be_u32::<_, E>(c)?;
    let mut info = Info {
        time: Some(DeviceTime::from_unix_ms_utc(i64::from(unix_s) * 1000)),
        ..Info::default()
    };
    while !i.is_empty() {
        let (rest, id) = be_u16::<_, E>(i)?;
        let (rest, len) = be_u8::<_, E>(rest)?;
        let (rest, value) = take::<_, _, E>(len)(rest)?;
        let flag = value.first().map(|&b| b != 0);
        match id {
            0x01 => info.moving = flag,
            0x02 => info.armed = flag,
            0x04 => info.ignition = flag,
            0x05 => info.power_mv = Some(centivolts_to_mv(be_u16::<_, E>(value)?.1)),
            0x07 => info.charging = flag,
            0x0B => info.temperature_dc = Some(i32::from(be_u16::<_, E>(value)?.1 as i16)),
            _ => {}
        }
        i = rest;
    }
    Ok(info)
}

/// 0xF2 peripheral records: Unix time, then `id u16, len, value`; the BLE event record
/// (0x000A) has a two-byte length, the others one byte.
pub(super) fn peripheral_0xf2(c: &[u8]) -> Result<Info, Failure> {
    let (mut i, unix_s) = be_u32::<_, E>(c)?;
    let mut info = Info {
        time: Some(DeviceTime::from_unix_ms_utc(i64::from(unix_s) * 1000)),
        ..Info::default()
    };
    while !i.is_empty() {
        let (rest, id) = be_u16::<_, E>(i)?;
        let (rest, len) = if id == 0x000A {
            be_u16::<_, E>(rest)?
        } else {
            be_u8::<_, E>(rest).map(|(r, l)| (r, u16::from(l)))?
        };
        let (rest, value) = take::<_, _, E>(len)(rest)?;
        if id == 0x000A {
            // A binary header, then an ASCII event such as `BTBUTTON,A,S#168,54`.
            let text_at = value
                .iter()
                .rposition(|b| !(0x20..0x7F).contains(b))
                .map_or(0, |p| p + 1);
            info.text = value.get(text_at..).and_then(ascii_text);
        }
        i = rest;
    }
    Ok(info)
}

/// 0x9B serial pass-through: a device type byte, then data shown as text when printable,
/// else as hex.
pub(super) fn passthrough_0x9b(c: &[u8]) -> Result<Info, Failure> {
    let (data, _device_type) = be_u8::<_, E>(c)?;
    let text = ascii_text(data).unwrap_or_else(|| hex_string(data));
    Ok(Info {
        text: Some(text),
        ..Info::default()
    })
}

/// 0x8C OBD: time, ACC byte, then ASCII `id=value` pairs, kept as text.
pub(super) fn obd_0x8c(c: &[u8]) -> Result<Info, Failure> {
    let (i, time) = time_binary(c)?;
    let (i, acc) = be_u8::<_, E>(i)?;
    Ok(Info {
        time,
        ignition: Some(acc != 0),
        text: Some(
            String::from_utf8_lossy(i)
                .trim_end_matches('\0')
                .to_string(),
        ),
        ..Info::default()
    })
}

/// 0x15 (short form): length, server flag, ASCII text, language. The length byte is 0 on
/// some firmware, so the text runs to the language word, NUL padding trimmed. An
/// unsolicited `<ICCID:…>` string is information, not a command reply.
pub(super) fn reply_0x15(c: &[u8]) -> Result<Message, Failure> {
    let (i, _len) = be_u8::<_, E>(c)?;
    let (i, flag) = be_u32::<_, E>(i)?;
    let text_bytes = i.get(..i.len().saturating_sub(2)).unwrap_or_default();
    let text = String::from_utf8_lossy(text_bytes)
        .trim_matches(['\0', ' ', '\r', '\n'])
        .to_string();
    if let Some(iccid) = text
        .strip_prefix("<ICCID:")
        .and_then(|t| t.strip_suffix('>'))
    {
        return Ok(Message::Info(Info {
            iccid: Some(iccid.to_string()),
            ..Info::default()
        }));
    }
    Ok(Message::CommandReply { flag, text })
}

/// 0x21 (long form): server flag, encoding (1 = ASCII, else UTF-16BE), text.
pub(super) fn reply_0x21(c: &[u8]) -> Result<(u32, String), Failure> {
    let (i, flag) = be_u32::<_, E>(c)?;
    let (i, encoding) = be_u8::<_, E>(i)?;
    let text = if encoding == 1 {
        String::from_utf8_lossy(i).into_owned()
    } else {
        let units: Vec<u16> = i
            .chunks_exact(2)
            .map(|p| {
                u16::from_be_bytes([
                    p.first().copied().unwrap_or(0),
                    p.last().copied().unwrap_or(0),
                ])
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    Ok((flag, text.trim_matches(['\0', ' ', '\r', '\n']).to_string()))
}
