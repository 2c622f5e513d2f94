//! `encode` → `split` → `decode` gives back what was encoded.

use super::{hex, one_frame};
use crate::protocol::encode;
use crate::protocol::{
    decode, Alarm, AlarmKind, DecodeCtx, DeviceTime, Gps, Imei, Lbs, Location, Login, Message,
    SplitOptions, Status,
};

fn decoded(bytes: &[u8]) -> Message {
    let frame = one_frame(bytes, &SplitOptions::default());
    assert_eq!(frame.crc_ok, Some(true));
    decode(&frame, &DecodeCtx::default()).expect("encoded frames decode")
}

/// A fix whose course word holds exactly what the other fields say.
fn gps(lat_raw: i32, lon_raw: i32, course: u16, fixed: bool) -> Gps {
    let mut course_status = course;
    if lat_raw >= 0 {
        course_status |= 1 << 10;
    }
    if lon_raw < 0 {
        course_status |= 1 << 11;
    }
    if fixed {
        course_status |= 1 << 12;
    }
    Gps {
        time: Some(DeviceTime {
            year: 2026,
            month: 11,
            day: 23,
            hour: 4,
            minute: 5,
            second: 6,
        }),
        satellites: 9,
        lat_raw,
        lon_raw,
        speed_kmh: 57,
        course,
        fixed,
        course_status,
    }
}

fn status() -> Status {
    Status {
        info: 0xC6,
        acc: true,
        charging: true,
        relay_cut: true,
        armed: false,
        voltage_level: Some(4),
        gsm_signal: Some(3),
        alarm_code: Some(0),
        language: Some(2),
        ..Status::default()
    }
}

const LBS: Lbs = Lbs {
    mcc: 246,
    mnc: 1,
    lac: 110,
    cell: 21978,
};

#[test]
fn login_round_trips() {
    for imei in ["864717003283581", "123456789012345", "000000000000001"] {
        let imei = Imei::parse(imei).expect("valid imei");
        let want = Message::Login(Login {
            imei,
            type_id: None,
            tz_offset_min: None,
        });
        assert_eq!(decoded(&encode::login(imei, 9)), want);
    }
    let imei = Imei::parse("864717003283581").expect("valid imei");
    assert_eq!(
        encode::login(imei, 9),
        hex("78780d01086471700328358100093f040d0a")
    );
}

#[test]
fn location_0x12_round_trips_in_every_hemisphere() {
    for (lat, lon) in [
        (98_901_624, 43_231_720),
        (-35_000_000, 100),
        (1, -300_000_000),
        (-5, -6),
    ] {
        for fixed in [true, false] {
            let g = gps(lat, lon, 271, fixed);
            let want = Location {
                gps: g,
                lbs: Some(LBS),
                ..Location::default()
            };
            assert_eq!(
                decoded(&encode::location_0x12(&g, &LBS, 3)),
                Message::Location(want)
            );
        }
    }
}

#[test]
fn location_0x12_of_the_worked_example_is_byte_identical() {
    let g = Gps {
        time: Some(DeviceTime {
            year: 2015,
            month: 10,
            day: 20,
            hour: 14,
            minute: 21,
            second: 11,
        }),
        satellites: 5,
        lat_raw: 98_901_624,
        lon_raw: 43_231_720,
        speed_kmh: 0,
        course: 0,
        fixed: true,
        course_status: 0x5400,
    };
    let want = hex("78781f120f0a140e150bc505e51e780293a9e800540000f601006e0055da00035f240d0a");
    assert_eq!(encode::location_0x12(&g, &LBS, 3), want);
}

#[test]
fn location_0x22_round_trips_with_and_without_mileage() {
    for odometer_m in [None, Some(123_456)] {
        let loc = Location {
            gps: gps(41_000_000, -3_000_000, 359, true),
            lbs: Some(Lbs {
                mcc: 310,
                mnc: 260,
                lac: 0xFFFF,
                cell: 0xFF_FFFF,
            }),
            acc: Some(true),
            odometer_m,
            reupload: Some(true),
            upload_mode: Some(3),
            driver_id: None,
            altitude_m: None,
            driving_time_s: None,
            engine_time_s: None,
            power_mv: None,
            battery_mv: None,
            temperature_dc: None,
        };
        assert_eq!(
            decoded(&encode::location_0x22(&loc, 77)),
            Message::Location(loc)
        );
    }
}

#[test]
fn heartbeat_round_trips() {
    assert_eq!(
        decoded(&encode::heartbeat(&status(), 0x129)),
        Message::Heartbeat(status())
    );
}

#[test]
fn alarm_round_trips() {
    for (proto, code, kind) in [
        (0x16, 0x01, AlarmKind::Sos),
        (0x26, 0x02, AlarmKind::PowerCut),
    ] {
        let g = gps(-20_000_000, -70_000_000, 8, true);
        let loc = Location {
            gps: g,
            lbs: Some(LBS),
            ..Location::default()
        };
        let s = Status {
            alarm_code: Some(code),
            ..status()
        };
        let want = Alarm {
            location: Some(Location {
                acc: Some(true),
                ..loc.clone()
            }),
            status: s,
            kind: Some(kind),
            cell: None,
            media_files: None,
        };
        assert_eq!(
            decoded(&encode::alarm(proto, &loc, &status(), code, 5)),
            Message::Alarm(want)
        );
    }
}

#[test]
fn relay_command_is_byte_identical_to_traccars() {
    assert_eq!(
        encode::command(0, "Relay,1#", None, 0),
        hex("78 78 12 80 0C 00 00 00 00 52 65 6C 61 79 2C 31 23 00 00 9D EE 0D 0A")
    );
    let with_language = encode::command(7, "sos#", Some(1), 1);
    assert_eq!(
        with_language.get(..9),
        Some(&hex("78781080 08 00000007")[..])
    );
}
