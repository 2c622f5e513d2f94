//! The systemd protocol as a service manager speaks it: readiness, stopping and watchdog
//! notifications on a test-owned `NOTIFY_SOCKET`, and listening sockets handed over with
//! `LISTEN_FDS` (by `systemd-socket-activate` itself, and by a test-owned socket).

use crate::harness::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Receives notifications until one equals or starts a line with `want` (≤ `within`);
/// returns everything received, in order.
fn wait_state(rx: &UnixDatagram, want: &str, within: Duration, got: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = rx.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = msg.lines().any(|l| l == want);
        got.push(msg);
        if hit {
            return true;
        }
    }
    false
}

fn spawn_serve(data: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .envs(env.iter().copied())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn gt06")
}

#[test]
fn ready_is_sent_after_ports_json_and_stopping_on_sigterm_with_watchdog_pings_between() {
    let dir = TempDir::new("notify");
    let data = dir.0.join("data");
    let log = dir.0.join("gt06.log");
    let sock_path = dir.0.join("notify.sock");
    let rx = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = spawn_serve(
        &data,
        &log,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // 200 ms: pings every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut got = Vec::new();
    let ready = wait_state(&rx, "READY=1", Duration::from_secs(10), &mut got);
    // ports.json is written before READY=1, so it exists the moment READY arrives.
    let ports_existed = data.join("ports.json").exists();
    let pings = wait_state(&rx, "WATCHDOG=1", Duration::from_secs(5), &mut got)
        && wait_state(&rx, "WATCHDOG=1", Duration::from_secs(5), &mut got);
    let status = sigterm_and_wait(&mut child, &log);
    let stopping = wait_state(&rx, "STOPPING=1", Duration::from_secs(2), &mut got);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "no READY=1 (got {got:?}):\n{text}");
    assert!(ports_existed, "READY=1 came before ports.json:\n{text}");
    assert!(
        got[0].starts_with("READY=1"),
        "READY=1 must come first, got {got:?}"
    );
    assert!(pings, "no two WATCHDOG=1 pings (got {got:?}):\n{text}");
    assert!(stopping, "no STOPPING=1 on SIGTERM (got {got:?}):\n{text}");
    assert!(status.success(), "exit {status}:\n{text}");
}

#[test]
fn an_abstract_notify_socket_receives_ready() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("notify-abs");
    let name = format!("gt06-it-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    let log = dir.0.join("gt06.log");
    let mut child = spawn_serve(
        &dir.0.join("data"),
        &log,
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    let mut got = Vec::new();
    let ready = wait_state(&rx, "READY=1", Duration::from_secs(10), &mut got);
    let status = sigterm_and_wait(&mut child, &log);
    assert!(
        ready,
        "no READY=1 on @{name} (got {got:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(status.success());
}

#[test]
fn under_systemd_socket_activate_the_first_device_waits_for_the_server_and_is_acked() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-socket-activate is not installed: skipping");
        return;
    }
    let dir = TempDir::new("sd-activate");
    let data = dir.0.join("data");
    let log = dir.0.join("gt06.log");
    // A free port, released for systemd-socket-activate to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &addr.to_string(),
            "--fdname=gt06",
            "-E",
            "RUST_LOG=info",
        ])
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(&data)
        // Were the passed socket ignored, the server would listen elsewhere.
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // systemd-socket-activate listens first and starts gt06 on the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sock = loop {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            break s;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut dev = Device { sock };
    dev.sock
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let imei = gt06::protocol::Imei::parse("864717003283581").unwrap();
    let answer = dev.send_expect(&gt06::protocol::encode::login(imei, 7), 10);
    let status = sigterm_and_wait(&mut child, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(answer, ack(0x01, 7), "{text}");
    assert!(
        text.contains(&format!(
            "socket activation (by LISTEN_FDNAMES): GT06 {addr}, HTTP bound as configured"
        )),
        "{text}"
    );
    let ports = std::fs::read_to_string(data.join("ports.json")).unwrap();
    assert!(ports.contains(&format!("\"tcp\":\"{addr}\"")), "{ports}");
    assert!(status.success(), "{text}");
}

/// Runs `gt06 serve` through `sh` with `LISTEN_*` set for the server's own pid and fd 3
/// opened by `redirect` (an `sh` redirection such as `3</dev/null`).
fn serve_with_fd3(data: &Path, redirect: &str, listen_pid: &str) -> std::process::Output {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            r#"export LISTEN_PID={listen_pid}; exec "$0" "$@" {redirect}"#
        ))
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("LISTEN_FDS", "1");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A server that (wrongly) started would wait for a signal: stop it after 10 s.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !done.load(std::sync::atomic::Ordering::Relaxed) {
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    guard.join().unwrap();
    out
}

#[test]
fn a_passed_fd_that_is_not_a_listening_socket_exits_1_naming_it() {
    let dir = TempDir::new("bad-fd");
    let out = serve_with_fd3(&dir.0.join("data"), "3</dev/null", "$$");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("passed fd 3 (gt06) is not a socket"),
        "stderr: {err}"
    );
}

#[test]
fn fds_meant_for_another_process_are_left_alone_and_the_ports_are_bound() {
    let dir = TempDir::new("foreign-fd");
    let data = dir.0.join("data");
    let log = dir.0.join("gt06.log");
    // LISTEN_PID names the shell's parent, not the server: bind as configured.
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"export LISTEN_PID=$PPID; exec "$0" "$@" 3</dev/null"#)
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args([
            "--tcp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("LISTEN_FDS", "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.join("ports.json").exists() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "no ports.json:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = sigterm_and_wait(&mut child, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("socket activation"), "{text}");
    assert!(status.success(), "{text}");
}
