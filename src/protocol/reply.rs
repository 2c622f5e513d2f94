//! Which bytes a device gets in answer to a frame (gt06-protocol.md §9), as pure functions.
//!
//! The answer depends on the protocol number and form far more than on what the frame
//! said, so the policy is one table in [`reply`]. This file never decides *whether* an
//! answer may go out (before login, after a failed flush): that is `ingest`'s job. It
//! never reads the clock either: the 0x8A time reply gets `now_ms` from the caller.

use super::encode::{frame as build, frame_into as build_into};
use super::types::DeviceTime;
use super::{Form, Frame, Message};

/// Types the device expects no answer to (§9 "No reply"), whatever their form.
const NO_REPLY: &[u8] = &[
    0x21, // long-form command answer
    0x34, // X1 GPS
    0x38, // Jimi 4G GPS+LBS 8
    0x8C, // OBD
    0x94, // information transfer (both forms)
    0x9B, // serial pass-through
    0xF3, // WiFi 4
];

/// Text Traccar answers a 0x2A address request with: "no address, no phone".
const ADDRESS_UNKNOWN: &[u8] = b"NA&&NA&&0##";

/// The answer to `msg` (decoded from `frame`), or `None` when the device expects none.
/// `now_ms` is the server's current UTC time, used only by the 0x8A time reply.
pub fn reply(msg: &Message, frame: &Frame, now_ms: i64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    reply_into(msg, frame, now_ms, &mut out).then_some(out)
}

/// [`reply`], appended to `out`; false (and `out` untouched) when there is none. A
/// session collects the answers to one read's frames in one buffer.
pub fn reply_into(msg: &Message, frame: &Frame, now_ms: i64, out: &mut Vec<u8>) -> bool {
    match answer(msg, frame, now_ms) {
        None => false,
        Some(Answer::Empty(form, proto)) => {
            build_into(out, form, proto, &[], serial(frame));
            true
        }
        Some(Answer::Built(bytes)) => {
            out.extend_from_slice(&bytes);
            true
        }
    }
}

/// An answer before it is written: nearly all are a frame with no content (an ack).
enum Answer {
    Empty(Form, u8),
    Built(Vec<u8>),
}

/// The policy: which answer a frame gets.
fn answer(msg: &Message, frame: &Frame, now_ms: i64) -> Option<Answer> {
    let proto = frame.proto;
    match msg {
        Message::Ignored {
            reason: "time_request",
            ..
        } => return Some(Answer::Built(time(frame, now_ms))),
        Message::Ignored {
            proto: 0x80..=0x82, ..
        } => return None,
        // The 365GPS heartbeat has no serial to echo and its firmware wants no answer.
        Message::Heartbeat(_) if proto == 0x08 => return None,
        _ => {}
    }
    match (frame.form, proto) {
        (_, 0x8A) => Some(Answer::Built(time(frame, now_ms))),
        (_, 0x80..=0x82) => None,
        (Form::Short, 0x17 | 0x69) if frame.serial.is_none() => {
            wifi_365gps(frame).map(Answer::Built)
        }
        (_, 0x2A) => Some(Answer::Built(address(frame))),
        (Form::Short, 0x35) => photo_request(frame).map(Answer::Built),
        (_, 0x19) if frame.content.len() + 5 >= 0x17 => None, // SPACE10X multi-cell
        (_, 0x24) if frame.content.len() + 5 == 0x2E => None, // SR411 mini
        (_, p) if NO_REPLY.contains(&p) => None,
        (Form::Long, 0x32 | 0x33 | 0x41) => Some(Answer::Empty(Form::Long, proto)),
        // Modular and status types are acked in short form even when they came long.
        (_, 0x40 | 0x70 | 0xF1 | 0xF2) => Some(Answer::Empty(Form::Short, proto)),
        // Other long-form types (0x66, 0x84, 0xFD, …) are answered by nobody.
        (Form::Long, _) => None,
        // Traccar's catch-all, which devices rely on for login, heartbeat and alarms:
        // `78 78 05 <proto> <serial> CRC 0D 0A`.
        (Form::Short, _) => Some(Answer::Empty(Form::Short, proto)),
    }
}

/// The serial to echo. Frames without one (365GPS login, 0x10/0x11) get bytes `[-6, -4)`
/// of the frame, exactly as Traccar sends them: those devices need an answer and accept it.
fn serial(frame: &Frame) -> u16 {
    frame.serial.unwrap_or_else(|| {
        let n = frame.raw.len();
        match n.checked_sub(6).and_then(|at| frame.raw.get(at..at + 2)) {
            Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
            _ => 0,
        }
    })
}

/// 0x8A: the server's UTC time as six binary bytes, echoing the request's serial.
fn time(frame: &Frame, now_ms: i64) -> Vec<u8> {
    let t = DeviceTime::from_unix_ms_utc(now_ms);
    let yy = t.year.saturating_sub(2000).min(255) as u8;
    build(
        Form::Short,
        0x8A,
        &[yy, t.month, t.day, t.hour, t.minute, t.second],
        serial(frame),
    )
}

/// 365GPS 0x17/0x69: `78 78 00 <proto> <the request's 6 BCD time bytes> 0D 0A`, no
/// serial, no CRC.
fn wifi_365gps(frame: &Frame) -> Option<Vec<u8>> {
    let time = frame.content.get(..6)?;
    let mut out = vec![0x78, 0x78, 0x00, frame.proto];
    out.extend_from_slice(time);
    out.extend_from_slice(&[0x0D, 0x0A]);
    Some(out)
}

/// Largest photo chunk a X1 camera is asked for at once.
const PHOTO_CHUNK: u32 = 1024;

/// 0x35 photo info (X1) → 0x36 request for the first chunk of that picture:
/// picture id u32, offset u32 = 0, chunk length u16, and a zero serial as §9 shows.
fn photo_request(frame: &Frame) -> Option<Vec<u8>> {
    let media_len = frame.content.get(18..22)?;
    let picture_id = frame.content.get(22..26)?;
    let media_len = u32::from_be_bytes(media_len.try_into().ok()?);
    let chunk = media_len.min(PHOTO_CHUNK) as u16;
    let mut c = Vec::with_capacity(10);
    c.extend_from_slice(picture_id);
    c.extend_from_slice(&[0, 0, 0, 0]);
    c.extend_from_slice(&chunk.to_be_bytes());
    Some(build(Form::Short, 0x36, &c, 0))
}

/// 0x2A address request → 0x97 English address packet (long form) saying "unknown".
fn address(frame: &Frame) -> Vec<u8> {
    let mut c = Vec::with_capacity(5 + ADDRESS_UNKNOWN.len());
    c.push(ADDRESS_UNKNOWN.len() as u8);
    c.extend_from_slice(&[0, 0, 0, 0]);
    c.extend_from_slice(ADDRESS_UNKNOWN);
    build(Form::Long, 0x97, &c, serial(frame))
}
