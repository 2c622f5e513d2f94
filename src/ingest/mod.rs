//! Ingest: the GT06 TCP listener and one session task per tracker connection.
//!
//! This room owns sockets, timeouts, login gating and the order of answers. It turns
//! decoded messages into store requests and answers devices only when what preceded the
//! answer on that connection is durable. It never parses bytes itself (`protocol/` does)
//! and never touches sled (`store/` does).
//!
//! **Architecture invariant:** an answer is written to a device only after every store
//! request that its connection sent before it was committed and fsynced.
//! **Architecture invariant:** every read has a timeout and a size limit; a misbehaving
//! connection is closed with one log line and no other connection notices.

pub mod closer;
pub mod device_time;
pub mod limits;
pub mod session;
#[cfg(test)]
pub(crate) mod testnet;

use crate::ops::metrics::METRICS;
use crate::protocol::{Model, SplitOptions};
use crate::store::WriterHandle;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every session needs, shared.
pub struct IngestCtx {
    pub writer: WriterHandle,
    pub online: Online,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// A new connection must have logged in within this.
    pub login_timeout: Duration,
    /// A frame must be complete this long after its first byte arrived.
    pub frame_timeout: Duration,
    /// The global and per-address connection caps.
    pub limits: Arc<limits::ConnLimits>,
    /// Where an ended connection's socket goes to be closed, off the runtime threads.
    pub closer: closer::Closer,
    pub split: SplitOptions,
    /// How each device's fix times are read and which model it is.
    pub devices: DeviceSettings,
}

/// One device's settings, resolved: its own `[devices."IMEI"]` keys over the
/// `protocol.*` defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceSetting {
    /// How its fix times are read.
    pub time: device_time::TimeSetting,
    /// Which firmware family's layouts and alarm meanings its frames are decoded with.
    pub model: Model,
}

/// The per-device settings of the whole server: a default and per-device exceptions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSettings {
    pub default: DeviceSetting,
    pub per_device: HashMap<u64, DeviceSetting>,
}

impl DeviceSettings {
    pub fn for_imei(&self, imei: u64) -> DeviceSetting {
        self.per_device.get(&imei).copied().unwrap_or(self.default)
    }
}

/// Which devices have a logged-in connection right now (a device may briefly have two
/// while it reconnects, hence a count), and what the sessions noticed about them that
/// lives only in memory (a suspected clock offset).
#[derive(Clone, Default)]
pub struct Online {
    inner: Arc<Mutex<HashMap<u64, u32>>>,
    time_offsets: Arc<Mutex<HashMap<u64, i32>>>,
}

impl Online {
    /// Minutes a device's live fixes sit away from their receipt time, when its sessions
    /// concluded so (see `device_time::OffsetDetector`). Kept across reconnects, not
    /// across restarts.
    pub fn time_offset_suspect_min(&self, imei: u64) -> Option<i32> {
        self.time_offsets
            .lock()
            .ok()
            .and_then(|m| m.get(&imei).copied())
    }

    fn set_time_offset_suspect(&self, imei: u64, minutes: Option<i32>) {
        if let Ok(mut m) = self.time_offsets.lock() {
            match minutes {
                Some(v) => m.insert(imei, v),
                None => m.remove(&imei),
            };
        }
    }

    pub fn is_online(&self, imei: u64) -> bool {
        self.inner
            .lock()
            .map(|m| m.get(&imei).is_some_and(|n| *n > 0))
            .unwrap_or(false)
    }

    pub fn count(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn enter(&self, imei: u64) {
        if let Ok(mut m) = self.inner.lock() {
            *m.entry(imei).or_insert(0) += 1;
        }
    }

    fn leave(&self, imei: u64) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(n) = m.get_mut(&imei) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&imei);
                }
            }
        }
    }
}

/// Kernel send buffer of a tracker socket. Answers are ten bytes; this bounds what a
/// device that stops reading can pin in the kernel (and lets the write timeout notice it).
const TRACKER_SNDBUF: usize = 8 * 1024;

/// Accepts trackers until `cancel` fires; each connection runs in `tracker`.
/// Connections over a cap are accepted and closed at once with one log line per address
/// per minute; accept errors (EMFILE) back off instead of spinning.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<IngestCtx>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = limits::AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                if backoff.succeeded() {
                    tracing::info!("accepting trackers again");
                }
                let slot = match closer::admit(&ctx.limits, &ctx.closer, peer.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        METRICS.connection_refused(refusal == limits::Refusal::PerIp);
                        if ctx.limits.should_warn(peer.ip(), std::time::Instant::now()) {
                            tracing::warn!(
                                reason = refusal.reason(),
                                %peer,
                                max_connections = ctx.limits.max_total(),
                                max_connections_per_ip = ctx.limits.max_per_ip(),
                                "connection refused: cap reached (further refusals of this address are not logged for a minute)"
                            );
                        }
                        drop(sock);
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let _ =
                    limits::set_send_buffer(std::os::fd::AsRawFd::as_raw_fd(&sock), TRACKER_SNDBUF);
                let ctx = ctx.clone();
                let cancel = cancel.clone();
                tracker.spawn(session::run(sock, peer, slot, ctx, cancel));
            }
            Err(e) => {
                let (wait, first) = backoff.failed();
                if first {
                    tracing::warn!(error = %e, "accept failed; backing off (up to 1 s between tries until it works again)");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    tracing::info!("tcp listener stopped accepting");
}
