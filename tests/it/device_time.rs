//! Device time settings: a fixed offset is taken off, `auto` notices a device on local
//! time and corrects it, other settings only report it.

use crate::harness::*;
use gt06::http::json::{parse_rfc3339, rfc3339};
use gt06::protocol::{encode, DeviceTime, Gps, Lbs};
use std::time::{SystemTime, UNIX_EPOCH};

const LISTED: &str = "864717003283581";
const OTHER: &str = "123456789012345";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fixed 0x12 location whose date fields are the UTC calendar of `fields_ms`.
fn fix_at(fields_ms: i64, serial: u16) -> Vec<u8> {
    let gps = Gps {
        time: Some(DeviceTime::from_unix_ms_utc(fields_ms)),
        satellites: 9,
        lat_raw: 98_901_624,
        lon_raw: 43_231_720,
        speed_kmh: 30,
        course: 90,
        fixed: true,
        ..Gps::default()
    };
    let lbs = Lbs {
        mcc: 246,
        mnc: 1,
        lac: 110,
        cell: 21978,
    };
    encode::location_0x12(&gps, &lbs, serial)
}

fn start_with(config: &str) -> (TempDir, Gt06) {
    let dir = TempDir::new("devtime");
    let cfg = dir.0.join("gt06.toml");
    std::fs::write(&cfg, config).expect("write config");
    let cfg = cfg.to_string_lossy().into_owned();
    let g = Gt06::start_in(&dir.0.join("data"), &["--config", &cfg]);
    (dir, g)
}

fn position_times(g: &Gt06, imei: &str) -> Vec<String> {
    let (status, v) = g.get_json(&format!("/api/devices/{imei}/positions"));
    assert_eq!(status, 200, "{v}");
    v["positions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["time"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fixed_offset_is_taken_off_only_for_the_device_it_is_set_for() {
    let (_dir, g) = start_with(&format!("[devices.\"{LISTED}\"]\ntime = \"+05:30\"\n"));
    let utc_ms = now_s() * 1000;
    let local_ms = utc_ms + 330 * 60_000;

    let mut d = g.logged_in(LISTED, 1);
    assert_eq!(d.send_expect(&fix_at(local_ms, 2), 10), ack(0x12, 2));
    assert_eq!(position_times(&g, LISTED), [rfc3339(utc_ms)]);

    // An unlisted device keeps the default, UTC: the same fields mean another instant.
    let mut o = g.logged_in(OTHER, 1);
    assert_eq!(o.send_expect(&fix_at(local_ms, 2), 10), ack(0x12, 2));
    assert_eq!(position_times(&g, OTHER), [rfc3339(local_ms)]);

    // Read with its setting, the listed device is in time: nothing to report.
    let (_, dev) = g.get_json(&format!("/api/devices/{LISTED}"));
    assert!(
        dev["status"].get("time_offset_suspect_min").is_none(),
        "{dev}"
    );
}

#[test]
fn auto_notices_a_device_on_local_time_and_corrects_it_while_utc_only_reports() {
    let (_dir, g) = start_with(&format!(
        "[protocol]\ndevice_time = \"auto\"\n[devices.\"{OTHER}\"]\ntime = \"utc\"\n"
    ));
    let mut auto = g.logged_in(LISTED, 1);
    let mut utc = g.logged_in(OTHER, 1);
    // Four live fixes from clocks 8 h ahead (a device on China time).
    for i in 0..4u16 {
        let local_ms = now_s() * 1000 + 480 * 60_000 + i64::from(i) * 1000;
        assert_eq!(
            auto.send_expect(&fix_at(local_ms, 10 + i), 10),
            ack(0x12, 10 + i)
        );
        assert_eq!(
            utc.send_expect(&fix_at(local_ms, 10 + i), 10),
            ack(0x12, 10 + i)
        );
    }
    for imei in [LISTED, OTHER] {
        let (_, dev) = g.get_json(&format!("/api/devices/{imei}"));
        assert_eq!(
            dev["status"]["time_offset_suspect_min"], 480,
            "{imei}: {dev}"
        );
    }

    let now_ms = now_s() * 1000;
    let near_now = |t: &str| parse_rfc3339(t).is_some_and(|t| (t - now_ms).abs() < 5 * 60_000);
    // Under auto, fixes from the third on (when three agreed) are stored at UTC.
    let auto_times = position_times(&g, LISTED);
    assert_eq!(auto_times.len(), 4, "{auto_times:?}");
    assert!(
        auto_times.iter().filter(|t| near_now(t)).count() == 2,
        "{auto_times:?}"
    );
    // Under utc, nothing is shifted: all four stay 8 h ahead.
    let utc_times = position_times(&g, OTHER);
    assert_eq!(utc_times.len(), 4, "{utc_times:?}");
    assert!(!utc_times.iter().any(|t| near_now(t)), "{utc_times:?}");

    // One warn line per connection, not one per fix.
    let log = g.wait_log("quarter-hours away");
    assert_eq!(log.matches("quarter-hours away").count(), 2, "{log}");
}
