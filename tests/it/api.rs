//! HTTP as the map and scripts use it: shapes, paging, errors, assets, health.

use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Lbs};

fn fix(minute: u8) -> Gps {
    Gps {
        time: Some(DeviceTime {
            year: 2026,
            month: 2,
            day: 11,
            hour: 8,
            minute,
            second: 0,
        }),
        satellites: 7,
        lat_raw: 93_000_000 + minute as i32 * 100,
        lon_raw: 24_000_000,
        speed_kmh: 30,
        course: 45,
        fixed: true,
        ..Gps::default()
    }
}

#[test]
fn positions_page_with_limit_and_next_oldest_first() {
    let g = Gt06::start();
    let imei = "864717003283581";
    let mut d = g.logged_in(imei, 1);
    let lbs = Lbs {
        mcc: 246,
        mnc: 1,
        lac: 1,
        cell: 1,
    };
    // Sent out of order (a device uploading its buffer late): read back in time order.
    for (i, m) in [3u8, 0, 4, 1, 2].iter().enumerate() {
        let s = 2 + i as u16;
        assert_eq!(
            d.send_expect(&encode::location_0x12(&fix(*m), &lbs, s), 10),
            ack(0x12, s)
        );
    }
    let base = format!("/api/devices/{imei}/positions");
    let (_, p1) = g.get_json(&format!("{base}?limit=2"));
    let times = |v: &serde_json::Value| {
        v["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["time"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        times(&p1),
        ["2026-02-11T08:00:00.000Z", "2026-02-11T08:01:00.000Z"]
    );
    assert_eq!(p1["next"], "2026-02-11T08:02:00.000Z");
    let (_, p2) = g.get_json(&format!("{base}?limit=2&from=2026-02-11T08%3A02%3A00.000Z"));
    assert_eq!(
        times(&p2),
        ["2026-02-11T08:02:00.000Z", "2026-02-11T08:03:00.000Z"]
    );
    let (_, p3) = g.get_json(&format!(
        "{base}?limit=2&from={}",
        p2["next"].as_str().unwrap()
    ));
    assert_eq!(times(&p3), ["2026-02-11T08:04:00.000Z"]);
    assert_eq!(p3["next"], serde_json::Value::Null);
    // `to` is exclusive, `from` inclusive.
    let (_, r) = g.get_json(&format!(
        "{base}?from=2026-02-11T08:01:00Z&to=2026-02-11T08:03:00Z"
    ));
    assert_eq!(
        times(&r),
        ["2026-02-11T08:01:00.000Z", "2026-02-11T08:02:00.000Z"]
    );

    let (status, list) = g.get_json("/api/devices");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["imei"], imei);
    // The latest position is the newest fix, not the last one received.
    assert_eq!(list[0]["position"]["time"], "2026-02-11T08:04:00.000Z");
}

#[test]
fn errors_are_json_with_a_code_and_name_the_parameter() {
    let g = Gt06::start();
    let (s, v) = g.get_json("/api/devices/864717003283581");
    assert_eq!((s, v["code"].as_str()), (404, Some("unknown_device")));
    let (s, v) = g.get_json("/api/devices/8647170032835/positions");
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_parameter")));
    assert!(v["error"].as_str().unwrap().contains("imei"), "{v}");
    g.logged_in("864717003283581", 1);
    let (s, v) = g.get_json("/api/devices/864717003283581/positions?from=yesterday");
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("`from`"), "{v}");
    let (s, v) = g.get_json("/api/devices/864717003283581/positions?limit=0");
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("`limit`"), "{v}");
    let (s, v) = g.get_json("/api/nothing-here");
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn health_endpoints_answer() {
    let g = Gt06::start();
    let (s, v) = g.get_json("/health/live");
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v) = g.get_json("/health/ready");
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
}

#[test]
fn every_embedded_asset_is_served_with_its_type() {
    let g = Gt06::start();
    let paths = gt06::http::asset_paths();
    assert!(paths.iter().any(|p| p == "index.html"));
    assert!(paths.iter().any(|p| p == "vendor/leaflet/leaflet.js"));
    assert!(paths
        .iter()
        .any(|p| p.starts_with("vendor/leaflet/LICENSE")));
    for p in &paths {
        let (s, body, _) = g.get(&format!("/{p}"));
        assert_eq!(s, 200, "/{p}");
        assert!(!body.is_empty(), "/{p}");
    }
    let (s, body, ctype) = g.get("/");
    assert_eq!(s, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(String::from_utf8_lossy(&body).contains("leaflet"));
    let (_, _, ctype) = g.get("/vendor/leaflet/leaflet.js");
    assert!(ctype.starts_with("text/javascript"), "{ctype}");
}

#[test]
fn track_exports_carry_the_same_range_as_files() {
    let g = Gt06::start();
    let imei = "864717003283581";
    let mut d = g.logged_in(imei, 1);
    let lbs = Lbs {
        mcc: 246,
        mnc: 1,
        lac: 1,
        cell: 1,
    };
    for m in 0..3u8 {
        let s = 2 + m as u16;
        assert_eq!(
            d.send_expect(&encode::location_0x12(&fix(m), &lbs, s), 10),
            ack(0x12, s)
        );
    }
    let range = "from=2026-02-11T08:01:00Z&to=2026-02-11T09:00:00Z";
    let (s, body, ctype) = g.get(&format!("/api/devices/{imei}/track.csv?{range}"));
    assert_eq!((s, ctype.as_str()), (200, "text/csv; charset=utf-8"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "imei,time,lat,lon,speed_kmh,course,satellites,valid\n\
         864717003283581,2026-02-11T08:01:00.000Z,51.6667222,13.3333333,30,45,7,true\n\
         864717003283581,2026-02-11T08:02:00.000Z,51.6667778,13.3333333,30,45,7,true\n"
    );
    let (s, body, ctype) = g.get(&format!("/api/devices/{imei}/track.gpx?{range}"));
    assert_eq!((s, ctype.as_str()), (200, "application/gpx+xml"));
    assert_eq!(
        String::from_utf8(body).unwrap().matches("<trkpt ").count(),
        2
    );
    let (s, v) = g.get_json(&format!("/api/devices/{imei}/track.geojson?{range}"));
    assert_eq!(s, 200);
    assert_eq!(
        v["features"][0]["geometry"]["coordinates"][0],
        serde_json::json!([13.3333333, 51.6667222])
    );
    let (s, _) = g.get_json("/api/devices/123456789012345/track.csv");
    assert_eq!(s, 404);
}
