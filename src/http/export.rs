//! Track files: GPX 1.1, GeoJSON and CSV renderings of a device's positions.
//!
//! Pure functions from records to bytes; the handler chooses the range and the headers.

use super::json::{degrees, rfc3339};
use crate::store::PositionRecord;
use std::fmt::Write;

/// GPX 1.1: one track, one segment, a point per position with its altitude (when the
/// device sent one), time and satellites.
pub fn gpx(imei: &str, positions: &[PositionRecord]) -> String {
    let mut out = String::with_capacity(128 + positions.len() * 120);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<gpx version=\"1.1\" creator=\"gt06\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n",
    );
    let _ = writeln!(out, "<trk><name>{imei}</name><trkseg>");
    for p in positions {
        let _ = write!(
            out,
            "<trkpt lat=\"{}\" lon=\"{}\">",
            degrees(p.lat_raw),
            degrees(p.lon_raw)
        );
        // GPX orders a point's children: elevation comes before time.
        if let Some(alt) = p.altitude_m {
            let _ = write!(out, "<ele>{alt}</ele>");
        }
        let _ = writeln!(
            out,
            "<time>{}</time><sat>{}</sat></trkpt>",
            rfc3339(p.time_ms),
            p.satellites
        );
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    out
}

/// GeoJSON: a LineString of the track (`[lon, lat]`, RFC 7946 order) with the times, speeds
/// and courses as arrays parallel to the coordinates.
pub fn geojson(imei: &str, positions: &[PositionRecord]) -> serde_json::Value {
    let coords: Vec<[f64; 2]> = positions
        .iter()
        .map(|p| [degrees(p.lon_raw), degrees(p.lat_raw)])
        .collect();
    let times: Vec<String> = positions.iter().map(|p| rfc3339(p.time_ms)).collect();
    let speeds: Vec<u16> = positions.iter().map(|p| p.speed_kmh).collect();
    let courses: Vec<u16> = positions.iter().map(|p| p.course).collect();
    serde_json::json!({
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {"imei": imei, "coordTimes": times, "speed_kmh": speeds, "course": courses}
        }]
    })
}

/// CSV with a header row; one line per position.
pub fn csv(imei: &str, positions: &[PositionRecord]) -> String {
    let mut out = String::with_capacity(64 + positions.len() * 80);
    out.push_str("imei,time,lat,lon,speed_kmh,course,satellites,valid\n");
    for p in positions {
        let _ = writeln!(
            out,
            "{imei},{},{},{},{},{},{},{}",
            rfc3339(p.time_ms),
            degrees(p.lat_raw),
            degrees(p.lon_raw),
            p.speed_kmh,
            p.course,
            p.satellites,
            p.valid
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: i64, lat: i32, lon: i32) -> PositionRecord {
        PositionRecord {
            time_ms: t,
            received_ms: t,
            lat_raw: lat,
            lon_raw: lon,
            speed_kmh: 12,
            course: 90,
            satellites: 7,
            valid: true,
            invalid_reason: None,
            acc: None,
            odometer_m: None,
            lbs: None,
            alarm: None,
            reupload: None,
            ..PositionRecord::default()
        }
    }

    #[test]
    fn csv_has_header_and_one_line_per_position() {
        let out = csv("864717003283581", &[p(0, 1_800_000, -3_600_000)]);
        assert_eq!(
            out,
            "imei,time,lat,lon,speed_kmh,course,satellites,valid\n864717003283581,1970-01-01T00:00:00.000Z,1,-2,12,90,7,true\n"
        );
    }

    #[test]
    fn geojson_puts_longitude_first() {
        let v = geojson("1", &[p(0, 1_800_000, -3_600_000)]);
        assert_eq!(
            v["features"][0]["geometry"]["coordinates"][0],
            serde_json::json!([-2.0, 1.0])
        );
    }

    #[test]
    fn gpx_has_a_point_per_position() {
        let out = gpx("1", &[p(0, 1_800_000, 0), p(1000, 0, 0)]);
        assert_eq!(out.matches("<trkpt ").count(), 2);
        assert!(out.contains("<trkpt lat=\"1\" lon=\"0\"><time>1970-01-01T00:00:00.000Z</time>"));
        let high = PositionRecord {
            altitude_m: Some(-31),
            ..p(0, 0, 0)
        };
        assert!(gpx("1", &[high]).contains("lon=\"0\"><ele>-31</ele><time>"));
    }
}
