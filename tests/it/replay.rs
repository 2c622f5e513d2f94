//! Traccar's GT06 decoder-test frames (`../shared/peer-vectors/traccar-gt06.jsonl`, read
//! in place) sent in file order over ONE TCP connection to the real binary, checking
//! what a device sees (the reply bytes) and what an API user sees (positions, events,
//! device status) after each vector.
//!
//! How "no reply" is checked without sleeping: after each vector the test sends a time
//! request (0x8A) with a serial of its own. Answers go out in order, so every byte that
//! arrives before the time answer with that serial belongs to the vector, and the time
//! answer itself says everything before it is durable and readable over HTTP.
//!
//! Vectors that need a device model (`model_override`) are replayed once more per model,
//! against a server whose config gives every IMEI the vectors log in with that model,
//! after the logins that precede them in the file.
//!
//! The pure core is the oracle for what the server should *do* with a frame (store a
//! position or not, from which decoded fields); Traccar's assertions and the reference
//! decoder's `derived` values are the independent check of the values themselves.

use crate::harness::*;
use gt06::http::json::{degrees, parse_rfc3339, rfc3339};
use gt06::protocol::{self, encode, DecodeCtx, Form, Frame, Message, Model, SplitOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/peer-vectors/traccar-gt06.jsonl"
);
/// The vectors that pass (or disagree as documented), committed with the unit replay.
const PASSING_LIST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocol/peer_vectors_passing.txt"
);

/// Serials of the test's own time requests; far from any serial in the vectors.
const SYNC_SERIAL_BASE: u16 = 0xF000;

#[derive(Default)]
struct Outcome {
    checks: usize,
    failures: Vec<String>,
    skips: Vec<String>,
    /// Where we show another value than Traccar asserts, on purpose (our value is
    /// checked; the reason is printed).
    disagreements: Vec<String>,
}

impl Outcome {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }
    fn skip(&mut self, why: impl Into<String>) {
        self.skips.push(why.into());
    }
    fn disagree(&mut self, why: impl Into<String>) {
        self.disagreements.push(why.into());
    }
    fn verdict(&self) -> Verdict {
        if !self.failures.is_empty() {
            Verdict::Failed
        } else if !self.skips.is_empty() || self.checks == 0 {
            Verdict::Skipped
        } else if !self.disagreements.is_empty() {
            Verdict::Disagreement
        } else {
            Verdict::Passed
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Passed,
    Failed,
    Skipped,
    Disagreement,
}

/// Why we keep our reading where Traccar asserts another.
const ALARM_0C: &str = "alarm 0x0C: the vendor's documents say 'powered on' \
     (gt06-protocol.md §11.1), Traccar says tampering; shown as an `other` event";
const SL4X_ALTITUDE: &str = "SL4X 0x32 altitude: the frame's last two bytes before the \
     serial say 687 m (gt06-protocol.md §7 note 1); Traccar's -31703 is its CRC, read \
     after a Cell ID taken as 8 bytes";

/// One tracker connection with its own read buffer.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

enum Exchange {
    /// Bytes that arrived before the sync answer.
    Replies(Vec<u8>),
    /// The server closed the connection (bytes that came before the close).
    Closed(Vec<u8>),
    /// No sync answer in time.
    Timeout(Vec<u8>),
}

impl Conn {
    fn open(g: &Gt06) -> Conn {
        let sock = TcpStream::connect_timeout(&g.tcp, Duration::from_secs(5)).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        Conn {
            sock,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.sock.write_all(bytes).is_ok()
    }

    /// Sends a time request with `serial` and collects what arrives before its answer.
    fn sync(&mut self, serial: u16) -> Exchange {
        let req = encode::frame(Form::Short, 0x8A, &[], serial);
        if !self.send(&req) {
            return Exchange::Closed(std::mem::take(&mut self.buf));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = find_time_answer(&self.buf, serial) {
                let before = self.buf[..at].to_vec();
                self.buf.drain(..at + 16);
                return Exchange::Replies(before);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Exchange::Timeout(std::mem::take(&mut self.buf));
            }
            let _ = self.sock.set_read_timeout(Some(left));
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Exchange::Closed(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Exchange::Timeout(std::mem::take(&mut self.buf))
                }
                Err(_) => return Exchange::Closed(std::mem::take(&mut self.buf)),
            }
        }
    }
}

/// Where `78 78 0B 8A <6 time bytes> <serial> <crc> 0D 0A` answering `serial` starts.
fn find_time_answer(buf: &[u8], serial: u16) -> Option<usize> {
    let s = serial.to_be_bytes();
    buf.windows(16).position(|w| {
        w[..4] == [0x78, 0x78, 0x0B, 0x8A] && w[10..12] == s && w[14..16] == [0x0D, 0x0A]
    })
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the pure core says one frame of a vector should lead to.
struct Expected<'a> {
    frame: Frame<'a>,
    msg: Option<Message>,
    /// Accepted by the session (logged in, or a login).
    accepted: bool,
}

/// The oracle's session state, mirroring the server's.
#[derive(Default)]
struct Oracle {
    imei: Option<String>,
    login_frame: Option<Vec<u8>>,
    /// The model the server is configured with for the logged-in device.
    model: Model,
}

impl Oracle {
    /// Splits and decodes a vector the way the server's session does; errors are the
    /// splitter's reasons for bytes that are not frames.
    fn run<'a>(
        &mut self,
        input: &'a [u8],
        lenient: bool,
    ) -> (Vec<Expected<'a>>, Vec<&'static str>) {
        let opts = SplitOptions {
            lenient_crc: lenient,
            ..SplitOptions::default()
        };
        let (mut out, mut errors, mut at) = (Vec::new(), Vec::new(), 0);
        while at < input.len() {
            match protocol::split(&input[at..], &opts) {
                Ok(Some((frame, n))) => {
                    at += n;
                    let ctx = DecodeCtx {
                        model: if self.imei.is_some() {
                            self.model
                        } else {
                            Model::Standard
                        },
                    };
                    let msg = protocol::decode(&frame, &ctx).ok();
                    let accepted = match &msg {
                        Some(Message::Login(l)) => {
                            self.imei = Some(l.imei.to_string());
                            self.login_frame = Some(frame.raw.to_vec());
                            true
                        }
                        _ => self.imei.is_some(),
                    };
                    out.push(Expected {
                        frame,
                        msg,
                        accepted,
                    });
                }
                Ok(None) => {
                    errors.push("incomplete");
                    break;
                }
                Err(e) => {
                    errors.push(e.reason());
                    at += e.consumed().max(1);
                }
            }
        }
        (out, errors)
    }
}

/// Snapshot of what the API shows about one device.
struct View {
    positions: Vec<Value>,
    events: Vec<Value>,
    device: Value,
}

fn view(g: &Gt06, imei: &str) -> View {
    let (status, p) = g.get_json(&format!("/api/devices/{imei}/positions?limit=100000"));
    let positions = if status == 200 {
        p["positions"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (_, e) = g.get_json(&format!("/api/events?imei={imei}&limit=100000"));
    let events = e.as_array().cloned().unwrap_or_default();
    let (_, device) = g.get_json(&format!("/api/devices/{imei}"));
    View {
        positions,
        events,
        device,
    }
}

fn new_items(before: &[Value], after: &[Value]) -> Vec<Value> {
    after
        .iter()
        .filter(|a| !before.contains(a))
        .cloned()
        .collect()
}

/// Traccar's alarm names in our vocabulary (API.md event types).
fn our_alarm_name(traccar: &str) -> Option<&'static str> {
    Some(match traccar {
        "sos" => "sos",
        "powerCut" => "power_cut",
        "vibration" => "vibration",
        "geofenceEnter" => "geofence_enter",
        "geofenceExit" => "geofence_exit",
        "overspeed" => "overspeed",
        "lowBattery" => "low_battery",
        "powerOff" => "power_off",
        "tampering" => "tampering",
        "door" => "door",
        "removing" => "removing",
        "hardAcceleration" => "hard_acceleration",
        "hardBraking" => "hard_braking",
        "hardCornering" => "hard_cornering",
        "accident" => "accident",
        "fallDown" => "fall",
        "tow" => "tow",
        "general" => "other",
        _ => return None,
    })
}

fn is_decoder_vector(v: &Value) -> bool {
    v["source"]
        .as_str()
        .is_some_and(|s| s.contains("ProtocolDecoder"))
}

fn id(v: &Value) -> String {
    format!("decoder:{}", v["index"].as_u64().unwrap_or(0))
}

/// IMEIs of the logins among a vector's frames.
fn login_imeis(v: &Value) -> Vec<String> {
    let input = hex(v["hex"].as_str().unwrap_or_default());
    let opts = SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    };
    let (mut out, mut at) = (Vec::new(), 0);
    while at < input.len() {
        match protocol::split(&input[at..], &opts) {
            Ok(Some((frame, n))) => {
                at += n;
                if let Ok(Message::Login(l)) = protocol::decode(&frame, &DecodeCtx::default()) {
                    out.push(l.imei.to_string());
                }
            }
            Ok(None) => break,
            Err(e) => at += e.consumed().max(1),
        }
    }
    out
}

/// True when the default (strict) splitter rejects a frame of this vector for its CRC.
fn has_bad_crc(v: &Value) -> bool {
    let input = hex(v["hex"].as_str().unwrap_or_default());
    let mut at = 0;
    while at < input.len() {
        match protocol::split(&input[at..], &SplitOptions::default()) {
            Ok(Some((_, n))) => at += n,
            Ok(None) => return false,
            Err(gt06::protocol::FrameError::BadCrc { .. }) => return true,
            Err(e) => at += e.consumed().max(1),
        }
    }
    false
}

/// Replays every decoder vector on one connection (reconnecting and logging in again
/// only when the server closes it, which is then checked to be expected). `model` is
/// the one the server's config gives the devices: vectors needing another are skipped.
fn replay(
    g: &Gt06,
    vectors: &[Value],
    lenient: bool,
    model: Option<&str>,
) -> Vec<(String, Outcome)> {
    let mut conn = Conn::open(g);
    let mut oracle = Oracle {
        model: model.map_or(Model::Standard, Model::from_name),
        ..Oracle::default()
    };
    let mut results: Vec<(String, Outcome)> = Vec::new();
    // Vectors sent while no login was accepted: no time request can be answered then,
    // so their (absence of) replies is checked with the next synced exchange.
    let mut unsynced: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut n_sync: u16 = 0;
    for v in vectors {
        let mut o = Outcome::default();
        let needs = v["model_override"].as_str();
        if needs.is_some() && needs != model {
            o.skip(format!(
                "needs device model {}: replayed against a server configured so",
                needs.unwrap_or_default()
            ));
            results.push((id(v), o));
            continue;
        }
        let input = hex(v["hex"].as_str().unwrap_or_default());
        let bad_crc = has_bad_crc(v);
        let before_imei = oracle.imei.clone();
        let (expected, split_errors) = oracle.run(&input, lenient);
        let truncated = split_errors.contains(&"incomplete");
        if bad_crc && !lenient {
            // Strict policy: the bad-CRC frame is dropped; the checks below then expect
            // no answer and nothing new in the API.
            o.check(expected.is_empty(), || {
                "a bad-CRC frame was accepted".into()
            });
        }
        let view_before = oracle.imei.as_deref().map(|i| view(g, i));
        let before_view_imei = oracle.imei.clone();

        // What the device must get back, frame by frame.
        let mut want = Vec::new();
        let mut time_answers = Vec::new();
        for e in &expected {
            let Some(msg) = &e.msg else { continue };
            if !e.accepted {
                continue;
            }
            match e.frame.proto {
                0x8A => time_answers.push(e.frame.serial.unwrap_or(0)),
                _ => {
                    if let Some(r) = protocol::reply(msg, &e.frame, now_ms()) {
                        want.extend_from_slice(&r);
                    }
                }
            }
        }
        // Our §9 policy against Traccar's: identical except where we choose otherwise
        // (0x8A/0x2A echo the request serial, the 365GPS heartbeat gets no answer, and
        // a strict server answers no bad-CRC frame and nothing before a login).
        let traccar = v["derived"]["traccar_reply_hex"].as_str().unwrap_or("");
        let proto = v["message_type"].as_str().unwrap_or("");
        let all_accepted = expected.iter().all(|e| e.accepted);
        if !matches!(proto, "0x8a" | "0x2a" | "0x08") && (lenient || !bad_crc) && all_accepted {
            o.check(to_hex(&want) == traccar, || {
                format!(
                    "our §9 reply {} differs from Traccar's {traccar}",
                    to_hex(&want)
                )
            });
        }
        if proto == "0x2a" {
            o.check(
                to_hex(&want).starts_with("79790015970b000000004e4126264e412626302323"),
                || format!("address answer {}", to_hex(&want)),
            );
        }

        if !conn.send(&input) {
            o.failures
                .push("connection closed before the vector was sent".into());
        }
        if oracle.imei.is_none() {
            unsynced.push((results.len(), want));
            results.push((id(v), o));
            continue;
        }
        n_sync = n_sync.wrapping_add(1);
        let sync_sent_ms = now_ms();
        let got = conn.sync(SYNC_SERIAL_BASE.wrapping_add(n_sync));
        let mut want_all: Vec<u8> = unsynced.iter().flat_map(|(_, w)| w.clone()).collect();
        want_all.extend_from_slice(&want);
        let owners: Vec<usize> = unsynced.drain(..).map(|(i, _)| i).collect();
        let answered = !matches!(got, Exchange::Timeout(_));
        let replies = match got {
            Exchange::Replies(bytes) => {
                o.check(!truncated, || {
                    "a frame cut short by the capture should close the connection".into()
                });
                bytes
            }
            Exchange::Closed(bytes) => {
                o.check(truncated, || "the server closed the connection".into());
                conn = Conn::open(g);
                if let Some(login) = oracle.login_frame.clone() {
                    conn.send(&login);
                    n_sync = n_sync.wrapping_add(1);
                    if !matches!(
                        conn.sync(SYNC_SERIAL_BASE.wrapping_add(n_sync)),
                        Exchange::Replies(_)
                    ) {
                        o.failures.push("no answer after logging in again".into());
                    }
                }
                bytes
            }
            Exchange::Timeout(bytes) => {
                o.failures
                    .push("no answer to the test's time request within 10 s".into());
                bytes
            }
        };
        // Time answers are clock-dependent: check their shape and echoed serial, then
        // compare the rest byte for byte.
        let mut replies = replies;
        for serial in time_answers {
            let s = serial.to_be_bytes();
            match replies.windows(16).position(|w| {
                w[..4] == [0x78, 0x78, 0x0B, 0x8A] && w[10..12] == s && w[14..16] == [0x0D, 0x0A]
            }) {
                Some(at) => {
                    replies.drain(at..at + 16);
                    o.check(true, String::new);
                }
                None => o.failures.push(format!(
                    "no time answer echoing serial {serial:#06x} in {}",
                    to_hex(&replies)
                )),
            }
        }
        let ok = replies == want_all;
        o.check(ok, || {
            format!("replies {} want {}", to_hex(&replies), to_hex(&want_all))
        });
        for i in &owners {
            let earlier = &mut results[*i].1;
            earlier.check(ok, || {
                "unexpected bytes before the next answered frame".into()
            });
        }

        // What an API user sees, once the store has the sync request's own status
        // update (and so everything before it: the writer applies in order).
        if let (Some(imei), true) = (oracle.imei.as_deref(), answered) {
            o.check(g.device_seen_since(imei, sync_sent_ms).is_some(), || {
                format!("{imei}: the sync request's status not shown within 5 s")
            });
        }
        if let (Some(imei), Some(before)) = (before_view_imei.as_deref(), view_before) {
            let after = view(g, imei);
            check_api(v, &expected, &before, &after, &mut o);
        } else if let Some(imei) = oracle.imei.as_deref() {
            // The vector was the first login: the device now exists.
            let after = view(g, imei);
            o.check(after.device["imei"] == imei, || {
                format!("device {imei} not shown after its login")
            });
        }
        if before_imei != oracle.imei {
            if let Some(imei) = oracle.imei.as_deref() {
                let after = view(g, imei);
                o.check(after.device["online"] == true, || {
                    format!("device {imei} not online after its login")
                });
            }
        }
        results.push((id(v), o));
    }
    results
}

/// Positions, events and status after one vector against what it decodes to.
fn check_api(v: &Value, expected: &[Expected], before: &View, after: &View, o: &mut Outcome) {
    let new_positions = new_items(&before.positions, &after.positions);
    let new_events = new_items(&before.events, &after.events);
    let located: Vec<&gt06::protocol::Location> = expected
        .iter()
        .filter(|e| e.accepted)
        .filter_map(|e| match &e.msg {
            Some(Message::Location(l)) => Some(l),
            Some(Message::Alarm(a)) => a.location.as_ref(),
            _ => None,
        })
        .collect();
    let is_login = expected
        .iter()
        .any(|e| matches!(e.msg, Some(Message::Login(_))));
    // A fix the API already shows (same device, same fix time: a re-sent frame) is
    // stored once; every other fix must appear as a new position.
    let now = now_ms();
    let shown_times: Vec<&Value> = before.positions.iter().map(|p| &p["time"]).collect();
    let all_located = located.clone();
    let located: Vec<&gt06::protocol::Location> = located
        .into_iter()
        .filter(|l| match believable_time(&l.gps, now) {
            Some(t) => !shown_times.contains(&&Value::from(rfc3339(t))),
            None => true,
        })
        .collect();
    if !is_login {
        o.check(new_positions.len() == located.len(), || {
            format!(
                "{} new positions shown, {} expected",
                new_positions.len(),
                located.len()
            )
        });
    }
    if v["expect"] == "null" {
        o.check(new_positions.is_empty(), || {
            "Traccar returns nothing, we show a position".into()
        });
    }
    for (p, loc) in new_positions.iter().zip(&located) {
        let g = &loc.gps;
        o.check(p["lat"] == degrees(g.lat_raw), || {
            format!("lat {} want {}", p["lat"], degrees(g.lat_raw))
        });
        o.check(p["lon"] == degrees(g.lon_raw), || {
            format!("lon {} want {}", p["lon"], degrees(g.lon_raw))
        });
        o.check(p["speed_kmh"] == g.speed_kmh, || {
            format!("speed {} want {}", p["speed_kmh"], g.speed_kmh)
        });
        o.check(p["course"] == g.course, || {
            format!("course {} want {}", p["course"], g.course)
        });
        o.check(p["satellites"] == g.satellites, || {
            format!("satellites {}", p["satellites"])
        });
        check_against_derived(&v["derived"], p, now, o);
    }
    if v["index"] == 144 {
        let p = new_positions.first().cloned().unwrap_or_default();
        for (k, want) in [
            ("time", serde_json::json!("2015-10-20T14:21:11.000Z")),
            ("lat", serde_json::json!(54.9453467)),
            ("lon", serde_json::json!(24.0176222)),
            ("speed_kmh", serde_json::json!(0)),
            ("course", serde_json::json!(0)),
            ("satellites", serde_json::json!(5)),
            ("valid", serde_json::json!(true)),
            (
                "lbs",
                serde_json::json!({"mcc": 246, "mnc": 1, "lac": 110, "cell": 21978}),
            ),
        ] {
            o.check(p[k] == want, || {
                format!("vector 144 {k} = {} want {want}", p[k])
            });
        }
    }
    let dropped = expected.iter().all(|e| !e.accepted || e.msg.is_none());
    if v["expect"] == "attribute" && !dropped {
        let msg = expected
            .iter()
            .filter(|e| e.accepted)
            .find_map(|e| e.msg.as_ref());
        // A re-sent fix is stored once: its attributes are the shown position's.
        let resent: Vec<Value> = all_located
            .iter()
            .filter_map(|l| believable_time(&l.gps, now))
            .filter_map(|t| {
                let t = Value::from(rfc3339(t));
                after.positions.iter().find(|p| p["time"] == t).cloned()
            })
            .collect();
        let positions = if new_positions.is_empty() {
            &resent
        } else {
            &new_positions
        };
        check_attribute(v, msg, positions, &new_events, after, o);
    }
}

/// The fix time the API shows for a fix, when it believes it.
fn believable_time(g: &gt06::protocol::Gps, now: i64) -> Option<i64> {
    g.time
        .and_then(|t| t.to_unix_ms_utc())
        .filter(|t| *t <= now + 24 * 3600 * 1000)
}

/// Position values against the reference decoder's (an independent implementation).
fn check_against_derived(d: &Value, p: &Value, now: i64, o: &mut Outcome) {
    if let (Some(lat), Some(lon)) = (d["lat"].as_f64(), d["lon"].as_f64()) {
        let got = (p["lat"].as_f64(), p["lon"].as_f64());
        let close =
            matches!(got, (Some(a), Some(b)) if (a - lat).abs() < 1e-5 && (b - lon).abs() < 1e-5);
        o.check(close, || format!("position {got:?} want ({lat}, {lon})"));
    }
    let Some(fix) = d["fix_time_utc"].as_str() else {
        return;
    };
    let fix_ms = parse_rfc3339(fix).filter(|t| *t != 0);
    match fix_ms {
        Some(t) if t <= now + 24 * 3600 * 1000 => {
            o.check(p["time"] == rfc3339(t), || {
                format!("time {} want {}", p["time"], rfc3339(t))
            });
            if let Some(fixed) = d["gps_fixed"].as_bool() {
                o.check(p["valid"] == fixed, || {
                    format!("valid {} want {fixed}", p["valid"])
                });
            }
        }
        Some(_) => o.check(p["invalid_reason"] == "time_in_future", || {
            format!("a fix more than a day ahead shown as {p}")
        }),
        None => o.check(p["invalid_reason"] == "no_device_time", || {
            format!("a fix without time shown as {p}")
        }),
    }
}

fn check_attribute(
    v: &Value,
    msg: Option<&Message>,
    positions: &[Value],
    events: &[Value],
    after: &View,
    o: &mut Outcome,
) {
    let c = &v["checks"];
    let name = c["attribute"].as_str().unwrap_or_default();
    let value = &c["value"];
    let status = &after.device["status"];
    let pos = positions.first();
    let Some(msg) = msg else {
        o.failures
            .push(format!("attribute {name}: the frame was not decoded"));
        return;
    };
    let close = |got: &Value, want: &Value, tol: f64| match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) => (g - w).abs() <= tol,
        _ => false,
    };
    match (name, msg) {
        ("alarm", Message::Alarm(a)) => {
            let traccar = value.as_str().unwrap_or_default();
            if a.status.alarm_code == Some(0x0C) && traccar == "tampering" {
                let shown = events
                    .iter()
                    .chain(after.events.iter())
                    .any(|e| e["type"] == "other");
                o.check(shown, || "no `other` event for alarm 0x0C".into());
                if let Some(p) = pos {
                    o.check(p["alarm"] == "other", || {
                        format!("position alarm {} want other", p["alarm"])
                    });
                }
                o.disagree(ALARM_0C);
                return;
            }
            let Some(want) = our_alarm_name(traccar) else {
                o.failures.push(format!("no API name for alarm {traccar}"));
                return;
            };
            let shown = events
                .iter()
                .chain(after.events.iter())
                .any(|e| e["type"] == want);
            o.check(shown, || format!("no `{want}` event for alarm {traccar}"));
            if let Some(p) = pos {
                o.check(p["alarm"] == want, || {
                    format!("position alarm {} want {want}", p["alarm"])
                });
            }
        }
        ("event", Message::Alarm(_)) => {
            o.check(after.events.iter().any(|e| e["type"] == "other"), || {
                format!("no `other` event for event code {value}")
            });
        }
        ("batteryLevel", Message::Alarm(_) | Message::Heartbeat(_)) => {
            o.check(status["battery_percent"] == *value, || {
                format!(
                    "status battery_percent {} want {value}",
                    status["battery_percent"]
                )
            });
        }
        ("power", Message::Heartbeat(_)) if value.is_null() => {
            o.check(status.get("power_v").is_none(), || {
                format!("status power_v {} want none", status["power_v"])
            });
        }
        ("power" | "battery" | "temp1", Message::Heartbeat(_) | Message::Info(_)) => {
            let key = api_key(name);
            o.check(close(&status[key], value, 0.005), || {
                format!("status {key} {} want {value}", status[key])
            });
        }
        ("power" | "battery" | "temp1", Message::Location(_) | Message::Alarm(_)) => {
            let key = api_key(name);
            let got = pos.map(|p| p[key].clone()).unwrap_or_default();
            // The API keeps temperatures in tenths of a degree.
            let tol = if key == "temperature_c" { 0.05 } else { 0.005 };
            o.check(close(&got, value, tol), || {
                format!("position {key} {got} want {value}")
            });
        }
        ("iccid", Message::Info(_)) => {
            o.check(status["iccid"] == *value, || {
                format!("status iccid {} want {value}", status["iccid"])
            });
        }
        ("result" | "serial", Message::Info(_) | Message::CommandReply { .. }) => {
            let kind = match msg {
                Message::CommandReply { .. } => "command_reply",
                _ => "device_text",
            };
            let shown = after
                .events
                .iter()
                .any(|e| e["type"] == kind && e["text"] == *value);
            o.check(shown, || format!("no `{kind}` event with text {value}"));
        }
        ("driverUniqueId", Message::Location(_) | Message::Alarm(_)) => {
            let got = pos.map(|p| p["driver_id"].clone()).unwrap_or_default();
            o.check(got == *value, || {
                format!("position driver_id {got} want {value}")
            });
        }
        ("driverUniqueId", Message::Info(_)) => {
            let shown = after
                .events
                .iter()
                .any(|e| e["type"] == "driver_id" && e["text"] == *value);
            o.check(shown, || format!("no `driver_id` event with text {value}"));
        }
        ("ignition", Message::Location(_)) => {
            let got = pos.map(|p| p["acc"].clone()).unwrap_or_default();
            o.check(got == *value, || format!("position acc {got} want {value}"));
        }
        ("altitude", Message::Location(_) | Message::Alarm(_)) => {
            let got = pos.map(|p| p["altitude_m"].clone()).unwrap_or_default();
            if v["message_type"] == "0x32" && value.as_f64() == Some(-31_703.0) {
                o.check(got == 687, || format!("position altitude_m {got} want 687"));
                o.disagree(SL4X_ALTITUDE);
                return;
            }
            o.check(close(&got, value, 0.0), || {
                format!("position altitude_m {got} want {value}")
            });
        }
        ("drivingTime", Message::Location(_)) => {
            let got = pos.map(|p| p["driving_time_s"].clone()).unwrap_or_default();
            o.check(got == *value, || {
                format!("position driving_time_s {got} want {value}")
            });
        }
        // Traccar's `hours` is milliseconds of engine time.
        ("hours", Message::Location(_)) => {
            let got = pos.map(|p| p["engine_time_s"].clone()).unwrap_or_default();
            let ms = got.as_u64().map(|s| s * 1000);
            o.check(ms.is_some() && ms == value.as_u64(), || {
                format!("position engine_time_s {got} want {value} ms")
            });
        }
        ("steps", Message::Heartbeat(_)) => {
            o.check(status["steps"] == *value, || {
                format!("status steps {} want {value}", status["steps"])
            });
        }
        ("door", Message::Info(_)) => {
            o.check(status["door_open"] == *value, || {
                format!("status door_open {} want {value}", status["door_open"])
            });
        }
        ("networkTechnology", Message::Info(_)) => {
            o.check(status["network"] == *value, || {
                format!("status network {} want {value}", status["network"])
            });
        }
        ("humidity", Message::Info(_)) => {
            o.check(close(&status["humidity_pct"], value, 0.05), || {
                format!(
                    "status humidity_pct {} want {value}",
                    status["humidity_pct"]
                )
            });
        }
        ("tag1Temp", Message::Info(_)) => {
            let got = &status["tag_temperature_c"];
            o.check(close(got, value, 0.05), || {
                format!("status tag_temperature_c {got} want {value}")
            });
        }
        ("eventFiles", Message::Alarm(_)) => {
            let shown = events
                .iter()
                .chain(after.events.iter())
                .any(|e| e["type"] == "media_files" && e["text"] == *value);
            o.check(shown, || {
                format!("no `media_files` event with text {value}")
            });
        }
        _ => o.skip(format!(
            "attribute {name} of a {} message is not part of the API",
            msg.kind()
        )),
    }
}

fn api_key(traccar: &str) -> &'static str {
    match traccar {
        "power" => "power_v",
        "battery" => "battery_v",
        _ => "temperature_c",
    }
}

/// Prints one summary line (and the reasons); returns (passed, failed, skipped).
/// Documented disagreements count apart from all three.
fn summarize(label: &str, results: &[(&str, &Outcome)]) -> (usize, usize, usize) {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut reasons: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut disagreed: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, o) in results {
        match o.verdict() {
            Verdict::Failed => {
                failed += 1;
                eprintln!("FAIL {label} {id}: {}", o.failures.join("; "));
            }
            Verdict::Skipped => {
                skipped += 1;
                let why = o
                    .skips
                    .first()
                    .cloned()
                    .unwrap_or("no check applies".into());
                reasons.entry(why).or_default().push(id);
            }
            Verdict::Disagreement => {
                let why = o.disagreements.first().cloned().unwrap_or_default();
                disagreed.entry(why).or_default().push(id);
            }
            Verdict::Passed => passed += 1,
        }
    }
    let n_disagreed: usize = disagreed.values().map(Vec::len).sum();
    let which: Vec<&str> = disagreed
        .keys()
        .filter_map(|why| why.split(':').next())
        .collect();
    let which = if which.is_empty() {
        String::new()
    } else {
        format!(" ({})", which.join("; "))
    };
    eprintln!(
        "replay{label}: {passed} passed, {failed} failed, {skipped} skipped, \
         {n_disagreed} documented disagreements{which}"
    );
    for (why, ids) in &reasons {
        eprintln!("  skipped ({}): {why}: {}", ids.len(), ids.join(" "));
    }
    for (why, ids) in &disagreed {
        eprintln!("  disagreement ({}): {why}: {}", ids.len(), ids.join(" "));
    }
    (passed, failed, skipped)
}

fn refs(results: &[(String, Outcome)]) -> Vec<(&str, &Outcome)> {
    results.iter().map(|(id, o)| (id.as_str(), o)).collect()
}

#[test]
fn peer_vectors_over_tcp_are_answered_stored_and_shown_as_the_core_decodes_them() {
    let Ok(text) = std::fs::read_to_string(VECTORS) else {
        eprintln!("note: {VECTORS} is missing; the TCP replay of the peer vectors did not run");
        return;
    };
    let vectors: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(is_decoder_vector)
        .collect();
    assert!(
        vectors.len() > 100,
        "only {} decoder vectors",
        vectors.len()
    );

    // Default policy: bad-CRC frames are dropped unanswered (the checks above expect
    // exactly that for them: no reply, nothing stored).
    let g = Gt06::start();
    let mut strict = replay(&g, &vectors, false, None);
    drop(g);

    // The same file against a lenient server: the bad-CRC vectors now decode.
    let dir = TempDir::new("lenient");
    let cfg = dir.0.join("gt06.toml");
    std::fs::write(&cfg, "[protocol]\ncrc = \"lenient\"\n").expect("write config");
    let data = dir.0.join("data");
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let g = Gt06::start_in(&data, &["--config", &cfg_arg]);
    let mut lenient = replay(&g, &vectors, true, None);
    drop(g);

    // Vectors that need a device model: one server per model, whose config gives every
    // IMEI the file logs in with that model; each gets the logins that precede it in
    // the file, then its own vectors. Their results stand in for the skips above.
    let all_imeis: std::collections::BTreeSet<String> =
        vectors.iter().flat_map(login_imeis).collect();
    let mut models: Vec<&str> = vectors
        .iter()
        .filter_map(|v| v["model_override"].as_str())
        .collect();
    models.sort_unstable();
    models.dedup();
    let (mut per_model, mut per_model_lenient) = (Vec::new(), Vec::new());
    for model in &models {
        let first = vectors
            .iter()
            .position(|v| v["model_override"].as_str() == Some(*model))
            .unwrap_or(0);
        let subset: Vec<Value> = vectors
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                v["model_override"].as_str() == Some(*model)
                    || (*i < first && v["model_override"].is_null() && !login_imeis(v).is_empty())
            })
            .map(|(_, v)| v.clone())
            .collect();
        let dir = TempDir::new("model");
        let cfg = dir.0.join("gt06.toml");
        let text: String = all_imeis
            .iter()
            .map(|i| format!("[devices.\"{i}\"]\nmodel = \"{model}\"\n"))
            .collect();
        std::fs::write(&cfg, &text).expect("write config");
        let data = dir.0.join("data");
        let cfg_arg = cfg.to_string_lossy().into_owned();
        let g = Gt06::start_in(&data, &["--config", &cfg_arg]);
        let results = replay(&g, &subset, false, Some(model));
        drop(g);
        for (v, r) in subset.iter().zip(results) {
            if v["model_override"].as_str() == Some(*model) {
                per_model.push(r);
            }
        }
        // Bad-CRC vectors among them: also against a lenient server, as above.
        if subset
            .iter()
            .any(|v| v["model_override"].as_str() == Some(*model) && has_bad_crc(v))
        {
            let dir = TempDir::new("model-lenient");
            let cfg = dir.0.join("gt06.toml");
            std::fs::write(&cfg, format!("[protocol]\ncrc = \"lenient\"\n{text}"))
                .expect("write config");
            let data = dir.0.join("data");
            let cfg_arg = cfg.to_string_lossy().into_owned();
            let g = Gt06::start_in(&data, &["--config", &cfg_arg]);
            let results = replay(&g, &subset, true, Some(model));
            drop(g);
            for (v, r) in subset.iter().zip(results) {
                if v["model_override"].as_str() == Some(*model) && has_bad_crc(v) {
                    per_model_lenient.push(r);
                }
            }
        }
    }
    let (p3, f3, s3) = summarize(
        &format!(" (the {} vectors needing a device model)", per_model.len()),
        &refs(&per_model),
    );
    let (p4, f4, s4) = summarize(
        &format!(
            " (lenient, the {} bad-CRC vectors needing a device model)",
            per_model_lenient.len()
        ),
        &refs(&per_model_lenient),
    );
    for (id, o) in per_model {
        if let Some(slot) = strict.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = o;
        }
    }
    for (id, o) in per_model_lenient {
        if let Some(slot) = lenient.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = o;
        }
    }

    let bad_crc: Vec<bool> = vectors.iter().map(has_bad_crc).collect();
    let n_bad = bad_crc.iter().filter(|b| **b).count();
    let lenient_bad: Vec<(&str, &Outcome)> = lenient
        .iter()
        .zip(&bad_crc)
        .filter(|(_, b)| **b)
        .map(|((id, o), _)| (id.as_str(), o))
        .collect();
    let (p1, f1, s1) = summarize(" (strict, every decoder vector)", &refs(&strict));
    let (p2, f2, s2) = summarize(
        &format!(" (lenient, the {n_bad} bad-CRC vectors)"),
        &lenient_bad,
    );
    // One line in the form CI reads: a bad-CRC vector counts once, as its lenient
    // result, when it also behaved (dropped, unanswered) under strict.
    let mut combined: Vec<(&str, &Outcome)> = Vec::new();
    for ((s, l), bad) in strict.iter().zip(&lenient).zip(&bad_crc) {
        if *bad && s.1.failures.is_empty() {
            combined.push((s.0.as_str(), &l.1));
        } else {
            combined.push((s.0.as_str(), &s.1));
        }
    }
    summarize("", &combined);
    assert_eq!(
        (f1, f2, f3, f4),
        (0, 0, 0, 0),
        "strict {p1}/{f1}/{s1}, lenient {p2}/{f2}/{s2}, models {p3}/{f3}/{s3}, \
         models lenient {p4}/{f4}/{s4}: see FAIL lines above"
    );
    // A vector the committed pass list (shared with the unit replay) names must keep
    // passing here too: a skip is a regression as much as a failure.
    let listed = std::fs::read_to_string(PASSING_LIST).expect("read the pass list");
    let regressed: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("decoder:"))
        .filter(|id| {
            !combined.iter().any(|(i, o)| {
                i == id && matches!(o.verdict(), Verdict::Passed | Verdict::Disagreement)
            })
        })
        .collect();
    assert!(
        regressed.is_empty(),
        "vectors on the pass list that no longer pass over TCP: {regressed:?}"
    );
}
