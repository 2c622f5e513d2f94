//! `gt06 decode`: captures in, one JSON line per frame out, exit code by what decoded.

use crate::harness::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `gt06 decode ARGS` with `stdin` piped in: (exit code, JSON lines, stderr).
fn decode(args: &[&str], stdin: &str) -> (i32, Vec<Value>, String) {
    let mut child = Command::new(bin())
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gt06 decode");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("gt06 decode output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vector_144_decodes_to_its_exact_position_and_reply() {
    let (code, lines, err) = decode(&[LOCATION_V144], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["proto"], "0x12");
    assert_eq!(l["serial"], 3);
    assert_eq!(l["crc_ok"], true);
    assert_eq!(l["message"], "location");
    assert_eq!(l["time"], "2015-10-20T14:21:11.000Z");
    assert_eq!(l["lat"], 54.9453467);
    assert_eq!(l["lon"], 24.0176222);
    assert_eq!(l["speed_kmh"], 0);
    assert_eq!(l["course"], 0);
    assert_eq!(l["satellites"], 5);
    assert_eq!(l["valid"], true);
    assert_eq!(
        l["lbs"],
        serde_json::json!({"mcc": 246, "mnc": 1, "lac": 110, "cell": 21978})
    );
    assert_eq!(l["reply"], "787805120003903f0d0a");
}

#[test]
fn glued_cut_and_spaced_frames_come_out_one_line_each() {
    // Login cut in the middle, its tail glued to the start of the location, the
    // location's tail glued to a spaced heartbeat; the heartbeat comes on stdin.
    let login = LOGIN_V2;
    let loc: String = LOCATION_V144.split_whitespace().collect();
    let first = &login[..14];
    let second = format!("{}{}", &login[14..], &loc[..20]);
    let third = format!("{} ", &loc[20..]);
    let (code, lines, err) = decode(
        &[first, &second, &third, "-"],
        "78 78 0a 13 c4 06 04 00 02 01 29 8f 5b 0d 0a\n",
    );
    assert_eq!(code, 0, "{err}");
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["login", "location", "heartbeat"], "{lines:?}");
    assert_eq!(lines[0]["imei"], "864717003283581");
    assert_eq!(lines[0]["reply"], "78780501000955940d0a");
    assert_eq!(lines[1]["lat"], 54.9453467);
    assert_eq!(lines[2]["voltage_level"], 6);
    assert_eq!(lines[2]["gsm_signal"], 4);
    assert_eq!(lines[2]["reply"], "787805130129 5d630d0a".replace(' ', ""));
}

#[test]
fn bad_crc_is_reported_decoded_and_exits_1() {
    let bad = LOCATION_V144.replace("5f240d0a", "5f250d0a");
    let (code, lines, _) = decode(&[&bad, HEARTBEAT_84], "");
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["crc_ok"], false);
    assert_eq!(lines[0]["message"], "location");
    assert_eq!(lines[0]["lat"], 54.9453467);
    assert_eq!(lines[1]["crc_ok"], true);
    assert_eq!(lines[1]["message"], "heartbeat");
}

#[test]
fn junk_and_cut_frames_become_error_lines_and_non_hex_exits_2() {
    // Junk, a heartbeat, then a frame cut short by the end of the input.
    let (code, lines, _) = decode(&["0102 0304", HEARTBEAT_84, "78781f1200"], "");
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["reason"], "junk");
    assert_eq!(lines[0]["hex"], "01020304");
    assert_eq!(lines[1]["message"], "heartbeat");
    assert_eq!(lines[2]["reason"], "incomplete");
    assert_eq!(lines[2]["hex"], "78781f1200");
    assert!(lines[2]["error"].is_string());

    // A stray start byte glued to a frame: the capture has no more bytes to wait for,
    // so the bogus length is given up at the next marker and the frame still decodes.
    let (code, lines, _) = decode(&["78", LOGIN_V2], "");
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["reason"], "malformed");
    assert_eq!(lines[0]["hex"], "78");
    assert_eq!(lines[1]["imei"], "864717003283581");

    let (code, lines, err) = decode(&["7878 zz"], "");
    assert_eq!(code, 2);
    assert!(lines.is_empty());
    assert!(err.contains("not a hex digit"), "{err}");
    let (code, _, err) = decode(&["787"], "");
    assert_eq!(code, 2);
    assert!(err.contains("odd number"), "{err}");
}

#[test]
fn unknown_type_is_shown_with_its_reply_and_exits_1() {
    let frame = gt06::protocol::encode::frame(gt06::protocol::Form::Short, 0xEE, &[1, 2], 7);
    let text: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let (code, lines, _) = decode(&[&text], "");
    assert_eq!(code, 1);
    assert_eq!(lines[0]["proto"], "0xee");
    assert_eq!(lines[0]["message"], "unknown");
    assert_eq!(lines[0]["hex"], text);
}
