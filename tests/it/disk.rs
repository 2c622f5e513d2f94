//! The disk guard on a real, small tmpfs mounted by the test: the disk fills (below the
//! threshold, and completely), devices keep sending, the server stays up, says so, and
//! resumes by itself once space is freed; nothing answered before is lost.
//!
//! Mounting needs root (CI runs as root); without it these tests print why and pass.

use crate::durability::{heartbeat_status, START_S};
use crate::harness::*;
use gt06::protocol::{encode, DeviceTime, Gps, Imei, Lbs, Location, Status};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// A tmpfs of a few MiB, unmounted (lazily if the server still holds it) on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(tag: &str, mib: u64) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("gt06-it-tmpfs-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} ({}): {}",
                    dir.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    gt06::store::guard::statvfs(dir).unwrap().0
}

/// Writes `path` until at most `leave` bytes are free (0: until the filesystem refuses).
fn fill(path: &Path, leave: u64) {
    let dir = path.parent().unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    for _ in 0..10_000 {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = (free - leave).min(MIB) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    assert!(free_bytes(dir) <= leave.max(4096), "fill left too much");
}

fn fix(t_s: i64, k: u64) -> Gps {
    Gps {
        time: Some(DeviceTime::from_unix_ms_utc(t_s * 1000)),
        satellites: 8,
        lat_raw: 90_000_000 + k as i32 * 41,
        lon_raw: 24_000_000 - k as i32 * 13,
        fixed: true,
        ..Gps::default()
    }
}

const LBS: Lbs = Lbs {
    mcc: 246,
    mnc: 1,
    lac: 7,
    cell: 9,
};

/// One tracker with its own serial numbers and fix times.
struct Tracker {
    sock: TcpStream,
    imei: Imei,
    serial: u16,
    next_k: u64,
}

impl Tracker {
    fn login(g: &Gt06, imei: &str, next_k: u64) -> Tracker {
        let imei = Imei::parse(imei).unwrap();
        let sock = TcpStream::connect_timeout(&g.tcp, Duration::from_secs(5)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut t = Tracker {
            sock,
            imei,
            serial: 1,
            next_k,
        };
        let login = encode::login(imei, 1);
        t.sock.write_all(&login).unwrap();
        assert_eq!(t.read(10).unwrap(), ack(0x01, 1), "login answer");
        t
    }

    fn read(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.sock.read_exact(&mut b)?;
        Ok(b)
    }

    fn next_serial(&mut self) -> u16 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    fn location(&mut self) -> (Vec<u8>, i64) {
        let k = self.next_k;
        self.next_k += 1;
        let t = START_S + k as i64;
        let s = self.next_serial();
        (encode::location_0x12(&fix(t, k), &LBS, s), t * 1000)
    }

    fn heartbeat(&mut self) -> (Vec<u8>, u16) {
        let s = self.next_serial();
        (encode::heartbeat(&heartbeat_status(), s), s)
    }

    /// `n` locations then a heartbeat; the fix times once every answer came back.
    fn batch(&mut self, n: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut times = Vec::new();
        for _ in 0..n {
            let (f, t) = self.location();
            out.extend(f);
            times.push(t);
        }
        let (hb, s) = self.heartbeat();
        out.extend(hb);
        self.sock.write_all(&out).unwrap();
        let answers = self.read(10 * (n + 1)).expect("answers to a batch");
        assert_eq!(answers[10 * n..], ack(0x13, s)[..], "heartbeat answer");
        times
    }

    /// A location then a heartbeat while the disk is low: only the heartbeat is answered.
    fn location_refused(&mut self) {
        let (mut out, _) = self.location();
        let (hb, s) = self.heartbeat();
        out.extend(hb);
        self.sock.write_all(&out).unwrap();
        assert_eq!(
            self.read(10).expect("heartbeat answer"),
            ack(0x13, s),
            "the location must go unanswered, the heartbeat answered"
        );
    }

    /// An SOS alarm then a heartbeat while the disk is low: only the heartbeat answered.
    fn alarm_refused(&mut self) {
        let k = self.next_k;
        self.next_k += 1;
        let loc = Location {
            gps: fix(START_S + k as i64, k),
            lbs: Some(LBS),
            ..Location::default()
        };
        let sos = Status {
            info: 0x22,
            voltage_level: Some(5),
            gsm_signal: Some(4),
            ..Status::default()
        };
        let s1 = self.next_serial();
        let mut out = encode::alarm(0x16, &loc, &sos, 0x01, s1);
        let (hb, s) = self.heartbeat();
        out.extend(hb);
        self.sock.write_all(&out).unwrap();
        assert_eq!(self.read(10).expect("heartbeat answer"), ack(0x13, s));
    }
}

/// A batch of `n` locations and a heartbeat; `Err` once the server stops answering it
/// (the answer is withheld, or the connection closed), else the fix times answered.
fn send_until_refused(d: &mut Tracker, n: usize) -> Result<Vec<i64>, ()> {
    let mut out = Vec::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let (f, t) = d.location();
        out.extend(f);
        times.push(t);
    }
    let (hb, s) = d.heartbeat();
    out.extend(hb);
    d.sock.write_all(&out).map_err(|_| ())?;
    let mut got = Vec::new();
    for _ in 0..=n {
        match d.read(10) {
            Ok(a) if a == ack(0x13, s) => {
                // Every location before the heartbeat answered: all stored.
                return if got.len() == n { Ok(times) } else { Err(()) };
            }
            Ok(a) => got.push(a),
            Err(_) => return Err(()),
        }
    }
    Err(())
}

fn stored_times(g: &Gt06, imei: Imei) -> Vec<i64> {
    let (s, v) = g.get_json(&format!("/api/devices/{imei}/positions?limit=100000"));
    assert_eq!(s, 200, "{v}");
    assert!(v["next"].is_null());
    v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| gt06::http::json::parse_rfc3339(p["time"].as_str().unwrap()).unwrap())
        .collect()
}

/// Polls `/health/ready` until it answers `want` (≤ 10 s); returns its body.
fn wait_ready(g: &Gt06, want: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = g.get_json("/health/ready");
        if s == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready stayed {s}: {v}\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

#[test]
fn below_min_free_writes_are_refused_devices_answered_and_writing_resumes_when_freed() {
    let Some(fs) = Tmpfs::mount("low", 48) else {
        return;
    };
    let cfg_dir = TempDir::new("diskcfg");
    let cfg = cfg_dir.0.join("gt06.toml");
    std::fs::write(
        &cfg,
        "[store]\nmin_free_mb = 8\nmin_free_percent = 100\ncheckpoint_interval_secs = 1\n",
    )
    .unwrap();
    // The mount itself is the data dir, so the server's log (beside it) is not on it.
    let data = fs.dir.clone();
    let cfg_arg = cfg.to_str().unwrap();
    let mut g = Gt06::start_in(&data, &["--config", cfg_arg]);
    wait_ready(&g, 200);
    let mut d = Tracker::login(&g, "864717003283581", 0);
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.extend(d.batch(20));
    }
    assert_eq!(metric(&g, "gt06_disk_low"), 0.0);
    assert_eq!(metric(&g, "gt06_disk_min_free_bytes"), (8 * MIB) as f64);

    // Below the threshold (8 MiB), with some real space left.
    fill(&fs.dir.join("filler"), 4 * MIB);
    let v = wait_ready(&g, 503);
    assert_eq!(v["failing"][0]["check"], "disk", "{v}");
    assert_eq!(v["failing"][0]["reason"], "disk_low", "{v}");
    assert!(
        v["failing"][0]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{v}"
    );

    // Devices keep sending: positions and alarms go unanswered, heartbeats are answered,
    // a new device can log in, reads go on.
    for _ in 0..20 {
        d.location_refused();
    }
    d.alarm_refused();
    let login_sent_ms = now_ms();
    let mut other = Tracker::login(&g, "864717003283599", 10_000);
    other.location_refused();
    assert_eq!(g.get("/health/live").0, 200);
    assert_eq!(stored_times(&g, d.imei), sorted(acked.clone()));
    assert_eq!(metric(&g, "gt06_disk_low"), 1.0);
    assert!(metric(&g, "gt06_store_writes_refused_total{kind=\"position\"}") >= 21.0);
    assert!(metric(&g, "gt06_store_writes_refused_total{kind=\"event\"}") >= 1.0);
    let v = g
        .device_seen_since("864717003283599", login_sent_ms)
        .expect("a device that logged in while low is known");
    assert!(v["position"].is_null(), "{v}");
    g.wait_log("disk almost full");
    // Past the checkpoint interval: nothing is sealed (nor written) while low.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(free_bytes(&fs.dir) > 3 * MIB);

    // Space comes back: writing resumes by itself.
    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    wait_ready(&g, 200);
    g.wait_log("disk space is back");
    for _ in 0..3 {
        acked.extend(d.batch(20));
    }
    acked.extend(other.batch(5));
    let mut want_d: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|t| *t < (START_S + 10_000) * 1000)
        .collect();
    want_d.sort_unstable();
    assert_eq!(stored_times(&g, d.imei), want_d);
    assert_eq!(stored_times(&g, other.imei).len(), 5);
    assert!(!g.log_text().contains("panicked"));

    // And it all survives a restart.
    drop((d, other));
    assert!(g.terminate().success());
    let g = Gt06::start_in(&data, &["--config", cfg_arg]);
    assert_eq!(
        stored_times(&g, Imei::parse("864717003283581").unwrap()),
        want_d
    );
    assert_eq!(
        stored_times(&g, Imei::parse("864717003283599").unwrap()).len(),
        5
    );
    drop(g);
    drop(fs);
}

#[test]
fn a_completely_full_disk_keeps_the_server_up_and_loses_nothing_answered() {
    let Some(fs) = Tmpfs::mount("full", 32) else {
        return;
    };
    let cfg_dir = TempDir::new("diskcfg");
    let cfg = cfg_dir.0.join("gt06.toml");
    // The guard is off: only real "no space left" errors stop writing here.
    std::fs::write(
        &cfg,
        "[store]\nmin_free_mb = 0\ncheckpoint_interval_secs = 1\n",
    )
    .unwrap();
    // The mount itself is the data dir, so the server's log (beside it) is not on it.
    let data = fs.dir.clone();
    let cfg_arg = cfg.to_str().unwrap();
    let mut g = Gt06::start_in(&data, &["--config", cfg_arg]);
    let imei = Imei::parse("864717003283581").unwrap();
    let mut d = Tracker::login(&g, "864717003283581", 0);
    let mut acked = Vec::new();
    for _ in 0..3 {
        acked.extend(d.batch(20));
    }

    fill(&fs.dir.join("filler"), 0);
    // Keep sending until the store runs into the full disk: the answer is then either
    // withheld (the guard already knows) or the connection is closed unanswered (the
    // write that found the disk full). Every batch answered before that counts.
    let mut stopped = false;
    for _ in 0..500 {
        match send_until_refused(&mut d, 1) {
            Ok(times) => acked.extend(times),
            Err(()) => {
                stopped = true;
                break;
            }
        }
    }
    assert!(stopped, "500 positions fit on a full disk?");
    let v = wait_ready(&g, 503);
    assert_eq!(v["failing"][0]["check"], "disk", "{v}");
    assert_eq!(v["failing"][0]["reason"], "disk_full", "{v}");
    // Still serving: a device reconnects and is answered; reads work.
    let mut d = Tracker::login(&g, "864717003283581", 1_000);
    d.location_refused();
    assert_eq!(stored_times(&g, imei), sorted(acked.clone()));
    assert_eq!(g.get("/health/live").0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(g.get("/health/live").0, 200);

    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    wait_ready(&g, 200);
    for _ in 0..3 {
        acked.extend(d.batch(20));
    }
    assert_eq!(stored_times(&g, imei), sorted(acked.clone()));

    // Again, leaving one page: positions now and then until the journal finds the disk
    // full. Checkpoints (due every second) wait meanwhile: too little room to seal.
    fill(&fs.dir.join("filler"), 4096);
    // One position still fits in the last page. With it unsealed, the next checkpoint
    // (due within a second) must find too little room and wait — before the journal
    // itself runs out, after which the writer no longer tries to seal at all.
    let waited = send_until_refused(&mut d, 1).is_ok_and(|times| {
        acked.extend(times);
        true
    });
    if waited {
        g.wait_log("checkpoints wait: too little free space");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut d = Some(d);
    while Instant::now() < deadline && g.get("/health/ready").0 == 200 {
        let Some(dev) = d.as_mut() else { break };
        match send_until_refused(dev, 10) {
            Ok(times) => acked.extend(times),
            Err(()) => d = None,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = wait_ready(&g, 503);
    assert_eq!(v["failing"][0]["reason"], "disk_full", "{v}");
    assert_eq!(stored_times(&g, imei), sorted(acked.clone()));
    drop(d);
    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    wait_ready(&g, 200);
    let mut d = Tracker::login(&g, "864717003283581", 100_000);
    acked.extend(d.batch(20));
    if waited {
        g.wait_log("room for checkpoints again");
    }
    assert_eq!(stored_times(&g, imei), sorted(acked.clone()));
    assert!(!g.log_text().contains("panicked"));
    drop(d);
    // A clean stop seals everything; the store verifies and reopens with all of it.
    assert!(g.terminate().success());
    verify_ok(&data);
    let g = Gt06::start_in(&data, &["--config", cfg_arg]);
    assert_eq!(stored_times(&g, imei), sorted(acked));
    let (s, body, _) = g.get("/health/ready");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    drop(g);
    drop(fs);
}
