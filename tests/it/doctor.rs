//! `gt06 doctor`: the pre-maintenance checklist on healthy, missing, corrupt and in-use
//! stores, and on a bad config.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const CHECKS: [&str; 8] = [
    "config",
    "store",
    "disk",
    "memory",
    "ports",
    "clock",
    "last_position",
    "backup",
];

fn doctor(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run gt06 doctor")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of check `name` (`ok    store: …`).
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"))
}

/// A stopped store holding one device with one position.
fn stopped_store(data: &Path) {
    let mut g = Gt06::start_in(data, &[]);
    let mut d = g.logged_in("864717003283581", 1);
    assert_eq!(d.send_expect(&hex(LOCATION_V144), 10), ack(0x12, 3));
    drop(d);
    let st = g.terminate();
    assert!(st.success(), "exit status {st:?}\n{}", g.log_text());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn healthy_stopped_store_passes_with_a_line_per_check_and_json() {
    let dir = TempDir::new("doc-ok");
    let data = dir.0.join("data");
    stopped_store(&data);
    let data_arg = data.to_str().unwrap();

    let out = doctor(&["--data-dir", data_arg]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().count(), CHECKS.len(), "{text}");
    for name in CHECKS {
        let l = line(&text, name);
        let status = l.split_whitespace().next().unwrap();
        assert!(["ok", "warn"].contains(&status), "{l}");
    }
    assert!(
        line(&text, "config").contains("embedded defaults"),
        "{text}"
    );
    let store = line(&text, "store");
    assert!(store.starts_with("ok"), "{store}");
    assert!(store.contains("1 devices, 1 positions"), "{store}");
    assert!(line(&text, "last_position").starts_with("ok"), "{text}");
    assert!(line(&text, "clock").starts_with("ok"), "{text}");
    assert!(line(&text, "backup").contains("no backup found"), "{text}");

    // A backup marker makes the backup check ok.
    std::fs::write(data.join("backup.last"), b"").unwrap();
    let out = doctor(&["--data-dir", data_arg, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor --json is JSON");
    assert_eq!(v["ok"], true, "{v}");
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS);
    for c in checks {
        assert!(c["message"].as_str().is_some_and(|m| !m.is_empty()), "{c}");
    }
    assert_eq!(checks[1]["status"], "ok");
    assert_eq!(checks[1]["positions"], 1);
    assert_eq!(checks[7]["status"], "ok", "{}", checks[7]);
}

#[test]
fn missing_store_fails_naming_no_store() {
    let dir = TempDir::new("doc-missing");
    let data = dir.0.join("nothing-here");
    let out = doctor(&["--data-dir", data.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let store = line(&text, "store");
    assert!(
        store.starts_with("fail") && store.contains("no store"),
        "{store}"
    );
    assert!(!data.exists(), "doctor must not create the data dir");
}

#[test]
fn corrupt_store_fails_the_store_check() {
    let dir = TempDir::new("doc-corrupt");
    let data = dir.0.join("data");
    stopped_store(&data);
    let copy = dir.0.join("copy");
    copy_dir(&data, &copy);
    std::fs::write(copy.join("db").join("db"), vec![0xa5u8; 64 * 1024]).unwrap();
    let out = doctor(&["--data-dir", copy.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let store = line(&text, "store");
    assert!(store.starts_with("fail"), "{store}");
    assert!(
        store.contains("cannot open") || store.contains("damaged"),
        "{store}"
    );
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = TempDir::new("doc-cfg");
    let cfg = dir.0.join("gt06.toml");
    std::fs::write(&cfg, "[tcp]\nlisen = \"0.0.0.0:5023\"\n").unwrap();
    let out = doctor(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcp.lisen"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let text = stdout(&out);
    assert!(line(&text, "config").starts_with("fail"), "{text}");
}

#[test]
fn running_server_makes_the_store_check_warn_in_use() {
    let g = Gt06::start();
    let pid = g.child.as_ref().unwrap().id();
    let cfg = g.data.with_extension("toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[tcp]\nlisten = \"{}\"\n[http]\nlisten = \"{}\"\n",
            g.data.to_str().unwrap(),
            g.tcp,
            g.http
        ),
    )
    .unwrap();
    let out = doctor(&["--config", cfg.to_str().unwrap()]);
    let text = stdout(&out);
    let _ = std::fs::remove_file(&cfg);
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{text}");
    let store = line(&text, "store");
    assert!(store.starts_with("warn"), "{store}");
    assert!(store.contains("in use"), "{store}");
    assert!(store.contains(&format!("pid {pid}")), "{store}");
    let ports = line(&text, "ports");
    assert!(ports.starts_with("ok"), "{ports}");
    assert!(ports.contains("the running gt06"), "{ports}");
    // The server is untouched and still answers.
    assert_eq!(g.get("/health/live").0, 200);
}
