//! Closing ended tracker connections in the background.
//!
//! Closing a TCP socket is not free: the kernel sends the FIN and, on the same call,
//! walks the other end's state machine where it can (on loopback, the peer's whole
//! TIME_WAIT set-up), tens of microseconds per connection. When thousands of devices
//! hang up in the same second (a cell network's outage, the end of a load test), doing
//! that inline on the runtime threads delayed the answers of every device still talking
//! by hundreds of milliseconds. Sessions therefore hand their socket, with its place
//! under the connection caps, to one thread that runs only when the CPU has nothing
//! better to do (`SCHED_IDLE`). Idle priority alone was not enough: in a storm the runtime
//! threads and the devices' own traffic leave the CPU idle for microseconds at a time,
//! and the closer's non-preemptible `close` calls filled those gaps, a third of a core
//! taken from the answers. So it also holds off while connections keep ending: it
//! closes once hang-ups have paused for [`QUIET`], or once it has held off for
//! [`HOLD_MAX`], which bounds how long a descriptor outlives its session under steady
//! churn. The work lands after the storm.
//!
//! A socket waiting here still counts against the caps: its descriptor is still open.
//! So that waiting does not refuse devices, the accept loop closes the oldest queued
//! sockets, a few hundred at a time, when a cap would refuse, and asks again ([`admit`]).
//! It waits for the queue's lock only briefly: the closing thread's idle priority must
//! never become the accept loop's.
//!
//! This room never reads or writes a socket, only closes them, and never makes a
//! session wait: a session that finds the queue's lock taken closes its socket itself.

use super::limits::{ConnLimits, Refusal, Slot};
use crate::ops::metrics::METRICS;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A connection that has ended, and its place under the caps (given back once the
/// descriptor is closed). The socket is already out of the runtime's reactor: dropping a
/// tokio socket here would take the reactor's lock on this idle-priority thread, and a
/// runtime thread that needed it while this one was preempted holding it would wait for
/// as long as the machine stayed busy.
type Ended = (std::net::TcpStream, Slot);

/// Closing waits until no connection has ended for this long...
const QUIET: Duration = Duration::from_millis(20);
/// ...or until it has waited this long: sockets keep their descriptors meanwhile.
const HOLD_MAX: Duration = Duration::from_secs(2);

struct Queue {
    sockets: Mutex<VecDeque<Ended>>,
    more: Condvar,
    /// When a socket last came in, in microseconds since `epoch`: written by sessions
    /// without the lock, read by the closing thread.
    last_in_us: AtomicU64,
    epoch: Instant,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            sockets: Mutex::default(),
            more: Condvar::new(),
            last_in_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Queue {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// How much longer the closing thread holds off, when the last connection ended
/// `since_last` ago and it has held off for `held` already; `None`: close now.
fn hold_off(since_last: Duration, held: Duration) -> Option<Duration> {
    if since_last >= QUIET || held >= HOLD_MAX {
        return None;
    }
    Some((QUIET - since_last).min(HOLD_MAX - held))
}

/// Where sessions leave their sockets to be closed.
#[derive(Clone)]
pub struct Closer {
    queue: Arc<Queue>,
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The closing thread takes from the queue.
    Background,
    /// No thread could be started: sockets are closed where they end.
    Inline,
    /// Nothing takes from the queue but [`Closer::close_now`] (tests).
    #[cfg(test)]
    Held,
}

impl Closer {
    /// Starts the closing thread. If the thread cannot be started, sockets are closed
    /// where they end, as before this room existed.
    pub fn spawn() -> Closer {
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        let started = std::thread::Builder::new()
            .name("gt06-closer".into())
            .spawn(move || {
                lower_priority();
                closing_loop(&q)
            });
        match started {
            Ok(_) => Closer {
                queue,
                mode: Mode::Background,
            },
            Err(e) => {
                tracing::warn!(error = %e, "closer thread not started; connections are closed where they end");
                Closer {
                    queue,
                    mode: Mode::Inline,
                }
            }
        }
    }

    /// A closer with no thread: sockets wait until [`Closer::close_now`].
    #[cfg(test)]
    pub(crate) fn held() -> Closer {
        Closer {
            queue: Arc::new(Queue::default()),
            mode: Mode::Held,
        }
    }

    /// Takes an ended connection's socket and slot; both are let go later. Called on a
    /// runtime thread: the socket leaves the reactor here.
    pub fn close(&self, sock: TcpStream, slot: Slot) {
        let sock = match sock.into_std() {
            Ok(sock) => sock,
            // The reactor refused to let go: the socket was closed on the way.
            Err(_) => return drop(slot),
        };
        if self.mode == Mode::Inline {
            return end((sock, slot));
        }
        // A runtime thread never waits for this lock: the thread that also takes it runs
        // at idle priority, and if it was preempted holding it, waiting would hand the
        // session's thread that priority. Taken (rarely), the socket is closed here.
        let Some(mut q) = self.try_queue() else {
            return end((sock, slot));
        };
        let was_empty = q.is_empty();
        q.push_back((sock, slot));
        self.queue
            .last_in_us
            .store(self.queue.now_us(), Ordering::Relaxed);
        METRICS.set_connections_closing(q.len());
        drop(q);
        // The thread waits only on an empty queue: waking it for every socket of a storm
        // cost a futex call each.
        if was_empty {
            self.queue.more.notify_one();
        }
    }

    /// Closes every waiting socket now, on the caller's thread; how many there were.
    /// (The one the closing thread may be closing at that moment is not among them.)
    pub fn close_now(&self) -> usize {
        let q = self.queue.sockets.lock().unwrap_or_else(|p| p.into_inner());
        close_from(q, usize::MAX)
    }

    /// Closes up to `max` of the longest-waiting sockets now, on the caller's thread (the
    /// accept loop). It waits at most [`ROOM_LOCK_WAIT`] for the queue's lock: the other
    /// thread that takes it runs at idle priority, and if that thread was preempted
    /// holding it, waiting would stop the accept loop, and the runtime thread under it,
    /// until the machine had nothing better to do. Not getting the lock counts as
    /// nothing to close, so the device is refused (with its log line) and tries again.
    fn close_oldest(&self, max: usize) -> usize {
        let deadline = Instant::now() + ROOM_LOCK_WAIT;
        loop {
            if let Some(q) = self.try_queue() {
                return close_from(q, max);
            }
            if Instant::now() >= deadline {
                return 0;
            }
            std::thread::yield_now();
        }
    }

    /// The queue, if its lock is free now (a poisoned lock is as good: the queue itself
    /// is never left half-changed).
    fn try_queue(&self) -> Option<MutexGuard<'_, VecDeque<Ended>>> {
        match self.queue.sockets.try_lock() {
            Ok(q) => Some(q),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Sockets waiting to be closed (`/metrics` shows the same, without the lock).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.queue
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Sockets the accept loop closes at a time when a cap would refuse: a few hundred
/// closes (~10 ms) make room for as many devices, without stalling the accept loop for
/// the whole queue after a mass hang-up (~50 µs a socket).
const CLOSE_FOR_ROOM: usize = 256;

/// How long the accept loop tries for the queue's lock to make room. The closing thread
/// holds it for one `pop_front` at a time, well under a microsecond when it is running.
const ROOM_LOCK_WAIT: Duration = Duration::from_millis(1);

/// Takes up to `max` of the longest-waiting sockets out of the locked queue, lets the lock
/// go, and closes them; how many there were.
fn close_from(mut q: MutexGuard<'_, VecDeque<Ended>>, max: usize) -> usize {
    let n = q.len().min(max);
    let taken: Vec<Ended> = q.drain(..n).collect();
    METRICS.set_connections_closing(q.len());
    drop(q);
    taken.into_iter().for_each(end);
    n
}

/// A place under the caps for a connection from `ip`. Sockets of ended connections that
/// still wait here hold places too; rather than refuse a device for them, the oldest are
/// closed now and the caps asked again, until the device fits or nothing waits.
pub fn admit(limits: &Arc<ConnLimits>, closer: &Closer, ip: IpAddr) -> Result<Slot, Refusal> {
    loop {
        match limits.admit(ip) {
            Err(refusal) if closer.close_oldest(CLOSE_FOR_ROOM) == 0 => return Err(refusal),
            Err(_) => continue,
            admitted => return admitted,
        }
    }
}

fn closing_loop(queue: &Queue) {
    // Since when the sockets now queued have been held back.
    let mut holding: Option<Instant> = None;
    loop {
        let ended = {
            let mut q = queue.sockets.lock().unwrap_or_else(|p| p.into_inner());
            while q.is_empty() {
                holding = None;
                q = queue.more.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let last_in = queue.last_in_us.load(Ordering::Relaxed);
            let since_last = Duration::from_micros(queue.now_us().saturating_sub(last_in));
            let held = holding.get_or_insert_with(Instant::now).elapsed();
            if let Some(wait) = hold_off(since_last, held) {
                drop(q);
                std::thread::sleep(wait);
                continue;
            }
            let e = q.pop_front().expect("the queue is not empty");
            METRICS.set_connections_closing(q.len());
            e
        };
        // One at a time, the lock not held while closing: what is still queued stays
        // within reach of the accept loop (`admit`) and of `close_now`.
        end(ended);
    }
}

/// Closes the socket, then gives its place back: the slot is the promise that a
/// descriptor is free.
fn end((sock, slot): Ended) {
    drop(sock);
    drop(slot);
}

/// Runs this thread only when no other thread wants the CPU. If the scheduler class
/// cannot be had (some containers refuse it), the lowest nice value is the next best:
/// a small share under load instead of none.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread; the struct
    // is read, not kept.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    // SAFETY: gettid has no arguments; setpriority on a thread id changes only it.
    let tid = unsafe { libc::gettid() };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "closer thread keeps the default priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testnet::{connection, runtime};
    use std::io::{ErrorKind, Read};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// What the device reads within `wait`: Some(true) the end of the stream,
    /// Some(false) bytes, None nothing yet.
    fn device_sees_end(device: &mut std::net::TcpStream, wait: Duration) -> Option<bool> {
        device.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 16];
        match device.read(&mut b) {
            Ok(n) => Some(n == 0),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("device read failed: {e}"),
        }
    }

    /// `n` connections whose sessions have ended, each handed to `closer` with the place
    /// `place` gives it; the devices' ends.
    fn ended(
        rt: &tokio::runtime::Runtime,
        closer: &Closer,
        n: usize,
        mut place: impl FnMut() -> Slot,
    ) -> Vec<std::net::TcpStream> {
        (0..n)
            .map(|_| {
                let (server, device) = connection(rt);
                closer.close(server, place());
                device
            })
            .collect()
    }

    /// Waits (at most 5 s) until every place under the caps is given back.
    fn wait_for_places_given_back(limits: &ConnLimits) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while limits.open() > 0 {
            assert!(Instant::now() < deadline, "places were never given back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_closing_thread_ends_the_connection_and_then_gives_its_place_back() {
        let rt = runtime();
        let limits = ConnLimits::new(1, 0);
        let closer = Closer::spawn();
        let (server, mut device) = connection(&rt);
        closer.close(server, limits.admit(LOCAL).unwrap());
        assert_eq!(
            device_sees_end(&mut device, Duration::from_secs(5)),
            Some(true),
            "the device never saw the connection end"
        );
        wait_for_places_given_back(&limits);
        assert_eq!(closer.waiting(), 0);
    }

    #[test]
    fn closing_holds_off_while_connections_keep_ending_but_not_for_ever() {
        let ms = Duration::from_millis;
        assert_eq!(hold_off(ms(0), ms(0)), Some(QUIET));
        assert_eq!(hold_off(ms(5), ms(500)), Some(QUIET - ms(5)));
        assert_eq!(hold_off(QUIET, ms(0)), None, "hang-ups paused");
        assert_eq!(hold_off(ms(0), HOLD_MAX), None, "held long enough");
        assert_eq!(hold_off(ms(0), HOLD_MAX - ms(1)), Some(ms(1)));
    }

    #[test]
    fn a_burst_of_ended_connections_is_closed_once_it_pauses() {
        let rt = runtime();
        let limits = ConnLimits::new(100, 0);
        let closer = Closer::spawn();
        let mut devices = ended(&rt, &closer, 50, || limits.admit(LOCAL).unwrap());
        let paused = Instant::now();
        for d in &mut devices {
            assert_eq!(device_sees_end(d, Duration::from_secs(5)), Some(true));
        }
        assert!(
            paused.elapsed() >= QUIET,
            "closed before the burst had paused for {QUIET:?}"
        );
        wait_for_places_given_back(&limits);
    }

    #[test]
    fn room_is_made_a_few_hundred_sockets_at_a_time() {
        let rt = runtime();
        let n = CLOSE_FOR_ROOM + 10;
        let limits = ConnLimits::new(n, 0);
        let closer = Closer::held();
        let mut devices = ended(&rt, &closer, n, || limits.admit(LOCAL).unwrap());
        let _slot = admit(&limits, &closer, LOCAL).unwrap();
        assert_eq!(closer.waiting(), 10);
        assert_eq!(limits.open(), 11);
        // The oldest went first.
        assert_eq!(
            device_sees_end(&mut devices[0], Duration::from_secs(5)),
            Some(true)
        );
        assert_eq!(
            device_sees_end(&mut devices[n - 1], Duration::from_millis(50)),
            None
        );
    }

    #[test]
    fn the_accept_loop_does_not_wait_for_a_closing_thread_stuck_holding_the_queue() {
        let rt = runtime();
        let limits = ConnLimits::new(1, 0);
        let closer = Closer::held();
        let _device = ended(&rt, &closer, 1, || limits.admit(LOCAL).unwrap());
        // The closing thread, preempted inside its `pop_front`, holds the queue for 2 s.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (taken_tx, taken) = std::sync::mpsc::channel::<()>();
        let queue = closer.queue.clone();
        let stuck = std::thread::spawn(move || {
            let _q = queue.sockets.lock().unwrap();
            taken_tx.send(()).unwrap();
            let _ = held.recv_timeout(Duration::from_secs(2));
        });
        taken.recv().unwrap();
        let asked = Instant::now();
        assert_eq!(
            admit(&limits, &closer, LOCAL).err(),
            Some(Refusal::Global),
            "no room can be made while the queue is held"
        );
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "the accept loop waited {:?} for the closing thread",
            asked.elapsed()
        );
        release.send(()).unwrap();
        stuck.join().unwrap();
        // Once the lock is free again, the waiting socket makes room as before.
        let _slot = admit(&limits, &closer, LOCAL).expect("refused for a socket nobody uses");
        assert_eq!(closer.waiting(), 0);
    }

    #[test]
    fn a_full_cap_closes_the_waiting_sockets_instead_of_refusing() {
        let rt = runtime();
        let limits = ConnLimits::new(2, 0);
        let closer = Closer::held();
        let mut devices = ended(&rt, &closer, 2, || admit(&limits, &closer, LOCAL).unwrap());
        // Waiting sockets are open and hold their places.
        assert_eq!(closer.waiting(), 2);
        assert_eq!(limits.open(), 2);
        for d in &mut devices {
            assert_eq!(device_sees_end(d, Duration::from_millis(50)), None);
        }
        assert_eq!(limits.admit(LOCAL).err(), Some(Refusal::Global));
        // The next device gets a place: the waiting ones are closed for it.
        let slot = admit(&limits, &closer, LOCAL).expect("refused for sockets nobody uses");
        assert_eq!(closer.waiting(), 0);
        assert_eq!(limits.open(), 1);
        for d in &mut devices {
            assert_eq!(device_sees_end(d, Duration::from_secs(5)), Some(true));
        }
        // With nothing waiting, a full cap still refuses.
        let _second = admit(&limits, &closer, LOCAL).unwrap();
        assert_eq!(admit(&limits, &closer, LOCAL).err(), Some(Refusal::Global));
        drop(slot);
    }
}
