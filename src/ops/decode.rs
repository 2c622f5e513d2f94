//! `gt06 decode`: an operator pastes a capture and sees what the server makes of it.
//!
//! Input is hex (spaces, colons and line breaks ignored) from the arguments, or from
//! stdin with `-` or no argument at all. All of it is one byte stream, so frames may be
//! glued together or cut across arguments, with junk between them: the same splitter
//! loop a session runs. Each frame becomes one JSON line on stdout with the API's field
//! names and units (the formatting helpers are `http::json`'s); what cannot be split or
//! decoded becomes an `{"error","reason","hex"}` line.
//!
//! This room only reads its input and prints; it never touches the store or the network.
//! Frames are decoded as if a login had come first, and the reply is the one a logged-in
//! device would get. Bad CRCs are decoded anyway (as `protocol.crc = "lenient"` would),
//! shown as `"crc_ok":false`, and make the exit code 1.

use crate::http::json::{degrees, rfc3339};
use crate::protocol::{
    self, Alarm, CellReport, DecodeCtx, Frame, FrameError, Gps, Info, Lbs, Location, Login,
    Message, Model, SplitOptions, Status,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ExitCode;

/// `gt06 decode` arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// Hex bytes of the capture (spaces allowed; one or many arguments form one stream).
    /// `-` or nothing reads the hex from stdin.
    #[arg(value_name = "HEX")]
    pub hex: Vec<String>,
    /// Device model whose layouts to use (e.g. `NT20`, `SEEWORLD`, `VL103`); default the
    /// standard GT06 layouts.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
}

/// Largest capture read from stdin: far more than any paste, small enough to never
/// exhaust memory when someone pipes a disk image in by mistake.
const MAX_INPUT_CHARS: u64 = 64 * 1024 * 1024;

/// Runs the command: 0 when every frame decoded, 1 when something did not, 2 on input
/// that is not hex.
pub fn main(args: DecodeArgs) -> ExitCode {
    let text = match input_text(&args.hex) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gt06 decode: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = match parse_hex(&text) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gt06 decode: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = DecodeCtx {
        model: args
            .model
            .as_deref()
            .map_or(Model::Standard, Model::from_name),
    };
    let (lines, all_ok) = decode_stream(&bytes, &ctx, crate::ingest::session::now_ms());
    let mut out = std::io::stdout().lock();
    for line in &lines {
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. piped into `head`): nothing more to say.
            return ExitCode::from(1);
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn input_text(args: &[String]) -> Result<String, String> {
    let read_stdin = || -> Result<String, String> {
        let mut s = String::new();
        std::io::stdin()
            .take(MAX_INPUT_CHARS)
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        Ok(s)
    };
    if args.is_empty() {
        return read_stdin();
    }
    let mut text = String::new();
    for a in args {
        if a == "-" {
            text.push_str(&read_stdin()?);
        } else {
            text.push_str(a);
        }
    }
    Ok(text)
}

/// Hex digits to bytes. Whitespace, `:` and `,` separate nothing (they are dropped), an
/// optional `0x` before a group is dropped; anything else is an error naming it.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut digits = Vec::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'0' if matches!(b.get(i + 1), Some(b'x' | b'X')) && group_start(b, i) => i += 1,
            c if c.is_ascii_hexdigit() => digits.push(c),
            c if c.is_ascii_whitespace() || c == b':' || c == b',' => {}
            _ => {
                let ch = text.get(i..).and_then(|s| s.chars().next()).unwrap_or('?');
                return Err(format!(
                    "`{ch}` at character {} is not a hex digit",
                    text.get(..i).map_or(i, |s| s.chars().count()) + 1
                ));
            }
        }
        i += 1;
    }
    if digits.is_empty() {
        return Err("no hex bytes given (pass them as arguments or on stdin)".into());
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "odd number of hex digits ({}): a byte is cut in half",
            digits.len()
        ));
    }
    Ok(digits
        .chunks(2)
        .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
        .collect())
}

/// True when position `i` starts a group (beginning of input or after a separator), so
/// the `0` of `0x` is a prefix and not the digit of a byte like `0b`… `0x` never is hex.
fn group_start(b: &[u8], i: usize) -> bool {
    i == 0
        || b.get(i - 1)
            .is_some_and(|c| c.is_ascii_whitespace() || *c == b':' || *c == b',')
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The whole stream through the session's splitter loop: one JSON line per frame or per
/// piece that is not a frame, and whether everything decoded cleanly. Pure (`now_ms` is
/// only used by the 0x8A time reply and the "time in the future" check).
pub fn decode_stream(bytes: &[u8], ctx: &DecodeCtx, now_ms: i64) -> (Vec<String>, bool) {
    let opts = SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    };
    let mut lines = Vec::new();
    let mut all_ok = true;
    let mut at = 0;
    // Every round consumes at least one byte or ends, so this ends within len rounds.
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        match protocol::split(rest, &opts) {
            Ok(Some((frame, used))) => {
                let (line, ok) = frame_line(&frame, ctx, now_ms);
                lines.push(line);
                all_ok &= ok;
                at += used.max(1);
            }
            Ok(None) => {
                all_ok = false;
                // A live session would wait for more bytes; a capture has no more. If
                // another start marker follows, what came before it was not a frame.
                match next_marker(rest) {
                    Some(n) => {
                        let bytes = rest.get(..n).unwrap_or(rest);
                        lines.push(error_line(
                            "no frame end before the next start marker",
                            "malformed",
                            bytes,
                        ));
                        at += n;
                    }
                    None => {
                        lines.push(error_line(
                            "the input ends inside a frame",
                            "incomplete",
                            rest,
                        ));
                        break;
                    }
                }
            }
            Err(e) => {
                let n = e.consumed().clamp(1, rest.len());
                let what = match &e {
                    FrameError::TooLong { .. } => format!("{e}; skipping its start marker"),
                    _ => e.to_string(),
                };
                lines.push(error_line(&what, e.reason(), rest.get(..n).unwrap_or(rest)));
                all_ok = false;
                at += n;
            }
        }
    }
    (lines, all_ok)
}

/// Offset of the first `78 78` / `79 79` after the first byte, if any.
fn next_marker(buf: &[u8]) -> Option<usize> {
    let tail = buf.get(1..)?;
    tail.windows(2)
        .position(|w| w == [0x78, 0x78] || w == [0x79, 0x79])
        .map(|p| p + 1)
}

fn error_line(error: &str, reason: &str, bytes: &[u8]) -> String {
    line(vec![
        ("error", json!(error)),
        ("reason", json!(reason)),
        ("hex", json!(to_hex(bytes))),
    ])
}

/// One frame's line and whether it counts as decoded (CRC fine, type known, no error).
fn frame_line(frame: &Frame, ctx: &DecodeCtx, now_ms: i64) -> (String, bool) {
    let proto = format!("{:#04x}", frame.proto);
    let msg = match protocol::decode(frame, ctx) {
        Ok(m) => m,
        Err(e) => {
            let l = line(vec![
                ("error", json!(e.to_string())),
                ("reason", json!(e.reason())),
                ("proto", json!(proto)),
                ("serial", json!(frame.serial)),
                ("crc_ok", json!(frame.crc_ok)),
                ("hex", json!(to_hex(frame.raw))),
            ]);
            return (l, false);
        }
    };
    let mut fields: Vec<(&str, Value)> = vec![
        ("proto", json!(proto)),
        ("serial", json!(frame.serial)),
        ("crc_ok", json!(frame.crc_ok)),
        ("message", json!(msg.kind())),
    ];
    message_fields(&msg, now_ms, &mut fields);
    let reply = protocol::reply(&msg, frame, now_ms).map(|r| to_hex(&r));
    fields.push(("reply", json!(reply)));
    if frame.crc_ok == Some(false) || matches!(msg, Message::Unknown { .. }) {
        fields.push(("hex", json!(to_hex(frame.raw))));
    }
    let ok = frame.crc_ok != Some(false) && !matches!(msg, Message::Unknown { .. });
    (line(fields), ok)
}

/// A JSON object with its keys in the given order (serde_json's map would sort them).
fn line(fields: Vec<(&str, Value)>) -> String {
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Pushes `(key, value)` only when the value is known.
fn opt<T: Into<Value>>(out: &mut Vec<(&'static str, Value)>, key: &'static str, v: Option<T>) {
    if let Some(v) = v {
        out.push((key, v.into()));
    }
}

fn volts(mv: Option<u32>) -> Option<f64> {
    mv.map(|v| f64::from(v) / 1000.0)
}

fn celsius(dc: Option<i32>) -> Option<f64> {
    dc.map(|v| f64::from(v) / 10.0)
}

fn message_fields(msg: &Message, now_ms: i64, out: &mut Vec<(&'static str, Value)>) {
    match msg {
        Message::Login(l) => login_fields(l, out),
        Message::Heartbeat(st) => status_fields(st, out),
        Message::Location(loc) => location_fields(loc, now_ms, out),
        Message::Alarm(a) => alarm_fields(a, now_ms, out),
        Message::Cells(c) => cell_fields(c, out),
        Message::Info(i) => info_fields(i, out),
        Message::CommandReply { flag, text } => {
            out.push(("server_flag", json!(flag)));
            out.push(("text", json!(text)));
        }
        Message::Ignored { reason, .. } => out.push(("ignored", json!(reason))),
        Message::Unknown { .. } => {}
    }
}

fn login_fields(l: &Login, out: &mut Vec<(&'static str, Value)>) {
    out.push(("imei", json!(l.imei.to_string())));
    opt(out, "type_id", l.type_id.map(|t| format!("{t:#06x}")));
    opt(out, "login_tz_offset_min", l.tz_offset_min);
}

fn status_fields(st: &Status, out: &mut Vec<(&'static str, Value)>) {
    out.push(("acc", json!(st.acc)));
    out.push(("charging", json!(st.charging)));
    out.push(("relay_cut", json!(st.relay_cut)));
    out.push(("armed", json!(st.armed)));
    opt(out, "voltage_level", st.voltage_level);
    opt(out, "battery_percent", st.battery_percent());
    opt(out, "gsm_signal", st.gsm_signal);
    opt(out, "alarm_code", st.alarm_code.filter(|c| *c != 0));
    opt(out, "power_v", volts(st.power_mv));
    opt(out, "battery_v", volts(st.battery_mv));
    opt(out, "temperature_c", celsius(st.temperature_dc));
    opt(out, "steps", st.steps);
}

/// The device's fix time as the API shows it (read as UTC), or why it is not believed.
fn gps_fields(g: &Gps, now_ms: i64, out: &mut Vec<(&'static str, Value)>) {
    const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
    let (time, invalid_reason) = match g.time.and_then(|t| t.to_unix_ms_utc()) {
        None => (None, Some("no_device_time")),
        Some(t) if t > now_ms + MAX_FUTURE_MS => (Some(t), Some("time_in_future")),
        Some(t) => (Some(t), None),
    };
    out.push(("time", json!(time.map(rfc3339))));
    out.push(("lat", json!(degrees(g.lat_raw))));
    out.push(("lon", json!(degrees(g.lon_raw))));
    out.push(("speed_kmh", json!(g.speed_kmh)));
    out.push(("course", json!(g.course)));
    out.push(("satellites", json!(g.satellites)));
    out.push(("valid", json!(g.fixed && invalid_reason.is_none())));
    opt(out, "invalid_reason", invalid_reason);
}

fn lbs_value(l: &Lbs) -> Value {
    json!({"mcc": l.mcc, "mnc": l.mnc, "lac": l.lac, "cell": l.cell})
}

fn location_fields(loc: &Location, now_ms: i64, out: &mut Vec<(&'static str, Value)>) {
    gps_fields(&loc.gps, now_ms, out);
    opt(out, "acc", loc.acc);
    opt(out, "odometer_m", loc.odometer_m);
    opt(out, "lbs", loc.lbs.as_ref().map(lbs_value));
    opt(out, "reupload", loc.reupload);
    opt(out, "altitude_m", loc.altitude_m);
    opt(out, "driving_time_s", loc.driving_time_s);
    opt(out, "engine_time_s", loc.engine_time_s);
    opt(out, "power_v", volts(loc.power_mv));
    opt(out, "battery_v", volts(loc.battery_mv));
    opt(out, "temperature_c", celsius(loc.temperature_dc));
    opt(out, "driver_id", loc.driver_id.clone());
}

fn alarm_fields(a: &Alarm, now_ms: i64, out: &mut Vec<(&'static str, Value)>) {
    out.push(("alarm", json!(a.kind.map(|k| k.as_str()))));
    if let Some(loc) = &a.location {
        location_fields(loc, now_ms, out);
    }
    opt(out, "lbs", a.cell.as_ref().map(lbs_value));
    opt(out, "media_files", a.media_files.clone());
    let mut status = Vec::new();
    status_fields(&a.status, &mut status);
    // Location fields win where both say something (e.g. an explicit ACC byte).
    for (k, v) in status {
        if !out.iter().any(|(have, _)| *have == k) {
            out.push((k, v));
        }
    }
}

fn cell_fields(c: &CellReport, out: &mut Vec<(&'static str, Value)>) {
    opt(
        out,
        "time",
        c.time.and_then(|t| t.to_unix_ms_utc()).map(rfc3339),
    );
    let cells: Vec<Value> = c
        .cells
        .iter()
        .map(|cell| {
            let mut v = lbs_value(&cell.lbs);
            if let (Some(rssi), Some(map)) = (cell.rssi, v.as_object_mut()) {
                map.insert("rssi".into(), json!(rssi));
            }
            v
        })
        .collect();
    out.push(("cells", Value::Array(cells)));
    let wifi: Vec<Value> = c
        .wifi
        .iter()
        .map(|w| {
            let mac: Vec<String> = w.mac.iter().map(|b| format!("{b:02x}")).collect();
            json!({"mac": mac.join(":"), "rssi": w.rssi})
        })
        .collect();
    out.push(("wifi", Value::Array(wifi)));
    if c.buffered {
        out.push(("reupload", json!(true)));
    }
}

fn info_fields(i: &Info, out: &mut Vec<(&'static str, Value)>) {
    opt(
        out,
        "time",
        i.time.and_then(|t| t.to_unix_ms_utc()).map(rfc3339),
    );
    opt(out, "power_v", volts(i.power_mv));
    opt(out, "battery_v", volts(i.battery_mv));
    opt(out, "battery_percent", i.battery_pct);
    opt(out, "iccid", i.iccid.clone());
    opt(out, "imsi", i.imsi.clone());
    opt(out, "network", i.network);
    opt(out, "door_open", i.door_open);
    opt(out, "acc", i.ignition);
    opt(out, "charging", i.charging);
    opt(out, "armed", i.armed);
    opt(out, "moving", i.moving);
    opt(out, "temperature_c", celsius(i.temperature_dc));
    opt(
        out,
        "humidity_pct",
        i.humidity_dpct.map(|h| f64::from(h) / 10.0),
    );
    opt(out, "tag_temperature_c", celsius(i.tag_temperature_dc));
    opt(out, "driver_id", i.driver_id.clone());
    opt(out, "text", i.text.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_spaces_colons_and_prefixes() {
        assert_eq!(
            parse_hex("78 78:0d\n0x01").unwrap(),
            vec![0x78, 0x78, 0x0d, 0x01]
        );
        assert_eq!(parse_hex("0b").unwrap(), vec![0x0b]);
        assert!(parse_hex("787").unwrap_err().contains("odd"));
        assert!(parse_hex("78 zz").unwrap_err().contains("character 4"));
        assert!(parse_hex("  ").is_err());
    }

    #[test]
    fn lines_keep_their_key_order() {
        let (lines, ok) = decode_stream(
            &parse_hex("78780a13c40604000201298f5b0d0a").unwrap(),
            &DecodeCtx::default(),
            0,
        );
        assert!(ok);
        assert!(
            lines[0]
                .starts_with(r#"{"proto":"0x13","serial":297,"crc_ok":true,"message":"heartbeat""#),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(r#""reply":"78780513012 95d630d0a"}"#.replace(' ', "").as_str()));
    }
}
