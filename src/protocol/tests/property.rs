//! Framing property: valid frames cut into random 1–64-byte reads, with random junk
//! between frames, come back as exactly the same frames, in order.

use super::{hex, to_hex};
use crate::protocol::encode;
use crate::protocol::{
    split, DeviceTime, FrameError, Gps, Imei, Lbs, Location, SplitOptions, Status,
};

/// xorshift64*: deterministic, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Frames from `encode` plus every CRC-valid peer vector (when the file is present).
fn valid_frames() -> Vec<Vec<u8>> {
    let imei = Imei::parse("864717003283581").expect("valid imei");
    let gps = Gps {
        time: Some(DeviceTime {
            year: 2026,
            month: 11,
            day: 23,
            hour: 4,
            minute: 5,
            second: 6,
        }),
        satellites: 7,
        lat_raw: -40_000_000,
        lon_raw: 200_000_000,
        speed_kmh: 88,
        course: 123,
        fixed: true,
        course_status: 0x107B,
    };
    let lbs = Lbs {
        mcc: 460,
        mnc: 0,
        lac: 0x0D0A,
        cell: 0x0D_0A0D,
    };
    let loc = Location {
        gps,
        lbs: Some(lbs),
        acc: Some(true),
        ..Location::default()
    };
    let status = Status {
        info: 0x46,
        voltage_level: Some(6),
        ..Status::default()
    };
    let mut frames = vec![
        encode::login(imei, 1),
        encode::location_0x12(&gps, &lbs, 2),
        encode::location_0x22(&loc, 0x0D0A),
        encode::heartbeat(&status, 4),
        encode::alarm(0x16, &loc, &status, 0x01, 5),
        encode::alarm(0x26, &loc, &status, 0x02, 6),
        encode::command(7, "Relay,1#", Some(2), 7),
        encode::frame(
            crate::protocol::Form::Long,
            0x94,
            &[0x0D, 0x0A, 0x0D, 0x0A],
            8,
        ),
    ];
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/peer-vectors/traccar-gt06.jsonl"
    );
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("vector is JSON");
                if v["crc_valid"] != serde_json::Value::Bool(true) {
                    continue;
                }
                let bytes = hex(v["hex"].as_str().unwrap_or_default());
                // Vector 152 glues three frames; the splitter must return each.
                let mut at = 0;
                while at < bytes.len() {
                    let Ok(Some((_, n))) = split(&bytes[at..], &SplitOptions::default()) else {
                        panic!("crc-valid vector does not split: {}", to_hex(&bytes));
                    };
                    frames.push(bytes[at..at + n].to_vec());
                    at += n;
                }
            }
        }
        Err(_) => eprintln!("note: {path} is missing; property test uses encoded frames only"),
    }
    frames
}

/// Junk that cannot form a start marker, either inside itself or with the frame after it:
/// 0x78/0x79 appear only alone and never last.
fn junk(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(12) as usize;
    let mut out: Vec<u8> = Vec::with_capacity(len);
    while out.len() < len {
        let b = rng.next() as u8;
        let marker_byte = matches!(b, 0x78 | 0x79);
        let after_marker_byte = matches!(out.last(), Some(0x78 | 0x79));
        let last = out.len() + 1 == len;
        if marker_byte && (after_marker_byte || last) {
            continue;
        }
        out.push(b);
    }
    out
}

/// The §2.1 frames without serial or CRC (365GPS login, 0x10/0x11, 0x17/0x69, 0x08) and
/// the 0x13 that is two bytes short.
fn quirk_frames() -> Vec<Vec<u8>> {
    [
        "78780d010359339075005244340d0a",
        "787801080d0a",
        "787808134606020002044dc5050d0a",
        "7878121011091c0b1e2e98058507f80097a6ac03344a0d0a",
        "78781511170103100e1f9904efe30400a97f88003410ffdd000d0a",
        "787800691709261259400700cc0400d376714600d37a3d5000d37a3c5000d393505a00d3765d5a00d376735a00d32e6b640d0a",
        "787803691604130318491475905bd30e25001e10bbf7635d14759006e626560501cc0028660f213228660f1f2828660ea81e286610731428660f20140d0a",
    ]
    .iter()
    .map(|h| hex(h))
    .collect()
}

#[test]
fn random_reads_and_junk_give_back_the_same_frames() {
    check_frames_survive_random_reads(&valid_frames());
}

#[test]
fn random_reads_and_junk_keep_the_365gps_quirk_frames_whole() {
    let mut frames = valid_frames();
    frames.extend(quirk_frames());
    check_frames_survive_random_reads(&frames);
}

fn check_frames_survive_random_reads(frames: &[Vec<u8>]) {
    let opts = SplitOptions::default();
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut order: Vec<usize> = (0..frames.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut stream = Vec::new();
        for &i in &order {
            stream.extend(junk(&mut rng));
            stream.extend_from_slice(&frames[i]);
        }

        let mut buf: Vec<u8> = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let chunk = 1 + rng.below(64) as usize;
            let end = (at + chunk).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            loop {
                match split(&buf, &opts) {
                    Ok(Some((frame, n))) => {
                        got.push(frame.raw.to_vec());
                        buf.drain(..n);
                    }
                    Ok(None) => break,
                    Err(FrameError::Junk { skipped }) => {
                        buf.drain(..skipped);
                    }
                    Err(e) => panic!("seed {seed}: unexpected {e:?} at {}", to_hex(&buf)),
                }
            }
        }
        let want: Vec<Vec<u8>> = order.iter().map(|&i| frames[i].clone()).collect();
        assert_eq!(got.len(), want.len(), "seed {seed}: frame count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(to_hex(g), to_hex(w), "seed {seed}");
        }
    }
}

#[test]
fn splitting_random_bytes_always_makes_progress() {
    let opts = SplitOptions {
        max_frame: 300,
        lenient_crc: false,
    };
    let lenient = SplitOptions {
        lenient_crc: true,
        ..opts
    };
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        // Mostly noise, with start markers, plausible lengths and stop bits sprinkled in.
        let stream: Vec<u8> = (0..400)
            .map(|_| match rng.below(10) {
                0 => 0x78,
                1 => 0x79,
                2 => 0x0D,
                3 => 0x0A,
                4 => rng.below(0x20) as u8,
                _ => rng.next() as u8,
            })
            .collect();
        for opts in [&opts, &lenient] {
            let mut at = 0;
            while at < stream.len() {
                match split(&stream[at..], opts) {
                    Ok(Some((frame, n))) => {
                        assert!(n > 0 && n == frame.raw.len());
                        at += n;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(e.consumed() > 0, "seed {seed}: {e:?} consumes nothing");
                        at += e.consumed();
                    }
                }
            }
            assert!(at <= stream.len());
        }
    }
}
