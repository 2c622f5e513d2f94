//! Connection limits and bad clients: caps refuse the excess with one line, accept errors
//! back off, and every kind of misbehaving client is closed by a limit with exactly one
//! log line while well-behaved trackers on the same server keep getting their answers.

use crate::harness::*;
use gt06::protocol::{encode, Imei, Status};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn heartbeat(serial: u16) -> Vec<u8> {
    encode::heartbeat(
        &Status {
            info: 0x46,
            voltage_level: Some(6),
            gsm_signal: Some(4),
            alarm_code: Some(0),
            language: Some(2),
            ..Status::default()
        },
        serial,
    )
}

fn login(imei: u64, serial: u16) -> Vec<u8> {
    encode::login(Imei::from_u64(imei).unwrap(), serial)
}

/// True when the server closes `s` within `wait` (whatever it still had to say is read
/// and thrown away).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Log lines at WARN (or ERROR) about the connection from `peer`.
fn warn_lines(log: &str, peer: SocketAddr) -> Vec<String> {
    let needle = format!("peer={peer}");
    log.lines()
        .filter(|l| l.contains(&needle) && (l.contains("WARN") || l.contains("ERROR")))
        .map(str::to_string)
        .collect()
}

fn metric(g: &Gt06, line_start: &str) -> u64 {
    let (_, body, _) = g.get("/metrics");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"))
}

#[test]
fn per_address_cap_refuses_the_excess_with_one_line_per_minute_and_a_counter() {
    let g = Gt06::start_config("[tcp]\nmax_connections_per_ip = 2\n");
    let mut a = g.logged_in("864717003283581", 1);
    let mut b = g.logged_in("864717003283582", 1);
    for _ in 0..5 {
        let mut refused = g.device();
        assert!(
            refused.closed_by_server(),
            "a third connection from one address was not closed"
        );
    }
    // The admitted ones are untouched.
    assert_eq!(a.send_expect(&heartbeat(2), 10), ack(0x13, 2));
    assert_eq!(b.send_expect(&heartbeat(2), 10), ack(0x13, 2));
    let log = g.wait_log("connection refused");
    assert_eq!(log.matches("connection refused").count(), 1, "{log}");
    assert!(log.contains("reason=\"max_connections_per_ip\""), "{log}");
    assert_eq!(
        metric(
            &g,
            "gt06_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        5
    );
    // A slot freed is a slot for the next one.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = g.device();
        d.send(&login(864_717_003_283_583, 1));
        let mut buf = [0u8; 10];
        if d.sock.read_exact(&mut buf).is_ok() {
            assert_eq!(buf.to_vec(), ack(0x01, 1));
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn global_cap_refuses_the_excess_and_logs_it() {
    let g = Gt06::start_config("[tcp]\nmax_connections = 3\nmax_connections_per_ip = 0\n");
    let log = g.wait_log("tracker connection caps");
    assert!(log.contains("max_connections=3"), "{log}");
    assert!(log.contains("file descriptor limit"), "{log}");
    let mut held: Vec<Device> = (0..3)
        .map(|i| g.logged_in(&(864_717_003_283_581u64 + i).to_string(), 1))
        .collect();
    let mut refused = g.device();
    assert!(refused.closed_by_server());
    let log = g.wait_log("connection refused");
    assert!(log.contains("reason=\"max_connections\""), "{log}");
    assert_eq!(
        metric(
            &g,
            "gt06_connections_refused_total{reason=\"max_connections\"}"
        ),
        1
    );
    for d in &mut held {
        assert_eq!(d.send_expect(&heartbeat(2), 10), ack(0x13, 2));
    }
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn set_soft_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes only the structs passed.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit write: {}", std::io::Error::last_os_error());
}

#[test]
fn running_out_of_descriptors_backs_off_instead_of_spinning_and_recovers() {
    let g = Gt06::start();
    let pid = g.pid();
    let mut d = g.logged_in("864717003283581", 1);
    // The journal fills its next segment on a thread with a file of its own open; the
    // count below must not include a descriptor that is about to be given back, so it
    // waits for the spare to be filled and closed.
    let spare_open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.ends_with("spare.tmp")))
    };
    let spare = g.data.join("journal/spare.tmp");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !spare.exists() || spare_open() {
        assert!(
            std::time::Instant::now() < until,
            "spare still open after 20 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // No descriptor left for a new connection (the cap, computed at start, is far above).
    set_soft_nofile(pid, open_fds);
    let waiting: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect_timeout(&g.tcp, Duration::from_secs(5)).unwrap())
        .collect();
    g.wait_log("accept failed; backing off");
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // Spinning on accept would burn ~200 ticks (2 s of one core at 100 Hz).
    assert!(
        used < 60,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    // Logged-in trackers are still answered.
    assert_eq!(d.send_expect(&heartbeat(2), 10), ack(0x13, 2));
    let log = g.log_text();
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "one line per episode:\n{log}"
    );
    // Descriptors again: the waiting connections are accepted and served.
    set_soft_nofile(pid, 20_000.min(open_fds + 1000));
    g.wait_log("accepting trackers again");
    drop(waiting);
    let mut e = g.logged_in("864717003283582", 1);
    assert_eq!(e.send_expect(&heartbeat(2), 10), ack(0x13, 2));
}

/// Well-behaved trackers: each sends a heartbeat every 50 ms and waits for its answer
/// (the read times out after 5 s, which fails the test).
struct GoodFleet {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl GoodFleet {
    fn start(g: &Gt06, n: u64) -> GoodFleet {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|i| {
                let mut d = g.logged_in(&(860_000_000_000_001 + i).to_string(), 1);
                let (stop, acks) = (stop.clone(), acks.clone());
                thread::spawn(move || {
                    let mut serial = 2u16;
                    while !stop.load(Ordering::Relaxed) {
                        assert_eq!(d.send_expect(&heartbeat(serial), 10), ack(0x13, serial));
                        acks.fetch_add(1, Ordering::Relaxed);
                        serial = serial.wrapping_add(1).max(1);
                        thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        GoodFleet {
            stop,
            acks,
            threads,
        }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a well-behaved tracker lost an answer");
        }
        self.acks.load(Ordering::Relaxed)
    }
}

fn set_recv_buffer(s: &TcpStream, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with an int option on a socket we own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            4,
        );
    }
}

#[test]
fn bad_clients_are_closed_by_limits_with_one_line_each_while_good_trackers_are_answered() {
    let _ = gt06::ingest::limits::raise_nofile();
    let g = Gt06::start_config(
        "[tcp]\nlogin_timeout_secs = 1\nframe_timeout_secs = 1\nwrite_timeout_secs = 1\nidle_timeout_secs = 3\n",
    );
    let good = GoodFleet::start(&g, 3);
    let connect = || TcpStream::connect_timeout(&g.tcp, Duration::from_secs(5)).unwrap();

    // 1,000 connections that never log in (they count against the caps meanwhile).
    let silent: Vec<TcpStream> = (0..1000).map(|_| connect()).collect();

    // Slowloris before login: a login frame one byte every 300 ms.
    let mut slow_anon = connect();
    let slow_anon_addr = slow_anon.local_addr().unwrap();
    let slow_anon_t = {
        let mut s = slow_anon.try_clone().unwrap();
        thread::spawn(move || {
            for b in login(864_717_003_283_590, 1) {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // Slowloris after login: a heartbeat one byte every 300 ms.
    let mut slow = connect();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(&login(864_717_003_283_591, 1)).unwrap();
    let mut a = [0u8; 10];
    slow.read_exact(&mut a).unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let slow_t = {
        let mut s = slow.try_clone().unwrap();
        thread::spawn(move || {
            for b in heartbeat(2) {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // 1 MiB of junk.
    let mut junk = connect();
    let junk_addr = junk.local_addr().unwrap();
    let junk_t = {
        let mut s = junk.try_clone().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        thread::spawn(move || {
            let _ = s.write_all(&vec![0x55u8; 1 << 20]);
        })
    };

    // Logs in, then sends heartbeats and never reads an answer.
    let mut deaf = connect();
    set_recv_buffer(&deaf, 4096);
    deaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    deaf.write_all(&login(864_717_003_283_592, 1)).unwrap();
    deaf.read_exact(&mut a).unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let deaf_t = {
        let mut s = deaf.try_clone().unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut serial = 2u16;
            let mut chunk = Vec::new();
            while Instant::now() < deadline {
                chunk.clear();
                for _ in 0..50 {
                    chunk.extend(heartbeat(serial));
                    serial = serial.wrapping_add(1).max(1);
                }
                match s.write_all(&chunk) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        thread::sleep(Duration::from_millis(100))
                    }
                    Err(_) => return,
                }
            }
        })
    };

    // A logged-in tracker that falls silent.
    let mut quiet = connect();
    quiet
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    quiet.write_all(&login(864_717_003_283_593, 1)).unwrap();
    quiet.read_exact(&mut a).unwrap();
    let quiet_addr = quiet.local_addr().unwrap();

    let acks_before = good.acks();
    for (name, s) in [
        ("slowloris before login", &mut slow_anon),
        ("slowloris after login", &mut slow),
        ("1 MiB of junk", &mut junk),
        ("never reads", &mut deaf),
        ("silent after login", &mut quiet),
    ] {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "{name}: not closed"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, mut s) in silent.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(&mut s, left),
            "silent connection {i} not closed"
        );
    }
    for t in [slow_anon_t, slow_t, junk_t, deaf_t] {
        t.join().unwrap();
    }
    assert!(
        good.acks() > acks_before,
        "good trackers got no answers meanwhile"
    );
    let acks = good.finish();
    assert!(acks >= 10, "{acks}");

    let log = g.wait_log("idle_timeout");
    for (name, addr, reason) in [
        ("slowloris before login", slow_anon_addr, "login_timeout"),
        ("slowloris after login", slow_addr, "frame_timeout"),
        ("1 MiB of junk", junk_addr, "junk"),
        ("never reads", deaf_addr, "write_timeout"),
        ("silent after login", quiet_addr, "idle_timeout"),
    ] {
        let lines = warn_lines(&log, addr);
        assert_eq!(lines.len(), 1, "{name}: {lines:#?}");
        assert!(
            lines[0].contains(&format!("reason=\"{reason}\"")),
            "{name}: {}",
            lines[0]
        );
    }
    let login_timeouts = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("reason=\"login_timeout\""))
        .count();
    assert_eq!(login_timeouts, 1001, "one line per silent connection");
}
