//! Any bytes split, then every frame decoded (under a model picked from the input) and
//! answered: nothing may panic, whatever the frame says.
#![no_main]
use gt06::protocol::{decode, reply, split, DecodeCtx, Model, SplitOptions};
use libfuzzer_sys::fuzz_target;

const MODELS: [Model; 7] = [
    Model::Standard,
    Model::Nt,
    Model::Qh302r,
    Model::Lw,
    Model::Seeworld,
    Model::R11,
    Model::Vl,
];

fuzz_target!(|data: &[u8]| {
    let opts = SplitOptions {
        lenient_crc: true,
        ..SplitOptions::default()
    };
    let ctx = DecodeCtx {
        model: MODELS[data.len() % MODELS.len()],
    };
    let mut at = 0;
    while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
        match split(rest, &opts) {
            Ok(None) => break,
            Ok(Some((frame, n))) => {
                if let Ok(msg) = decode(&frame, &ctx) {
                    let _ = reply(&msg, &frame, 1_735_787_045_000);
                }
                at += n.max(1);
            }
            Err(e) => at += e.consumed().max(1),
        }
    }
});
