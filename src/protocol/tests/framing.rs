//! The splitter (§4.2) on real and hand-made streams.

use super::{hex, one_frame, split_all, to_hex};
use crate::protocol::{split, Form, FrameError, SplitOptions};

const LOGIN: &str = "78780d01086471700328358100093f040d0a";
const LOCATION_0X12: &str =
    "78781f120f0a140e150bc505e51e780293a9e800540000f601006e0055da00035f240d0a";
const HEARTBEAT: &str = "78780a13c40604000201298f5b0d0a";
const LONG_0X94: &str = "797900089 40b02e30486 14200d0a";
const LOGIN_365GPS: &str = "78780d010359339075005244340d0a";
const WIFI_0X69_NO_APS: &str = "787800691709261259400700cc0400d376714600d37a3d5000d37a3c5000d393505a00d3765d5a00d376735a00d32e6b640d0a";
const WIFI_0X69_THREE_APS: &str = "787803691604130318491475905bd30e25001e10bbf7635d14759006e626560501cc0028660f213228660f1f2828660ea81e286610731428660f20140d0a";
const WIFI_0X17_EIGHT_APS: &str = "787808171709281135331491827b75594dc8d719a9708452cad719a9708550cad719a97086521491827b75574cac9e17b308085dc8d71939633947cad71939633a480700cc0400d37a3d5a00d37a3d5a00d37a3d5a00d37a3d5a00d37a3d5a00d37a3d5a00d37a3d5a0d0a";
const GPS_0X10_365GPS: &str = "7878121011091c0b1e2e98058507f80097a6ac03344a0d0a";
const GPS_0X11_365GPS: &str = "78781511170103100e1f9904efe30400a97f88003410ffdd000d0a";
const HEARTBEAT_SHORT_BY_TWO: &str = "787808134606020002044dc5050d0a";
const HEARTBEAT_365GPS: &str = "787801080d0a";
/// Peer vector 152: three 0xFD frames in one read.
const GLUED_0XFD: &str = "7979005bfd0358899050927725004c0020bf984358df603b2ea3a339e54335013a5b56455253494f4e5d47543036445f32305f3630444d325f423235455f5631355f574d5b4255494c445d323031332f31322f32382031353a3234002a3b240d0a7979005bfd0358899050927725004c0020bf984358df603b2ea3a339e54335013a5b56455253494f4e5d47543036445f32305f3630444d325f423235455f5631355f574d5b4255494c445d323031332f31322f32382031353a3234002d4f9b0d0a7979005bfd0358899050927725004c0020bf984358df603b2ea3a339e54335013a5b56455253494f4e5d47543036445f32305f3630444d325f423235455f5631355f574d5b4255494c445d323031332f31322f32382031353a3234003084ff0d0a";

fn strict() -> SplitOptions {
    SplitOptions::default()
}

fn lenient() -> SplitOptions {
    SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    }
}

/// Every frame of §2.1 and §13, each with what the splitter must say about its serial
/// and CRC.
fn quirk_frames() -> Vec<(&'static str, Option<u16>, Option<bool>)> {
    vec![
        (LOGIN, Some(0x0009), Some(true)),
        (LOCATION_0X12, Some(0x0003), Some(true)),
        (HEARTBEAT, Some(0x0129), Some(true)),
        (LONG_0X94, Some(0x0486), Some(true)),
        (LOGIN_365GPS, None, None),
        (WIFI_0X69_NO_APS, None, None),
        (WIFI_0X69_THREE_APS, None, None),
        (WIFI_0X17_EIGHT_APS, None, None),
        (GPS_0X10_365GPS, None, None),
        (GPS_0X11_365GPS, None, None),
        (HEARTBEAT_SHORT_BY_TWO, Some(0x044D), Some(true)),
        (HEARTBEAT_365GPS, None, None),
    ]
}

#[test]
fn every_quirk_frame_of_the_reference_is_one_whole_frame() {
    for (text, serial, crc_ok) in quirk_frames() {
        let bytes = hex(text);
        let frame = one_frame(&bytes, &strict());
        assert_eq!(frame.raw, bytes);
        assert_eq!(frame.serial, serial, "serial of {text}");
        assert_eq!(frame.crc_ok, crc_ok, "crc_ok of {text}");
    }
}

#[test]
fn content_runs_from_after_the_protocol_number_to_the_serial() {
    let f = one_frame(&hex(HEARTBEAT), &strict());
    assert_eq!(
        (f.form, f.proto, f.content),
        (Form::Short, 0x13, &hex("c406040002")[..])
    );
    let f = one_frame(&hex(LONG_0X94), &strict());
    assert_eq!(
        (f.form, f.proto, f.content),
        (Form::Long, 0x94, &hex("0b02e3")[..])
    );
    let f = one_frame(&hex(HEARTBEAT_SHORT_BY_TWO), &strict());
    assert_eq!(f.content, hex("4606020002"));
}

#[test]
fn frames_without_serial_keep_content_up_to_the_stop_bits() {
    let f = one_frame(&hex(LOGIN_365GPS), &strict());
    assert_eq!(f.content, hex("035933907500524434"));
    let f = one_frame(&hex(HEARTBEAT_365GPS), &strict());
    assert_eq!((f.proto, f.content.len()), (0x08, 0));
    let f = one_frame(&hex(GPS_0X10_365GPS), &strict());
    assert_eq!(f.content.len(), 18);
    let f = one_frame(&hex(WIFI_0X69_NO_APS), &strict());
    assert_eq!(f.content.get(..6), Some(&hex("170926125940")[..]));
}

#[test]
fn glued_frames_come_out_one_by_one() {
    let out = split_all(&hex(GLUED_0XFD), &strict());
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|f| f.starts_with("7979005bfd") && f.ends_with("0d0a")));
}

#[test]
fn a_frame_cut_across_reads_waits_until_it_is_complete() {
    let mut all: Vec<&str> = quirk_frames().into_iter().map(|(t, _, _)| t).collect();
    all.push(GLUED_0XFD);
    for text in all {
        let bytes = hex(text);
        let first = split(&bytes, &strict())
            .ok()
            .flatten()
            .map(|(_, n)| n)
            .unwrap_or(0);
        assert!(first > 0, "{text} splits");
        for cut in 0..first {
            assert_eq!(
                split(&bytes[..cut], &strict()),
                Ok(None),
                "{cut} bytes of {text}"
            );
        }
    }
}

#[test]
fn junk_before_and_between_frames_is_reported_and_skipped() {
    let stream = hex(&format!(
        "0102 0d0a {LOGIN} 55 {HEARTBEAT} 78 00 {LOCATION_0X12}"
    ));
    assert_eq!(
        split_all(&stream, &strict()),
        vec![
            "!junk".to_string(),
            LOGIN.into(),
            "!junk".into(),
            HEARTBEAT.into(),
            "!junk".into(),
            LOCATION_0X12.into()
        ]
    );
    assert_eq!(
        split(&hex("0102030478"), &strict()),
        Err(FrameError::Junk { skipped: 4 })
    );
    assert_eq!(split(&hex("78"), &strict()), Ok(None));
    assert_eq!(split(&[], &strict()), Ok(None));
}

#[test]
fn a_declared_length_over_the_cap_is_too_long() {
    let mut bytes = hex("7979ffff94");
    bytes.resize(100, 0);
    let err = split(&bytes, &strict()).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLong {
            declared: 0xFFFF + 6,
            cap: 2048
        }
    );
    assert_eq!((err.reason(), err.consumed()), ("too_long", 2));
    let opts = SplitOptions {
        max_frame: 20,
        ..strict()
    };
    assert_eq!(
        split_all(&hex(LOCATION_0X12), &opts)
            .first()
            .map(String::as_str),
        Some("!too_long")
    );
}

#[test]
fn a_declared_end_without_stop_bits_is_malformed_once_every_candidate_is_buffered() {
    // LEN 5: candidates end at 10, 11, 12 (and 9, 8, 7): none holds 0D 0A.
    let bytes = hex("78780513000111223344 5566");
    assert_eq!(split(&bytes[..11], &strict()), Ok(None));
    let err = split(&bytes, &strict()).unwrap_err();
    assert_eq!((err.reason(), err.consumed()), ("malformed", 12));
    // The malformed frame is dropped up to the next start marker, and what follows is kept.
    let stream = hex(&format!("78780513000111223344 5566 {LOGIN}"));
    assert_eq!(
        split_all(&stream, &strict()),
        vec!["!malformed".to_string(), LOGIN.into()]
    );
}

#[test]
fn a_bad_crc_drops_the_whole_frame_unless_lenient() {
    let mut bytes = hex(HEARTBEAT);
    bytes[4] ^= 0x01;
    let err = split(&bytes, &strict()).unwrap_err();
    assert_eq!(
        err,
        FrameError::BadCrc {
            proto: 0x13,
            want: 0x108e,
            got: 0x8f5b,
            len: 15
        }
    );
    assert_eq!((err.reason(), err.consumed()), ("bad_crc", 15));
    let frame = one_frame(&bytes, &lenient());
    assert_eq!((frame.crc_ok, frame.serial), (Some(false), Some(0x0129)));
    let stream = [bytes.clone(), hex(LOGIN)].concat();
    assert_eq!(
        split_all(&stream, &strict()),
        vec!["!bad_crc".to_string(), LOGIN.into()]
    );
}

#[test]
fn a_short_candidate_followed_by_a_frame_is_taken_without_waiting() {
    // A 0x13 whose LEN claims one byte too many, immediately followed by a login.
    let mut short = hex("78780b13c40604000201298f5b0d0a");
    let crc = crate::protocol::crc::crc16_x25(&short[2..11]);
    short[11..13].copy_from_slice(&crc.to_be_bytes());
    let stream = [short.clone(), hex(LOGIN)].concat();
    assert_eq!(
        split_all(&stream, &strict()),
        vec![to_hex(&short), LOGIN.into()]
    );
    // Alone, it waits for the declared length (the device will send more later).
    assert_eq!(split(&short, &strict()), Ok(None));
}
