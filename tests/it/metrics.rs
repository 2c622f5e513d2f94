//! `GET /metrics`: the frame counters say what became of what trackers sent.

use crate::harness::*;
use gt06::protocol::{encode, Form};

/// The value of the series `name` exactly as written (labels included), if present.
fn series(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn bad_crc_unknown_type_and_location_are_counted_by_result_and_proto() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    let bad_crc = hex(&LOCATION_V144.replace("5f240d0a", "5f250d0a"));
    let unknown = encode::frame(Form::Short, 0xEE, &[1, 2, 3], 0x20);
    let unknown_again = encode::frame(Form::Short, 0xEE, &[4], 0x21);
    d.send(&bad_crc);
    // Unknown types are answered per §9 (short form: the generic ack) and stored nowhere.
    assert_eq!(d.send_expect(&unknown, 10), ack(0xEE, 0x20));
    assert_eq!(d.send_expect(&unknown_again, 10), ack(0xEE, 0x21));
    // Answers go out in order: once the location is acked, everything before it counted.
    assert_eq!(
        d.send_expect(&hex(LOCATION_V144), 10),
        hex("787805120003903f0d0a")
    );

    let (status, body, ctype) = g.get("/metrics");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("# TYPE gt06_frames_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP gt06_positions_stored_total "),
        "{text}"
    );
    let frames = |labels: &str| series(&text, &format!("gt06_frames_total{{{labels}}}"));
    assert_eq!(
        frames(r#"result="bad_crc",proto="0x12""#),
        Some(1),
        "{text}"
    );
    assert_eq!(
        frames(r#"result="unknown_type",proto="0xee""#),
        Some(2),
        "{text}"
    );
    assert_eq!(frames(r#"result="ok",proto="0x12""#), Some(1), "{text}");
    assert_eq!(frames(r#"result="ok",proto="0x01""#), Some(1), "{text}");
    assert_eq!(
        series(&text, "gt06_positions_stored_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(series(&text, "gt06_connections_total"), Some(1), "{text}");
    assert_eq!(series(&text, "gt06_connections_current"), Some(1), "{text}");

    // The unknown type is logged once for the connection, not once per frame.
    let log = g.wait_log("message type not decoded");
    assert_eq!(log.matches("message type not decoded").count(), 1, "{log}");
    // Nothing of the unknown frames was stored as a position.
    let (_, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"].as_array().map(Vec::len), Some(1));

    // A closed connection leaves the gauge.
    drop(d);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body, _) = g.get("/metrics");
        let text = String::from_utf8_lossy(&body).into_owned();
        if series(&text, "gt06_connections_current") == Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
