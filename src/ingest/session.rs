//! One tracker connection: read, split, decode, record, answer.
//!
//! One task per connection reads frames, hands their operations to the store writer and
//! writes each answer once the store says everything before it on this connection is
//! durable. Answers wait in a bounded outbox; while it is full (the store is behind, or
//! the device does not read its answers) the session reads nothing, and TCP pushes back
//! on the device. An answer whose data is already durable (a heartbeat, mostly) goes out
//! in the same wake-up as the frame that asked for it: under a fleet's load, a second
//! task per connection put a trip through the runtime's queue between the two.
//!
//! This room never blocks a runtime thread, never answers before the store's promise
//! holds, and never closes a socket itself (the closer does, off the runtime).

use super::device_time::{OffsetDetector, TimeSetting};
use super::limits::Slot;
use super::{IngestCtx, Online};
use crate::ops::metrics::{FrameResult, METRICS};
use crate::protocol::{self, DecodeCtx, Frame, FrameError, Imei, Message};
use crate::store::{
    refused_when_low, Durability, DurableState, EventRecord, LbsRecord, Op, PositionRecord,
    StatusRecord, StoreError, WriteReq, WriterHandle, REQ_OPS_MAX,
};
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Bytes of junk tolerated without a single frame before we decide this is not a tracker.
const MAX_JUNK_RUN: usize = 4096;
/// Runs of answers (one per store request, so about one per read) waiting for their data
/// to be durable, past which the session stops reading.
const OUT_QUEUE: usize = 256;
/// Bytes of answers not yet taken by the socket, past which the session stops reading:
/// each answer is ten to twenty bytes, and a device that stops reading should be pushed
/// back on quickly.
const UNSENT_MAX: usize = 64 * 1024;
/// An outbox buffer larger than this is given back once empty, not kept for the next
/// answer: an idle connection should hold next to nothing.
const OUTBOX_KEEP: usize = 1024;
/// Most store operations one message turns into (an alarm with a position and
/// dash-cam files: status, two events, the position). A request is sent before
/// pending operations could pass `REQ_OPS_MAX` with one more message.
const MESSAGE_OPS_MAX: usize = 4;
/// Room made in the read buffer before each read: frames are tens of bytes, and the
/// buffer grows when a burst needs more. An idle connection holds no buffer at all.
const READ_BUF: usize = 512;
/// Largest read. A read that fills the room it was given doubles the next one's, up to
/// this: a device uploading its backlog (or a load generator) is then read in a few
/// syscalls rather than one per dozen frames, while a 1 Hz tracker still reads 512.
const READ_BUF_MAX: usize = 16 * 1024;
/// A fix this far ahead of the server's clock is not believed.
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Receipt times of positions are kept to a tenth of a second. What they are for (the
/// clock-offset detector works in quarter-hours, `doctor` in minutes, the API shows when
/// a fix arrived) needs no more, and the milliseconds are noise that cost ~0.8 of the
/// ~5.7 bytes a stored position takes (BENCHMARKS.md, store section).
pub const RECEIPT_RESOLUTION_MS: i64 = 100;

/// Why a session ended, when it was not the device's choice.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no frame for {0:?}")]
    Idle(Duration),
    #[error("no login within {0:?} of connecting")]
    LoginTimeout(Duration),
    #[error("a frame was started and not finished within {0:?}")]
    FrameTimeout(Duration),
    #[error("the device did not take its answers for {0:?}")]
    WriteTimeout(Duration),
    #[error("store write failed ({0}); closing without answering")]
    NotDurable(&'static str),
    #[error("framing lost: {0}")]
    Frame(FrameError),
    #[error("{0} bytes without a frame")]
    Junk(usize),
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("store refused the write: {0}")]
    Store(StoreError),
    #[error("answer not delivered: {0}")]
    Undelivered(std::io::Error),
}

impl SessionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Idle(_) => "idle_timeout",
            SessionError::LoginTimeout(_) => "login_timeout",
            SessionError::FrameTimeout(_) => "frame_timeout",
            SessionError::WriteTimeout(_) => "write_timeout",
            SessionError::NotDurable(reason) => reason,
            SessionError::Frame(e) => e.reason(),
            SessionError::Junk(_) => "junk",
            SessionError::Read(_) => "read_error",
            SessionError::Store(e) => e.reason(),
            SessionError::Undelivered(_) => "answer_failed",
        }
    }
}

enum SessionState {
    Anonymous,
    LoggedIn { imei: Imei },
}

/// The sequence numbers of a connection's requests to the store, and which one an answer
/// waits for: the request carrying the data (positions, events) sent before the answer,
/// its own included. Status updates (last seen, login, heartbeat, information) are not
/// waited for: losing one to a crash costs a stale "last seen" that the device's next
/// heartbeat repeats, while waiting put the writer's commit (and any disk stall) between
/// every heartbeat and its answer, the answer a device reconnects without.
#[derive(Default)]
struct Sequence {
    /// The last request sent.
    sent: u64,
    /// The last request sent that carried data.
    data: u64,
    /// Whether the operations not yet sent hold data.
    pending_data: bool,
}

impl Sequence {
    /// Notes operations added to the next request.
    fn pending(&mut self, ops: &[Op]) {
        self.pending_data |= ops.iter().any(|op| refused_when_low(op).is_some());
    }

    /// What an answer given now waits for (0: nothing).
    fn answer_waits_for(&self) -> u64 {
        if self.pending_data {
            self.sent + 1
        } else {
            self.data
        }
    }

    /// The pending operations go out as a request: its sequence number.
    fn sent(&mut self) -> u64 {
        self.sent += 1;
        if std::mem::take(&mut self.pending_data) {
            self.data = self.sent;
        }
        self.sent
    }
}

/// Warnings already given on this connection: one line per kind, not one per frame.
#[derive(Default)]
struct Warned {
    bad_crc: bool,
    before_login: bool,
    decode: bool,
    unknown: Vec<u8>,
    time_offset: bool,
}

struct Session {
    ctx: Arc<IngestCtx>,
    state: SessionState,
    /// Which request an answer waits for.
    seqs: Sequence,
    /// Operations of the frames handled since the last request: sent as one request
    /// at the end of each read (or when full), which gets the next sequence number.
    pending: Vec<Op>,
    /// Room given to `pending` at once, from the bytes this read brought (a position
    /// frame is 26 bytes or more): growing by doubling copied a full read's operations
    /// about twice over. An idle connection holds no room at all.
    ops_hint: usize,
    outbox: Outbox,
    warned: Warned,
    online: Online,
    /// How this device's fix times are read (set at login).
    time_setting: TimeSetting,
    /// What decoding needs: the device's configured model (set at login; frames before
    /// a login are dropped whatever they decode to).
    decode_ctx: DecodeCtx,
    /// The login's time-zone word, in minutes east.
    login_tz_min: Option<i16>,
    /// Watches live fixes for a clock that is quarter-hours off.
    detector: OffsetDetector,
}

/// Runs one connection to its end. Errors are logged here, once; nothing is returned.
pub async fn run(
    mut sock: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    ctx: Arc<IngestCtx>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("session", %peer, imei = tracing::field::Empty);
    async move {
        let _counted = METRICS.connection();
        let mut s = Session {
            online: ctx.online.clone(),
            outbox: Outbox::new(ctx.write_timeout),
            ctx,
            state: SessionState::Anonymous,
            seqs: Sequence::default(),
            pending: Vec::new(),
            ops_hint: 0,
            warned: Warned::default(),
            time_setting: TimeSetting::default(),
            decode_ctx: DecodeCtx::default(),
            login_tz_min: None,
            detector: OffsetDetector::default(),
        };
        let read = s.read_loop(&mut sock, &cancel).await;
        // Whatever ended the reading, the frames read before it are stored and answered
        // (the device may still be reading), within the write timeout.
        let flushed = s.flush(&sock).await;
        let result = match (read, flushed) {
            (Ok(()), Err(e)) => Err(e),
            (read, _) => read,
        };
        let result = match (result, s.outbox.drain(&sock).await) {
            (Ok(()), Err(e)) => Err(e),
            (result, _) => result,
        };
        if let SessionState::LoggedIn { imei } = s.state {
            s.online.leave(imei.as_u64());
        }
        // The socket is closed (FIN sent) later, off this thread: see `closer`.
        s.ctx.closer.close(sock, slot);
        match result {
            Ok(()) => {
                let why = if cancel.is_cancelled() {
                    "shutdown"
                } else {
                    "device_closed"
                };
                METRICS.connection_closed(why);
                tracing::debug!(reason = why, "connection closed")
            }
            Err(e @ SessionError::Undelivered(_)) => {
                // The device went away with answers on their way: its choice, not news.
                METRICS.connection_closed(e.reason());
                tracing::debug!(reason = e.reason(), error = %e, "connection closed")
            }
            Err(e @ SessionError::NotDurable(_)) => {
                METRICS.connection_closed("answer_failed");
                tracing::error!(reason = e.reason(), error = %e, "connection closed")
            }
            Err(e) => {
                METRICS.connection_closed(e.reason());
                tracing::warn!(reason = e.reason(), error = %e, "connection closed")
            }
        }
    }
    .instrument(span)
    .await
}

impl Session {
    async fn read_loop(
        &mut self,
        sock: &mut TcpStream,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let cap = self.ctx.split.max_frame * 2;
        let mut buf = BytesMut::new();
        let mut junk_run = 0usize;
        let connected = Instant::now();
        // When the last frame ended or a frame's first bytes arrived: junk alone does
        // not keep a connection open.
        let mut last_progress = connected;
        // When the bytes now waiting for the rest of their frame started to arrive.
        let mut partial_since: Option<Instant> = None;
        let mut room = READ_BUF;
        loop {
            let mut deadline = (
                last_progress + self.ctx.idle_timeout,
                SessionError::Idle(self.ctx.idle_timeout),
            );
            if matches!(self.state, SessionState::Anonymous) {
                let login = connected + self.ctx.login_timeout;
                if login < deadline.0 {
                    deadline = (login, SessionError::LoginTimeout(self.ctx.login_timeout));
                }
            }
            if let Some(since) = partial_since {
                let frame = since + self.ctx.frame_timeout;
                if frame < deadline.0 {
                    deadline = (frame, SessionError::FrameTimeout(self.ctx.frame_timeout));
                }
            }
            // While the outbox is full the session reads nothing (back-pressure) and the
            // device's deadlines do not run: only its own silence counts, and bytes
            // already waiting win over a deadline that passed meanwhile. Waiting for
            // readability first means a silent connection holds no buffer.
            let reading = !self.outbox.is_full();
            let waits = self.outbox.waits();
            let unsent = self.outbox.has_unsent();
            let write_deadline = self.outbox.write_deadline();
            let readable = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = self.outbox.state.changed(), if waits => false,
                r = sock.writable(), if unsent => {
                    r.map_err(SessionError::Undelivered)?;
                    false
                }
                r = sock.readable(), if reading => {
                    r.map_err(SessionError::Read)?;
                    true
                }
                _ = tokio::time::sleep_until(deadline.0), if reading => return Err(deadline.1),
                _ = sleep_until_some(write_deadline), if write_deadline.is_some() => {
                    return Err(SessionError::WriteTimeout(self.outbox.write_timeout))
                }
            };
            if !readable {
                self.outbox.pump(sock)?;
                continue;
            }
            if buf.capacity() - buf.len() < room / 2 {
                buf.reserve(room);
            }
            let offered = buf.capacity() - buf.len();
            // One poll of tokio's own read, not `try_read_buf`: a read that leaves room in
            // the buffer drained the socket, and tokio then forgets the readiness, so the
            // next wait sleeps at once; `try_read_buf` kept it, and every read cost a
            // second one that returned WouldBlock (two `recvfrom` per fix at 1 Hz).
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(tokio_util::io::poll_read_buf(
                    Pin::new(&mut *sock),
                    cx,
                    &mut buf,
                ))
            })
            .await;
            let n = match polled {
                Poll::Ready(Ok(n)) => {
                    room = if n == offered {
                        (room * 2).min(READ_BUF_MAX)
                    } else {
                        READ_BUF
                    };
                    n
                }
                // The readiness was stale: back to waiting, with the deadlines.
                Poll::Pending => continue,
                Poll::Ready(Err(e)) => return Err(SessionError::Read(e)),
            };
            if n == 0 {
                return Ok(());
            }
            // The frames of one read arrived together: one receipt time for all of them.
            let received = now_ms();
            self.ops_hint = (buf.len() / 24 + MESSAGE_OPS_MAX).min(REQ_OPS_MAX);
            let mut completed = false;
            loop {
                match protocol::split(&buf, &self.ctx.split) {
                    Ok(None) => break,
                    Ok(Some((frame, used))) => {
                        junk_run = 0;
                        completed = true;
                        // The frame borrows the read buffer (no copy), so it is
                        // handled before the buffer moves past it.
                        self.handle(frame, received, sock).await?;
                        buf.advance(used.min(buf.len()));
                    }
                    Err(e) => {
                        buf.advance(e.consumed().clamp(1, buf.len().max(1)).min(buf.len()));
                        match e {
                            FrameError::Junk { skipped } => {
                                METRICS.frame(FrameResult::Junk, None);
                                junk_run += skipped;
                                if junk_run > MAX_JUNK_RUN {
                                    return Err(SessionError::Junk(junk_run));
                                }
                            }
                            FrameError::BadCrc {
                                proto, want, got, ..
                            } => {
                                METRICS.frame(FrameResult::BadCrc, Some(proto));
                                // Vendor rule: a bad CRC is discarded, not answered. The
                                // connection stays: one flipped bit is not a rogue device.
                                if !self.warned.bad_crc {
                                    self.warned.bad_crc = true;
                                    tracing::warn!(reason = "bad_crc", proto = format_args!("{proto:#04x}"), want = format_args!("{want:#06x}"), got = format_args!("{got:#06x}"), "frame dropped (further bad CRCs on this connection are not logged)");
                                }
                            }
                            FrameError::TooLong { .. } => {
                                METRICS.frame(FrameResult::TooLong, None);
                                return Err(SessionError::Frame(e));
                            }
                            FrameError::Malformed { .. } => {
                                METRICS.frame(FrameResult::Malformed, None);
                                return Err(SessionError::Frame(e));
                            }
                        }
                    }
                }
            }
            // One request to the store for everything this read held, before waiting for
            // the device again (its answers wait for this request).
            self.flush(sock).await?;
            self.outbox.pump(sock)?;
            if buf.len() > cap {
                return Err(SessionError::Junk(buf.len()));
            }
            let now = Instant::now();
            if completed || (!buf.is_empty() && partial_since.is_none()) {
                last_progress = now;
            }
            if buf.is_empty() {
                partial_since = None;
            } else if completed || partial_since.is_none() {
                partial_since = Some(now);
            }
            // Between frames a connection keeps no buffer: most of the time it is idle.
            if buf.is_empty() {
                buf = BytesMut::new();
            }
        }
    }

    async fn handle(
        &mut self,
        frame: Frame<'_>,
        now: i64,
        sock: &TcpStream,
    ) -> Result<(), SessionError> {
        let msg = match protocol::decode(&frame, &self.decode_ctx) {
            Ok(m) => m,
            Err(e) => {
                METRICS.frame(FrameResult::DecodeError, Some(frame.proto));
                if !self.warned.decode {
                    self.warned.decode = true;
                    tracing::warn!(reason = e.reason(), error = %e, hex = %hex(frame.raw), "frame not decoded (further ones on this connection are not logged)");
                }
                return Ok(());
            }
        };
        let imei = match (&self.state, &msg) {
            (_, Message::Login(login)) => {
                let imei = login.imei;
                if let SessionState::LoggedIn { imei: old } = self.state {
                    self.online.leave(old.as_u64());
                }
                tracing::Span::current().record("imei", tracing::field::display(imei));
                tracing::info!(type_id = ?login.type_id, tz_offset_min = ?login.tz_offset_min, "device logged in");
                self.state = SessionState::LoggedIn { imei };
                self.online.enter(imei.as_u64());
                let setting = self.ctx.devices.for_imei(imei.as_u64());
                self.time_setting = setting.time;
                self.decode_ctx = DecodeCtx {
                    model: setting.model,
                };
                self.login_tz_min = login.tz_offset_min;
                self.detector = OffsetDetector::with_conclusion(
                    self.online.time_offset_suspect_min(imei.as_u64()),
                );
                imei
            }
            (SessionState::LoggedIn { imei }, _) => *imei,
            (SessionState::Anonymous, _) => {
                // A device is anonymous until its login; what it says before that is
                // neither answered nor stored (it will log in and repeat itself).
                METRICS.frame(FrameResult::BeforeLogin, Some(frame.proto));
                if !self.warned.before_login {
                    self.warned.before_login = true;
                    tracing::warn!(
                        reason = "before_login",
                        proto = format_args!("{:#04x}", frame.proto),
                        "frame before login dropped"
                    );
                }
                return Ok(());
            }
        };
        let key = imei.as_u64();
        let result = match msg {
            Message::Unknown { .. } => FrameResult::UnknownType,
            _ => FrameResult::Ok,
        };
        METRICS.frame(result, Some(frame.proto));
        let offset_min = self.device_time_offset(key, &msg, now);
        // While the disk guard is low, positions and events are refused here (counted,
        // never sent to the writer) and the message goes unanswered, so the device keeps
        // it or sends it again; status (login, heartbeat) still goes through and is
        // answered, which keeps devices connected. Such an answer then covers only what
        // was sent to the store before it, not the refused data.
        let low = self.ctx.writer.disk_low();
        let mut withheld = false;
        if self.pending.len() + MESSAGE_OPS_MAX > REQ_OPS_MAX {
            self.flush(sock).await?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(self.ops_hint.max(MESSAGE_OPS_MAX));
        }
        let first_new = self.pending.len();
        ops_for(key, &msg, now, offset_min, &mut self.pending);
        if low {
            for op in self.pending.split_off(first_new) {
                match refused_when_low(&op) {
                    Some(kind) => {
                        METRICS.write_refused(kind);
                        withheld = true;
                    }
                    None => self.pending.push(op),
                }
            }
        }
        self.seqs.pending(&self.pending[first_new..]);
        if withheld {
            tracing::debug!(
                reason = "disk_low",
                proto = format_args!("{:#04x}", frame.proto),
                "data refused and left unanswered: the disk is low"
            );
        }
        if let Message::Unknown { proto } = msg {
            if !self.warned.unknown.contains(&proto) {
                self.warned.unknown.push(proto);
                tracing::warn!(reason = "unknown_type", proto = format_args!("{proto:#04x}"), hex = %hex(frame.raw), "message type not decoded; not stored");
            }
        }
        if !withheld {
            let wait_for = self.seqs.answer_waits_for();
            self.outbox.answer(wait_for, |out| {
                protocol::reply_into(&msg, &frame, now, out);
            });
        }
        Ok(())
    }

    /// Minutes to take off this message's fix time to get UTC, under the device's time
    /// setting. Live fixes also feed the offset detector; a new conclusion is published
    /// for the API and logged once per connection.
    fn device_time_offset(&mut self, imei: u64, msg: &Message, now: i64) -> i32 {
        let loc = match msg {
            Message::Location(l) => Some(l),
            Message::Alarm(a) => a.location.as_ref(),
            _ => None,
        };
        let live_fix = loc
            .filter(|l| l.reupload != Some(true) && l.gps.fixed)
            .and_then(|l| l.gps.time)
            .and_then(|t| t.to_unix_ms_utc());
        if let Some(raw_ms) = live_fix {
            // Under `auto` the detector reads the fields as sent (its conclusion is the
            // correction); otherwise with the setting applied (its conclusion is what
            // is still off).
            let applied = match self.time_setting {
                TimeSetting::Auto => 0,
                s => s.offset_min(self.login_tz_min, None),
            };
            let before = self.detector.concluded();
            let after = self
                .detector
                .observe(raw_ms - i64::from(applied) * 60_000, now);
            if after != before {
                self.online.set_time_offset_suspect(imei, after);
                if let (Some(minutes), false) = (after, self.warned.time_offset) {
                    self.warned.time_offset = true;
                    let corrected = self.time_setting == TimeSetting::Auto;
                    tracing::warn!(
                        reason = "time_offset_suspect",
                        offset_min = minutes,
                        setting = ?self.time_setting,
                        corrected,
                        "live fix times sit a whole number of quarter-hours away from their arrival (device clock on local time?)"
                    );
                }
            }
        }
        self.time_setting
            .offset_min(self.login_tz_min, self.detector.concluded())
    }

    /// Sends the pending operations to the store as one request. Waits while the store's
    /// queue is full: the session then reads nothing, and TCP pushes back on the device.
    /// Answers that become durable meanwhile still go out: a device whose next frames
    /// wait for those answers (a heartbeat window) would otherwise stall with the store.
    async fn flush(&mut self, sock: &TcpStream) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seq = self.seqs.sent();
        let ops = std::mem::take(&mut self.pending);
        let positions = ops
            .iter()
            .filter(|op| matches!(op, Op::Position { .. }))
            .count();
        let req = WriteReq::new(ops, Some((self.outbox.durable.clone(), seq)));
        let (sent, undelivered) =
            send_answering(&self.ctx.writer, &mut self.outbox, sock, req).await;
        if let Err(e) = sent {
            // Answers already queued wait for this request: they must not go out, nor
            // wait for ever.
            self.outbox.durable.fail(e.reason());
            return Err(SessionError::Store(e));
        }
        if positions > 0 {
            METRICS.positions_stored(positions as u64, now_ms());
        }
        undelivered.map_or(Ok(()), Err)
    }
}

/// Hands `req` to the store, sending meanwhile the answers that become durable. A failed
/// answer does not drop the request: what was read is stored, and the session ends once
/// the request is in. Returns the store's verdict and the first undelivered answer.
async fn send_answering(
    writer: &WriterHandle,
    outbox: &mut Outbox,
    sock: &TcpStream,
    req: WriteReq,
) -> (Result<(), StoreError>, Option<SessionError>) {
    let send = writer.send(req);
    tokio::pin!(send);
    let mut undelivered = None;
    loop {
        let waits = undelivered.is_none() && outbox.waits();
        tokio::select! {
            biased;
            r = &mut send => return (r, undelivered),
            _ = outbox.state.changed(), if waits => {
                if let Err(e) = outbox.pump(sock) {
                    undelivered = Some(e);
                }
            }
        }
    }
}

/// The store operations a message turns into (at most [`MESSAGE_OPS_MAX`]), appended to
/// `out`. Pure, so the policy is testable. `offset_min` is taken off device fix times (the
/// device's time setting).
fn ops_for(imei: u64, msg: &Message, now: i64, offset_min: i32, out: &mut Vec<Op>) {
    match msg {
        Message::Login(l) => out.push(Op::Seen {
            imei,
            at_ms: now,
            login: Some((l.type_id, l.tz_offset_min)),
            status: None,
        }),
        Message::Heartbeat(st) => out.push(Op::Seen {
            imei,
            at_ms: now,
            login: None,
            status: Some(status_record(st, now)),
        }),
        Message::Location(loc) => out.push(Op::Position {
            imei,
            pos: position_record(loc, None, now, offset_min),
        }),
        Message::Alarm(alarm) => {
            let kind = alarm.kind.map(|k| k.as_str());
            out.push(Op::Seen {
                imei,
                at_ms: now,
                login: None,
                status: Some(status_record(&alarm.status, now)),
            });
            let pos = alarm
                .location
                .as_ref()
                .map(|l| position_record(l, kind, now, offset_min));
            if let Some(kind) = kind {
                out.push(Op::Event {
                    imei,
                    event: EventRecord {
                        time_ms: pos.as_ref().map_or(now, |p| p.time_ms),
                        received_ms: now,
                        kind: kind.to_string(),
                        lat_raw: pos.as_ref().map(|p| p.lat_raw),
                        lon_raw: pos.as_ref().map(|p| p.lon_raw),
                        text: None,
                    },
                });
            }
            // The recordings a dash-cam made of the alarm: what happened, so an event.
            if let Some(files) = &alarm.media_files {
                out.push(Op::Event {
                    imei,
                    event: EventRecord {
                        time_ms: pos.as_ref().map_or(now, |p| p.time_ms),
                        received_ms: now,
                        kind: "media_files".to_string(),
                        lat_raw: pos.as_ref().map(|p| p.lat_raw),
                        lon_raw: pos.as_ref().map(|p| p.lon_raw),
                        text: Some(files.clone()),
                    },
                });
            }
            if let Some(pos) = pos {
                out.push(Op::Position { imei, pos });
            }
        }
        Message::Info(info) => {
            out.push(Op::Info {
                imei,
                at_ms: now,
                power_mv: info.power_mv,
                battery_mv: info.battery_mv,
                battery_percent: info.battery_pct,
                temperature_dc: info.temperature_dc,
                iccid: info.iccid.clone(),
                door_open: info.door_open,
                humidity_dpct: info.humidity_dpct,
                network_gen: info.network.and_then(network_gen),
                tag_temperature_dc: info.tag_temperature_dc,
            });
            // Text and driver ids have no place in the device's status: they are things
            // that happened (a serial device answered, a card was presented), so they
            // are kept as events rather than lost.
            for (kind, text) in [("device_text", &info.text), ("driver_id", &info.driver_id)] {
                if let Some(text) = text {
                    out.push(Op::Event {
                        imei,
                        event: EventRecord {
                            time_ms: now,
                            received_ms: now,
                            kind: kind.to_string(),
                            lat_raw: None,
                            lon_raw: None,
                            text: Some(text.clone()),
                        },
                    });
                }
            }
        }
        Message::CommandReply { text, .. } => out.push(Op::Event {
            imei,
            event: EventRecord {
                time_ms: now,
                received_ms: now,
                kind: "command_reply".to_string(),
                lat_raw: None,
                lon_raw: None,
                text: Some(text.clone()),
            },
        }),
        // A cell-only report has no coordinates to store; it still says the device is
        // alive. (Turning cells into positions needs a cell database we don't ship.)
        Message::Cells(_) | Message::Ignored { .. } | Message::Unknown { .. } => {
            out.push(Op::Seen {
                imei,
                at_ms: now,
                login: None,
                status: None,
            })
        }
    }
}

/// Device time is UTC unless the device's setting says it is `offset_min` minutes east
/// (gt06-protocol.md §5.1); a missing or unbelievable fix time is kept, flagged, at the
/// receipt time rather than invented or shifted.
fn position_record(
    loc: &protocol::Location,
    alarm: Option<&str>,
    now: i64,
    offset_min: i32,
) -> PositionRecord {
    let g = &loc.gps;
    let utc = g
        .time
        .and_then(|t| t.to_unix_ms_utc())
        .map(|t| t - i64::from(offset_min) * 60_000);
    let (time_ms, invalid_reason) = match utc {
        None => (now, Some("no_device_time")),
        Some(t) if t > now + MAX_FUTURE_MS => (now, Some("time_in_future")),
        Some(t) => (t, None),
    };
    PositionRecord {
        time_ms,
        received_ms: now - now.rem_euclid(RECEIPT_RESOLUTION_MS),
        lat_raw: g.lat_raw,
        lon_raw: g.lon_raw,
        speed_kmh: g.speed_kmh,
        course: g.course,
        satellites: g.satellites,
        valid: g.fixed && invalid_reason.is_none(),
        invalid_reason: invalid_reason.map(str::to_string),
        acc: loc.acc,
        odometer_m: loc.odometer_m,
        lbs: loc.lbs.map(|l| LbsRecord {
            mcc: l.mcc,
            mnc: l.mnc,
            lac: l.lac,
            cell: l.cell,
        }),
        alarm: alarm.map(str::to_string),
        reupload: loc.reupload,
        driver_id: loc.driver_id.clone(),
        power_mv: loc.power_mv,
        battery_mv: loc.battery_mv,
        temperature_dc: loc.temperature_dc,
        altitude_m: loc.altitude_m,
        driving_time_s: loc.driving_time_s,
        engine_time_s: loc.engine_time_s,
        ..PositionRecord::default()
    }
}

/// "2G"/"3G"/"4G" → 2/3/4.
fn network_gen(name: &str) -> Option<u8> {
    name.strip_suffix('G')?.parse().ok()
}

fn status_record(st: &protocol::Status, now: i64) -> StatusRecord {
    StatusRecord {
        time_ms: now,
        acc: st.acc,
        charging: st.charging,
        relay_cut: st.relay_cut,
        armed: st.armed,
        voltage_level: st.voltage_level,
        battery_percent: st.battery_percent(),
        gsm_signal: st.gsm_signal,
        power_mv: st.power_mv,
        battery_mv: st.battery_mv,
        temperature_dc: st.temperature_dc,
        steps: st.steps,
        ..StatusRecord::default()
    }
}

/// Answers on their way to the device, in the order their frames came: written, then
/// free to go but not yet taken by the socket, then waiting for the store request they
/// acknowledge to be durable (the store's promise: an answer never goes out before what
/// preceded it on the connection is on disk).
struct Outbox {
    durable: Arc<Durability>,
    state: watch::Receiver<DurableState>,
    /// `bytes[..sent]` is written, `bytes[sent..ready]` may go out, the rest waits.
    bytes: Vec<u8>,
    sent: usize,
    ready: usize,
    /// Where each waiting run of answers ends in `bytes` and the request it waits for;
    /// both grow from front to back (see [`Sequence::answer_waits_for`]).
    marks: VecDeque<(usize, u64)>,
    /// Since when answers free to go have waited for the socket to take them.
    blocked_since: Option<Instant>,
    write_timeout: Duration,
}

impl Outbox {
    fn new(write_timeout: Duration) -> Outbox {
        let durable = Arc::new(Durability::default());
        Outbox {
            state: durable.subscribe(),
            durable,
            bytes: Vec::new(),
            sent: 0,
            ready: 0,
            marks: VecDeque::new(),
            blocked_since: None,
            write_timeout,
        }
    }

    /// Appends what `write` appends, to go out once request `wait_for` is durable (0:
    /// at once).
    fn answer(&mut self, wait_for: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        let end = self.bytes.len();
        if end == start {
            return;
        }
        match self.marks.back_mut() {
            Some((last_end, last_wait)) if *last_wait == wait_for => *last_end = end,
            _ => self.marks.push_back((end, wait_for)),
        }
    }

    /// Answers wait for the store.
    fn waits(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Answers free to go wait for the socket.
    fn has_unsent(&self) -> bool {
        self.sent < self.ready
    }

    /// Reading more would only pile up answers.
    fn is_full(&self) -> bool {
        self.marks.len() >= OUT_QUEUE || self.bytes.len() - self.sent >= UNSENT_MAX
    }

    /// When the device will have failed to take its answers for too long.
    fn write_deadline(&self) -> Option<Instant> {
        self.blocked_since.map(|t| t + self.write_timeout)
    }

    /// Frees the answers whose data is durable and writes what the socket takes without
    /// waiting. Fails when the device cannot be written to, or when what an answer
    /// acknowledges will never be durable: saying "got it" then would be a lie the
    /// device acts on, and closing makes it reconnect and send again.
    fn pump(&mut self, sock: &TcpStream) -> Result<(), SessionError> {
        let (seq, failed) = {
            let s = self.state.borrow_and_update();
            (s.seq, s.failed)
        };
        while let Some(&(end, wait_for)) = self.marks.front() {
            if wait_for > seq {
                break;
            }
            self.ready = end;
            self.marks.pop_front();
        }
        while self.sent < self.ready {
            match sock.try_write(&self.bytes[self.sent..self.ready]) {
                Ok(0) => {
                    let zero = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(SessionError::Undelivered(zero));
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    break;
                }
                Err(e) => return Err(SessionError::Undelivered(e)),
            }
        }
        if self.sent == self.ready {
            self.blocked_since = None;
        }
        if self.sent == self.bytes.len() {
            self.sent = 0;
            self.ready = 0;
            if self.bytes.capacity() > OUTBOX_KEEP {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
        } else if self.sent >= OUTBOX_KEEP {
            // Written bytes are dropped from the front now and then, not on every write.
            let sent = self.sent;
            self.bytes.drain(..sent);
            self.ready -= sent;
            self.sent = 0;
            for (end, _) in &mut self.marks {
                *end -= sent;
            }
        }
        match failed {
            Some(reason) if self.waits() => Err(SessionError::NotDurable(reason)),
            _ => Ok(()),
        }
    }

    /// Sends everything still queued once reading has ended (the device may still be
    /// reading): waits for the store as long as it takes (it commits or fails within
    /// its flush interval), for the socket no longer than the write timeout.
    async fn drain(&mut self, sock: &TcpStream) -> Result<(), SessionError> {
        loop {
            self.pump(sock)?;
            if self.sent == self.bytes.len() {
                return Ok(());
            }
            let waits = self.waits();
            let unsent = self.has_unsent();
            let write_deadline = self.write_deadline();
            tokio::select! {
                _ = self.state.changed(), if waits => {}
                r = sock.writable(), if unsent => r.map_err(SessionError::Undelivered)?,
                _ = sleep_until_some(write_deadline), if write_deadline.is_some() => {
                    return Err(SessionError::WriteTimeout(self.write_timeout))
                }
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AlarmKind, DeviceTime, Gps, Location, Status};

    fn loc(time: Option<DeviceTime>, fixed: bool) -> Location {
        Location {
            gps: Gps {
                time,
                satellites: 5,
                lat_raw: 98_901_624,
                lon_raw: 43_231_720,
                speed_kmh: 0,
                course: 0,
                fixed,
                course_status: 0x5400,
            },
            lbs: None,
            acc: None,
            odometer_m: None,
            reupload: None,
            upload_mode: None,
            ..Location::default()
        }
    }

    const NOW: i64 = 1_445_350_900_000;
    const FIX: DeviceTime = DeviceTime {
        year: 2015,
        month: 10,
        day: 20,
        hour: 14,
        minute: 21,
        second: 11,
    };

    fn ops_of(msg: &Message) -> Vec<Op> {
        let mut ops = Vec::new();
        ops_for(1, msg, NOW, 0, &mut ops);
        assert!(ops.len() <= MESSAGE_OPS_MAX, "{} operations", ops.len());
        ops
    }

    #[test]
    fn answers_wait_for_the_data_before_them_not_for_status() {
        let seen = Op::Seen {
            imei: 1,
            at_ms: 0,
            login: None,
            status: None,
        };
        let pos = Op::Position {
            imei: 1,
            pos: PositionRecord::default(),
        };
        let mut s = Sequence::default();
        // A login alone: nothing to wait for.
        s.pending(std::slice::from_ref(&seen));
        assert_eq!(s.answer_waits_for(), 0);
        assert_eq!(s.sent(), 1);
        // A position: its answer waits for the request that will carry it.
        s.pending(std::slice::from_ref(&pos));
        assert_eq!(s.answer_waits_for(), 2);
        // A heartbeat in the same read: the same request, the same wait.
        s.pending(std::slice::from_ref(&seen));
        assert_eq!(s.answer_waits_for(), 2);
        assert_eq!(s.sent(), 2);
        // Heartbeats after it wait for that position, not for their own requests.
        for sent in 3..6 {
            s.pending(std::slice::from_ref(&seen));
            assert_eq!(s.answer_waits_for(), 2);
            assert_eq!(s.sent(), sent);
        }
        s.pending(&[seen, pos]);
        assert_eq!(s.answer_waits_for(), 6);
    }

    #[test]
    fn fix_time_is_read_as_utc() {
        let p = position_record(&loc(Some(FIX), true), None, NOW, 0);
        assert_eq!(p.time_ms, 1_445_350_871_000);
        assert!(p.valid);
        assert_eq!(p.received_ms, NOW);
        // Receipt is kept to the tenth of a second, rounded down.
        let p = position_record(&loc(Some(FIX), true), None, NOW + 199, 0);
        assert_eq!(p.received_ms, NOW + 100);
    }

    #[test]
    fn device_offset_is_taken_off_the_fields() {
        // The device wrote 14:21:11 local time at +05:30: 08:51:11 UTC.
        let p = position_record(&loc(Some(FIX), true), None, NOW, 330);
        assert_eq!(p.time_ms, 1_445_350_871_000 - 330 * 60_000);
        assert!(p.valid);
    }

    #[test]
    fn missing_device_time_is_flagged_at_receipt_time() {
        let p = position_record(&loc(None, true), None, NOW, 0);
        assert_eq!((p.time_ms, p.valid), (NOW, false));
        assert_eq!(p.invalid_reason.as_deref(), Some("no_device_time"));
    }

    #[test]
    fn fix_more_than_a_day_ahead_is_flagged_not_shifted() {
        let future = DeviceTime {
            year: 2015,
            month: 10,
            day: 22,
            ..FIX
        };
        let p = position_record(&loc(Some(future), true), None, NOW, 0);
        assert_eq!((p.time_ms, p.valid), (NOW, false));
        assert_eq!(p.invalid_reason.as_deref(), Some("time_in_future"));
    }

    #[test]
    fn unfixed_gps_is_stored_invalid_without_reason() {
        let p = position_record(&loc(Some(FIX), false), None, NOW, 0);
        assert!(!p.valid);
        assert_eq!(p.invalid_reason, None);
    }

    #[test]
    fn info_text_and_driver_id_become_events() {
        let msg = Message::Info(protocol::Info {
            text: Some("80d600".into()),
            driver_id: Some("4277efef".into()),
            power_mv: Some(7390),
            ..protocol::Info::default()
        });
        let ops = ops_of(&msg);
        assert!(matches!(
            &ops[0],
            Op::Info {
                power_mv: Some(7390),
                ..
            }
        ));
        assert!(
            matches!(&ops[1], Op::Event { event, .. } if event.kind == "device_text" && event.text.as_deref() == Some("80d600"))
        );
        assert!(
            matches!(&ops[2], Op::Event { event, .. } if event.kind == "driver_id" && event.text.as_deref() == Some("4277efef"))
        );
    }

    #[test]
    fn alarm_with_location_becomes_event_and_position() {
        let msg = Message::Alarm(protocol::Alarm {
            location: Some(loc(Some(FIX), true)),
            status: Status::default(),
            kind: Some(AlarmKind::Sos),
            cell: None,
            media_files: None,
        });
        let ops = ops_of(&msg);
        assert!(
            matches!(&ops[1], Op::Event { event, .. } if event.kind == "sos" && event.time_ms == 1_445_350_871_000)
        );
        assert!(matches!(&ops[2], Op::Position { pos, .. } if pos.alarm.as_deref() == Some("sos")));
        // The largest message: with dash-cam files too it is MESSAGE_OPS_MAX operations.
        let msg = Message::Alarm(protocol::Alarm {
            location: Some(loc(Some(FIX), true)),
            status: Status::default(),
            kind: Some(AlarmKind::Sos),
            cell: None,
            media_files: Some("a.mp4".into()),
        });
        assert_eq!(ops_of(&msg).len(), MESSAGE_OPS_MAX);
    }

    /// A connection whose device end gives up reading after 200 ms.
    fn connection(rt: &tokio::runtime::Runtime) -> (TcpStream, std::net::TcpStream) {
        let (server, device) = crate::ingest::testnet::connection(rt);
        device
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        (server, device)
    }

    /// Everything the device can read now.
    fn received(device: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            match device.read(&mut b) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(_) => return got,
            }
        }
    }

    /// One pump, once the runtime has seen the socket writable (as a session's has: it
    /// has read from it): tokio knows nothing of a fresh socket's readiness until then.
    fn pump(
        rt: &tokio::runtime::Runtime,
        out: &mut Outbox,
        server: &TcpStream,
    ) -> Result<(), SessionError> {
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(100), server.writable()).await;
            out.pump(server)
        })
    }

    #[test]
    fn outbox_answers_go_out_in_order_and_only_once_their_request_is_durable() {
        let rt = crate::ingest::testnet::runtime();
        let (server, mut device) = connection(&rt);
        let _guard = rt.enter();
        let mut out = Outbox::new(Duration::from_secs(1));
        out.answer(0, |b| b.extend_from_slice(b"hb0"));
        out.answer(1, |b| b.extend_from_slice(b"pos1"));
        out.answer(1, |b| b.extend_from_slice(b"+"));
        out.answer(2, |b| b.extend_from_slice(b"pos2"));
        // A message with no answer adds nothing to wait for.
        out.answer(3, |_| {});
        assert_eq!(out.marks.len(), 3, "equal waits share one run");
        pump(&rt, &mut out, &server).unwrap();
        assert_eq!(received(&mut device), b"hb0");
        assert!(out.waits());
        out.durable.mark(1);
        pump(&rt, &mut out, &server).unwrap();
        assert_eq!(received(&mut device), b"pos1+");
        out.durable.mark(2);
        pump(&rt, &mut out, &server).unwrap();
        assert_eq!(received(&mut device), b"pos2");
        assert!(!out.waits() && !out.has_unsent());
        assert!(out.bytes.is_empty(), "an empty outbox keeps no bytes");
    }

    #[test]
    fn outbox_never_answers_what_will_not_be_durable_but_sends_what_already_is() {
        let rt = crate::ingest::testnet::runtime();
        let (server, mut device) = connection(&rt);
        let _guard = rt.enter();
        let mut out = Outbox::new(Duration::from_secs(1));
        out.answer(1, |b| b.extend_from_slice(b"durable"));
        out.answer(2, |b| b.extend_from_slice(b"lost"));
        out.durable.mark(1);
        out.durable.fail("disk_full");
        let err = pump(&rt, &mut out, &server).unwrap_err();
        assert!(
            matches!(err, SessionError::NotDurable("disk_full")),
            "{err}"
        );
        assert_eq!(received(&mut device), b"durable");
    }

    #[test]
    fn answers_go_out_while_the_next_request_waits_for_room_in_the_store_queue() {
        let rt = crate::ingest::testnet::runtime();
        let (server, mut device) = connection(&rt);
        let _guard = rt.enter();
        let (writer, queue, room) = WriterHandle::unattended();
        let mut out = Outbox::new(Duration::from_secs(1));
        let durable = out.durable.clone();
        out.answer(1, |b| b.extend_from_slice(b"hb1"));
        let seen = Op::Seen {
            imei: 1,
            at_ms: 0,
            login: None,
            status: None,
        };
        let req = WriteReq::one(seen, Some((durable.clone(), 2)));
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(100), server.writable()).await;
            let send = send_answering(&writer, &mut out, &server, req);
            tokio::pin!(send);
            let wait = Duration::from_millis(50);
            assert!(
                tokio::time::timeout(wait, &mut send).await.is_err(),
                "no room"
            );
            durable.mark(1);
            assert!(
                tokio::time::timeout(wait, &mut send).await.is_err(),
                "no room"
            );
            // A device whose next frame waits for this answer would stall with the store.
            assert_eq!(received(&mut device), b"hb1", "sent while waiting");
            room.add_permits(1);
            let (sent, undelivered) = send.await;
            assert!(sent.is_ok() && undelivered.is_none());
        });
        let req = queue.try_recv().expect("queued once there was room");
        assert_eq!(req.ack.map(|(_, seq)| seq), Some(2));
        assert!(!out.waits());
    }

    #[test]
    fn outbox_fills_up_by_runs_and_by_bytes() {
        let mut out = Outbox::new(Duration::from_secs(1));
        for seq in 1..OUT_QUEUE as u64 {
            out.answer(seq, |b| b.push(1));
        }
        assert!(!out.is_full());
        out.answer(OUT_QUEUE as u64, |b| b.push(1));
        assert!(out.is_full(), "one run per request");
        let mut out = Outbox::new(Duration::from_secs(1));
        out.answer(0, |b| b.resize(UNSENT_MAX - 1, 0));
        assert!(!out.is_full());
        out.answer(0, |b| b.push(0));
        assert!(out.is_full(), "bytes the socket has not taken");
    }

    #[test]
    fn outbox_drops_written_bytes_from_its_front_without_losing_its_place() {
        let rt = crate::ingest::testnet::runtime();
        let (server, mut device) = connection(&rt);
        let _guard = rt.enter();
        let mut out = Outbox::new(Duration::from_secs(1));
        let first: Vec<u8> = (0..OUTBOX_KEEP as u32 + 500).map(|i| i as u8).collect();
        out.answer(0, |b| b.extend_from_slice(&first));
        out.answer(5, |b| b.extend_from_slice(b"tail"));
        pump(&rt, &mut out, &server).unwrap();
        assert_eq!(out.bytes, b"tail", "written bytes dropped");
        assert_eq!(out.marks, [(4, 5)]);
        out.durable.mark(5);
        pump(&rt, &mut out, &server).unwrap();
        let mut want = first;
        want.extend_from_slice(b"tail");
        assert_eq!(received(&mut device), want);
    }

    #[test]
    fn outbox_counts_the_write_timeout_from_when_the_device_stopped_taking_answers() {
        let rt = crate::ingest::testnet::runtime();
        let (server, device) = connection(&rt);
        let _guard = rt.enter();
        let mut out = Outbox::new(Duration::from_secs(3));
        assert_eq!(out.write_deadline(), None);
        // The device reads nothing: its receive buffer and our send buffer fill up.
        let started = Instant::now();
        for _ in 0..10_000 {
            out.answer(0, |b| b.resize(b.len() + 4096, 7));
            pump(&rt, &mut out, &server).unwrap();
            if out.has_unsent() {
                break;
            }
        }
        assert!(out.has_unsent(), "the socket took 40 MB");
        let deadline = out.write_deadline().expect("blocked");
        assert!(deadline >= started + Duration::from_secs(3));
        assert!(deadline <= Instant::now() + Duration::from_secs(3));
        drop(device);
    }
}
