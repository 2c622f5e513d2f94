//! systemd integration without a crate: socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`) and `sd_notify` (`READY=1`, `STOPPING=1`, `WATCHDOG=1` over the
//! unix datagram socket named by `NOTIFY_SOCKET`).
//!
//! This room only adopts sockets and sends notifications; it never binds or decides when
//! the service is ready or healthy — `main.rs` does, and calls in here.
//!
//! The env parsing is pure ([`parse_listen_env`], [`watchdog_interval`]) and unit-tested;
//! the small impure wrappers read the environment once, at start, before any thread runs.

use anyhow::Context;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// systemd passes the first activated socket as fd 3 (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Which passed fd serves which port, decided from the environment alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFds {
    /// The GT06 tracker port, or `None`: bind `tcp.listen` as configured.
    pub gt06: Option<RawFd>,
    /// The HTTP port, or `None`: bind `http.listen` as configured.
    pub http: Option<RawFd>,
    /// Passed fds that are neither (left open, unused; logged).
    pub unused: Vec<RawFd>,
    /// True when `LISTEN_FDNAMES` decided the mapping, false when the order did.
    pub by_name: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors")]
    BadCount(String),
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
}

/// Decides what the socket-activation variables mean for a process with pid `our_pid`.
/// `Ok(None)`: not socket-activated (no or foreign `LISTEN_PID`, or zero fds), bind as
/// configured. With names, `gt06` and `http` pick their fds and anything else is unused;
/// without them (or when neither name appears) the first fd is GT06, the second HTTP.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fdnames: Option<&str>,
    our_pid: u32,
) -> Result<Option<PassedFds>, ActivationError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadPid(pid.to_string()))?;
    if pid != our_pid {
        // Meant for another process (e.g. inherited through a shell): not ours to take.
        return Ok(None);
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n: &RawFd| (0..=4096).contains(n))
        .ok_or_else(|| ActivationError::BadCount(fds.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    let all: Vec<RawFd> = (LISTEN_FDS_START..LISTEN_FDS_START + n).collect();
    let names: Vec<&str> = fdnames.map(|s| s.split(':').collect()).unwrap_or_default();
    let named = |want: &str| {
        names
            .iter()
            .zip(&all)
            .find(|(name, _)| **name == want)
            .map(|(_, fd)| *fd)
    };
    let (gt06, http, by_name) = match (named("gt06"), named("http")) {
        (None, None) => (all.first().copied(), all.get(1).copied(), false),
        (g, h) => (g, h, true),
    };
    let unused = all
        .iter()
        .copied()
        .filter(|fd| Some(*fd) != gt06 && Some(*fd) != http)
        .collect();
    Ok(Some(PassedFds {
        gt06,
        http,
        unused,
        by_name,
    }))
}

/// The listeners systemd (or anything speaking its protocol) handed us.
#[derive(Debug, Default)]
pub struct Activated {
    pub gt06: Option<std::net::TcpListener>,
    pub http: Option<std::net::TcpListener>,
    /// One line for the log saying what was adopted, `None` when nothing was.
    pub summary: Option<String>,
}

/// Reads and unsets `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, and adopts the passed
/// listening sockets (checked to be listening stream sockets, made close-on-exec and
/// non-blocking). Call before any thread starts: it changes the environment.
pub fn take_listen_fds() -> anyhow::Result<Activated> {
    let var = |k: &str| std::env::var(k).ok();
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let Some(passed) = parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
    .context("socket activation")?
    else {
        return Ok(Activated::default());
    };
    let gt06 = passed.gt06.map(|fd| adopt(fd, "gt06")).transpose()?;
    let http = passed.http.map(|fd| adopt(fd, "http")).transpose()?;
    let describe = |l: &Option<std::net::TcpListener>| match l {
        Some(l) => l
            .local_addr()
            .map_or_else(|_| "a passed socket".into(), |a| a.to_string()),
        None => "bound as configured".into(),
    };
    let summary = format!(
        "socket activation ({}): GT06 {}, HTTP {}{}",
        if passed.by_name {
            "by LISTEN_FDNAMES"
        } else {
            "by order"
        },
        describe(&gt06),
        describe(&http),
        if passed.unused.is_empty() {
            String::new()
        } else {
            format!("; unused fds {:?}", passed.unused)
        }
    );
    Ok(Activated {
        gt06,
        http,
        summary: Some(summary),
    })
}

/// Takes ownership of `fd` as a TCP listener after checking it is one.
fn adopt(fd: RawFd, name: &str) -> anyhow::Result<std::net::TcpListener> {
    let int_opt = |opt: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let ty = int_opt(libc::SO_TYPE)
        .with_context(|| format!("passed fd {fd} ({name}) is not a socket"))?;
    let listening = int_opt(libc::SO_ACCEPTCONN)
        .with_context(|| format!("passed fd {fd} ({name}) is not a socket"))?;
    if ty != libc::SOCK_STREAM || listening == 0 {
        anyhow::bail!("passed fd {fd} ({name}) is not a listening stream socket");
    }
    // SAFETY: fd was handed to this process by the activation protocol and is checked
    // above to be an open listening socket; nothing else in the process owns it.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    l.set_nonblocking(true)
        .with_context(|| format!("cannot make passed fd {fd} ({name}) non-blocking"))?;
    Ok(l)
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for us
/// (`WATCHDOG_PID` absent or ours) and is a positive number.
pub fn watchdog_interval(
    usec: Option<&str>,
    wd_pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(p) = wd_pid {
        if p.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(us / 2).max(Duration::from_millis(1)))
}

/// Where `sd_notify` messages go: a filesystem path or an abstract name (`@…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl NotifyTarget {
    /// `NOTIFY_SOCKET`'s value as systemd defines it; empty or relative means none.
    pub fn parse(v: &str) -> Option<NotifyTarget> {
        if let Some(name) = v.strip_prefix('@') {
            Some(NotifyTarget::Abstract(name.as_bytes().to_vec()))
        } else if v.starts_with('/') {
            Some(NotifyTarget::Path(PathBuf::from(v)))
        } else {
            None
        }
    }
}

/// Sends `sd_notify` states; a no-op when the service manager gave no socket.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<NotifyTarget>,
    /// Half the watchdog period, when the manager wants pings.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok();
        let target = var("NOTIFY_SOCKET").and_then(|v| NotifyTarget::parse(&v));
        let watchdog = watchdog_interval(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        Notifier { target, watchdog }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram with `state` (e.g. `"READY=1"`). `Ok(false)`: no socket set.
    pub fn notify(&self, state: &str) -> std::io::Result<bool> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let sock = UnixDatagram::unbound()?;
        match target {
            NotifyTarget::Path(p) => {
                sock.send_to(state.as_bytes(), p)?;
            }
            NotifyTarget::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_listen_variables_means_bind_as_configured() {
        assert_eq!(parse_listen_env(None, None, None, 42), Ok(None));
        assert_eq!(parse_listen_env(Some("42"), None, None, 42), Ok(None));
        assert_eq!(parse_listen_env(Some("42"), Some("0"), None, 42), Ok(None));
    }

    #[test]
    fn fds_passed_to_another_pid_are_not_taken() {
        assert_eq!(parse_listen_env(Some("41"), Some("2"), None, 42), Ok(None));
    }

    #[test]
    fn one_fd_is_the_gt06_port_and_http_binds_as_configured() {
        let p = parse_listen_env(Some("42"), Some("1"), None, 42)
            .unwrap()
            .unwrap();
        assert_eq!(p.gt06, Some(3));
        assert_eq!(p.http, None);
        assert!(!p.by_name);
    }

    #[test]
    fn without_names_the_first_fd_is_gt06_and_the_second_http() {
        let p = parse_listen_env(Some(" 42 "), Some("3"), None, 42)
            .unwrap()
            .unwrap();
        assert_eq!((p.gt06, p.http, p.unused), (Some(3), Some(4), vec![5]));
    }

    #[test]
    fn names_pick_the_fds_whatever_their_order() {
        let p = parse_listen_env(Some("42"), Some("2"), Some("http:gt06"), 42)
            .unwrap()
            .unwrap();
        assert_eq!((p.gt06, p.http, p.by_name), (Some(4), Some(3), true));
        // Only HTTP passed by name: the GT06 port binds as configured.
        let p = parse_listen_env(Some("42"), Some("1"), Some("http"), 42)
            .unwrap()
            .unwrap();
        assert_eq!((p.gt06, p.http), (None, Some(3)));
        // Names that mean nothing to us fall back to the order.
        let p = parse_listen_env(Some("42"), Some("2"), Some("a:b"), 42)
            .unwrap()
            .unwrap();
        assert_eq!((p.gt06, p.http, p.by_name), (Some(3), Some(4), false));
    }

    #[test]
    fn malformed_listen_variables_are_errors_naming_the_value() {
        assert_eq!(
            parse_listen_env(Some("x"), Some("1"), None, 42),
            Err(ActivationError::BadPid("x".into()))
        );
        assert_eq!(
            parse_listen_env(Some("42"), Some("-1"), None, 42),
            Err(ActivationError::BadCount("-1".into()))
        );
        assert_eq!(
            parse_listen_env(Some("42"), Some("two"), None, 42),
            Err(ActivationError::BadCount("two".into()))
        );
    }

    #[test]
    fn watchdog_pings_at_half_the_period_and_only_for_us() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(
            NotifyTarget::parse("/run/systemd/notify"),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifyTarget::parse("@sd-notify"),
            Some(NotifyTarget::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(NotifyTarget::parse(""), None);
        assert_eq!(NotifyTarget::parse("relative"), None);
    }

    #[test]
    fn notify_sends_the_state_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let name = format!("gt06-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier {
            target: NotifyTarget::parse(&format!("@{name}")),
            watchdog: None,
        };
        assert!(n.notify("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        assert!(!Notifier::default().notify("READY=1").unwrap());
    }
}
