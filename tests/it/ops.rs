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
