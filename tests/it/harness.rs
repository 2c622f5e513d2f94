//! Starts the real `gt06` binary on free loopback ports and talks to it as devices
//! (raw TCP) and as a browser or script would (raw HTTP/1.1).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Real frames with known answers, from gt06-protocol.md.
/// gt06-protocol.md §13.1 / peer vector 2: login of 864717003283581, serial 9.
pub const LOGIN_V2: &str = "78780d01086471700328358100093f040d0a";
/// §13.2 / peer vector 144: 0x12 location, serial 3.
pub const LOCATION_V144: &str =
    "78781f120f0a140e150bc505e51e780293a9e8005400 00f601006e0055da00035f240d0a";
/// §8.4: heartbeat, serial 0x0129.
pub const HEARTBEAT_84: &str = "78780a13c40604000201298f5b0d0a";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gt06-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gt06")
}

/// A running server. Killed on drop; its log is printed when a test fails.
pub struct Gt06 {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    _dir: Option<TempDir>,
}

impl Gt06 {
    pub fn start() -> Gt06 {
        let dir = TempDir::new("srv");
        let data = dir.0.join("data");
        let mut g = Gt06::start_in(&data, &[]);
        g._dir = Some(dir);
        g
    }

    /// Starts in a fresh directory with `toml` as its config file.
    pub fn start_config(toml: &str) -> Gt06 {
        let dir = TempDir::new("srv");
        let config = dir.0.join("gt06.toml");
        std::fs::write(&config, toml).unwrap();
        let data = dir.0.join("data");
        let mut g = Gt06::start_in(&data, &["--config", config.to_str().unwrap()]);
        g._dir = Some(dir);
        g
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts on `data` with extra arguments after `serve`.
    pub fn start_in(data: &Path, extra: &[&str]) -> Gt06 {
        let log = data.with_extension(format!("log{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(data.join("ports.json"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(data)
            .args([
                "--tcp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn gt06");
        let ports = data.join("ports.json");
        let deadline = Instant::now() + Duration::from_secs(10);
        let (tcp, http) = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    let a = |k: &str| v[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
                    break (a("tcp"), a("http"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "gt06 did not write ports.json within 10 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Gt06 {
            child: Some(child),
            data: data.to_path_buf(),
            tcp,
            http,
            log,
            _dir: None,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `needle` appears (≤ 5 s).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log never showed `{needle}`:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (≤ 15 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        sigterm_and_wait(&mut c, &self.log)
    }

    pub fn device(&self) -> Device {
        Device::connect(self.tcp)
    }

    /// A device that has logged in as `imei` (the login answer is checked byte for byte).
    pub fn logged_in(&self, imei: &str, serial: u16) -> Device {
        let mut d = self.device();
        let login =
            gt06::protocol::encode::login(gt06::protocol::Imei::parse(imei).unwrap(), serial);
        assert_eq!(d.send_expect(&login, 10), ack(0x01, serial));
        d
    }

    /// `/api/devices/{imei}` once the store shows the device seen at or after `since_ms`
    /// (Unix ms, taken before the frame was sent), or None after 5 s. Status updates
    /// (login, heartbeat, information) are answered without waiting for their commit, so
    /// a read right after their answer may not show them yet.
    pub fn device_seen_since(&self, imei: &str, since_ms: i64) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, dev) = self.get_json(&format!("/api/devices/{imei}"));
            let seen = dev["last_seen"]
                .as_str()
                .and_then(gt06::http::json::parse_rfc3339);
            if status == 200 && seen.is_some_and(|t| t >= since_ms) {
                return Some(dev);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>, String) {
        http_get(self.http, path)
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.get(path);
        let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        (status, v)
    }
}

impl Drop for Gt06 {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- gt06 log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `gt06 verify --data-dir DATA` on a stopped store; panics with its output unless it
/// succeeds; returns what it printed.
pub fn verify_ok(data: &Path) -> String {
    let out = Command::new(bin())
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "verify failed:\n{text}");
    text
}

/// The value of one series of `/metrics`, named exactly as written (labels included).
pub fn metric(g: &Gt06, series: &str) -> f64 {
    let (_, body, _) = g.get("/metrics");
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// The wall clock in Unix milliseconds, as the server reads it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SIGTERM to `child`, then its exit status (≤ 15 s; panics with the log after that).
pub fn sigterm_and_wait(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "gt06 did not exit within 15 s of SIGTERM:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tracker: a TCP connection with blocking reads under a timeout.
pub struct Device {
    pub sock: TcpStream,
}

impl Device {
    pub fn connect(addr: SocketAddr) -> Device {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.set_nodelay(true).unwrap();
        Device { sock }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to gt06");
    }

    /// Reads exactly `n` bytes (panics after the 5 s read timeout).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.sock
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("expected {n} bytes from gt06: {e}"));
        buf
    }

    pub fn send_expect(&mut self, bytes: &[u8], answer_len: usize) -> Vec<u8> {
        self.send(bytes);
        self.read_exact(answer_len)
    }

    /// True when nothing arrives within `wait`.
    pub fn silent_for(&mut self, wait: Duration) -> bool {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let r = self.sock.read(&mut b);
        self.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        match r {
            Ok(0) => panic!("connection closed while expecting silence"),
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// True when the server closes the connection within 5 s.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// The 10-byte generic answer `78 78 05 <proto> <serial> <crc> 0d 0a`.
pub fn ack(proto: u8, serial: u16) -> Vec<u8> {
    gt06::protocol::encode::frame(gt06::protocol::Form::Short, proto, &[], serial)
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// One HTTP/1.1 GET with `Connection: close`: (status, body, content-type).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read http response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, body, ctype)
}
