//! `gt06 backup` and `gt06 restore`: under load, while a freeze is held, to bad targets,
//! into non-empty or damaged places, and with no server at all.

use crate::durability::{fix, heartbeat_status, stored_times, LBS, START_S};
use crate::harness::*;
use gt06::protocol::{encode, Imei};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A checkpoint every 1000 positions or every second: one is due during any backup.
const BUSY_CONFIG: &str = "[store]\ncheckpoint_positions = 1000\ncheckpoint_interval_secs = 1\n";

type Acked = Arc<Mutex<HashMap<u64, Vec<i64>>>>;

/// Trackers streaming positions in batches of 10 closed by a heartbeat; a batch counts as
/// answered once the heartbeat's answer arrives.
struct Fleet {
    stop: Arc<AtomicBool>,
    acked: Acked,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Fleet {
    fn start(addr: SocketAddr, imeis: &[Imei]) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let threads = imeis
            .iter()
            .map(|imei| {
                let (stop, acked, imei) = (stop.clone(), acked.clone(), *imei);
                std::thread::spawn(move || stream(addr, imei, &stop, &acked))
            })
            .collect();
        Fleet {
            stop,
            acked,
            threads,
        }
    }

    fn snapshot(&self) -> HashMap<u64, BTreeSet<i64>> {
        let a = self.acked.lock().unwrap();
        a.iter()
            .map(|(k, v)| (*k, v.iter().copied().collect()))
            .collect()
    }

    fn total(&self) -> usize {
        self.acked.lock().unwrap().values().map(Vec::len).sum()
    }

    fn wait_total(&self, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.total() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} positions answered within 60 s",
                self.total()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> HashMap<u64, BTreeSet<i64>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let a = self.acked.lock().unwrap();
        a.iter()
            .map(|(k, v)| (*k, v.iter().copied().collect()))
            .collect()
    }
}

fn stream(addr: SocketAddr, imei: Imei, stop: &AtomicBool, acked: &Acked) {
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&encode::login(imei, 1)).unwrap();
    let mut buf = [0u8; 10];
    sock.read_exact(&mut buf).unwrap();
    let hb = heartbeat_status();
    let (mut k, mut serial) = (0u64, 1u16);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..10 {
            serial = serial.wrapping_add(1);
            let t = START_S + k as i64;
            out.extend(encode::location_0x12(&fix(t, k), &LBS, serial));
            batch.push(t * 1000);
            k += 1;
        }
        serial = serial.wrapping_add(1);
        out.extend(encode::heartbeat(&hb, serial));
        sock.write_all(&out).unwrap();
        let mut answers = [0u8; 110];
        sock.read_exact(&mut answers)
            .unwrap_or_else(|e| panic!("{imei}: no answers from the server: {e}"));
        assert_eq!(answers[100..], ack(0x13, serial)[..]);
        acked
            .lock()
            .unwrap()
            .entry(imei.as_u64())
            .or_default()
            .extend(batch);
    }
}

fn imeis(n: u64, base: u64) -> Vec<Imei> {
    (0..n).map(|i| Imei::from_u64(base + i).unwrap()).collect()
}

fn gt06(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run gt06")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Every position in `want` is stored once, in order, in the server `g`.
fn assert_holds(g: &Gt06, want: &HashMap<u64, BTreeSet<i64>>, what: &str) {
    for (imei, times) in want {
        let imei = Imei::from_u64(*imei).unwrap();
        let have = stored_times(g, imei);
        assert!(
            have.windows(2).all(|w| w[0] < w[1]),
            "{what}: {imei} has duplicates or disorder"
        );
        let have: BTreeSet<i64> = have.into_iter().collect();
        let missing: Vec<_> = times.difference(&have).take(5).collect();
        assert!(
            missing.is_empty(),
            "{what}: {imei} lost answered positions {missing:?} (of {})",
            times.len()
        );
    }
}

fn write_config(dir: &Path) -> String {
    let cfg = dir.join("gt06.toml");
    std::fs::write(&cfg, BUSY_CONFIG).unwrap();
    cfg.to_str().unwrap().to_string()
}

#[test]
fn backup_under_load_restores_every_position_answered_before_it_began() {
    let dir = TempDir::new("bk-load");
    let data = dir.0.join("data");
    let cfg = write_config(&dir.0);
    let mut g = Gt06::start_in(&data, &["--config", &cfg]);
    let fleet = Fleet::start(g.tcp, &imeis(4, 862_000_000_000_000));
    fleet.wait_total(4000, "before the backup");
    let before = fleet.snapshot();
    let n_before: usize = before.values().map(BTreeSet::len).sum();
    let target = dir.0.join("backup");
    let out = gt06(&["backup", "--data-dir", s(&data), "--to", s(&target)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(online)"), "{}", text(&out));
    // Devices kept being answered during and after the backup.
    fleet.wait_total(n_before + 500, "after the backup");
    let after = fleet.stop();
    g.wait_log("backup: dump sent, sealing resumed");
    assert!(g.terminate().success());
    let v = gt06(&["verify", "--data-dir", s(&data)]);
    assert!(
        v.status.success(),
        "live store after the backup: {}",
        text(&v)
    );
    let v = gt06(&["verify", "--data-dir", s(&target)]);
    assert!(v.status.success(), "the backup: {}", text(&v));

    let m = manifest(&target);
    assert_eq!(m["format"], "gt06-backup");
    assert_eq!(m["mode"], "online");
    let restored = dir.0.join("restored");
    let out = gt06(&["restore", "--from", s(&target), "--data-dir", s(&restored)]);
    assert!(out.status.success(), "{}", text(&out));
    let g2 = Gt06::start_in(&restored, &[]);
    assert_holds(&g2, &before, "restored backup");
    // The manifest says what the restored store holds, device by device.
    let mut total = 0u64;
    for d in m["devices"].as_array().unwrap() {
        let imei = Imei::parse(d["imei"].as_str().unwrap()).unwrap();
        let have = stored_times(&g2, imei);
        assert_eq!(
            have.len() as u64,
            d["positions"].as_u64().unwrap(),
            "{imei}"
        );
        total += have.len() as u64;
        // Nothing in the backup was invented: all of it was sent.
        let sent_until = after[&imei.as_u64()].iter().next_back().copied().unwrap();
        assert!(have.iter().all(|t| *t <= sent_until + 10_000));
    }
    assert_eq!(m["totals"]["positions"].as_u64(), Some(total));
    assert!(total as usize >= n_before);
}

#[test]
fn while_a_backup_holds_the_store_devices_are_answered_and_sealing_resumes_after() {
    let dir = TempDir::new("bk-hold");
    let data = dir.0.join("data");
    // A store whose dump does not fit in the socket buffers (20,000 events, ~1 MB): the
    // export waits for this test to read, so the freeze lasts as long as the test wants.
    preload_events(&data, 20_000);
    let cfg = write_config(&dir.0);
    let g = Gt06::start_in(&data, &["--config", &cfg]);
    let fleet = Fleet::start(g.tcp, &imeis(3, 863_000_000_000_000));
    fleet.wait_total(1500, "before the hold");
    let before = fleet.snapshot();
    let n_before: usize = before.values().map(BTreeSet::len).sum();
    let mut c = std::os::unix::net::UnixStream::connect(data.join("control.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"{\"cmd\":\"backup\"}\n").unwrap();
    let mut dump = vec![0u8; 8];
    c.read_exact(&mut dump).unwrap();
    assert_eq!(&dump, b"GT06BAK\x01");
    let log = g.wait_log("backup: sealing paused");
    let paused_at = log.find("backup: sealing paused").unwrap();
    // Held: more than a checkpoint's worth of positions is answered meanwhile.
    fleet.wait_total(n_before + 1500, "during the hold");
    let log = g.log_text();
    assert!(
        !log[paused_at..].contains("DEBUG checkpoint"),
        "a checkpoint ran while the backup held the store:\n{}",
        &log[paused_at..]
    );
    c.read_to_end(&mut dump).unwrap();
    g.wait_log("backup: dump sent, sealing resumed");
    // Sealing resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = g.log_text();
        let resumed = log.find("sealing resumed").unwrap();
        if log[resumed..].contains("DEBUG checkpoint") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the backup:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fleet.stop();
    // The dump restores everything answered before the hold began.
    let restored = dir.0.join("restored");
    let (summary, report) = gt06::store::backup::import(dump.as_slice(), &restored).unwrap();
    assert!(report.bad.is_empty());
    assert_eq!(summary.events, 20_000);
    assert!(summary.positions() >= n_before as u64);
    let opened = gt06::store::Store::open(&restored, Default::default()).unwrap();
    for (imei, want) in &before {
        let (got, _) = opened
            .store
            .positions(*imei, 0, i64::MAX, 1_000_000)
            .unwrap();
        let got: BTreeSet<i64> = got.iter().map(|p| p.time_ms).collect();
        assert!(
            want.is_subset(&got),
            "{imei}: answered positions missing from the dump"
        );
    }
}

/// Writes `n` alarms of one device into a new store at `data` through the store's writer.
fn preload_events(data: &Path, n: i64) {
    use gt06::store::{writer, Durability, EventRecord, Op, Store, WriteReq};
    let opened = Store::open(data, Default::default()).unwrap();
    let (handle, join) = writer::spawn(opened, Default::default()).unwrap();
    let d = Arc::new(Durability::default());
    for i in 0..n {
        let t = (START_S + i) * 1000;
        let event = EventRecord {
            time_ms: t,
            received_ms: t,
            kind: "sos".into(),
            lat_raw: Some(1),
            lon_raw: Some(2),
            text: None,
        };
        let op = Op::Event {
            imei: 869_000_000_000_000,
            event,
        };
        let ack = Some((d.clone(), i as u64 + 1));
        handle.blocking_send(WriteReq::one(op, ack)).unwrap();
    }
    let mut rx = d.subscribe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { rx.wait_for(|s| s.seq >= n as u64).await.unwrap() });
    drop(handle);
    join.join().unwrap();
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, opts: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs", s(at)])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); run as root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn backup_to_a_full_or_read_only_target_fails_clearly_and_the_server_goes_on() {
    let dir = TempDir::new("bk-bad");
    let data = dir.0.join("data");
    // ~250 KB of dump, so that it cannot fit on the 64 KiB target.
    preload_events(&data, 5_000);
    let cfg = write_config(&dir.0);
    let mut g = Gt06::start_in(&data, &["--config", &cfg]);
    let fleet = Fleet::start(g.tcp, &imeis(2, 864_100_000_000_000));
    fleet.wait_total(3000, "before the backups");
    let Some(full) = Mount::tmpfs(&dir.0.join("full"), "size=64k") else {
        return;
    };
    let Some(ro) = Mount::tmpfs(&dir.0.join("ro"), "ro,size=1m") else {
        return;
    };
    for (target, says) in [
        (&full.0, "No space left on device"),
        (&ro.0, "Read-only file system"),
    ] {
        let n = fleet.total();
        let out = gt06(&["backup", "--data-dir", s(&data), "--to", s(target)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains(s(target)), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // Nothing that looks like a backup is left behind.
        assert!(std::fs::read_dir(target).unwrap().next().is_none());
        // The server still answers.
        fleet.wait_total(n + 200, "after a failed backup");
    }
    // A failed backup ended its freeze (the server may have sent all of the dump before
    // the client failed to write it): sealing goes on.
    let log = g.log_text();
    let last = log.rfind("sealing resumed");
    assert!(last.is_some(), "{log}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.log_text()[last.unwrap()..].contains("DEBUG checkpoint") {
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the failed backup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked = fleet.stop();
    drop((full, ro));
    assert!(g.terminate().success());
    let v = gt06(&["verify", "--data-dir", s(&data)]);
    assert!(v.status.success(), "{}", text(&v));
    let g2 = Gt06::start_in(&data, &[]);
    assert_holds(&g2, &acked, "live store after failed backups");
}

#[test]
fn restore_refuses_non_empty_targets_running_servers_and_damaged_backups() {
    let dir = TempDir::new("bk-restore");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let fleet = Fleet::start(g.tcp, &imeis(2, 865_000_000_000_000));
    fleet.wait_total(300, "before the backup");
    let acked = fleet.stop();
    let target = dir.0.join("backup");
    let out = gt06(&["backup", "--data-dir", s(&data), "--to", s(&target)]);
    assert!(out.status.success(), "{}", text(&out));
    // A second backup into the same (now non-empty) directory is misuse.
    let out = gt06(&["backup", "--data-dir", s(&data), "--to", s(&target)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Into the running server's own data dir: refused even with --force.
    let out = gt06(&[
        "restore",
        "--from",
        s(&target),
        "--data-dir",
        s(&data),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("running server"), "{}", text(&out));
    assert!(g.terminate().success());

    // Non-empty without --force: exit 2, nothing touched.
    let other = dir.0.join("other");
    std::fs::create_dir_all(other.join("db")).unwrap();
    std::fs::write(other.join("db").join("keep"), b"x").unwrap();
    let out = gt06(&["restore", "--from", s(&target), "--data-dir", s(&other)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert!(other.join("db").join("keep").exists());
    // A non-empty directory that is not a store is never replaced.
    let stranger = dir.0.join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), b"mine").unwrap();
    let out = gt06(&[
        "restore",
        "--from",
        s(&target),
        "--data-dir",
        s(&stranger),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stranger.join("notes.txt").exists());

    // With --force the old store is replaced by the backup.
    let out = gt06(&[
        "restore",
        "--from",
        s(&target),
        "--data-dir",
        s(&data),
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let g2 = Gt06::start_in(&data, &[]);
    assert_holds(&g2, &acked, "restored with --force");
    drop(g2);

    // One flipped byte in the dump: refused on the checksum, the target untouched.
    let dump = target.join("store.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&dump, &bytes).unwrap();
    let fresh = dir.0.join("fresh");
    let out = gt06(&["restore", "--from", s(&target), "--data-dir", s(&fresh)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("damaged") && text(&out).contains("CRC-32"),
        "{}",
        text(&out)
    );
    assert!(!fresh.join("db").exists());
    let v = gt06(&["verify", "--data-dir", s(&target)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    // No manifest: not a backup.
    std::fs::remove_file(target.join("manifest.json")).unwrap();
    let out = gt06(&["restore", "--from", s(&target), "--data-dir", s(&fresh)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not a complete gt06 backup"),
        "{}",
        text(&out)
    );
}

#[test]
fn offline_backup_of_a_stopped_server_restores_everything() {
    let dir = TempDir::new("bk-offline");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let fleet = Fleet::start(g.tcp, &imeis(2, 866_000_000_000_000));
    fleet.wait_total(500, "before the stop");
    let acked = fleet.stop();
    assert!(g.terminate().success());
    let target = dir.0.join("nested").join("backup");
    let out = gt06(&["backup", "--data-dir", s(&data), "--to", s(&target)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(offline)"), "{}", text(&out));
    let m = manifest(&target);
    let n: usize = acked.values().map(BTreeSet::len).sum();
    assert_eq!(m["totals"]["positions"].as_u64(), Some(n as u64));
    assert_eq!(m["totals"]["devices"].as_u64(), Some(2));
    let crc = m["files"][0]["crc32"].as_str().unwrap();
    assert_eq!(crc.len(), 8);
    // The source is a store still, and doctor sees the backup.
    assert!(data.join("backup.last").exists());
    let restored = dir.0.join("restored");
    let out = gt06(&["restore", "--from", s(&target), "--data-dir", s(&restored)]);
    assert!(out.status.success(), "{}", text(&out));
    let g2 = Gt06::start_in(&restored, &[]);
    assert_holds(&g2, &acked, "offline backup");
    let (_, v) = g2.get_json("/api/devices");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
}
