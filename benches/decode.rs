//! Split + decode of a realistic mixed stream on one core: frames/s and MB/s.
//!
//! `cargo bench --bench decode`; results go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts heap allocations, so the bench can say how many a frame costs (the protocol
/// issue asks for none per location frame beyond the `Message` value itself).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
use gt06::protocol::{
    decode, encode, split, DecodeCtx, DeviceTime, Gps, Imei, Lbs, SplitOptions, Status,
};

/// A stream as one busy connection delivers it: a login, then mostly 0x12 locations
/// with a heartbeat every tenth frame.
fn stream(frames: usize) -> Vec<u8> {
    let mut out = encode::login(Imei::parse("864717003283581").unwrap(), 1);
    let lbs = Lbs {
        mcc: 246,
        mnc: 1,
        lac: 110,
        cell: 21_978,
    };
    let status = Status {
        info: 0x46,
        voltage_level: Some(6),
        gsm_signal: Some(4),
        alarm_code: Some(0),
        language: Some(2),
        ..Status::default()
    };
    for i in 0..frames {
        let serial = (i as u16).wrapping_add(2);
        if i % 10 == 9 {
            out.extend(encode::heartbeat(&status, serial));
        } else {
            let gps = Gps {
                time: Some(DeviceTime {
                    year: 2026,
                    month: 2,
                    day: 11,
                    hour: 8,
                    minute: (i / 60 % 60) as u8,
                    second: (i % 60) as u8,
                }),
                satellites: 9,
                lat_raw: 98_901_624 + i as i32,
                lon_raw: 43_231_720 - i as i32,
                speed_kmh: (i % 120) as u16,
                course: (i % 360) as u16,
                fixed: true,
                ..Gps::default()
            };
            out.extend(encode::location_0x12(&gps, &lbs, serial));
        }
    }
    out
}

fn split_and_decode(c: &mut Criterion) {
    const FRAMES: usize = 10_000;
    let bytes = stream(FRAMES);
    let opts = SplitOptions::default();
    let ctx = DecodeCtx::default();
    // One counted pass first: heap allocations for the whole stream (9,000 locations,
    // 1,000 heartbeats, a login).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut at = 0;
    let mut decoded = 0usize;
    while let Ok(Some((frame, used))) = split(&bytes[at..], &opts) {
        at += used;
        decoded += usize::from(std::hint::black_box(decode(&frame, &ctx)).is_ok());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "split + decode of {decoded} frames: {allocations} heap allocations ({:.2} per frame)",
        allocations as f64 / decoded.max(1) as f64
    );
    // A count, not a timing: frames borrow the read buffer and these messages carry no
    // text, so nothing may allocate.
    assert_eq!(allocations, 0, "split + decode allocated");
    let mut g = c.benchmark_group("split_decode");
    g.throughput(Throughput::Elements(FRAMES as u64 + 1));
    g.bench_function("mixed_stream_frames", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0usize;
            while let Ok(Some((frame, used))) = split(&bytes[at..], &opts) {
                at += used;
                if decode(&frame, &ctx).is_ok() {
                    n += 1;
                }
            }
            assert_eq!(n, FRAMES + 1);
            n
        })
    });
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("mixed_stream_bytes", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Ok(Some((frame, used))) = split(&bytes[at..], &opts) {
                at += used;
                let _ = decode(&frame, &ctx);
            }
            at
        })
    });
    g.finish();
}

criterion_group!(benches, split_and_decode);
criterion_main!(benches);
