//! Crashes and copies: what was answered survives, exactly once.

use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Imei, Lbs, Location, Status};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Seals every 1000 positions or every second, so kills often land during sealing.
const BUSY_CONFIG: &str = "[store]\ncheckpoint_positions = 1000\ncheckpoint_interval_secs = 1\n";
const DEVICES: u64 = 4;
pub(crate) const START_S: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// The serving cell every test tracker reports.
pub(crate) const LBS: Lbs = Lbs {
    mcc: 1,
    mnc: 1,
    lac: 1,
    cell: 1,
};

/// A healthy tracker's heartbeat status (ACC on, good battery and signal).
pub(crate) fn heartbeat_status() -> Status {
    Status {
        info: 0x06,
        voltage_level: Some(5),
        gsm_signal: Some(4),
        alarm_code: Some(0),
        language: Some(2),
        ..Status::default()
    }
}

pub(crate) fn fix(t_s: i64, k: u64) -> Gps {
    Gps {
        time: Some(DeviceTime::from_unix_ms_utc(t_s * 1000)),
        satellites: 9,
        lat_raw: 90_000_000 + k as i32 * 37,
        lon_raw: 24_000_000 - k as i32 * 11,
        speed_kmh: (k % 100) as u16,
        course: (k % 360) as u16,
        fixed: true,
        ..Gps::default()
    }
}

/// One tracker writing until its connection breaks: batches of locations with one SOS
/// alarm in the middle, each batch closed by a heartbeat; a batch (and its alarm) counts
/// as ACKed once the heartbeat's answer arrives.
fn run_device(
    addr: SocketAddr,
    imei: Imei,
    next_k: &mut u64,
    acked: &mut Vec<i64>,
    acked_alarms: &mut Vec<i64>,
    stop: &AtomicBool,
) {
    let Ok(mut sock) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(3)));
    let mut serial = 1u16;
    let login = encode::login(imei, serial);
    if std::io::Write::write_all(&mut sock, &login).is_err() {
        return;
    }
    let mut buf = [0u8; 10];
    if sock.read_exact(&mut buf).is_err() {
        return;
    }
    let hb = heartbeat_status();
    let sos = Status {
        info: 0x22,
        voltage_level: Some(5),
        gsm_signal: Some(4),
        ..Status::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut alarm_t = 0;
        for i in 0..20 {
            let t = START_S + *next_k as i64;
            serial = serial.wrapping_add(1);
            if i == 10 {
                let loc = Location {
                    gps: fix(t, *next_k),
                    lbs: Some(LBS),
                    ..Location::default()
                };
                out.extend(encode::alarm(0x16, &loc, &sos, 0x01, serial));
                alarm_t = t * 1000;
            } else {
                out.extend(encode::location_0x12(&fix(t, *next_k), &LBS, serial));
            }
            batch.push(t * 1000);
            *next_k += 1;
        }
        serial = serial.wrapping_add(1);
        out.extend(encode::heartbeat(&hb, serial));
        if std::io::Write::write_all(&mut sock, &out).is_err() {
            return;
        }
        // 19 location acks and the alarm's (the 11th), then the heartbeat's.
        let mut answers = [0u8; 210];
        if sock.read_exact(&mut answers).is_err() {
            return;
        }
        assert_eq!(
            answers[200..],
            ack(0x13, serial)[..],
            "heartbeat answer out of order"
        );
        assert_eq!(
            answers[100..104],
            [0x78, 0x78, 0x05, 0x16],
            "alarm answer out of order"
        );
        acked.extend(batch);
        acked_alarms.push(alarm_t);
    }
}

pub(crate) fn stored_times(g: &Gt06, imei: Imei) -> Vec<i64> {
    let mut out = Vec::new();
    let mut from = String::from("1970-01-01T00:00:00Z");
    for _ in 0..100 {
        let (s, v) = g.get_json(&format!(
            "/api/devices/{imei}/positions?limit=100000&from={from}"
        ));
        if s == 404 {
            return out;
        }
        for p in v["positions"].as_array().unwrap() {
            let t = p["time"].as_str().unwrap();
            out.push(gt06::http::json::parse_rfc3339(t).unwrap());
        }
        match v["next"].as_str() {
            Some(n) => from = n.to_string(),
            None => return out,
        }
    }
    panic!("too many pages");
}

#[test]
fn kill_9_in_a_loop_loses_and_duplicates_nothing_that_was_answered() {
    let cycles: usize = if std::env::var_os("GT06_SLOW_TESTS").is_some() {
        100
    } else {
        20
    };
    let dir = TempDir::new("kill9loop");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.0.join("gt06.toml");
    std::fs::write(&cfg, BUSY_CONFIG).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let mut seed = (std::process::id() as u64) << 20 | 0x9e37;
    eprintln!("kill-9 loop: {cycles} cycles, seed {seed:#x}");
    let imeis: Vec<Imei> = (0..DEVICES)
        .map(|i| Imei::from_u64(861_000_000_000_000 + i).unwrap())
        .collect();
    let mut next_k: HashMap<u64, u64> = imeis.iter().map(|i| (i.as_u64(), 0)).collect();
    let mut acked: HashMap<u64, BTreeSet<i64>> = HashMap::new();
    let mut acked_alarms: HashMap<u64, BTreeSet<i64>> = HashMap::new();
    for cycle in 0..cycles {
        let mut g = Gt06::start_in(&data, &["--config", &cfg_arg]);
        // Everything answered before the last kill is here, exactly once, in order.
        for imei in &imeis {
            let times = stored_times(&g, *imei);
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "cycle {cycle}: {imei} has duplicates or disorder"
            );
            let have: BTreeSet<i64> = times.into_iter().collect();
            let want = acked.get(&imei.as_u64()).cloned().unwrap_or_default();
            let missing: Vec<_> = want.difference(&have).take(5).collect();
            assert!(
                missing.is_empty(),
                "cycle {cycle}: {imei} lost answered positions {missing:?}"
            );
            // Positions sent but unanswered may or may not be there; carry on after them.
            let resume = have
                .iter()
                .next_back()
                .map_or(0, |t| (t / 1000 - START_S + 1) as u64);
            let k = next_k.get_mut(&imei.as_u64()).unwrap();
            *k = (*k).max(resume);
            // Every answered alarm is an event, exactly once.
            let (_, events) = g.get_json(&format!("/api/events?imei={imei}&type=sos&limit=100000"));
            let times: Vec<i64> = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| gt06::http::json::parse_rfc3339(e["time"].as_str().unwrap()).unwrap())
                .collect();
            let have: BTreeSet<i64> = times.iter().copied().collect();
            assert_eq!(
                have.len(),
                times.len(),
                "cycle {cycle}: {imei} has a duplicated alarm"
            );
            let want = acked_alarms
                .get(&imei.as_u64())
                .cloned()
                .unwrap_or_default();
            assert!(
                want.is_subset(&have),
                "cycle {cycle}: {imei} lost an answered alarm"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for imei in &imeis {
            let (addr, imei, stop) = (g.tcp, *imei, stop.clone());
            let mut k = next_k[&imei.as_u64()];
            threads.push(std::thread::spawn(move || {
                let (mut got, mut alarms) = (Vec::new(), Vec::new());
                run_device(addr, imei, &mut k, &mut got, &mut alarms, &stop);
                (imei, k, got, alarms)
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 500));
        g.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let (imei, k, got, alarms) = t.join().unwrap();
            next_k.insert(imei.as_u64(), k);
            acked.entry(imei.as_u64()).or_default().extend(got);
            acked_alarms
                .entry(imei.as_u64())
                .or_default()
                .extend(alarms);
        }
    }
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(
        total > 1000,
        "the fleet hardly wrote ({total} answered positions)"
    );
    let alarms: usize = acked_alarms.values().map(BTreeSet::len).sum();
    assert!(alarms > 40, "the fleet hardly raised alarms ({alarms})");
    // A clean stop, then the offline checker agrees.
    let mut g = Gt06::start_in(&data, &["--config", &cfg_arg]);
    assert!(g.terminate().success());
    let text = verify_ok(&data);
    eprintln!(
        "kill-9 loop: {total} answered positions and {alarms} alarms checked; {}",
        text.lines().next().unwrap_or("")
    );
}

#[test]
fn a_copy_of_the_data_dir_taken_after_a_clean_stop_is_a_complete_backup() {
    let dir = TempDir::new("backup");
    let data = dir.0.join("data");
    let copy = dir.0.join("copy");
    let mut g = Gt06::start_in(&data, &[]);
    let imei = Imei::parse("864717003283581").unwrap();
    let mut d = g.logged_in(&imei.to_string(), 1);
    for k in 0..30u64 {
        let s = 2 + k as u16;
        assert_eq!(
            d.send_expect(
                &encode::location_0x12(&fix(START_S + k as i64, k), &LBS, s),
                10
            ),
            ack(0x12, s)
        );
    }
    drop(d);
    assert!(g.terminate().success());
    copy_dir(&data, &copy);
    // The copy opens on its own and holds everything; so does the original.
    let g2 = Gt06::start_in(&copy, &[]);
    assert_eq!(stored_times(&g2, imei).len(), 30);
    let (_, dev) = g2.get_json(&format!("/api/devices/{imei}"));
    assert_eq!(dev["position"]["time"], "2026-01-01T00:00:29.000Z");
    drop(g2);
    verify_ok(&copy);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn a_damaged_store_is_refused_by_serve_and_verify_not_overwritten() {
    let dir = TempDir::new("damaged");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(d.send_expect(&hex(LOCATION_V144), 10), ack(0x12, 3));
    drop(d);
    assert!(g.terminate().success());
    // Garbage over the whole log file, same length.
    let log = data.join("db").join("db");
    let len = std::fs::metadata(&log).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&log, &garbage).unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        garbage,
        "serve wrote over a damaged store"
    );
    let out = std::process::Command::new(bin())
        .args(["verify", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read(&log).unwrap(),
        garbage,
        "verify wrote over a damaged store"
    );
}
