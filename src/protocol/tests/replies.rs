//! Reply bytes (§9), byte for byte against the reference's examples and Traccar's replies.

use super::{hex, one_frame, to_hex};
use crate::protocol::{decode, reply, DecodeCtx, Message, SplitOptions};

/// 2025-01-02T03:04:05Z, the time of the §9 worked example.
const NOW_MS: i64 = 1_735_787_045_000;

fn reply_to(text: &str) -> Option<String> {
    let opts = SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    };
    let frame = one_frame(&hex(text), &opts);
    let msg =
        decode(&frame, &DecodeCtx::default()).unwrap_or(Message::Unknown { proto: frame.proto });
    reply(&msg, &frame, NOW_MS).map(|r| to_hex(&r))
}

fn expect(text: &str, want: Option<&str>) {
    let want = want.map(|w| to_hex(&hex(w)));
    assert_eq!(reply_to(text), want, "reply to {text}");
}

#[test]
fn login_is_acked_with_its_serial() {
    expect(
        "78780d01086471700328358100093f040d0a",
        Some("78 78 05 01 00 09 55 94 0D 0A"),
    );
}

#[test]
fn login_365gps_is_acked_with_traccars_serial_bytes() {
    expect(
        "78780d010359339075005244340d0a",
        Some("787805010052b9c20d0a"),
    );
}

#[test]
fn heartbeat_is_acked() {
    expect(
        "78780a13c40604000201298f5b0d0a",
        Some("78 78 05 13 01 29 5D 63 0D 0A"),
    );
}

#[test]
fn location_gets_a_generic_ack() {
    expect(
        "78781f120f0a140e150bc505e51e780293a9e800540000f601006e0055da00035f240d0a",
        Some("78 78 05 12 00 03 90 3F 0D 0A"),
    );
    expect(
        "7878121011091c0b1b2999058508040097a89e0034520d0a",
        Some("787805109e0094510d0a"),
    );
}

#[test]
fn alarm_is_acked() {
    expect(
        "78782da41a0509160203cf05be31f80c306530001c0010012ed000007ef40000000006428b074205041302ff0009389c0d0a",
        Some("787805a4000963fe0d0a"),
    );
}

#[test]
fn time_request_gets_the_servers_utc_time_with_the_request_serial() {
    expect(
        "78 78 05 8A 00 06 88 29 0D 0A",
        Some("78 78 0B 8A 19 01 02 03 04 05 00 06 0D 8C 0D 0A"),
    );
}

#[test]
fn wifi_365gps_gets_its_bcd_time_back_without_serial_or_crc() {
    expect(
        "787800691709261259400700cc0400d376714600d37a3d5000d37a3c5000d393505a00d3765d5a00d376735a00d32e6b640d0a",
        Some("78 78 00 69 17 09 26 12 59 40 0D 0A"),
    );
}

#[test]
fn address_request_gets_an_unknown_address_packet() {
    let mut frame = one_frame(
        &hex("78782e2a0f0c1d071139ca027ac8000c4658000014d83132353230313335333231373730373900000000000001002a6ece0d0a"),
        &SplitOptions::default(),
    );
    let msg = decode(&frame, &DecodeCtx::default()).expect("decodes");
    let got = reply(&msg, &frame, NOW_MS)
        .map(|r| to_hex(&r))
        .unwrap_or_default();
    assert!(
        got.starts_with(
            "79790015970b000000004e4126264e4126263023 23002a"
                .replace(' ', "")
                .as_str()
        ),
        "{got}"
    );
    // Traccar answers with serial 0; echoing serial 0 gives its bytes exactly.
    frame.serial = Some(0);
    let got = reply(&msg, &frame, NOW_MS).map(|r| to_hex(&r));
    assert_eq!(
        got,
        Some(to_hex(&hex(
            "79 79 00 15 97 0B 00 00 00 00 4E 41 26 26 4E 41 26 26 30 23 23 00 00 E6 1E 0D 0A"
        )))
    );
}

#[test]
fn long_form_azt735_types_get_a_long_form_ack() {
    expect(
        "797900143311070609020b00000000a0030046000109e4610d0a",
        Some("797900053301094cf30d0a"),
    );
}

#[test]
fn modular_types_get_a_short_ack_even_when_long() {
    expect(
        "79790026f16318c0000001010100020101000301000004010100050201950006010010000100008021af0d0a",
        Some("787805f10080c0690d0a"),
    );
}

#[test]
fn photo_info_asks_for_the_first_chunk() {
    expect(
        "78781f3511061a0b24330503107d06084889cb01000100000cfa20e3acd301333fcb0d0a",
        Some("78780f3620e3acd3000000000400000002ba0d0a"),
    );
}

#[test]
fn some_types_get_no_reply() {
    for text in [
        "79790008940b02e3048614200d0a",                        // 0x94 long
        "787801080d0a",                                        // 365GPS heartbeat
        "78781280 0c00000000 52656c61792c3123 0000 9dee 0d0a", // command echo
    ] {
        expect(text, None);
    }
}
