//! Trackers over TCP: answers byte for byte, what is stored, what is refused.

use crate::durability::LBS;
use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Imei, Lbs, Location, Status};
use std::time::Duration;

#[test]
fn login_location_heartbeat_are_answered_byte_for_byte_and_stored_exactly() {
    let g = Gt06::start();
    let mut d = g.device();
    assert_eq!(
        d.send_expect(&hex(LOGIN_V2), 10),
        hex("78780501000955940d0a")
    );
    assert_eq!(
        d.send_expect(&hex(LOCATION_V144), 10),
        hex("78780512000390 3f0d0a")
    );
    let heartbeat_sent_ms = now_ms();
    assert_eq!(
        d.send_expect(&hex(HEARTBEAT_84), 10),
        hex("78780513 01295d630d0a")
    );

    // The location's answer came after it was durable: it is readable now.
    let (status, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(status, 200);
    let p = &v["positions"][0];
    assert_eq!(v["positions"].as_array().unwrap().len(), 1);
    assert_eq!(p["time"], "2015-10-20T14:21:11.000Z");
    assert_eq!(p["lat"], 54.9453467);
    assert_eq!(p["lon"], 24.0176222);
    assert_eq!(p["speed_kmh"], 0);
    assert_eq!(p["course"], 0);
    assert_eq!(p["satellites"], 5);
    assert_eq!(p["valid"], true);
    assert_eq!(
        p["lbs"],
        serde_json::json!({"mcc": 246, "mnc": 1, "lac": 110, "cell": 21978})
    );
    assert_eq!(v["next"], serde_json::Value::Null);

    // The heartbeat's status is answered before its commit: shown a moment later.
    let dev = g
        .device_seen_since("864717003283581", heartbeat_sent_ms)
        .expect("the heartbeat's status is shown");
    assert_eq!(dev["online"], true);
    assert_eq!(dev["position"]["time"], "2015-10-20T14:21:11.000Z");
    assert_eq!(dev["status"]["voltage_level"], 6);
    assert_eq!(dev["status"]["gsm_signal"], 4);
    assert_eq!(dev["status"]["charging"], true);
    assert_eq!(dev["status"]["relay_cut"], true);
}

fn gps(t: (u8, u8, u8), lat_raw: i32, lon_raw: i32, speed: u16, course: u16) -> Gps {
    Gps {
        time: Some(DeviceTime {
            year: 2026,
            month: 2,
            day: 11,
            hour: t.0,
            minute: t.1,
            second: t.2,
        }),
        satellites: 11,
        lat_raw,
        lon_raw,
        speed_kmh: speed,
        course,
        fixed: true,
        ..Gps::default()
    }
}

#[test]
fn hemispheres_speed_and_course_survive_the_round_trip() {
    let g = Gt06::start();
    let imei = "123456789012345";
    let mut d = g.logged_in(imei, 1);
    let lbs = Lbs {
        mcc: 724,
        mnc: 5,
        lac: 4321,
        cell: 0xABCDE,
    };
    // São Paulo (S, W), Sydney (S, E), New York (N, W).
    let fixes = [
        gps((8, 30, 0), -42_390_900, -83_940_000, 57, 359),
        gps((8, 30, 1), -60_963_840, 272_176_740, 120, 1),
        gps((8, 30, 2), 73_283_040, -133_210_800, 255, 180),
    ];
    for (i, f) in fixes.iter().enumerate() {
        let serial = 2 + i as u16;
        assert_eq!(
            d.send_expect(&encode::location_0x12(f, &lbs, serial), 10),
            ack(0x12, serial)
        );
    }
    let (_, v) = g.get_json(&format!("/api/devices/{imei}/positions"));
    let got: Vec<(String, f64, f64, u64, u64)> = v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["time"].as_str().unwrap().to_string(),
                p["lat"].as_f64().unwrap(),
                p["lon"].as_f64().unwrap(),
                p["speed_kmh"].as_u64().unwrap(),
                p["course"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "2026-02-11T08:30:00.000Z".into(),
                -23.5505,
                -46.6333333,
                57,
                359
            ),
            (
                "2026-02-11T08:30:01.000Z".into(),
                -33.8688,
                151.2093,
                120,
                1
            ),
            (
                "2026-02-11T08:30:02.000Z".into(),
                40.7128,
                -74.006,
                255,
                180
            ),
        ]
    );
}

#[test]
fn frames_before_login_are_neither_answered_nor_stored() {
    let g = Gt06::start();
    let mut d = g.device();
    d.send(&hex(LOCATION_V144));
    d.send(&hex(HEARTBEAT_84));
    assert!(
        d.silent_for(Duration::from_millis(300)),
        "pre-login frames were answered"
    );
    // The login is the first thing answered.
    let login_sent_ms = now_ms();
    assert_eq!(
        d.send_expect(&hex(LOGIN_V2), 10),
        hex("78780501000955940d0a")
    );
    // Once the login is shown, so would be anything stored before it.
    g.device_seen_since("864717003283581", login_sent_ms)
        .expect("the login is shown");
    let (_, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"].as_array().unwrap().len(), 0);
    g.wait_log("frame before login dropped");
}

#[test]
fn frames_glued_in_one_write_or_cut_across_writes_are_all_answered() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    let hb = |s| {
        encode::heartbeat(
            &Status {
                info: 0x06,
                voltage_level: Some(4),
                gsm_signal: Some(3),
                alarm_code: Some(0),
                language: Some(2),
                ..Status::default()
            },
            s,
        )
    };
    let mut glued = hb(2);
    glued.extend(hb(3));
    glued.extend(b"\x00junk\xff");
    glued.extend(hb(4));
    let mut want = ack(0x13, 2);
    want.extend(ack(0x13, 3));
    want.extend(ack(0x13, 4));
    assert_eq!(d.send_expect(&glued, 30), want);

    let frame = hb(5);
    for chunk in frame.chunks(3) {
        d.send(chunk);
        std::thread::sleep(Duration::from_millis(15));
    }
    assert_eq!(d.read_exact(10), ack(0x13, 5));
}

#[test]
fn a_backlog_in_one_write_is_stored_whole_before_its_answers() {
    // 1,000 positions and a heartbeat in one write: the session reads them in a few
    // reads of many frames, sends each read to the store as one request (more than one
    // when a read holds more than a request may carry), and every answer waits for
    // what came before it.
    let g = Gt06::start();
    let imei = "358899051234567";
    let mut d = g.logged_in(imei, 1);
    let lbs = Lbs::default();
    let mut backlog = Vec::new();
    let mut want = Vec::new();
    for i in 0..1000u16 {
        let t = (9, (i / 60) as u8, (i % 60) as u8);
        let serial = 2 + i;
        backlog.extend(encode::location_0x12(
            &gps(t, 1_000_000 + i32::from(i), 2_000_000, 40, 90),
            &lbs,
            serial,
        ));
        want.extend(ack(0x12, serial));
    }
    backlog.extend(encode::heartbeat(&Status::default(), 1002));
    want.extend(ack(0x13, 1002));
    d.send(&backlog);
    assert_eq!(d.read_exact(want.len()), want);
    // The last answer went out after everything before it was durable: all readable now.
    let (_, v) = g.get_json(&format!("/api/devices/{imei}/positions?limit=2000"));
    let got = v["positions"].as_array().unwrap();
    assert_eq!(got.len(), 1000, "{}", v["next"]);
    assert_eq!(got[0]["time"], "2026-02-11T09:00:00.000Z");
    assert_eq!(got[999]["time"], "2026-02-11T09:16:39.000Z");
}

#[test]
fn bad_crc_frame_is_dropped_unanswered_and_the_connection_stays() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    let mut bad = hex(HEARTBEAT_84);
    let n = bad.len();
    bad[n - 3] ^= 0xFF; // CRC low byte
    d.send(&bad);
    assert!(d.silent_for(Duration::from_millis(300)));
    assert_eq!(
        d.send_expect(&hex(HEARTBEAT_84), 10),
        hex("7878051301295d630d0a")
    );
    g.wait_log("bad_crc");
}

#[test]
fn malformed_frame_closes_only_its_own_connection_with_one_log_line() {
    let g = Gt06::start();
    let mut good = g.logged_in("864717003283581", 1);
    let mut bad = g.logged_in("123456789012345", 1);
    // A long frame declaring 60,000 bytes: far over the frame cap.
    bad.send(&hex("7979ea6012000000000000000000"));
    assert!(
        bad.closed_by_server(),
        "oversized frame did not close its connection"
    );
    assert_eq!(
        good.send_expect(&hex(HEARTBEAT_84), 10),
        hex("7878051301295d630d0a")
    );
    let log = g.wait_log("too_long");
    assert_eq!(log.matches("too_long").count(), 1, "{log}");
}

#[test]
fn endless_junk_closes_the_connection() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    d.send(&vec![0x55u8; 6000]);
    assert!(d.closed_by_server());
    g.wait_log("junk");
}

#[test]
fn sos_alarm_is_acked_and_becomes_an_event_and_a_position() {
    let g = Gt06::start();
    let mut d = g.logged_in("864717003283581", 1);
    let loc = Location {
        gps: gps((9, 0, 0), 98_901_624, 43_231_720, 12, 90),
        lbs: Some(Lbs {
            mcc: 246,
            mnc: 1,
            lac: 110,
            cell: 21_978,
        }),
        ..Location::default()
    };
    let status = Status {
        info: 0x22,
        voltage_level: Some(3),
        gsm_signal: Some(2),
        ..Status::default()
    };
    let frame = encode::alarm(0x16, &loc, &status, 0x01, 7);
    assert_eq!(d.send_expect(&frame, 10), ack(0x16, 7));
    let (_, events) = g.get_json("/api/events?imei=864717003283581");
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["type"], "sos");
    assert_eq!(events[0]["time"], "2026-02-11T09:00:00.000Z");
    assert_eq!(events[0]["lat"], 54.9453467);
    let (_, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"][0]["alarm"], "sos");
    // Sending the same alarm again (an unacknowledged device retries) stores it once.
    assert_eq!(d.send_expect(&frame, 10), ack(0x16, 7));
    let (_, events) = g.get_json("/api/events?imei=864717003283581&type=sos");
    assert_eq!(events.as_array().unwrap().len(), 1);
}

#[test]
fn positions_beyond_what_a_device_keeps_in_memory_are_read_back_and_survive_kill_9() {
    let dir = TempDir::new("spill");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let imei = Imei::parse("864717003283581").unwrap();
    let mut d = g.logged_in(&imei.to_string(), 1);
    let at = |s: u16| {
        gps(
            (10, (s / 60) as u8, (s % 60) as u8),
            1_000 + s as i32,
            2_000,
            40,
            10,
        )
    };
    // Live fixes on even seconds (far more than a device keeps in memory), then history
    // on odd seconds inside what was written out, then re-sends of both kinds.
    let mut seconds: Vec<u16> = (0..400).map(|i| i * 2).collect();
    seconds.extend((0..60).map(|i| 101 + i * 4));
    seconds.extend([0, 2, 200, 101, 105, 798]);
    for (i, s) in seconds.iter().enumerate() {
        let serial = 2 + i as u16;
        assert_eq!(
            d.send_expect(&encode::location_0x12(&at(*s), &LBS, serial), 10),
            ack(0x12, serial),
            "fix at second {s}"
        );
    }
    assert!(
        metric(&g, "gt06_store_scratch_bytes") > 0.0,
        "older positions went to the scratch file"
    );
    let mut want: Vec<u16> = seconds.clone();
    want.sort_unstable();
    want.dedup();
    assert_eq!(want.len(), 460);
    let want: Vec<String> = want
        .iter()
        .map(|s| format!("2026-02-11T10:{:02}:{:02}.000Z", s / 60, s % 60))
        .collect();
    let times = |g: &Gt06, query: &str| -> Vec<String> {
        let (_, v) = g.get_json(&format!(
            "/api/devices/{imei}/positions?limit=100000{query}"
        ));
        v["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["time"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(times(&g, ""), want);
    // A range inside the written-out part, from and to on odd and even seconds.
    let part = times(&g, "&from=2026-02-11T10:01:41Z&to=2026-02-11T10:02:10Z");
    assert_eq!(
        part,
        want[want.iter().position(|t| t.contains("10:01:41")).unwrap()..][..part.len()]
    );
    assert_eq!(part.len(), 22, "{part:?}");
    g.kill9();
    drop(d);
    let mut g2 = Gt06::start_in(&data, &[]);
    assert_eq!(times(&g2, ""), want, "after kill -9");
    assert!(g2.terminate().success());
    verify_ok(&data);
    let g3 = Gt06::start_in(&data, &[]);
    assert_eq!(times(&g3, ""), want, "sealed at the clean stop");
}

#[test]
fn answered_positions_survive_kill_9() {
    let dir = TempDir::new("kill9");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let imei = Imei::parse("864717003283581").unwrap();
    let mut d = g.logged_in(&imei.to_string(), 1);
    let lbs = Lbs {
        mcc: 1,
        mnc: 1,
        lac: 1,
        cell: 1,
    };
    for i in 0..50u16 {
        let f = gps(
            (10, (i / 60) as u8, (i % 60) as u8),
            90_000_000 + i as i32,
            20_000_000,
            40,
            10,
        );
        assert_eq!(
            d.send_expect(&encode::location_0x12(&f, &lbs, i + 2), 10),
            ack(0x12, i + 2)
        );
    }
    g.kill9();
    drop(d);
    let g2 = Gt06::start_in(&data, &[]);
    let (_, v) = g2.get_json(&format!("/api/devices/{imei}/positions"));
    assert_eq!(v["positions"].as_array().unwrap().len(), 50);
    assert_eq!(v["positions"][49]["time"], "2026-02-11T10:00:49.000Z");
}
