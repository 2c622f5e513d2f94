//! `gt06 bench-store`: writes a synthetic fleet through the store API (no TCP), then
//! measures disk per position, memory, reopen time and the API's read paths. Prints one
//! JSON object; BENCHMARKS.md quotes it.
//!
//! Positions are generated as a live server sees them: devices interleaved, each device
//! reporting every `step` seconds along a drifting route.

use crate::cli::BenchStoreArgs;
use crate::http::json;
use crate::ingest::session::RECEIPT_RESOLUTION_MS;
use crate::store::writer::{self, WriterOptions, REQ_OPS_MAX};
use crate::store::{Durability, LbsRecord, Op, OpenOptions, PositionRecord, Store, WriteReq};
use anyhow::Context;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fix time of the first position: 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
/// IMEI of the first device.
const IMEI_BASE: u64 = 860_000_000_000_000;

pub fn main(args: BenchStoreArgs) -> anyhow::Result<()> {
    let open_opts = match args.cache_mb {
        Some(mb) => OpenOptions {
            cache_bytes: mb * 1024 * 1024,
        },
        None => Default::default(),
    };
    if args.read_phase {
        return read_phase(&args, open_opts);
    }
    let dir = &args.dir;
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
        "--dir {} must be empty or absent",
        dir.display()
    );
    std::fs::create_dir_all(dir)?;
    let rss = RssSampler::start();

    // Write.
    let opened = Store::open(dir, open_opts)?;
    let store = opened.store.clone();
    let opts = WriterOptions {
        max_batch: args.max_batch,
        checkpoint_positions: args.checkpoint_positions,
        ..WriterOptions::default()
    };
    let (handle, join) = writer::spawn(opened, opts).context("start writer")?;
    let total = args.devices as u64 * args.per_device as u64;
    let day_device = IMEI_BASE + args.devices as u64;
    let started = Instant::now();
    let mut routes: Vec<Route> = (0..args.devices).map(Route::new).collect();
    // Acks: one simulated connection per 64 devices, acked every `ack_every` requests, as
    // a heartbeat would; keeps the writer's group commit honest (someone waits on it).
    let conns: Vec<Arc<Durability>> = (0..args.devices.div_ceil(64).max(1))
        .map(|_| Arc::default())
        .collect();
    let mut seqs = vec![0u64; conns.len()];
    let mut sent = 0u64;
    // Each round sends one request per connection (its 64 devices' next fix), as a
    // session sends one request per socket read.
    for k in 0..args.per_device {
        let t = START_MS + k as i64 * args.step_secs as i64 * 1000;
        for (c, chunk) in routes.chunks_mut(64).enumerate() {
            let ops: Vec<Op> = chunk
                .iter_mut()
                .enumerate()
                .map(|(i, route)| Op::Position {
                    imei: IMEI_BASE + (c * 64 + i) as u64,
                    pos: route.next(t),
                })
                .collect();
            let n = ops.len() as u64;
            seqs[c] += 1;
            sent += n;
            let crossed = sent / args.ack_every != (sent - n) / args.ack_every;
            let ack = crossed.then(|| (conns[c].clone(), seqs[c]));
            handle.blocking_send(WriteReq::new(ops, ack))?;
        }
    }
    let write_elapsed = started.elapsed();
    // One device's day at 1 Hz, for the read benchmark.
    let mut day_route = Route::new(args.devices);
    // Made a request at a time: the whole day at once would be 17 MB of the RSS measured.
    for chunk_start in (0..86_400i64).step_by(REQ_OPS_MAX) {
        let ops: Vec<Op> = (chunk_start..(chunk_start + REQ_OPS_MAX as i64).min(86_400))
            .map(|s| Op::Position {
                imei: day_device,
                pos: day_route.next(START_MS + s * 1000),
            })
            .collect();
        handle.blocking_send(WriteReq::new(ops, None))?;
    }
    let stats = handle.stats.clone();
    drop(handle);
    join.join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    let close_elapsed = started.elapsed();
    let rss_write_peak = rss.take_peak();
    rss.stop();
    let positions_written = store.count_positions();
    drop(store);
    let bytes = dir_bytes(dir)?;
    // The read figures describe a server that opened this store: a fresh process, not the
    // writer's heap (a process that wrote 100 M positions keeps some of it however much it
    // frees).
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench-store", "--read-phase", "--dir"])
        .arg(dir)
        .args(["--devices", &args.devices.to_string()])
        .args(
            args.cache_mb
                .map(|mb| ["--cache-mb".to_string(), mb.to_string()])
                .into_iter()
                .flatten(),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("start the read phase")?;
    anyhow::ensure!(
        child.status.success(),
        "read phase failed: {}",
        child.status
    );
    let reads: serde_json::Value =
        serde_json::from_slice(&child.stdout).context("read phase output")?;
    anyhow::ensure!(
        reads["positions"].as_u64() == Some(positions_written),
        "position count changed across reopen"
    );

    let commits = stats.commits.load(Ordering::Relaxed).max(1);
    let out = serde_json::json!({
        "devices": args.devices,
        "per_device": args.per_device,
        "positions": positions_written,
        "write_s": round(write_elapsed.as_secs_f64()),
        "positions_per_s": (total as f64 / write_elapsed.as_secs_f64()).round(),
        "write_and_close_s": round(close_elapsed.as_secs_f64()),
        "commits": commits,
        "avg_batch": stats.ops.load(Ordering::Relaxed) / commits,
        "max_commit_gap_ms": round(stats.max_commit_gap_us.load(Ordering::Relaxed) as f64 / 1000.0),
        "checkpoints": stats.checkpoints.load(Ordering::Relaxed),
        "checkpoint_ms_max": round(stats.checkpoint_us_max.load(Ordering::Relaxed) as f64 / 1000.0),
        "dir_bytes": bytes,
        "bytes_per_position": round(bytes as f64 / positions_written.max(1) as f64),
        "rss_write_peak_mib": rss_write_peak / (1024 * 1024),
    });
    let mut out = out.as_object().cloned().unwrap_or_default();
    if let Some(reads) = reads.as_object() {
        out.extend(
            reads
                .iter()
                .filter(|(k, _)| *k != "positions")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// The read half, in its own process: reopen the store, read as the API would, scan it.
fn read_phase(args: &BenchStoreArgs, open_opts: OpenOptions) -> anyhow::Result<()> {
    let dir = &args.dir;
    let day_device = IMEI_BASE + args.devices as u64;
    let rss = RssSampler::start();
    let t = Instant::now();
    let opened = Store::open(dir, open_opts)?;
    let reopen = t.elapsed();
    let store = opened.store.clone();
    drop(opened);

    // A day of one device as the API's JSON, and the latest position of every device.
    let t = Instant::now();
    let (day, _) = store.positions(day_device, START_MS, START_MS + 86_400_000, 100_000)?;
    // The same function the HTTP handler writes a page with.
    let body = json::positions_body(&format!("{day_device:015}"), &day, None);
    let day_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        day.len() == 86_400,
        "day read returned {} positions",
        day.len()
    );
    let t = Instant::now();
    let devices: Vec<json::Device> = store
        .devices()
        .iter()
        .map(|(i, d)| json::device(*i, d, false, None))
        .collect();
    let latest_body = serde_json::to_vec(&devices)?;
    let latest_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rss_api_read_peak = rss.take_peak();
    // A full scan, to hold the whole store's blocks in hand once.
    let t = Instant::now();
    let report = store.verify()?;
    let scan_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.bad.is_empty(),
        "verify found damaged blocks: {:?}",
        report.bad.first()
    );
    let rss_read_peak = rss.take_peak();
    rss.stop();
    let out = serde_json::json!({
        "positions": store.count_positions(),
        "reopen_s": round(reopen.as_secs_f64()),
        "day_read_json_ms": round(day_ms),
        "day_json_bytes": body.len(),
        "latest_all_devices_ms": round(latest_ms),
        "latest_json_bytes": latest_body.len(),
        "full_verify_scan_s": round(scan_s),
        "blocks": report.blocks,
        "block_payload_bytes_per_position": round(report.block_bytes as f64 / report.positions.max(1) as f64),
        "rss_api_reads_peak_mib": rss_api_read_peak / (1024 * 1024),
        "rss_full_scan_peak_mib": rss_read_peak / (1024 * 1024),
    });
    println!("{out}");
    Ok(())
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Apparent size of every file under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// A vehicle: ~50 km/h along a drifting heading, 9–12 satellites, a new cell now and then.
struct Route {
    lat: f64,
    lon: f64,
    heading: f64,
    speed: f64,
    rng: u64,
    n: u64,
}

impl Route {
    fn new(i: u32) -> Route {
        let mut r = Route {
            lat: 0.0,
            lon: 0.0,
            heading: 0.0,
            speed: 50.0,
            rng: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            n: 0,
        };
        r.lat = 30.0 + r.unit() * 25.0;
        r.lon = -10.0 + r.unit() * 40.0;
        r.heading = r.unit() * 360.0;
        r
    }

    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self, time_ms: i64) -> PositionRecord {
        self.n += 1;
        self.heading = (self.heading + (self.unit() - 0.5) * 20.0).rem_euclid(360.0);
        self.speed = (self.speed + (self.unit() - 0.5) * 6.0).clamp(0.0, 120.0);
        let step_m = self.speed / 3.6 * 10.0;
        let h = self.heading.to_radians();
        self.lat += step_m * h.cos() / 111_320.0;
        self.lon += step_m * h.sin() / (111_320.0 * self.lat.to_radians().cos().max(0.1));
        PositionRecord {
            time_ms,
            // As the server stamps receipt: to the tenth of a second.
            received_ms: time_ms + 300 + (self.unit() * 17.0) as i64 * RECEIPT_RESOLUTION_MS,
            lat_raw: (self.lat * 1_800_000.0) as i32,
            lon_raw: (self.lon * 1_800_000.0) as i32,
            speed_kmh: self.speed as u16,
            course: self.heading as u16,
            satellites: 9 + (self.unit() * 4.0) as u8,
            valid: true,
            acc: Some(true),
            lbs: Some(LbsRecord {
                mcc: 262,
                mnc: 1,
                lac: 1000 + (self.n / 500) as u32,
                cell: 20_000 + self.n / 100,
            }),
            ..PositionRecord::default()
        }
    }
}

/// Samples this process's RSS every 50 ms and remembers the peak since the last take.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes() {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { peak, stop }
    }

    fn take_peak(&self) -> u64 {
        let v = self.peak.swap(0, Ordering::Relaxed);
        v.max(rss_bytes().unwrap_or(0))
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Resident set size from /proc/self/status.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
