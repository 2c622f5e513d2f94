//! The JSON shapes of the API (API.md), and their conversions from store records.
//!
//! These are the only `Serialize` types of the HTTP contract: a field renamed here is
//! an API change and needs a CHANGELOG line.

use crate::protocol::{days_from_civil, DeviceTime, COORD_SCALE};
use crate::store::{DeviceRecord, EventRecord, PositionRecord, StatusRecord};
use serde::Serialize;

#[derive(Serialize)]
pub struct Position {
    pub time: Time,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: u16,
    pub course: u16,
    pub satellites: u8,
    pub valid: bool,
    pub received: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odometer_m: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lbs: Option<Lbs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reupload: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gsm_signal: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub altitude_m: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driving_time_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_time_s: Option<u32>,
}

#[derive(Serialize)]
pub struct Lbs {
    pub mcc: u16,
    pub mnc: u16,
    pub lac: u32,
    pub cell: u64,
}

#[derive(Serialize, Default)]
pub struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_cut: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub armed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voltage_level: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gsm_signal: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub humidity_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door_open: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_temperature_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_tz_offset_min: Option<i16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_offset_suspect_min: Option<i32>,
}

#[derive(Serialize)]
pub struct Device {
    pub imei: String,
    pub name: Option<String>,
    pub model: Option<String>,
    pub online: bool,
    pub last_seen: Option<String>,
    pub position: Option<Position>,
    pub status: Status,
}

/// Bytes a position takes in the API's JSON with the common fields present, rounded up:
/// the body is allocated once at about its final size instead of doubling ~17 times
/// on the way to a day's 19 MB.
const POSITION_JSON_BYTES: usize = 256;

/// The body of a page of `/api/devices/{imei}/positions`:
/// `{"imei":…,"positions":[…],"next":…}`, each position exactly as [`Position`]'s
/// `Serialize` writes it (a test compares the two over every optional field).
///
/// Written by hand rather than through serde because a day at 1 Hz is 86,400 positions
/// and 19 MB: serde's per-field machinery (keys escaped at run time, a `Position`
/// gathered per record) was most of the time the API took to answer it.
pub fn positions_body(imei: &str, list: &[PositionRecord], next: Option<i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + list.len() * POSITION_JSON_BYTES);
    out.extend_from_slice(b"{\"imei\":");
    put_json(&mut out, imei);
    out.extend_from_slice(b",\"positions\":[");
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_position(&mut out, p);
    }
    out.extend_from_slice(b"],\"next\":");
    match next {
        Some(ms) => put_time(&mut out, ms),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// One position as [`Position`] serialises, field for field and in its order.
fn write_position(out: &mut Vec<u8>, p: &PositionRecord) {
    out.extend_from_slice(b"{\"time\":");
    put_time(out, p.time_ms);
    out.extend_from_slice(b",\"lat\":");
    put_json(out, &degrees(p.lat_raw));
    out.extend_from_slice(b",\"lon\":");
    put_json(out, &degrees(p.lon_raw));
    put_int_field(out, b",\"speed_kmh\":", p.speed_kmh.into());
    put_int_field(out, b",\"course\":", p.course.into());
    put_int_field(out, b",\"satellites\":", p.satellites.into());
    out.extend_from_slice(if p.valid {
        b",\"valid\":true,\"received\":"
    } else {
        b",\"valid\":false,\"received\":"
    });
    put_time(out, p.received_ms);
    put_opt(out, b",\"invalid_reason\":", p.invalid_reason.as_deref());
    put_opt(out, b",\"acc\":", p.acc.as_ref());
    put_opt(out, b",\"odometer_m\":", p.odometer_m.as_ref());
    if let Some(l) = p.lbs {
        put_int_field(out, b",\"lbs\":{\"mcc\":", l.mcc.into());
        put_int_field(out, b",\"mnc\":", l.mnc.into());
        put_int_field(out, b",\"lac\":", l.lac.into());
        put_int_field(out, b",\"cell\":", l.cell);
        out.push(b'}');
    }
    put_opt(out, b",\"alarm\":", p.alarm.as_deref());
    put_opt(out, b",\"reupload\":", p.reupload.as_ref());
    put_opt(out, b",\"battery_percent\":", p.battery_percent.as_ref());
    put_opt(out, b",\"gsm_signal\":", p.gsm_signal.as_ref());
    put_opt(out, b",\"power_v\":", p.power_mv.map(millis).as_ref());
    put_opt(out, b",\"battery_v\":", p.battery_mv.map(millis).as_ref());
    put_opt(
        out,
        b",\"temperature_c\":",
        p.temperature_dc.map(tenths).as_ref(),
    );
    put_opt(out, b",\"driver_id\":", p.driver_id.as_deref());
    put_opt(out, b",\"altitude_m\":", p.altitude_m.as_ref());
    put_opt(out, b",\"driving_time_s\":", p.driving_time_s.as_ref());
    put_opt(out, b",\"engine_time_s\":", p.engine_time_s.as_ref());
    out.push(b'}');
}

fn put_time(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    out.extend_from_slice(&rfc3339_bytes(ms));
    out.push(b'"');
}

/// `key` (with its leading comma and colon) and an unsigned integer.
fn put_int_field(out: &mut Vec<u8>, key: &[u8], v: u64) {
    out.extend_from_slice(key);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = v;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A value as serde_json writes it: floats and strings (escaping) go through it, so
/// they are formatted exactly as everywhere else in the API.
fn put_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a number, bool or string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn put_opt<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &[u8], v: Option<&T>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        put_json(out, v);
    }
}

#[derive(Serialize)]
pub struct Event {
    pub imei: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub received: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Degrees from the wire's integer unit, rounded to 7 decimals (1/1,800,000° is
/// 5.6e-7°, so nothing the device sent is lost and no float noise is shown).
pub fn degrees(raw: i32) -> f64 {
    (raw as f64 / COORD_SCALE * 1e7).round() / 1e7
}

impl From<&PositionRecord> for Position {
    fn from(p: &PositionRecord) -> Self {
        Position {
            time: Time(p.time_ms),
            lat: degrees(p.lat_raw),
            lon: degrees(p.lon_raw),
            speed_kmh: p.speed_kmh,
            course: p.course,
            satellites: p.satellites,
            valid: p.valid,
            received: Time(p.received_ms),
            invalid_reason: p.invalid_reason.clone(),
            acc: p.acc,
            odometer_m: p.odometer_m,
            lbs: p.lbs.map(|l| Lbs {
                mcc: l.mcc,
                mnc: l.mnc,
                lac: l.lac,
                cell: l.cell,
            }),
            alarm: p.alarm.clone(),
            reupload: p.reupload,
            battery_percent: p.battery_percent,
            gsm_signal: p.gsm_signal,
            power_v: p.power_mv.map(millis),
            battery_v: p.battery_mv.map(millis),
            temperature_c: p.temperature_dc.map(tenths),
            driver_id: p.driver_id.clone(),
            altitude_m: p.altitude_m,
            driving_time_s: p.driving_time_s,
            engine_time_s: p.engine_time_s,
        }
    }
}

fn status(s: Option<&StatusRecord>, d: &DeviceRecord) -> Status {
    let mut out = match s {
        Some(s) => Status {
            time: Some(rfc3339(s.time_ms)),
            acc: Some(s.acc),
            charging: Some(s.charging),
            relay_cut: Some(s.relay_cut),
            armed: Some(s.armed),
            voltage_level: s.voltage_level,
            battery_percent: s.battery_percent,
            gsm_signal: s.gsm_signal,
            power_v: s.power_mv.map(millis),
            battery_v: s.battery_mv.map(millis),
            temperature_c: s.temperature_dc.map(tenths),
            humidity_pct: s.humidity_dpct.map(|h| f64::from(h) / 10.0),
            door_open: s.door_open,
            network: s.network_gen.map(|g| format!("{g}G")),
            steps: s.steps,
            tag_temperature_c: s.tag_temperature_dc.map(tenths),
            ..Status::default()
        },
        None => Status::default(),
    };
    out.iccid.clone_from(&d.iccid);
    out.type_id = d.type_id.map(|t| format!("{t:#06x}"));
    out.login_tz_offset_min = d.tz_offset_min;
    out
}

/// `time_offset_suspect_min` comes from the ingest sessions' memory, not the store.
pub fn device(
    imei: u64,
    d: &DeviceRecord,
    online: bool,
    time_offset_suspect_min: Option<i32>,
) -> Device {
    let mut status = status(d.status.as_ref(), d);
    status.time_offset_suspect_min = time_offset_suspect_min;
    Device {
        imei: format!("{imei:015}"),
        name: None,
        model: None,
        online,
        last_seen: (d.last_seen_ms > 0).then(|| rfc3339(d.last_seen_ms)),
        position: d.last_position.as_ref().map(Position::from),
        status,
    }
}

pub fn event(imei: u64, e: &EventRecord) -> Event {
    Event {
        imei: format!("{imei:015}"),
        kind: e.kind.clone(),
        time: rfc3339(e.time_ms),
        received: rfc3339(e.received_ms),
        lat: e.lat_raw.map(degrees),
        lon: e.lon_raw.map(degrees),
        text: e.text.clone(),
    }
}

/// Volts from millivolts.
fn millis(v: u32) -> f64 {
    v as f64 / 1000.0
}

/// Degrees from tenths of a degree.
fn tenths(v: i32) -> f64 {
    v as f64 / 10.0
}

/// A time serialised as RFC 3339 from a stack buffer: a day of positions has two per
/// position, and building a `String` for each was a large part of answering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub i64);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = rfc3339_bytes(self.0);
        // Only ASCII digits and separators are written.
        s.serialize_str(std::str::from_utf8(&b).unwrap_or("1970-01-01T00:00:00.000Z"))
    }
}

/// `2026-02-11T08:30:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(ms)).into_owned()
}

fn rfc3339_bytes(ms: i64) -> [u8; 24] {
    let t = DeviceTime::from_unix_ms_utc(ms);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, v: u32| {
        let mut v = v;
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, u32::from(t.year).min(9999));
    put(5, 2, u32::from(t.month));
    put(8, 2, u32::from(t.day));
    put(11, 2, u32::from(t.hour));
    put(14, 2, u32::from(t.minute));
    put(17, 2, u32::from(t.second));
    put(20, 3, ms.rem_euclid(1000) as u32);
    b
}

/// Parses RFC 3339 (`2026-02-11T08:30:00Z`, with optional fraction and `±hh:mm`
/// offset) into ms since the epoch. A lower-case `t`/`z` or a space separator is
/// accepted, as browsers and shells produce them.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let dt = DeviceTime {
        year: y as u16,
        month: mo as u8,
        day: d as u8,
        hour: h as u8,
        minute: mi as u8,
        second: sec as u8,
    };
    dt.to_unix_ms_utc()?;
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let padded: String = digits.chars().chain("000".chars()).take(3).collect();
        frac_ms = padded.parse().ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(&tz[..1], "+" | "-") && &tz[3..4] == ":" => {
            let oh: i64 = tz.get(1..3)?.parse().ok()?;
            let om: i64 = tz.get(4..6)?.parse().ok()?;
            let v = oh * 60 + om;
            if tz.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_with_milliseconds_in_utc() {
        assert_eq!(
            serde_json::to_string(&Time(1_445_350_871_042)).unwrap(),
            "\"2015-10-20T14:21:11.042Z\""
        );
        assert_eq!(rfc3339(1_445_350_871_000), "2015-10-20T14:21:11.000Z");
        assert_eq!(rfc3339(1_445_350_871_042), "2015-10-20T14:21:11.042Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        assert_eq!(
            parse_rfc3339("2015-10-20T14:21:11.042Z"),
            Some(1_445_350_871_042)
        );
        assert_eq!(
            parse_rfc3339("2015-10-20T14:21:11Z"),
            Some(1_445_350_871_000)
        );
        assert_eq!(
            parse_rfc3339("2015-10-20T16:21:11.5+02:00"),
            Some(1_445_350_871_500)
        );
        assert_eq!(parse_rfc3339("2015-10-20T14:21:11"), None);
        assert_eq!(parse_rfc3339("2015-02-30T14:21:11Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    /// The page writer and `Position`'s derived `Serialize` must give the same bytes:
    /// the first answers `/positions`, the second the device and live endpoints.
    #[test]
    fn the_page_writer_matches_the_derived_position_json_byte_for_byte() {
        #[derive(Serialize)]
        struct Page {
            imei: String,
            positions: Vec<Position>,
            next: Option<String>,
        }
        let base = PositionRecord {
            time_ms: 1_445_350_871_042,
            received_ms: 1_445_350_872_100,
            lat_raw: 98_901_624,
            lon_raw: -43_231_720,
            speed_kmh: 65_535,
            course: 359,
            satellites: 12,
            valid: true,
            ..PositionRecord::default()
        };
        let mut list = vec![base.clone(), PositionRecord::default()];
        let strings = [
            "no_device_time",
            "quote \" back\\slash",
            "ctl \u{1}\n\t",
            "Grüße ✓",
            "",
        ];
        for (i, text) in strings.iter().enumerate() {
            let i = i as i32;
            list.push(PositionRecord {
                valid: i % 2 == 0,
                lat_raw: i32::MIN + i,
                lon_raw: i32::MAX - i,
                time_ms: -86_400_000 * i64::from(i) + 7,
                invalid_reason: Some(text.to_string()),
                acc: Some(i % 2 == 1),
                odometer_m: Some(u32::MAX - i as u32),
                lbs: Some(crate::store::LbsRecord {
                    mcc: 460,
                    mnc: u16::MAX,
                    lac: u32::MAX,
                    cell: u64::MAX - i as u64,
                }),
                alarm: Some(format!("sos{text}")),
                reupload: Some(i % 2 == 0),
                battery_percent: Some(100),
                gsm_signal: Some(0),
                power_mv: Some(12_345 + i as u32),
                battery_mv: Some(0),
                temperature_dc: Some(-155 + i),
                driver_id: Some(text.repeat(2)),
                altitude_m: Some(i32::MIN + i),
                driving_time_s: Some(0),
                engine_time_s: Some(u32::MAX),
                ..base.clone()
            });
        }
        // Each optional field alone, so an order or key mistake cannot hide behind another.
        for k in 0..16 {
            let mut p = base.clone();
            match k {
                0 => p.invalid_reason = Some("x".into()),
                1 => p.acc = Some(false),
                2 => p.odometer_m = Some(7),
                3 => {
                    p.lbs = Some(crate::store::LbsRecord {
                        mcc: 0,
                        mnc: 0,
                        lac: 0,
                        cell: 0,
                    })
                }
                4 => p.alarm = Some("low_battery".into()),
                5 => p.reupload = Some(true),
                6 => p.battery_percent = Some(3),
                7 => p.gsm_signal = Some(4),
                8 => p.power_mv = Some(1),
                9 => p.battery_mv = Some(4_200),
                10 => p.temperature_dc = Some(0),
                11 => p.driver_id = Some("123".into()),
                12 => p.altitude_m = Some(-3),
                13 => p.driving_time_s = Some(60),
                14 => p.engine_time_s = Some(3_600),
                _ => p.speed_kmh = 0,
            }
            list.push(p);
        }
        for (next, imei) in [(None, "356307042441013"), (Some(1_445_350_871_999), "0")] {
            for n in [0, 1, list.len()] {
                let want = serde_json::to_vec(&Page {
                    imei: imei.to_string(),
                    positions: list[..n].iter().map(Position::from).collect(),
                    next: next.map(rfc3339),
                })
                .unwrap();
                let got = positions_body(imei, &list[..n], next);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{n} positions, next {next:?}"
                );
            }
        }
    }

    #[test]
    fn coordinates_keep_wire_precision() {
        assert_eq!(degrees(98_901_624), 54.9453467);
        assert_eq!(degrees(-43_231_720), -24.0176222);
    }
}
