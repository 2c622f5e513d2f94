//! Starting and stopping: config errors, taken ports, clean shutdown, defaults.

use crate::harness::*;
use std::process::Command;

fn serve(args: &[&str]) -> std::process::Output {
    let dir = TempDir::new("cfg");
    Command::new(bin())
        .arg("serve")
        .args(["--data-dir", dir.0.join("data").to_str().unwrap()])
        .args(args)
        .output()
        .expect("run gt06")
}

#[test]
fn bad_config_key_exits_2_naming_the_key() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.0.join("gt06.toml");
    std::fs::write(&cfg, "[tcp]\nlisen = \"0.0.0.0:5023\"\n").unwrap();
    let out = serve(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp.lisen"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    std::fs::write(&cfg, "[http]\nlisten = \"everywhere\"\n").unwrap();
    let out = serve(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
}

#[test]
fn bad_flag_value_exits_2() {
    let out = serve(&["--tcp-listen", "nowhere", "--http-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp.listen"));
}

#[test]
fn taken_port_exits_1_with_one_line_naming_the_address_and_holder() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let out = serve(&["--tcp-listen", &addr, "--http-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.contains("already in use"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn sigterm_drains_and_exits_0_and_the_data_is_there_after_restart() {
    let dir = TempDir::new("term");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(d.send_expect(&hex(LOCATION_V144), 10), ack(0x12, 3));
    let st = g.terminate();
    assert!(st.success(), "exit status {st:?}\n{}", g.log_text());
    let log = g.log_text();
    assert!(log.contains("shutdown complete"), "{log}");
    let g2 = Gt06::start_in(&data, &[]);
    let (_, v) = g2.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"].as_array().unwrap().len(), 1);
}

#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    let g = Gt06::start();
    let out = Command::new(bin())
        .args([
            "serve",
            "--data-dir",
            g.data.to_str().unwrap(),
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}

/// Every regular file under `dir` with a checksum of its bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let (p, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_dir() {
                todo.push(p);
            } else if kind.is_file() {
                // (Not the control socket a killed server leaves behind.)
                let bytes = std::fs::read(&p).unwrap();
                let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                out.push((p, bytes.len() as u64, sum));
            }
        }
    }
    out.sort();
    out
}

fn changed(
    before: &[(std::path::PathBuf, u64, u64)],
    after: &[(std::path::PathBuf, u64, u64)],
) -> Vec<String> {
    let mut out: Vec<String> = before
        .iter()
        .filter(|b| !after.contains(b))
        .map(|b| b.0.display().to_string())
        .collect();
    out.extend(
        after
            .iter()
            .filter(|a| !before.iter().any(|b| b.0 == a.0))
            .map(|a| format!("new {}", a.0.display())),
    );
    out
}

/// Where a journal segment's records end: after the magic, records `len u32 | crc u32 |
/// payload` until the file ends or a zero length (the zeros of a segment filled ahead).
fn records_end(seg: &[u8]) -> u64 {
    let mut at = 8;
    while at + 8 <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += 8 + len;
    }
    at.min(seg.len()) as u64
}

fn verify_and_doctor(data: &std::path::Path) -> String {
    let out = Command::new(bin())
        .args(["verify", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let out = Command::new(bin())
        .args(["doctor", "--data-dir", data.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(!out.stdout.is_empty());
    text
}

#[test]
fn verify_and_doctor_leave_a_store_as_they_found_it() {
    let dir = TempDir::new("rover");
    let data = dir.0.join("data");
    let mut g = Gt06::start_in(&data, &[]);
    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(d.send_expect(&hex(LOCATION_V144), 10), ack(0x12, 3));
    // Killed, so the position is only in the journal; then half a record at its end.
    g.kill9();
    let journal = data.join("journal");
    let seg = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap();
    // Right after the last record: where a write cut short would be, whether the
    // segment grows or was filled with zeros ahead of use (API.md, the journal's layout).
    let at = records_end(&std::fs::read(&seg).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[40, 0, 0, 0, 1, 2], at).unwrap();
    drop(f);
    let before = snapshot(&journal);
    let text = verify_and_doctor(&data);
    assert!(text.contains("1 unsealed positions"), "{text}");
    assert!(
        text.contains("6 bytes of an unfinished last write"),
        "{text}"
    );
    // The journal is read, not cut. (sled recovers its own log after a crash when it
    // opens it; that is sled's, and changes no data.)
    assert_eq!(changed(&before, &snapshot(&journal)), Vec::<String>::new());

    // `serve` is what repairs: it cuts the torn tail and keeps the position.
    let mut g = Gt06::start_in(&data, &[]);
    let (_, v) = g.get_json("/api/devices/864717003283581/positions");
    assert_eq!(v["positions"].as_array().unwrap().len(), 1);
    // After a clean stop nothing changes but sled's snapshot file, which sled rewrites
    // (under a new name) whenever it opens a store: its log, the data, stays as it was.
    assert!(g.terminate().success());
    let before = snapshot(&data);
    let text = verify_and_doctor(&data);
    assert!(text.contains("holding 1 positions"), "{text}");
    let not_snap = |v: Vec<(std::path::PathBuf, u64, u64)>| {
        v.into_iter()
            .filter(|(p, ..)| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("snap.")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        changed(&not_snap(before), &not_snap(snapshot(&data))),
        Vec::<String>::new()
    );
}
