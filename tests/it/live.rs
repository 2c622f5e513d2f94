//! `GET /api/live`: durable positions and events reach stream clients, and a client that
//! never reads neither slows ingest nor stays connected.

use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Imei, Lbs, Location, Status};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// A raw HTTP client on `/api/live…`, its bytes so far.
struct Stream {
    sock: TcpStream,
    seen: Vec<u8>,
}

impl Stream {
    fn open(addr: SocketAddr, path: &str) -> Stream {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        write!(sock, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut s = Stream {
            sock,
            seen: Vec::new(),
        };
        // The first chunk comes once the stream is subscribed.
        s.read_until("retry: 3000", Duration::from_secs(5));
        let text = s.text();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{text}"
        );
        s
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until the stream holds `needle` (panics after `wait`).
    fn read_until(&mut self, needle: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 8192];
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "stream never showed `{needle}`:\n{}",
                self.text()
            );
            match self.sock.read(&mut b) {
                Ok(0) => panic!("stream closed:\n{}", self.text()),
                Ok(n) => self.seen.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
        }
    }

    /// The JSON of every `event: KIND` so far.
    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let text = self.text();
        let marker = format!("event: {kind}\ndata: ");
        // Only whole events: the last one may still be arriving.
        text.match_indices(&marker)
            .filter_map(|(i, _)| {
                let rest = &text[i + marker.len()..];
                let end = rest.find("\n\n")?;
                Some(serde_json::from_str(&rest[..end]).unwrap())
            })
            .collect()
    }

    /// Reads until the stream holds `n` whole events of `kind` (panics after 5 s).
    fn wait_events(&mut self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.events(kind);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} `{kind}` events:\n{}",
                got.len(),
                self.text()
            );
            self.sock
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut b = [0u8; 8192];
            if let Ok(k) = self.sock.read(&mut b) {
                self.seen.extend_from_slice(&b[..k]);
            }
        }
    }
}

fn fix(second: i64) -> Gps {
    Gps {
        time: Some(DeviceTime::from_unix_ms_utc(
            1_770_800_000_000 + second * 1000,
        )),
        satellites: 9,
        lat_raw: 98_901_624,
        lon_raw: 43_231_720,
        speed_kmh: 40,
        course: 90,
        fixed: true,
        ..Gps::default()
    }
}

const LBS: Lbs = Lbs {
    mcc: 246,
    mnc: 1,
    lac: 110,
    cell: 21_978,
};

#[test]
fn live_stream_carries_each_durable_position_and_alarm_with_its_imei() {
    let g = Gt06::start();
    let mut all = Stream::open(g.http, "/api/live");
    let mut other = Stream::open(g.http, "/api/live?imei=123456789012345");
    let (status, body, _) = g.get("/api/live?imei=12");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(
        d.send_expect(&hex(LOCATION_V144), 10),
        hex("78780512000390 3f0d0a")
    );
    let loc = Location {
        gps: fix(0),
        lbs: Some(LBS),
        ..Location::default()
    };
    let status = Status {
        info: 0x22,
        voltage_level: Some(3),
        gsm_signal: Some(2),
        ..Status::default()
    };
    assert_eq!(
        d.send_expect(&encode::alarm(0x16, &loc, &status, 0x01, 7), 10),
        ack(0x16, 7)
    );
    let positions = all.wait_events("position", 2);
    assert_eq!(positions.len(), 2, "{}", all.text());
    let p = &positions[0];
    assert_eq!(p["imei"], "864717003283581");
    assert_eq!(p["time"], "2015-10-20T14:21:11.000Z");
    assert_eq!(p["lat"], 54.9453467);
    assert_eq!(p["lon"], 24.0176222);
    assert_eq!(p["lbs"]["cell"], 21978);
    assert_eq!(positions[1]["alarm"], "sos");
    let events = all.wait_events("event", 1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["imei"], "864717003283581");
    assert_eq!(events[0]["type"], "sos");

    // The filtered stream sees only its device.
    let mut e = g.logged_in("123456789012345", 1);
    let frame = encode::location_0x12(&fix(60), &LBS, 2);
    assert_eq!(e.send_expect(&frame, 10), ack(0x12, 2));
    other.wait_events("position", 1);
    assert!(
        !other.text().contains("864717003283581"),
        "{}",
        other.text()
    );
    assert_eq!(other.events("position").len(), 1);
}

#[test]
fn a_live_client_that_never_reads_does_not_slow_ingest_and_is_dropped() {
    let g = Gt06::start_config("[http]\nlive_stall_timeout_secs = 1\n");
    let stalled = Stream::open(g.http, "/api/live");
    let stalled_addr = stalled.sock.local_addr().unwrap();
    {
        use std::os::fd::AsRawFd;
        let small: i32 = 4096;
        // SAFETY: setsockopt with an int option on a socket we own.
        unsafe {
            libc::setsockopt(
                stalled.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const i32 as *const libc::c_void,
                4,
            );
        }
    }
    // From here on nobody reads `stalled`.
    let devices: Vec<_> = (0..3u64)
        .map(|i| {
            let imei = Imei::from_u64(860_000_000_000_001 + i).unwrap();
            let mut d = g.logged_in(&imei.to_string(), 1);
            thread::spawn(move || {
                let mut serial = 2u16;
                for burst in 0..30 {
                    let mut bytes = Vec::new();
                    let mut want = Vec::new();
                    for k in 0..50 {
                        bytes.extend(encode::location_0x12(&fix(burst * 50 + k), &LBS, serial));
                        want.extend(ack(0x12, serial));
                        serial += 1;
                    }
                    // Every answer arrives (each read waits at most 5 s).
                    assert_eq!(d.send_expect(&bytes, want.len()), want);
                }
            })
        })
        .collect();
    for t in devices {
        t.join().expect("ingest stalled behind a live client");
    }
    let log = g.wait_log("live_stalled");
    let needle = format!("peer={stalled_addr}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("live_stalled") && l.contains(&needle))
            .count(),
        1,
        "{log}"
    );
    // Its connection is gone: reading drains what the kernel held, then ends.
    let mut sock = stalled.sock;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let r = sock.read_to_end(&mut rest);
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "{r:?}"
    );
    // All 4,500 positions were stored.
    for i in 0..3u64 {
        let (_, v) = g.get_json(&format!(
            "/api/devices/{}/positions",
            860_000_000_000_001 + i
        ));
        assert_eq!(v["positions"].as_array().unwrap().len(), 1500);
    }
}
