//! Frames → messages, on the worked examples of the reference and real captures.

use super::{hex, one_frame};
use crate::protocol::{
    decode, AlarmKind, DecodeCtx, DecodeError, DeviceTime, Lbs, Message, SplitOptions,
};

fn msg(text: &str) -> Result<Message, DecodeError> {
    let opts = SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    };
    decode(&one_frame(&hex(text), &opts), &DecodeCtx::default())
}

fn location(text: &str) -> crate::protocol::Location {
    match msg(text) {
        Ok(Message::Location(loc)) => loc,
        other => panic!("expected a location from {text}, got {other:?}"),
    }
}

fn alarm(text: &str) -> crate::protocol::Alarm {
    match msg(text) {
        Ok(Message::Alarm(a)) => a,
        other => panic!("expected an alarm from {text}, got {other:?}"),
    }
}

fn time(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> DeviceTime {
    DeviceTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    }
}

#[test]
fn login_carries_the_imei_without_its_first_nibble() {
    let Ok(Message::Login(login)) = msg("78780d01086471700328358100093f040d0a") else {
        panic!("login expected");
    };
    assert_eq!(login.imei.to_string(), "864717003283581");
    assert_eq!((login.type_id, login.tz_offset_min), (None, None));
}

#[test]
fn extended_login_carries_type_id_and_time_zone() {
    let Ok(Message::Login(login)) = msg("787811010864717003664467100f190a0002c6d20d0a") else {
        panic!("login expected");
    };
    assert_eq!(login.imei.to_string(), "864717003664467");
    assert_eq!(
        (login.type_id, login.tz_offset_min),
        (Some(0x100F), Some(-240))
    );
}

#[test]
fn login_365gps_has_a_version_byte_not_a_type_id() {
    let Ok(Message::Login(login)) = msg("78780d010359339075005244340d0a") else {
        panic!("login expected");
    };
    assert_eq!(login.imei.to_string(), "359339075005244");
    assert_eq!(login.type_id, None);
}

#[test]
fn login_with_hex_letters_in_the_imei_is_invalid() {
    let frame = crate::protocol::encode::frame(
        crate::protocol::Form::Short,
        0x01,
        &hex("0864717003283a81"),
        1,
    );
    let err = decode(
        &one_frame(&frame, &SplitOptions::default()),
        &DecodeCtx::default(),
    );
    assert_eq!(err.map_err(|e| e.reason()), Err("invalid"));
}

#[test]
fn location_0x12_of_the_worked_example() {
    let loc = location("78781f120f0a140e150bc505e51e780293a9e800540000f601006e0055da00035f240d0a");
    assert_eq!(loc.gps.time, Some(time(2015, 10, 20, 14, 21, 11)));
    assert_eq!(loc.gps.satellites, 5);
    assert!((loc.gps.lat_deg() - 54.94535).abs() < 1e-5);
    assert!((loc.gps.lon_deg() - 24.01762).abs() < 1e-5);
    assert_eq!(
        (loc.gps.speed_kmh, loc.gps.course, loc.gps.fixed),
        (0, 0, true)
    );
    assert_eq!(
        loc.lbs,
        Some(Lbs {
            mcc: 246,
            mnc: 1,
            lac: 110,
            cell: 21978
        })
    );
}

#[test]
fn location_in_southern_and_western_hemispheres_is_negative() {
    // Peer vector 136: Belo Horizonte, course word 0x0738 (north and west bits clear/set).
    let a = alarm(
        "7878251610051b0f1c34c5022515d504b5dcd20738080902d4022bdf009cba5006640201006759680d0a",
    );
    let gps = a.location.expect("location").gps;
    assert!((gps.lat_deg() + 19.991585).abs() < 1e-5);
    assert!((gps.lon_deg() + 43.904117).abs() < 1e-5);
    assert_eq!((gps.speed_kmh, gps.course, gps.satellites), (7, 8, 5));
    assert_eq!(a.kind, Some(AlarmKind::PowerCut));
}

#[test]
fn all_zero_gps_time_is_no_time() {
    let a = alarm(
        "78782516000000000000c000000000000000000020000900fa0210ef00fb620006640301000468030d0a",
    );
    let loc = a.location.expect("alarm frames carry a location");
    assert_eq!(loc.gps.time, None);
    assert!(!loc.gps.fixed);
}

#[test]
fn location_0x22_reads_acc_mode_and_reupload() {
    let loc =
        location("787822220f0c1d023305c9027ac8180c46586000140001cc00287d001f71000001000820860d0a");
    assert_eq!(loc.gps.time, Some(time(2015, 12, 29, 2, 51, 5)));
    assert_eq!(
        loc.lbs,
        Some(Lbs {
            mcc: 460,
            mnc: 0,
            lac: 10365,
            cell: 8049
        })
    );
    assert_eq!(
        (loc.acc, loc.upload_mode, loc.reupload),
        (Some(false), Some(0), Some(true))
    );
}

#[test]
fn location_0xa0_has_4g_cell_sizes() {
    let loc = location("787829a01707150f2d0ecd01635100041e96d000087c02d4020000912e000000000718798d000e0006ed3ce50d0a");
    assert_eq!(
        loc.lbs,
        Some(Lbs {
            mcc: 724,
            mnc: 2,
            lac: 37166,
            cell: 119_044_493
        })
    );
    assert_eq!((loc.acc, loc.upload_mode), (Some(false), Some(0x0E)));
    assert!((loc.gps.lat_deg() + 12.936676).abs() < 1e-5);
    assert!((loc.gps.lon_deg() + 38.396418).abs() < 1e-5);
    assert_eq!((loc.gps.course, loc.gps.satellites), (124, 13));
}

#[test]
fn location_365gps_0x10_without_serial() {
    let loc = location("7878121011091c0b1b2999058508040097a89e0034520d0a");
    assert_eq!(loc.gps.time, Some(time(2017, 9, 28, 11, 27, 41)));
}

#[test]
fn heartbeat_0x13_reads_st5() {
    let Ok(Message::Heartbeat(s)) = msg("78780a13c40604000201298f5b0d0a") else {
        panic!("heartbeat expected");
    };
    assert!(s.relay_cut && s.charging && !s.acc && !s.armed);
    assert_eq!(
        (s.voltage_level, s.gsm_signal, s.alarm_code, s.language),
        (Some(6), Some(4), Some(0), Some(2))
    );
    assert_eq!(s.battery_percent(), Some(100));
}

#[test]
fn heartbeat_short_by_two_still_reads_st5() {
    let Ok(Message::Heartbeat(s)) = msg("787808134606020002044dc5050d0a") else {
        panic!("heartbeat expected");
    };
    assert_eq!(
        (s.info, s.voltage_level, s.gsm_signal),
        (0x46, Some(6), Some(2))
    );
}

#[test]
fn alarm_kind_comes_from_the_alarm_byte() {
    let a = alarm(
        "787825160f0c1d0a2b21c8027ac8040c46581000146f0901cc00287d001f714804040301001c84cf0d0a",
    );
    assert_eq!(a.kind, Some(AlarmKind::Vibration));
    assert_eq!(a.status.alarm_code, Some(0x03));
}

#[test]
fn alarm_kind_falls_back_to_the_status_bits() {
    // Peer vector 76: alarm byte 0, status bits 111.
    let a = alarm(
        "7878251613020c12141ac5027951430c2a16f60014000900000000001a00007c550300020002f1e70d0a",
    );
    assert_eq!(a.kind, Some(AlarmKind::Removing));
}

#[test]
fn alarm_0xa4_has_a_4g_cell_and_a_fence_byte() {
    let a = alarm("78782da41a0509160203cf05be31f80c306530001c0010012ed000007ef40000000006428b074205041302ff0009389c0d0a");
    assert_eq!(a.kind, Some(AlarmKind::Tampering));
    let lbs = a.location.and_then(|l| l.lbs).expect("cell");
    assert_eq!(
        (lbs.mcc, lbs.mnc, lbs.lac, lbs.cell),
        (302, 0xd0, 0x7ef4, 0x06428b07)
    );
}

#[test]
fn time_request_and_command_echo_are_ignored() {
    assert_eq!(
        msg("7878058a000688290d0a"),
        Ok(Message::Ignored {
            proto: 0x8A,
            reason: "time_request"
        })
    );
    let echo = crate::protocol::encode::command(0, "Relay,1#", None, 0);
    let m = decode(
        &one_frame(&echo, &SplitOptions::default()),
        &DecodeCtx::default(),
    );
    assert_eq!(
        m,
        Ok(Message::Ignored {
            proto: 0x80,
            reason: "command_echo"
        })
    );
}

#[test]
fn truncated_layout_is_an_error_not_a_panic() {
    let err = msg("787805120099abec0d0a").unwrap_err();
    assert_eq!(
        (err.reason(), err),
        (
            "truncated",
            DecodeError::Truncated {
                proto: 0x12,
                len: 0
            }
        )
    );
}

#[test]
fn unknown_protocol_number_is_unknown() {
    assert_eq!(
        msg("78780d1f000000000000000200b196a20d0a"),
        Ok(Message::Unknown { proto: 0x1F })
    );
}

#[test]
fn decoding_any_content_never_panics() {
    use crate::protocol::{Form, Frame};
    let mut x: u32 = 0x1234_5678;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    };
    for proto in 0..=255u8 {
        for len in 0..=120usize {
            for pattern in 0..3 {
                let content: Vec<u8> = (0..len)
                    .map(|_| match pattern {
                        0 => next(),
                        1 => 0x00,
                        _ => 0xFF,
                    })
                    .collect();
                for form in [Form::Short, Form::Long] {
                    for serial in [Some(1), None] {
                        let mut raw = vec![0x78, 0x78, next(), proto];
                        raw.extend_from_slice(&content);
                        raw.extend_from_slice(&[0x0D, 0x0A]);
                        let frame = Frame {
                            form,
                            proto,
                            content: &content,
                            serial,
                            crc_ok: serial.map(|_| true),
                            raw: &raw,
                        };
                        let _ = decode(&frame, &DecodeCtx::default());
                    }
                }
            }
        }
    }
}

fn info(text: &str) -> crate::protocol::Info {
    match msg(text) {
        Ok(Message::Info(i)) => i,
        other => panic!("expected info from {text}, got {other:?}"),
    }
}

fn cells(text: &str) -> crate::protocol::CellReport {
    match msg(text) {
        Ok(Message::Cells(c)) => c,
        other => panic!("expected cells from {text}, got {other:?}"),
    }
}

#[test]
fn wifi_365gps_reads_bcd_time_access_points_and_cells() {
    let report = cells("787803691604130318491475905bd30e25001e10bbf7635d14759006e626560501cc0028660f213228660f1f2828660ea81e286610731428660f20140d0a");
    assert_eq!(report.time, Some(time(2016, 4, 13, 3, 18, 49)));
    assert_eq!(report.wifi.len(), 3);
    assert_eq!(report.wifi[0].mac, [0x14, 0x75, 0x90, 0x5b, 0xd3, 0x0e]);
    assert_eq!(report.cells.len(), 5);
    assert_eq!(
        report.cells[0].lbs,
        Lbs {
            mcc: 460,
            mnc: 0,
            lac: 0x2866,
            cell: 0x0f21
        }
    );
    assert!(!report.buffered);
}

#[test]
fn lbs_multi_cell_0x28_drops_empty_slots() {
    let report = cells("78783b2810010d02020201cc00287d001f713e287d001f7231287d001e232d287d001f4018000000000000000000000000000000000000ff00020005b14b0d0a");
    assert_eq!(report.cells.len(), 4);
    assert_eq!(report.cells[3].rssi, Some(0x18));
}

#[test]
fn information_transfer_external_voltage_and_iccid() {
    assert_eq!(info("79790008940b02e3048614200d0a").power_mv, Some(7390));
    let i = info("797900209 40a035985708236675805200502187214018966051912408052452f00035556 0d0a");
    assert_eq!(i.iccid.as_deref(), Some("8966051912408052452"));
    assert_eq!(i.imsi.as_deref(), Some("520050218721401"));
}

#[test]
fn command_replies_in_short_and_long_form() {
    let m = msg("787829152100000000526573746f7265206675656c20737570706c793a2053756363657373210002014077ce0d0a");
    assert_eq!(
        m,
        Ok(Message::CommandReply {
            flag: 0,
            text: "Restore fuel supply: Success!".into()
        })
    );
    let m = msg(
        "797900262100000000020043006f006d006d0061006e00640020006500720072006f0072002100236e850d0a",
    );
    assert!(
        matches!(m, Ok(Message::CommandReply { ref text, .. }) if text == "Command error!"),
        "{m:?}"
    );
}

#[test]
fn lbs_alarm_without_gps_keeps_its_cell() {
    let a = alarm("78781219028f0a29e10036f12003040102000875dc0d0a");
    assert_eq!(a.kind, Some(AlarmKind::Sos));
    assert_eq!(a.location, None);
    assert_eq!(a.cell.map(|c| (c.mcc, c.lac)), Some((655, 0x29e1)));
}

#[test]
fn obd6_heartbeat_carries_power_and_temperature() {
    let Ok(Message::Heartbeat(s)) = msg("7878131340b2fa000201040000000000011c00400e550d0a") else {
        panic!("heartbeat expected");
    };
    assert_eq!((s.temperature_dc, s.battery_pct), (Some(284), Some(1)));
}

#[test]
fn model_names_map_to_families() {
    use crate::protocol::Model;
    let cases = [
        ("NT20", Model::Nt),
        ("xt40", Model::Nt),
        ("QH302R", Model::Qh302r),
        ("LW4G-4B", Model::Lw),
        ("SEEWORLD", Model::Seeworld),
        ("R11", Model::R11),
        ("G18", Model::Vl),
        ("GT06N", Model::Standard),
        ("", Model::Standard),
    ];
    for (name, want) in cases {
        assert_eq!(Model::from_name(name), want, "{name}");
    }
}

#[test]
fn a_configured_model_reads_the_heartbeat_voltage() {
    use crate::protocol::Model;
    let frame = one_frame(
        &hex("78780a13460b120400160642c20d0a"),
        &SplitOptions::default(),
    );
    let Ok(Message::Heartbeat(s)) = decode(&frame, &DecodeCtx { model: Model::R11 }) else {
        panic!("heartbeat expected");
    };
    assert_eq!(s.power_mv, Some(28_340));
    // Without the model the same bytes are a plain ST5 with no supply voltage.
    let Ok(Message::Heartbeat(s)) = decode(&frame, &DecodeCtx::default()) else {
        panic!("heartbeat expected");
    };
    assert_eq!((s.power_mv, s.voltage_level), (None, Some(0x0b)));
}

#[test]
fn a_configured_model_renames_alarm_codes() {
    use crate::protocol::Model;
    // Peer vector 171: alarm byte 0x19 is low battery for the vendor, hard acceleration
    // on LW models.
    let frame = one_frame(
        &hex(
            "78782516180516150812c804b50ee80880e40805dcf909012e000000986633460604190106c393490d0a",
        ),
        &SplitOptions::default(),
    );
    let kind = |ctx: DecodeCtx| match decode(&frame, &ctx) {
        Ok(Message::Alarm(a)) => a.kind,
        other => panic!("{other:?}"),
    };
    assert_eq!(kind(DecodeCtx::default()), Some(AlarmKind::LowBattery));
    assert_eq!(
        kind(DecodeCtx { model: Model::Lw }),
        Some(AlarmKind::HardAcceleration)
    );
}

// Layouts whose extra fields are read since the peer vectors asked for them. The frames
// are our own (built with `encode::frame`, values unlike the captures'), so each field is
// checked on bytes whose meaning we chose.

/// Decodes `content` framed as `proto` with `model`.
fn ours(form: crate::protocol::Form, proto: u8, content: &[u8], model: &str) -> Message {
    let bytes = crate::protocol::encode::frame(form, proto, content, 0x0102);
    let frame = one_frame(&bytes, &SplitOptions::default());
    let ctx = DecodeCtx {
        model: crate::protocol::Model::from_name(model),
    };
    decode(&frame, &ctx).expect("our frame decodes")
}

/// A GPS block: 2025-03-10 12:30:00, 8 satellites, 50.0° N 19.0° E, 40 km/h, course 90,
/// fixed.
fn gps_block() -> Vec<u8> {
    hex("19 03 0a 0c 1e 00 c8 05 5d 4a 80 02 09 d6 c0 28 14 5a")
}

#[test]
fn seeworld_0xa3_long_status_carries_steps_battery_and_charging() {
    use crate::protocol::Form;
    // info, extension word, voltage level 4, RSSI, power, language, sound, light,
    // steps 12345, battery 55 %, charging, motion, three trailing bytes.
    let content = hex("02 0000 04 20 1e 02 00 01 00003039 37 01 00 000000");
    assert_eq!(content.len(), 0x18 - 5);
    let Message::Heartbeat(s) = ours(Form::Short, 0xA3, &content, "") else {
        panic!("heartbeat expected");
    };
    assert_eq!(s.steps, Some(12_345));
    assert_eq!(s.battery_percent(), Some(55));
    assert_eq!(s.voltage_level, Some(4));
    assert!(s.charging && s.acc);
    // The short form (LEN 0x0C) carries no step count.
    let Message::Heartbeat(s) = ours(Form::Short, 0xA3, &hex("02 00 00 00 00 00 00"), "") else {
        panic!("heartbeat expected");
    };
    assert_eq!((s.steps, s.acc), (None, true));
}

#[test]
fn wetrust_0x12_carries_odometer_and_driving_time() {
    use crate::protocol::Form;
    let mut content = gps_block();
    // Cell, odometer 1,000,000 m, a one-byte card, alarm, card status, 3,600 s driving.
    content.extend(hex("01cc 00 2866 000f21 000f4240 01 41 00 00 0e10"));
    assert_eq!(content.len(), 0x29 - 5);
    let Message::Location(l) = ours(Form::Short, 0x12, &content, "") else {
        panic!("location expected");
    };
    assert_eq!(l.driving_time_s, Some(3_600));
    assert_eq!(l.odometer_m, Some(1_000_000));
    assert_eq!(l.gps.lat_raw, 90_000_000);
    assert_eq!(
        l.lbs.map(|c| (c.mcc, c.lac, c.cell)),
        Some((460, 0x2866, 0x0f21))
    );
}

#[test]
fn nt_0x22_carries_engine_time_in_seconds() {
    use crate::protocol::Form;
    // Source, IMEI, device time, GPS, LBS with length byte, info, power 12.60 V,
    // battery 4.1 V, RSSI, alarm, language, odometer 5,000 m, engine 90 minutes.
    let mut content = hex("01 0358899051234567 19030a0c1e00");
    content.extend(gps_block());
    content.extend(hex(
        "09 01cc00 2866 000f21 46 04ec 29 10 00 01 001388 00005a",
    ));
    let Message::Location(l) = ours(Form::Short, 0x22, &content, "NT20") else {
        panic!("location expected");
    };
    assert_eq!(l.engine_time_s, Some(5_400));
    assert_eq!(l.odometer_m, Some(5_000));
    assert_eq!((l.power_mv, l.battery_mv), (Some(12_600), Some(4_100)));
    // The standard layout has no engine time.
    let Message::Location(l) = ours(Form::Short, 0x22, &content, "") else {
        panic!("location expected");
    };
    assert_eq!(l.engine_time_s, None);
}

#[test]
fn modular_0x70_reads_the_ble_tag_temperature() {
    use crate::protocol::Form;
    // Module 0x2C (Unix time 2025-03-10 12:30:00), then a 0x7F tag at -20.0 °C.
    let content = hex("002c 0004 67cedb48 007f 000e 112233445566 7fff 50 ff38 0200 00");
    let Message::Info(i) = ours(Form::Long, 0x70, &content, "") else {
        panic!("info expected");
    };
    assert_eq!(i.tag_temperature_dc, Some(-200));
    assert_eq!(i.time, Some(time(2025, 3, 10, 12, 30, 0)));
    // A tag module too short for a temperature is no temperature, not an error.
    let Message::Info(i) = ours(Form::Long, 0x70, &hex("007f 0006 112233445566"), "") else {
        panic!("info expected");
    };
    assert_eq!(i.tag_temperature_dc, None);
}

#[test]
fn dashcam_0x95_long_form_carries_its_file_names() {
    use crate::protocol::Form;
    // JC400: marker, version, time, satellites, lat, lon, course word, speed 40 km/h,
    // power 12.0 V, event 0x93 (collision), event data, two file names.
    let mut content = hex("ffff 01 19030a0c1e00 08 055d4a80 0209d6c0 145a 0028 0078 93 0000");
    content.extend_from_slice(b"front_1.mp4,rear_1.jpg");
    let Message::Alarm(a) = ours(Form::Short, 0x95, &content, "") else {
        panic!("alarm expected");
    };
    assert_eq!(a.kind, Some(AlarmKind::Accident));
    assert_eq!(a.media_files.as_deref(), Some("front_1.mp4,rear_1.jpg"));
    assert_eq!(a.status.power_mv, Some(12_000));
    assert_eq!(a.location.map(|l| l.gps.speed_kmh), Some(40));
    // Without a file list there is nothing to name.
    let content = hex("ffff 01 19030a0c1e00 08 055d4a80 0209d6c0 145a 0028 0078 93 0000");
    let Message::Alarm(a) = ours(Form::Short, 0x95, &content, "") else {
        panic!("alarm expected");
    };
    assert_eq!(a.media_files, None);
}

#[test]
fn trx16i_0x36_carries_engine_time() {
    // GPS, cell with u32 id, ACC, mode, re-upload, odometer, power 24.00 V, battery
    // 3.9 V, engine 600 minutes, RFID.
    let mut content = gps_block();
    content.extend(hex(
        "01cc 00 2866 00000f21 01 00 00 00002710 0960 27 000258 0102030405060708",
    ));
    assert_eq!(content.len(), 0x35 - 5);
    let Message::Location(l) = ours(crate::protocol::Form::Short, 0x36, &content, "") else {
        panic!("location expected");
    };
    assert_eq!(l.engine_time_s, Some(36_000));
    assert_eq!((l.power_mv, l.battery_mv), (Some(24_000), Some(3_900)));
    assert_eq!(l.driver_id.as_deref(), Some("0102030405060708"));
}
