//! Operator-facing commands and helpers: who holds a port (here), `gt06 decode`
//! (`decode`), the pre-maintenance checklist `gt06 doctor` (`doctor`), the counters behind `GET /metrics` (`metrics`), store verification
//! (`verify`), the store benchmark (`bench_store`) and systemd socket activation and
//! readiness notifications (`systemd`).
//!
//! This room reports; it never changes the store's contents (verify opens it like the
//! server does; the benchmark writes only into its own empty directory).

pub mod backup;
pub mod bench_store;
pub mod control;
pub mod decode;
pub mod doctor;
pub mod metrics;
pub mod systemd;
pub mod verify;

use std::net::SocketAddr;

/// The process listening on `addr`'s port, as `(pid, command line)`, when /proc says.
/// Best effort: without permission to read other processes' fds it finds nothing.
pub fn port_holder(addr: SocketAddr) -> Option<(u32, String)> {
    let inode = listening_inode(addr.port())?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                let cmd = std::fs::read(entry.path().join("cmdline"))
                    .map(|b| {
                        b.split(|c| *c == 0)
                            .filter(|s| !s.is_empty())
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                return Some((pid, cmd));
            }
        }
    }
    None
}

/// Whether something listens on `port` (even a process whose fds this user cannot read).
pub fn port_listening(port: u16) -> bool {
    listening_inode(port).is_some()
}

/// Inode of a socket in LISTEN state (st = 0A) on `port`, from /proc/net/tcp{,6}.
fn listening_inode(port: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                return inode.parse().ok().filter(|i| *i != 0);
            }
        }
    }
    None
}
