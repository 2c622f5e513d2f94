//! `gt06 simulate`: a fleet of fake GT06 trackers that log in, drive deterministic routes
//! and send heartbeats, so a newcomer can watch the map move and an operator can load a
//! server: at a fixed rate per tracker, or flat out (`--max`) with a bounded window of
//! unanswered heartbeats per tracker. It ends with a summary (connections, positions
//! sent and answered, heartbeat-answer latency, throughput) as text and JSON.
//! It speaks only through real TCP and the protocol encoders; it never touches the store.

use crate::cli::SimulateArgs;
use crate::protocol::{self, encode, DeviceTime, Gps, Imei, Lbs, SplitOptions, Status};
use anyhow::Context;
use bytes::{Buf, BytesMut};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A device waits this long for its login answer, as real trackers do before retrying.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-device errors printed before the rest are only counted.
const MAX_ERRORS_SHOWN: u64 = 10;

/// Where simulated routes start: all four hemisphere combinations are covered.
const HOMES: [(f64, f64); 6] = [
    (52.5200, 13.4050),   // Berlin: N, E
    (-33.8688, 151.2093), // Sydney: S, E
    (40.7128, -74.0060),  // New York: N, W
    (-23.5505, -46.6333), // São Paulo: S, W
    (51.4779, -0.0015),   // Greenwich: N, W (just)
    (1.3521, 103.8198),   // Singapore: N, E
];

/// Heartbeat-answer latencies in microseconds, in log-linear buckets (32 per power of
/// two, so a percentile is within ~3 %): constant memory and no lock, whatever the load.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..2048).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as u64;
        ((e - 5) * 32 + (v >> (e - 5))) as usize
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < 64 {
            return i as u64;
        }
        let e = (i / 32 + 4) as u64;
        ((i % 32 + 32) as u64) << (e - 5)
    }

    fn record(&self, us: u64) {
        self.buckets[Self::index(us).min(2047)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The `p` quantile (0..=1) in microseconds; 0 when empty.
    fn quantile(&self, p: f64) -> u64 {
        let n = self.count.load(Ordering::Relaxed);
        if n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return self.max.load(Ordering::Relaxed);
        }
        let rank = ((n as f64 * p).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::lower(i).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }
}

struct Totals {
    connected: AtomicU64,
    logged_in: AtomicU64,
    failed: AtomicU64,
    positions: AtomicU64,
    positions_acked: AtomicU64,
    heartbeats: AtomicU64,
    heartbeats_acked: AtomicU64,
    latency: Histogram,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            connected: AtomicU64::new(0),
            logged_in: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            positions: AtomicU64::new(0),
            positions_acked: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            heartbeats_acked: AtomicU64::new(0),
            latency: Histogram::new(),
        }
    }
}

/// The summary, as printed with `--json` and written with `--out` (API.md).
#[derive(Serialize, Debug)]
pub struct Summary {
    pub mode: &'static str,
    pub devices: u32,
    pub connected: u64,
    pub logged_in: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub positions_sent: u64,
    pub positions_acked: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    pub positions_per_s: f64,
    pub positions_acked_per_s: f64,
    pub ack_latency_ms: Latency,
}

#[derive(Serialize, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn main(args: SimulateArgs) -> anyhow::Result<()> {
    let target: SocketAddr = args.target.parse().with_context(|| {
        format!(
            "--target `{}` is not an address like 127.0.0.1:5023",
            args.target
        )
    })?;
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 1000.0,
        "--rate must be in (0, 1000]"
    );
    anyhow::ensure!(
        args.ramp >= 0.0 && args.ramp <= 3600.0,
        "--ramp must be between 0 and 3600 seconds"
    );
    anyhow::ensure!(
        !args.max || (args.heartbeat_every > 0 && args.window > 0),
        "--max needs --heartbeat-every and --window of at least 1 (heartbeat answers pace it)"
    );
    Imei::from_u64(args.imei_base + args.devices as u64 - 1)
        .context("--imei-base plus --devices exceeds 15 digits")?;
    // One descriptor per tracker: take what the hard limit allows.
    match crate::ingest::limits::raise_nofile() {
        Ok(l) if l.soft < u64::from(args.devices) + 32 => eprintln!(
            "simulate: {} devices need more descriptors than the limit of {} allows; some will fail",
            args.devices, l.soft
        ),
        Ok(_) => {}
        Err(e) => eprintln!("simulate: cannot raise the descriptor limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(args, target))
}

async fn run(args: SimulateArgs, target: SocketAddr) -> anyhow::Result<()> {
    let totals = Arc::new(Totals::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let errors = Arc::new(AtomicU64::new(0));
    for i in 0..args.devices {
        let imei = Imei::from_u64(args.imei_base + i as u64).context("imei out of range")?;
        let totals = totals.clone();
        let stop = stop.clone();
        let args = args.clone();
        let errors = errors.clone();
        // Connects spread evenly over the ramp, as a fleet coming back would.
        let delay = Duration::from_secs_f64(args.ramp * f64::from(i) / f64::from(args.devices));
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            if let Err(e) = device(imei, i, &args, target, &totals, &stop).await {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                let n = errors.fetch_add(1, Ordering::Relaxed);
                if n < MAX_ERRORS_SHOWN {
                    eprintln!("device {imei}: {e:#}");
                } else if n == MAX_ERRORS_SHOWN {
                    eprintln!("(further device errors are only counted)");
                }
            }
        });
    }
    let deadline = async {
        if args.duration == 0 {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(Duration::from_secs(args.duration)).await
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {}
    }
    stop.cancel();
    let elapsed = started.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let summary = summarize(&totals, elapsed, &args);
    report(&summary, &args)?;
    if summary.failed > 0 || summary.logged_in < u64::from(args.devices) {
        anyhow::bail!("not every device logged in and kept its connection");
    }
    Ok(())
}

fn summarize(t: &Totals, elapsed: Duration, args: &SimulateArgs) -> Summary {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
    let positions_sent = t.positions.load(Ordering::Relaxed);
    let positions_acked = t.positions_acked.load(Ordering::Relaxed);
    Summary {
        mode: if args.max { "max" } else { "rate" },
        devices: args.devices,
        connected: t.connected.load(Ordering::Relaxed),
        logged_in: t.logged_in.load(Ordering::Relaxed),
        failed: t.failed.load(Ordering::Relaxed),
        elapsed_s: (secs * 1000.0).round() / 1000.0,
        positions_sent,
        positions_acked,
        heartbeats_sent: t.heartbeats.load(Ordering::Relaxed),
        heartbeats_acked: t.heartbeats_acked.load(Ordering::Relaxed),
        positions_per_s: (positions_sent as f64 / secs).round(),
        positions_acked_per_s: (positions_acked as f64 / secs).round(),
        ack_latency_ms: Latency {
            p50: ms(t.latency.quantile(0.5)),
            p90: ms(t.latency.quantile(0.9)),
            p99: ms(t.latency.quantile(0.99)),
            max: ms(t.latency.max.load(Ordering::Relaxed)),
        },
    }
}

fn report(s: &Summary, args: &SimulateArgs) -> anyhow::Result<()> {
    let text = format!(
        "devices {}: connected {}, logged in {}, failed {}\n\
         positions sent {} ({:.0}/s), answered {} ({:.0}/s) in {:.1} s; heartbeats sent {}, answered {}\n\
         heartbeat ack latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        s.devices,
        s.connected,
        s.logged_in,
        s.failed,
        s.positions_sent,
        s.positions_per_s,
        s.positions_acked,
        s.positions_acked_per_s,
        s.elapsed_s,
        s.heartbeats_sent,
        s.heartbeats_acked,
        s.ack_latency_ms.p50,
        s.ack_latency_ms.p90,
        s.ack_latency_ms.p99,
        s.ack_latency_ms.max,
    );
    let json = serde_json::to_string(s)?;
    if args.json {
        eprintln!("{text}");
        println!("{json}");
    } else {
        println!("{text}");
    }
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// xorshift64*: deterministic, dependency-free, good enough for routes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A vehicle moving around its home at a wandering speed and heading.
struct Route {
    lat: f64,
    lon: f64,
    heading_deg: f64,
    speed_kmh: f64,
    rng: Rng,
}

impl Route {
    fn new(index: u32, seed: u64) -> Route {
        let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x1000_0001));
        let (lat, lon) = HOMES[index as usize % HOMES.len()];
        Route {
            lat: lat + (rng.next_f64() - 0.5) * 0.05,
            lon: lon + (rng.next_f64() - 0.5) * 0.05,
            heading_deg: rng.next_f64() * 360.0,
            speed_kmh: 30.0 + rng.next_f64() * 40.0,
            rng,
        }
    }

    fn advance(&mut self, dt_s: f64) {
        self.heading_deg =
            (self.heading_deg + (self.rng.next_f64() - 0.5) * 30.0).rem_euclid(360.0);
        self.speed_kmh = (self.speed_kmh + (self.rng.next_f64() - 0.5) * 10.0).clamp(5.0, 110.0);
        let metres = self.speed_kmh / 3.6 * dt_s;
        let h = self.heading_deg.to_radians();
        self.lat = (self.lat + metres * h.cos() / 111_320.0).clamp(-85.0, 85.0);
        let cos_lat = self.lat.to_radians().cos().max(0.01);
        self.lon += metres * h.sin() / (111_320.0 * cos_lat);
        if self.lon > 180.0 {
            self.lon -= 360.0;
        } else if self.lon < -180.0 {
            self.lon += 360.0;
        }
    }

    fn gps(&self, now_ms: i64) -> Gps {
        Gps {
            time: Some(DeviceTime::from_unix_ms_utc(now_ms)),
            satellites: 9,
            lat_raw: (self.lat * protocol::COORD_SCALE).round() as i32,
            lon_raw: (self.lon * protocol::COORD_SCALE).round() as i32,
            speed_kmh: self.speed_kmh.round() as u16,
            course: (self.heading_deg.round() as u16) % 360,
            fixed: true,
            ..Gps::default()
        }
    }
}

/// Fix times a tracker reports. Up to one position a second they follow the clock; a
/// faster tracker would repeat a second, and one (IMEI, fix time) is one position, so its
/// fixes start a year back and advance one second per position: every one is stored.
struct FixClock {
    next_s: i64,
    follow_now: bool,
}

impl FixClock {
    fn new(args: &SimulateArgs) -> FixClock {
        let follow_now = !args.max && args.rate <= 1.0;
        let now_s = now_ms() / 1000;
        FixClock {
            next_s: if follow_now {
                now_s
            } else {
                now_s - 365 * 86_400
            },
            follow_now,
        }
    }

    fn next_ms(&mut self) -> i64 {
        if self.follow_now {
            self.next_s = self.next_s.max(now_ms() / 1000);
        }
        let t = self.next_s;
        self.next_s += 1;
        t * 1000
    }
}

/// Answers a tracker is waiting for.
#[derive(Default)]
struct Pending {
    heartbeats: VecDeque<(u16, Instant)>,
}

impl Pending {
    /// Takes every whole answer out of `buf` and counts it.
    fn absorb(&mut self, buf: &mut BytesMut, totals: &Totals) -> anyhow::Result<()> {
        loop {
            match protocol::split(buf, &SplitOptions::default()) {
                Ok(Some((frame, used))) => {
                    let (proto, serial) = (frame.proto, frame.serial);
                    buf.advance(used);
                    match proto {
                        0x12 => {
                            totals.positions_acked.fetch_add(1, Ordering::Relaxed);
                        }
                        0x13 => {
                            let Some((s, sent)) = self.heartbeats.pop_front() else {
                                anyhow::bail!("heartbeat answer without a heartbeat");
                            };
                            anyhow::ensure!(
                                serial == Some(s),
                                "heartbeat answer echoes serial {serial:?}, sent {s}"
                            );
                            totals.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                            totals.latency.record(sent.elapsed().as_micros() as u64);
                        }
                        _ => {}
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => anyhow::bail!("server sent an unreadable frame: {e}"),
            }
        }
    }
}

/// What one tracker sends.
struct Sender {
    route: Route,
    clock: FixClock,
    lbs: Lbs,
    serial: u16,
}

impl Sender {
    fn next_serial(&mut self) -> u16 {
        self.serial = self.serial.wrapping_add(1).max(1);
        self.serial
    }

    fn position(&mut self, dt_s: f64, out: &mut Vec<u8>) {
        self.route.advance(dt_s);
        let gps = self.route.gps(self.clock.next_ms());
        let serial = self.next_serial();
        out.extend(encode::location_0x12(&gps, &self.lbs, serial));
    }

    /// Appends a heartbeat; returns its serial.
    fn heartbeat(&mut self, out: &mut Vec<u8>) -> u16 {
        let serial = self.next_serial();
        let status = Status {
            info: 0x46,
            acc: true,
            charging: true,
            voltage_level: Some(6),
            gsm_signal: Some(4),
            alarm_code: Some(0),
            language: Some(2),
            ..Status::default()
        };
        out.extend(encode::heartbeat(&status, serial));
        serial
    }
}

async fn device(
    imei: Imei,
    index: u32,
    args: &SimulateArgs,
    target: SocketAddr,
    totals: &Totals,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut sock = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target))
        .await
        .context("connect timed out")?
        .context("connect failed")?;
    sock.set_nodelay(true)?;
    totals.connected.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::with_capacity(256);
    sock.write_all(&encode::login(imei, 1)).await?;
    let ack = tokio::time::timeout(LOGIN_TIMEOUT, next_frame(&mut sock, &mut buf))
        .await
        .context("no login answer within 5 s")??;
    anyhow::ensure!(
        ack == (0x01, Some(1)),
        "login answer does not echo the login"
    );
    totals.logged_in.fetch_add(1, Ordering::Relaxed);
    let sender = Sender {
        route: Route::new(index, args.seed),
        clock: FixClock::new(args),
        lbs: Lbs {
            mcc: 262,
            mnc: 1,
            lac: 1000 + index % 100,
            cell: 20_000 + index as u64,
        },
        serial: 1,
    };
    let (rd, wr) = sock.into_split();
    if args.max {
        flat_out(sender, rd, wr, buf, args, totals, stop).await
    } else {
        at_rate(sender, rd, wr, buf, imei, args, totals, stop).await
    }
}

/// One position every 1/rate s, a heartbeat after every K.
#[allow(clippy::too_many_arguments)]
async fn at_rate(
    mut sender: Sender,
    mut rd: OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut buf: BytesMut,
    imei: Imei,
    args: &SimulateArgs,
    totals: &Totals,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let period = Duration::from_secs_f64(1.0 / args.rate);
    // Random phase, so a fleet's reports are spread over the period as in the field.
    tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        _ = tokio::time::sleep(period.mul_f64(Rng::new(imei.as_u64()).next_f64())) => {}
    }
    let mut tick = tokio::time::interval(period);
    let mut since_heartbeat = 0u32;
    let mut pending = Pending::default();
    let mut out = Vec::with_capacity(128);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                out.clear();
                sender.position(period.as_secs_f64(), &mut out);
                since_heartbeat += 1;
                let mut heartbeat = None;
                if args.heartbeat_every > 0 && since_heartbeat >= args.heartbeat_every {
                    since_heartbeat = 0;
                    heartbeat = Some(sender.heartbeat(&mut out));
                }
                wr.write_all(&out).await?;
                totals.positions.fetch_add(1, Ordering::Relaxed);
                if let Some(serial) = heartbeat {
                    totals.heartbeats.fetch_add(1, Ordering::Relaxed);
                    pending.heartbeats.push_back((serial, Instant::now()));
                }
            }
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    anyhow::bail!("server closed the connection");
                }
                pending.absorb(&mut buf, totals)?;
            }
        }
    }
}

/// As fast as the server answers: K positions and a heartbeat per write, at most
/// `--window` heartbeats unanswered, so what is in flight per tracker stays bounded
/// (and small enough that neither side's buffers fill while the other writes).
async fn flat_out(
    mut sender: Sender,
    mut rd: OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut buf: BytesMut,
    args: &SimulateArgs,
    totals: &Totals,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let k = args.heartbeat_every;
    let window = args.window as usize;
    let mut pending = Pending::default();
    let mut out = Vec::with_capacity(40 * (k as usize + 1));
    loop {
        while pending.heartbeats.len() < window && !stop.is_cancelled() {
            out.clear();
            for _ in 0..k {
                sender.position(1.0, &mut out);
            }
            let serial = sender.heartbeat(&mut out);
            wr.write_all(&out).await?;
            totals.positions.fetch_add(u64::from(k), Ordering::Relaxed);
            totals.heartbeats.fetch_add(1, Ordering::Relaxed);
            pending.heartbeats.push_back((serial, Instant::now()));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    anyhow::bail!("server closed the connection");
                }
                pending.absorb(&mut buf, totals)?;
            }
        }
    }
}

/// The next answer's protocol number and serial.
async fn next_frame(sock: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<(u8, Option<u16>)> {
    loop {
        match protocol::split(buf, &SplitOptions::default()) {
            Ok(Some((frame, used))) => {
                let head = (frame.proto, frame.serial);
                buf.advance(used);
                return Ok(head);
            }
            Ok(None) => {}
            Err(e) => anyhow::bail!("server sent an unreadable frame: {e}"),
        }
        if sock.read_buf(buf).await? == 0 {
            anyhow::bail!("server closed the connection");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_quantiles_within_a_few_percent() {
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1000, 12_345, 1 << 40] {
            let i = Histogram::index(v);
            assert!(Histogram::lower(i) <= v, "{v}");
            assert!(Histogram::lower(i + 1) > v, "{v}");
        }
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.04, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
