//! Tests of the protocol room at its boundaries: bytes in → frames, frames → messages,
//! messages → reply bytes, and the peer vectors through one simulated session.

mod decoding;
mod framing;
mod peer_vectors;
mod property;
mod replies;
mod roundtrip;

use super::{split, Frame, SplitOptions};

/// Bytes from a hex string; spaces and newlines are ignored so frames can be written the
/// way the reference document prints them.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("hex digits are ascii");
            u8::from_str_radix(text, 16).expect("filtered to hex digits")
        })
        .collect()
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the splitter made of a whole stream: each frame as hex, or `!reason` for the
/// bytes it told us to drop. Stops when it asks for more bytes.
pub(crate) fn split_all(stream: &[u8], opts: &SplitOptions) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        match split(&stream[at..], opts) {
            Ok(Some((frame, n))) => {
                assert_eq!(frame.raw.len(), n, "frame.raw is the n bytes consumed");
                out.push(to_hex(frame.raw));
                at += n;
            }
            Ok(None) => break,
            Err(e) => {
                assert!(e.consumed() > 0, "an error must consume bytes: {e:?}");
                out.push(format!("!{}", e.reason()));
                at += e.consumed();
            }
        }
    }
    out
}

/// The one frame in `bytes`, which must be exactly one frame.
/// The frame borrows a leaked copy of `bytes`, so tests can pass temporaries.
pub(crate) fn one_frame(bytes: &[u8], opts: &SplitOptions) -> Frame<'static> {
    let bytes: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    match split(bytes, opts) {
        Ok(Some((frame, n))) if n == bytes.len() => frame,
        other => panic!("expected one frame of {} bytes, got {other:?}", bytes.len()),
    }
}
