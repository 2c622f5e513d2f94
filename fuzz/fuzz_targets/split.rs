//! Any bytes through the splitter loop a session runs: every step consumes bytes or asks
//! for more (so the loop ends), and no frame is longer than the cap allows.
#![no_main]
use gt06::protocol::{split, SplitOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for lenient_crc in [false, true] {
        let opts = SplitOptions {
            lenient_crc,
            ..SplitOptions::default()
        };
        let mut at = 0;
        while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
            let used = match split(rest, &opts) {
                Ok(None) => break,
                Ok(Some((frame, n))) => {
                    assert_eq!(frame.raw.len(), n, "a frame is the bytes it consumed");
                    assert!(n <= opts.max_frame + 2, "{n}-byte frame over the cap");
                    n
                }
                Err(e) => e.consumed(),
            };
            assert!(
                (1..=rest.len()).contains(&used),
                "consumed {used} of {}",
                rest.len()
            );
            at += used;
        }
    }
});
