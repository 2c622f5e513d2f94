//! Connection limits: the process's descriptor limit, the global and per-address caps on
//! tracker connections, and the back-off of an accept loop that keeps failing.
//!
//! This room decides whether a new connection may have a session; it never reads from
//! one. A refused connection is accepted (so the kernel's backlog does not fill with
//! connections nobody will serve), counted, logged at most once per address per minute,
//! and closed. Nothing here may panic or spin on a condition that lasts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Descriptors kept back from the tracker cap: sled's files, the journal, the listeners,
/// HTTP clients (the map, `/api/live` streams, scrapers) and a refused connection's
/// own brief descriptor.
pub const FD_RESERVE: u64 = 100;

/// Refusals from one address are logged at most once per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The process's `RLIMIT_NOFILE` before and after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit (what an unprivileged process may
/// do; raising the hard limit needs root and is the operator's call, e.g. systemd's
/// `LimitNOFILE=`).
pub fn raise_nofile() -> std::io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors per
    // process at fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let target = lim.rlim_max.min(nr_open);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = target;
    }
    Ok(NofileLimit {
        before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// The global tracker-connection cap: what the descriptor limit leaves after the
/// reserve, and never more than the configured value (`0` = no configured value).
pub fn connection_cap(configured: usize, fd_soft: u64) -> usize {
    // A tiny limit (a test, a misconfigured container) still leaves half for trackers.
    let by_fds = if fd_soft > 2 * FD_RESERVE {
        fd_soft - FD_RESERVE
    } else {
        (fd_soft / 2).max(1)
    };
    let by_fds = usize::try_from(by_fds).unwrap_or(usize::MAX);
    if configured == 0 {
        by_fds
    } else {
        configured.min(by_fds)
    }
}

/// Why a connection was refused; the `reason` of its log line and metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Global,
    PerIp,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Global => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// The per-address table is swept of addresses with no connection when it reaches this
/// many entries, or twice what the last sweep left, whichever is more.
const SWEEP_MIN: usize = 1024;

/// Counts open tracker connections, in total and per address.
///
/// Places are taken under a lock (two admissions must not both get the last one) but
/// given back without it: slots are dropped on the closer's idle-priority thread, and a
/// lock that thread held while preempted would stop the accept loop, and the runtime
/// thread under it, for as long as the machine stayed busy.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    /// 0 = no per-address cap (and no per-address bookkeeping).
    max_per_ip: usize,
    /// Connections holding a slot: raised under `state`'s lock, lowered without it.
    open: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Connections per address; each slot holds its address's counter and lowers it
    /// when dropped. Addresses down to zero stay until the next sweep.
    per_ip: HashMap<IpAddr, Arc<AtomicU32>>,
    sweep_at: usize,
    /// When a refusal from an address was last logged.
    warned: HashMap<IpAddr, Instant>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total: max_total.max(1),
            max_per_ip,
            open: AtomicUsize::new(0),
            state: Mutex::new(State {
                sweep_at: SWEEP_MIN,
                ..State::default()
            }),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot for a connection from `ip`, or why not. The slot is given back on drop.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Slots may be given back meanwhile; that only makes room.
        if self.open.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::Global);
        }
        let per_ip = if self.max_per_ip > 0 {
            if s.per_ip.len() >= s.sweep_at {
                s.per_ip.retain(|_, n| n.load(Ordering::Acquire) > 0);
                s.sweep_at = (2 * s.per_ip.len()).max(SWEEP_MIN);
            }
            let n = s.per_ip.entry(ip).or_default();
            if n.load(Ordering::Acquire) as usize >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            n.fetch_add(1, Ordering::AcqRel);
            Some(n.clone())
        } else {
            None
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            limits: self.clone(),
            per_ip,
        })
    }

    /// Whether a refusal from `ip` at `now` should be logged (once per address per
    /// minute). The memory of who was warned is pruned as it grows, so a flood from
    /// many addresses costs at most one minute's worth of entries.
    pub fn should_warn(&self, ip: IpAddr, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.warned.len() >= 1024 {
            s.warned
                .retain(|_, at| now.saturating_duration_since(*at) < WARN_EVERY);
        }
        match s.warned.get(&ip) {
            Some(at) if now.saturating_duration_since(*at) < WARN_EVERY => false,
            _ => {
                s.warned.insert(ip, now);
                true
            }
        }
    }
}

/// One admitted connection's place under the caps.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    /// Its address's counter, when there is a per-address cap.
    per_ip: Option<Arc<AtomicU32>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Each counter was raised once for this slot, so it is at least one here.
        if let Some(n) = &self.per_ip {
            n.fetch_sub(1, Ordering::AcqRel);
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Back-off for an accept loop. Errors such as EMFILE last until a descriptor is freed,
/// so retrying at once would spin a core: wait 5 ms, doubling up to a second, and log
/// once per episode (the first failure after a success).
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// Resets after a success; true when it ends an episode of failures.
    pub fn succeeded(&mut self) -> bool {
        let recovered = self.next != Self::FIRST;
        self.next = Self::FIRST;
        recovered
    }

    /// How long to wait after a failure, and whether this failure starts an episode
    /// (the one to log).
    pub fn failed(&mut self) -> (Duration, bool) {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        (wait, wait == Self::FIRST)
    }
}

/// Sets `SO_SNDBUF` of a connected socket. Linux doubles the value for its bookkeeping
/// and turns off send-buffer autotuning for the socket, so this bounds the kernel memory
/// a peer that stops reading can pin.
pub fn set_send_buffer(fd: std::os::fd::RawFd, bytes: usize) -> std::io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt on a descriptor the caller owns, with an int option.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_the_descriptor_limit_minus_the_reserve_and_never_above_the_config() {
        assert_eq!(connection_cap(0, 20_000), 19_900);
        assert_eq!(connection_cap(5_000, 20_000), 5_000);
        assert_eq!(connection_cap(50_000, 20_000), 19_900);
        assert_eq!(connection_cap(0, 1024), 924);
        assert_eq!(connection_cap(0, 150), 75);
        assert_eq!(connection_cap(0, 1), 1);
    }

    #[test]
    fn caps_refuse_the_excess_and_slots_come_back() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let l = ConnLimits::new(3, 2);
        let s1 = l.admit(a).unwrap();
        let _s2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::PerIp);
        let _s3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::Global);
        assert_eq!(l.open(), 3);
        drop(s1);
        assert_eq!(l.open(), 2);
        let _s4 = l.admit(a).unwrap();
        // Per-address cap off: only the global cap counts.
        let l = ConnLimits::new(2, 0);
        let _x = l.admit(a).unwrap();
        let _y = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::Global);
    }

    #[test]
    fn a_slot_is_given_back_while_the_caps_lock_is_held() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let l = ConnLimits::new(2, 1);
        let slot = l.admit(a).unwrap();
        // As if the accept loop were inside `admit` when the closer drops a slot.
        let held = l.state.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(slot);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "dropping a slot waited for the lock admissions take"
        );
        assert_eq!(l.open(), 0);
        drop(held);
        let _again = l.admit(a).expect("the address's place came back");
    }

    #[test]
    fn addresses_that_left_are_swept_and_those_still_here_keep_their_count() {
        let stays: IpAddr = [10, 0, 0, 1].into();
        let l = ConnLimits::new(100_000, 1);
        let _kept = l.admit(stays).unwrap();
        for i in 0..5_000u32 {
            let ip: IpAddr = [10, 1, (i >> 8) as u8, i as u8].into();
            drop(l.admit(ip).unwrap());
        }
        let table = l.state.lock().unwrap().per_ip.len();
        assert!(table <= SWEEP_MIN, "{table} addresses remembered");
        assert_eq!(l.admit(stays).unwrap_err(), Refusal::PerIp);
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn refusals_are_logged_once_per_address_per_minute() {
        let l = ConnLimits::new(1, 0);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        assert!(l.should_warn(a, t0));
        assert!(!l.should_warn(a, t0 + Duration::from_secs(59)));
        assert!(l.should_warn(b, t0 + Duration::from_secs(1)));
        assert!(l.should_warn(a, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn backoff_doubles_to_a_second_and_logs_once_per_episode() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.failed(), (Duration::from_millis(5), true));
        assert_eq!(b.failed(), (Duration::from_millis(10), false));
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.failed(), (Duration::from_secs(1), false));
        assert!(b.succeeded());
        assert!(!b.succeeded());
        assert_eq!(b.failed(), (Duration::from_millis(5), true));
    }

    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let l = raise_nofile().unwrap();
        assert!(l.soft >= l.before);
        assert!(l.soft == l.hard || l.hard == libc::RLIM_INFINITY);
    }
}
