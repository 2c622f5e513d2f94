//! Zero-blackout restarts: the listening socket outlives the server process, as
//! `gt06.socket` makes it under systemd.
//!
//! `systemd-socket-activate` (tested in `systemd.rs`) execs the server once, in its own
//! pid, on the first connection, and cannot start it again after it exits, so it cannot
//! play the service manager across restarts. This test does what systemd's socket unit
//! does instead: it owns the listening socket (backlog 4096, like `gt06.socket`) and, for
//! each restart, SIGTERMs the server, waits for it to exit, and starts a new one with the
//! socket as fd 3 and `LISTEN_FDS=1` / `LISTEN_PID=<the new pid>` (set by a `sh` that
//! `exec`s the server, so the pid is right without touching the environment after fork).

use crate::durability::{heartbeat_status, LBS, START_S};
use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Imei};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Positions per batch; a batch counts as ACKed when the heartbeat after it is answered.
const BATCH: usize = 4;
/// Longer than a restart takes: a device waiting in the backlog must not give up.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `gt06 serve` on `data` with `listener` passed as fd 3.
fn start_activated(listener: RawFd, data: &Path, log: &Path) -> Child {
    let _ = std::fs::remove_file(data.join("ports.json"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        // Were fd 3 ignored, the server would listen on another port and ports.json says so.
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "gt06")
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(listener, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2(3, 3) would keep close-on-exec: clear it either way.
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn gt06")
}

/// The HTTP address from `ports.json`, checking the GT06 port is the passed socket's.
fn wait_ports(data: &Path, tcp: SocketAddr, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(data.join("ports.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["tcp"], tcp.to_string(), "the passed socket was not used");
            return v["http"].as_str().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no ports.json within 15 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm_and_wait(child: &mut Child, log: &Path) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(
                st.success(),
                "gt06 exited {st}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "gt06 did not exit within 20 s of SIGTERM:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process, killed if the test fails before it stops it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the fleet's threads when the test ends, also by a failed assert.
struct StopOnDrop(Arc<Fleet>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// What the fleet saw; every counter but the good ones must stay 0.
#[derive(Default)]
struct Tally {
    logins_acked: AtomicU64,
    connects_failed: AtomicU64,
    login_timeouts: AtomicU64,
    login_wrong_answer: AtomicU64,
    /// Closed by the server before answering a login, outside a shutdown.
    login_closed_outside_restart: AtomicU64,
    /// Closed by the old server during its shutdown before it answered a login.
    login_closed_in_shutdown: AtomicU64,
    batches_acked: AtomicU64,
    /// Logins whose connection was made while no server process was accepting (from the
    /// SIGTERM until the new one wrote ports.json) and that were ACKed: they waited in
    /// the backlog.
    acked_from_backlog: AtomicU64,
}

struct Fleet {
    addr: SocketAddr,
    stop: AtomicBool,
    /// Which server process is current (0 = the first); bumped after the old one exited.
    generation: AtomicUsize,
    /// True from the SIGTERM until the old process has exited.
    restarting: AtomicBool,
    /// True from the SIGTERM until the new process has written ports.json.
    gap: AtomicBool,
    /// Per device, the latest generation in which its login was ACKed.
    login_gen: Vec<AtomicUsize>,
    tally: Tally,
}

/// A device and the fix times (ms) of its ACKed positions.
type DeviceAcks = (Imei, Vec<i64>);

struct Dev {
    idx: usize,
    imei: Imei,
    sock: Option<TcpStream>,
    serial: u16,
    next_k: u64,
    acked: Vec<i64>,
}

fn fix(t_s: i64, k: u64) -> Gps {
    Gps {
        time: Some(DeviceTime::from_unix_ms_utc(t_s * 1000)),
        satellites: 9,
        lat_raw: 90_000_000 + (k % 1000) as i32 * 37,
        lon_raw: 24_000_000 - (k % 1000) as i32 * 11,
        speed_kmh: (k % 100) as u16,
        course: (k % 360) as u16,
        fixed: true,
        ..Gps::default()
    }
}

/// One step of one device: connect and log in, or send a batch and read its answers.
/// Any failure drops the connection; the next step reconnects.
fn step(dev: &mut Dev, fleet: &Fleet) {
    let Some(sock) = dev.sock.as_mut() else {
        let Ok(mut sock) = TcpStream::connect_timeout(&fleet.addr, Duration::from_secs(5)) else {
            // The listening socket is never closed, so this must not happen.
            fleet.tally.connects_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let in_gap = fleet.gap.load(Ordering::SeqCst);
        let _ = sock.set_read_timeout(Some(READ_TIMEOUT));
        let _ = sock.set_nodelay(true);
        dev.serial = dev.serial.wrapping_add(1);
        let serial = dev.serial;
        if sock.write_all(&encode::login(dev.imei, serial)).is_err() {
            return;
        }
        let mut answer = [0u8; 10];
        let mut got = 0;
        let outcome = loop {
            match sock.read(&mut answer[got..]) {
                Ok(0) => break Err(true),
                Ok(n) => {
                    got += n;
                    if got == answer.len() {
                        break Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Err(false)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(true),
            }
        };
        let t = &fleet.tally;
        match outcome {
            Ok(()) if answer[..] == ack(0x01, serial)[..] => {
                t.logins_acked.fetch_add(1, Ordering::Relaxed);
                if in_gap {
                    t.acked_from_backlog.fetch_add(1, Ordering::Relaxed);
                }
                fleet.login_gen[dev.idx]
                    .fetch_max(fleet.generation.load(Ordering::SeqCst), Ordering::SeqCst);
                dev.sock = Some(sock);
            }
            Ok(()) => {
                t.login_wrong_answer.fetch_add(1, Ordering::Relaxed);
            }
            Err(false) => {
                t.login_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(true) if fleet.restarting.load(Ordering::SeqCst) => {
                t.login_closed_in_shutdown.fetch_add(1, Ordering::Relaxed);
            }
            Err(true) => {
                t.login_closed_outside_restart
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    };
    let mut out = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let k = dev.next_k;
        dev.next_k += 1;
        let t = START_S + k as i64;
        dev.serial = dev.serial.wrapping_add(1);
        out.extend(encode::location_0x12(&fix(t, k), &LBS, dev.serial));
        batch.push(t * 1000);
    }
    dev.serial = dev.serial.wrapping_add(1);
    out.extend(encode::heartbeat(&heartbeat_status(), dev.serial));
    let mut answers = [0u8; 10 * (BATCH + 1)];
    if sock.write_all(&out).is_err() || sock.read_exact(&mut answers).is_err() {
        dev.sock = None;
        return;
    }
    assert_eq!(
        answers[10 * BATCH..],
        ack(0x13, dev.serial)[..],
        "{}: heartbeat answer out of order",
        dev.imei
    );
    dev.acked.extend(batch);
    fleet.tally.batches_acked.fetch_add(1, Ordering::Relaxed);
}

fn stored_times(http: SocketAddr, imei: Imei) -> Vec<i64> {
    let mut out = Vec::new();
    let mut from = String::from("1970-01-01T00:00:00Z");
    for _ in 0..1000 {
        let (s, body, _) = http_get(
            http,
            &format!("/api/devices/{imei}/positions?limit=100000&from={from}"),
        );
        if s == 404 {
            return out;
        }
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for p in v["positions"].as_array().unwrap() {
            out.push(gt06::http::json::parse_rfc3339(p["time"].as_str().unwrap()).unwrap());
        }
        match v["next"].as_str() {
            Some(n) => from = n.to_string(),
            None => return out,
        }
    }
    panic!("too many pages");
}

/// Polls until every device has logged in with generation `gen` (≤ `within`).
fn wait_all_logged_in(fleet: &Fleet, gen: usize, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let behind: Vec<usize> = (0..fleet.login_gen.len())
            .filter(|i| fleet.login_gen[*i].load(Ordering::SeqCst) < gen)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} devices never logged in to server #{gen} (first: {:?})",
                behind.len(),
                &behind[..behind.len().min(5)]
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until the fleet has `n` more ACKed batches than now (≤ 30 s).
fn wait_batches(fleet: &Fleet, n: u64) {
    let base = fleet.tally.batches_acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.tally.batches_acked.load(Ordering::Relaxed) < base + n {
        assert!(Instant::now() < deadline, "the fleet stopped writing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn restarts_on_a_kept_listening_socket_ack_every_login_and_lose_nothing_acked() {
    let slow = std::env::var_os("GT06_SLOW_TESTS").is_some();
    // 200 devices × 5 restarts take ~4 s here; the slow run does 20 restarts.
    let (devices, restarts) = (200, if slow { 20 } else { 5 });
    let threads = 8;
    let started = Instant::now();
    let dir = TempDir::new("restart");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = dir.0.join("gt06.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // gt06.socket's Backlog=4096: the whole fleet can wait while the server restarts.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);

    let mut child = KillOnDrop(start_activated(listener.as_raw_fd(), &data, &log));
    let mut http = wait_ports(&data, addr, &log);
    let fleet = Arc::new(Fleet {
        addr,
        stop: AtomicBool::new(false),
        // Server #1 is the first; 0 in `login_gen` means "never logged in".
        generation: AtomicUsize::new(1),
        restarting: AtomicBool::new(false),
        gap: AtomicBool::new(false),
        login_gen: (0..devices).map(|_| AtomicUsize::new(0)).collect(),
        tally: Tally::default(),
    });
    let _stop_fleet_on_panic = StopOnDrop(fleet.clone());
    let results: Arc<Mutex<Vec<DeviceAcks>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..threads {
        let fleet = fleet.clone();
        let results = results.clone();
        workers.push(std::thread::spawn(move || {
            let mut devs: Vec<Dev> = (w..devices)
                .step_by(threads)
                .map(|idx| Dev {
                    idx,
                    imei: Imei::from_u64(862_000_000_000_000 + idx as u64).unwrap(),
                    sock: None,
                    serial: 0,
                    next_k: 0,
                    acked: Vec::new(),
                })
                .collect();
            // Bounded: the test stops the fleet within minutes; this is the backstop.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !fleet.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for d in devs.iter_mut() {
                    step(d, &fleet);
                }
            }
            let mut r = results.lock().unwrap();
            r.extend(devs.into_iter().map(|d| (d.imei, d.acked)));
        }));
    }

    let fail = |msg: String, log: &Path| -> ! {
        panic!(
            "{msg}\n---- gt06 log ----\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    };
    if let Err(e) = wait_all_logged_in(&fleet, 1, Duration::from_secs(30)) {
        fleet.stop.store(true, Ordering::Relaxed);
        fail(e, &log);
    }
    wait_batches(&fleet, devices as u64);
    let mut restart_ms = Vec::new();
    for r in 0..restarts {
        let t0 = Instant::now();
        fleet.gap.store(true, Ordering::SeqCst);
        fleet.restarting.store(true, Ordering::SeqCst);
        sigterm_and_wait(&mut child.0, &log);
        let gen = fleet.generation.fetch_add(1, Ordering::SeqCst) + 1;
        fleet.restarting.store(false, Ordering::SeqCst);
        child = KillOnDrop(start_activated(listener.as_raw_fd(), &data, &log));
        http = wait_ports(&data, addr, &log);
        fleet.gap.store(false, Ordering::SeqCst);
        restart_ms.push(t0.elapsed().as_millis());
        // Every device was cut off by the old server or connects afresh: each one's
        // next login must be answered by the new server.
        if let Err(e) = wait_all_logged_in(&fleet, gen, Duration::from_secs(60)) {
            fleet.stop.store(true, Ordering::Relaxed);
            fail(format!("restart {}: {e}", r + 1), &log);
        }
        wait_batches(&fleet, 3 * devices as u64);
    }
    fleet.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let t = &fleet.tally;
    let counts = format!(
        "logins acked {}, connects failed {}, login timeouts {}, wrong answers {}, \
         closed before the login answer: {} outside and {} during a shutdown, \
         ACKed after waiting in the backlog {}, batches {}",
        t.logins_acked.load(Ordering::Relaxed),
        t.connects_failed.load(Ordering::Relaxed),
        t.login_timeouts.load(Ordering::Relaxed),
        t.login_wrong_answer.load(Ordering::Relaxed),
        t.login_closed_outside_restart.load(Ordering::Relaxed),
        t.login_closed_in_shutdown.load(Ordering::Relaxed),
        t.acked_from_backlog.load(Ordering::Relaxed),
        t.batches_acked.load(Ordering::Relaxed),
    );
    eprintln!(
        "restart test: {devices} devices, {restarts} restarts ({restart_ms:?} ms each); {counts}"
    );
    assert_eq!(t.connects_failed.load(Ordering::Relaxed), 0, "{counts}");
    assert_eq!(t.login_timeouts.load(Ordering::Relaxed), 0, "{counts}");
    assert_eq!(t.login_wrong_answer.load(Ordering::Relaxed), 0, "{counts}");
    assert_eq!(
        t.login_closed_outside_restart.load(Ordering::Relaxed),
        0,
        "{counts}"
    );

    assert!(
        t.acked_from_backlog.load(Ordering::Relaxed) > 0,
        "no device connected while the server was down: the test did not test that ({counts})"
    );

    // Nothing ACKed was lost, nothing stored twice.
    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), devices);
    let mut total = 0;
    for (imei, acked) in &results {
        let times = stored_times(http, *imei);
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{imei}: duplicates or disorder"
        );
        let have: BTreeSet<i64> = times.into_iter().collect();
        let missing: Vec<_> = acked.iter().filter(|t| !have.contains(t)).take(5).collect();
        assert!(
            missing.is_empty(),
            "{imei} lost ACKed positions {missing:?}"
        );
        total += acked.len();
    }
    assert!(
        total >= devices * BATCH * (restarts + 1),
        "only {total} ACKed positions"
    );
    sigterm_and_wait(&mut child.0, &log);
    eprintln!(
        "restart test: {total} ACKed positions all stored; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
