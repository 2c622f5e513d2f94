//! One tracker connection: read, split, decode, record, answer.
//!
//! The read half runs the state machine below; a second task owns the write half and
//! sends each answer once the store says everything before it on this connection is
//! durable. The two are joined by a bounded queue, so a device that never reads its
//! answers fills the queue, the reader stops, and TCP pushes back on the device.

use super::device_time::{OffsetDetector, TimeSetting};
use super::limits::Slot;
use super::{IngestCtx, Online};
use crate::ops::metrics::{FrameResult, METRICS};
use crate::protocol::{self, DecodeCtx, Frame, FrameError, Imei, Message};
use crate::store::{
    refused_when_low, Durability, EventRecord, LbsRecord, Op, PositionRecord, StatusRecord,
    StoreError, WriteReq, REQ_OPS_MAX,
};
use bytes::{Buf, BytesMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Bytes of junk tolerated without a single frame before we decide this is not a tracker.
const MAX_JUNK_RUN: usize = 4096;
/// Answers queued for the write half; small, because each one is ten bytes and a device
/// that stops reading should be pushed back on quickly.
const OUT_QUEUE: usize = 256;
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
/// Most bytes of answers written in one syscall. The answers already durable when the
/// write half wakes go out together: one `write` per group commit per connection, not
/// one per location frame.
const WRITE_BATCH: usize = 8 * 1024;
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
    #[error("answer queue closed")]
    Writer,
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
            SessionError::Writer => "writer_gone",
        }
    }
}

enum SessionState {
    Anonymous,
    LoggedIn { imei: Imei },
}

/// An answer and the sequence number that must be durable before it may go out.
struct Outgoing {
    bytes: Vec<u8>,
    wait_for: u64,
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
    durable: Arc<Durability>,
    /// Which request an answer waits for.
    seqs: Sequence,
    /// Operations of the frames handled since the last request: sent as one request
    /// at the end of each read (or when full), which gets the next sequence number.
    pending: Vec<Op>,
    /// Room given to `pending` at once, from the bytes this read brought (a position
    /// frame is 26 bytes or more): growing by doubling copied a full read's operations
    /// about twice over. An idle connection holds no room at all.
    ops_hint: usize,
    /// Bytes the last batch of answers took: the next one gets that room at once.
    answers_hint: usize,
    out: mpsc::Sender<Outgoing>,
    /// Answers to this read's frames that wait for the same request, gathered into one
    /// queue item (one per read under load, not one per location frame); queued at the
    /// end of the read or when the next answer waits for another request.
    answers: Option<Outgoing>,
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
    sock: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    ctx: Arc<IngestCtx>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("session", %peer, imei = tracing::field::Empty);
    async move {
        let _counted = METRICS.connection();
        let (mut rd, wr) = sock.into_split();
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let durable = Arc::new(Durability::default());
        let stop = cancel.child_token();
        let writer = tokio::spawn(
            write_answers(wr, out_rx, durable.clone(), ctx.write_timeout, stop.clone())
                .in_current_span(),
        );
        let mut s = Session {
            online: ctx.online.clone(),
            ctx,
            state: SessionState::Anonymous,
            durable,
            seqs: Sequence::default(),
            pending: Vec::new(),
            ops_hint: 0,
            answers_hint: 0,
            out: out_tx,
            answers: None,
            warned: Warned::default(),
            time_setting: TimeSetting::default(),
            decode_ctx: DecodeCtx::default(),
            login_tz_min: None,
            detector: OffsetDetector::default(),
        };
        let read = s.read_loop(&mut rd, &stop).await;
        // Whatever ended the reading, the frames read before it are stored and answered.
        let read = match (read, s.flush().await) {
            (Ok(()), Err(e)) => Err(e),
            (read, _) => read,
        };
        let read = match (read, s.queue_answers().await) {
            (Ok(()), Err(e)) => Err(e),
            (read, _) => read,
        };
        if let SessionState::LoggedIn { imei } = s.state {
            s.online.leave(imei.as_u64());
        }
        // Let queued answers go out (the device may still be reading), then end.
        let closer = s.ctx.closer.clone();
        drop(s);
        let write = match writer.await {
            Ok((result, wr)) => {
                // The socket is closed (FIN sent) later, off this thread: see `closer`.
                if let Ok(sock) = rd.reunite(wr) {
                    closer.close(sock, slot);
                }
                result
            }
            Err(_) => Ok(()),
        };
        // One line per connection: when the write half ended it (the reader then only
        // sees a closed queue or the stop), its reason is the cause.
        let result = match (read, write) {
            (Ok(()) | Err(SessionError::Writer), Err(e)) => Err(e),
            (read, _) => read,
        };
        match result {
            Ok(()) => {
                let why = if cancel.is_cancelled() {
                    "shutdown"
                } else if stop.is_cancelled() {
                    "answer_failed"
                } else {
                    "device_closed"
                };
                METRICS.connection_closed(why);
                tracing::debug!(reason = why, "connection closed")
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
        rd: &mut tokio::net::tcp::OwnedReadHalf,
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
            // Bytes already waiting win over a deadline that passed while this session was
            // held up by the store (back-pressure): only the device's own silence counts.
            // Waiting for readability first means a silent connection holds no buffer.
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = rd.readable() => r.map_err(SessionError::Read)?,
                _ = tokio::time::sleep_until(deadline.0) => return Err(deadline.1),
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
                    Pin::new(&mut *rd),
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
                        self.handle(frame, received).await?;
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
            self.flush().await?;
            self.queue_answers().await?;
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

    async fn handle(&mut self, frame: Frame<'_>, now: i64) -> Result<(), SessionError> {
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
            self.flush().await?;
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
            if self
                .answers
                .as_ref()
                .is_some_and(|a| a.wait_for != wait_for || a.bytes.len() >= WRITE_BATCH)
            {
                self.queue_answers().await?;
            }
            let room = self.answers_hint;
            let a = self.answers.get_or_insert_with(|| Outgoing {
                bytes: Vec::with_capacity(room),
                wait_for,
            });
            protocol::reply_into(&msg, &frame, now, &mut a.bytes);
            if a.bytes.is_empty() {
                self.answers = None;
            }
        }
        Ok(())
    }

    /// Queues the gathered answers for the write half.
    async fn queue_answers(&mut self) -> Result<(), SessionError> {
        let Some(item) = self.answers.take() else {
            return Ok(());
        };
        self.answers_hint = item.bytes.len().min(WRITE_BATCH + 64);
        match self.out.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(item)) => {
                // The answer queue waits on the store: send what it waits for before
                // waiting for room in it.
                self.flush().await?;
                self.out.send(item).await.map_err(|_| SessionError::Writer)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SessionError::Writer),
        }
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
    async fn flush(&mut self) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seq = self.seqs.sent();
        let ops = std::mem::take(&mut self.pending);
        let positions = ops
            .iter()
            .filter(|op| matches!(op, Op::Position { .. }))
            .count();
        let req = WriteReq::new(ops, Some((self.durable.clone(), seq)));
        if let Err(e) = self.ctx.writer.send(req).await {
            // Answers already queued wait for this request: they must not go out, nor
            // wait for ever.
            self.durable.fail(e.reason());
            return Err(SessionError::Store(e));
        }
        if positions > 0 {
            METRICS.positions_stored(positions as u64, now_ms());
        }
        Ok(())
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

/// The write half: answers in order, each after its data is durable. Returns why it
/// stopped early (the session logs it) and the write half, so that the whole socket is
/// closed in one place, by the closer.
async fn write_answers(
    mut wr: OwnedWriteHalf,
    rx: mpsc::Receiver<Outgoing>,
    durable: Arc<Durability>,
    write_timeout: Duration,
    stop: CancellationToken,
) -> (Result<(), SessionError>, OwnedWriteHalf) {
    let result = send_answers(&mut wr, rx, durable, write_timeout, stop).await;
    (result, wr)
}

async fn send_answers(
    wr: &mut OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    durable: Arc<Durability>,
    write_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), SessionError> {
    let mut state = durable.subscribe();
    let mut batch: Vec<u8> = Vec::new();
    // An answer taken from the queue that was not yet durable when the batch before it
    // went out; it heads the next batch.
    let mut next: Option<Outgoing> = None;
    loop {
        let out = match next.take() {
            Some(out) => out,
            None => match rx.recv().await {
                Some(out) => out,
                None => break,
            },
        };
        let durable_seq = if out.wait_for > 0 {
            let ready = state
                .wait_for(|s| s.seq >= out.wait_for || s.failed.is_some())
                .await
                .map(|s| (s.seq, s.failed));
            match ready {
                Ok((seq, None)) => seq,
                Ok((_, Some(reason))) => {
                    // Not durable: saying "got it" would be a lie the device acts on.
                    // Closing makes it reconnect and send again.
                    stop.cancel();
                    return Err(SessionError::NotDurable(reason));
                }
                Err(_) => return Ok(()),
            }
        } else {
            state.borrow().seq
        };
        // Answers are queued in order with growing `wait_for`: every queued one whose
        // data is already durable may go out in this same write.
        batch.clear();
        batch.extend_from_slice(&out.bytes);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) if more.wait_for <= durable_seq => batch.extend_from_slice(&more.bytes),
                Ok(more) => {
                    next = Some(more);
                    break;
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout(write_timeout, wr.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "answer not delivered");
                stop.cancel();
                return Ok(());
            }
            Err(_) => {
                stop.cancel();
                return Err(SessionError::WriteTimeout(write_timeout));
            }
        }
        if batch.capacity() > WRITE_BATCH * 2 {
            batch = Vec::new();
        }
    }
    Ok(())
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
}
