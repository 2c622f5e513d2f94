//! `gt06 simulate`: a fleet of fake GT06 trackers that log in, drive deterministic routes
//! and send heartbeats, so a newcomer can watch the map move and an operator can load a
//! server. It speaks only through real TCP and the protocol encoders; it never touches
//! the store.

use crate::cli::SimulateArgs;
use crate::protocol::{self, encode, DeviceTime, Gps, Imei, Lbs, SplitOptions, Status};
use anyhow::Context;
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A device waits this long for its login answer, as real trackers do before retrying.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where simulated routes start: all four hemisphere combinations are covered.
const HOMES: [(f64, f64); 6] = [
    (52.5200, 13.4050),   // Berlin: N, E
    (-33.8688, 151.2093), // Sydney: S, E
    (40.7128, -74.0060),  // New York: N, W
    (-23.5505, -46.6333), // São Paulo: S, W
    (51.4779, -0.0015),   // Greenwich: N, W (just)
    (1.3521, 103.8198),   // Singapore: N, E
];

#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    logged_in: AtomicU64,
    failed: AtomicU64,
    positions: AtomicU64,
    heartbeats_acked: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
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
    Imei::from_u64(args.imei_base + args.devices as u64 - 1)
        .context("--imei-base plus --devices exceeds 15 digits")?;
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
    for i in 0..args.devices {
        let imei = Imei::from_u64(args.imei_base + i as u64).context("imei out of range")?;
        let totals = totals.clone();
        let stop = stop.clone();
        let args = args.clone();
        // Spread connects over up to a second so a demo fleet doesn't arrive as one burst.
        let delay = Duration::from_micros(1_000_000 * i as u64 / args.devices.max(1) as u64);
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = device(imei, i, &args, target, &totals, &stop).await {
                totals.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("device {imei}: {e:#}");
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
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    report(&totals, started.elapsed(), args.devices);
    let t = &totals;
    if t.failed.load(Ordering::Relaxed) > 0
        || t.logged_in.load(Ordering::Relaxed) < args.devices as u64
    {
        anyhow::bail!("not every device logged in and kept its connection");
    }
    Ok(())
}

fn report(t: &Totals, elapsed: Duration, devices: u32) {
    let mut lat = t.latencies_us.lock().map(|v| v.clone()).unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[idx.min(lat.len() - 1)] as f64 / 1000.0
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    let positions = t.positions.load(Ordering::Relaxed);
    println!(
        "devices {devices}: connected {}, logged in {}, failed {}",
        t.connected.load(Ordering::Relaxed),
        t.logged_in.load(Ordering::Relaxed),
        t.failed.load(Ordering::Relaxed)
    );
    println!(
        "positions sent {positions} in {secs:.1} s ({:.0}/s); heartbeats acked {}",
        positions as f64 / secs,
        t.heartbeats_acked.load(Ordering::Relaxed)
    );
    println!(
        "heartbeat ack latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
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
    let mut serial: u16 = 1;
    let mut buf = BytesMut::with_capacity(256);
    sock.write_all(&encode::login(imei, serial)).await?;
    let ack = tokio::time::timeout(LOGIN_TIMEOUT, next_frame(&mut sock, &mut buf))
        .await
        .context("no login answer within 5 s")??;
    anyhow::ensure!(
        ack.proto == 0x01 && ack.serial == Some(serial),
        "login answer does not echo the login"
    );
    totals.logged_in.fetch_add(1, Ordering::Relaxed);

    let mut route = Route::new(index, args.seed);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut tick = tokio::time::interval(period);
    // Random phase, so a fleet's reports are spread over the period as in the field.
    tokio::time::sleep(period.mul_f64(Rng::new(imei.as_u64()).next_f64())).await;
    let lbs = Lbs {
        mcc: 262,
        mnc: 1,
        lac: 1000 + index % 100,
        cell: 20_000 + index as u64,
    };
    let mut since_heartbeat = 0u32;
    let (mut rd, mut wr) = sock.into_split();
    let mut pending_heartbeats: std::collections::VecDeque<(u16, Instant)> = Default::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                route.advance(period.as_secs_f64());
                serial = serial.wrapping_add(1).max(1);
                wr.write_all(&encode::location_0x12(&route.gps(now_ms()), &lbs, serial)).await?;
                totals.positions.fetch_add(1, Ordering::Relaxed);
                since_heartbeat += 1;
                if args.heartbeat_every > 0 && since_heartbeat >= args.heartbeat_every {
                    since_heartbeat = 0;
                    serial = serial.wrapping_add(1).max(1);
                    let status = Status { info: 0x46, acc: true, charging: true, voltage_level: Some(6), gsm_signal: Some(4), alarm_code: Some(0), language: Some(2), ..Status::default() };
                    wr.write_all(&encode::heartbeat(&status, serial)).await?;
                    pending_heartbeats.push_back((serial, Instant::now()));
                }
            }
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    anyhow::bail!("server closed the connection");
                }
                while let Ok(Some((frame, used))) = protocol::split(&buf, &SplitOptions::default()) {
                    buf.advance(used);
                    if frame.proto == 0x13 {
                        if let Some((s, sent)) = pending_heartbeats.pop_front() {
                            anyhow::ensure!(frame.serial == Some(s), "heartbeat answer echoes serial {:?}, sent {s}", frame.serial);
                            totals.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut v) = totals.latencies_us.lock() {
                                v.push(sent.elapsed().as_micros() as u64);
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn next_frame(sock: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<protocol::Frame> {
    loop {
        match protocol::split(buf, &SplitOptions::default()) {
            Ok(Some((frame, used))) => {
                buf.advance(used);
                return Ok(frame);
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
