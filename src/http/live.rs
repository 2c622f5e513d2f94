//! `GET /api/live`: durable positions and events as Server-Sent Events.
//!
//! Each stream has a pump task that reads the shared ring ([`crate::live::Hub`]), turns
//! items into SSE text and hands them to the response body through a queue of a few
//! chunks. A client that reads slowly makes the pump wait; meanwhile the ring moves on
//! without it and the client later gets a `lagged` event saying how much it missed. A
//! client that reads nothing for `http.live_stall_timeout_secs` is disconnected.
//! This room never holds more than those few chunks per client, and never makes
//! anything on the ingest side wait.

use super::error::ApiError;
use super::json;
use super::App;
use crate::live::LiveItem;
use crate::protocol::Imei;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Chunks queued between a stream's pump and its connection.
const QUEUE: usize = 8;
/// A comment line this often keeps proxies from closing a quiet stream and lets a dead
/// client be noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Kernel send buffer of a live stream's socket: bounds what a stalled browser pins.
const SNDBUF: usize = 32 * 1024;

/// The body of a live stream: whatever the pump queued, until it stops.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// What a stream needs from its connection.
pub struct Conn {
    pub peer: SocketAddr,
    pub fd: std::os::fd::RawFd,
    /// Fired by the pump to drop a client that does not read.
    pub kill: CancellationToken,
    /// The server is shutting down.
    pub shutdown: CancellationToken,
}

/// Starts a stream, or says which parameter is wrong.
pub fn respond(app: &Arc<App>, query: &str, conn: Conn) -> Result<Response<SseBody>, ApiError> {
    let mut imei = None;
    for (k, v) in super::query_pairs(query) {
        if k == "imei" && !v.is_empty() {
            imei = Some(Imei::parse(&v).ok_or(ApiError::BadParam {
                param: "imei",
                problem: format!("`{v}` is not a 15-digit IMEI"),
            })?);
        }
    }
    let _ = crate::ingest::limits::set_send_buffer(conn.fd, SNDBUF);
    let (tx, rx) = mpsc::channel(QUEUE);
    let sub = app.live.subscribe();
    tokio::spawn(pump(
        sub,
        tx,
        imei.map(Imei::as_u64),
        app.live_stall_timeout,
        conn,
    ));
    let mut resp = Response::new(SseBody { rx });
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn pump(
    mut sub: broadcast::Receiver<Arc<LiveItem>>,
    tx: mpsc::Sender<Bytes>,
    imei: Option<u64>,
    stall: Duration,
    conn: Conn,
) {
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    // The browser reconnects this long after a dropped stream.
    let mut chunk = Bytes::from_static(b"retry: 3000\n\n");
    loop {
        match tokio::time::timeout(stall, tx.send(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    reason = "live_stalled",
                    peer = %conn.peer,
                    "live stream not read for {stall:?}; closing it"
                );
                conn.kill.cancel();
                return;
            }
        }
        chunk = loop {
            let item = tokio::select! {
                _ = conn.shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = keepalive.tick() => break Bytes::from_static(b": keepalive\n\n"),
                r = sub.recv() => r,
            };
            match item {
                Ok(item) if imei.is_none_or(|i| i == item.imei()) => break render(&item),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    break Bytes::from(format!("event: lagged\ndata: {{\"skipped\":{n}}}\n\n"))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        };
    }
}

#[derive(Serialize)]
struct LivePosition {
    imei: String,
    #[serde(flatten)]
    position: json::Position,
}

/// One SSE event: `event: position` (a `Position` plus its `imei`) or `event: event`
/// (an `Event`).
fn render(item: &LiveItem) -> Bytes {
    let (kind, data) = match item {
        LiveItem::Position { imei, pos } => (
            "position",
            serde_json::to_string(&LivePosition {
                imei: imei_string(*imei),
                position: json::Position::from(pos),
            }),
        ),
        LiveItem::Event { imei, event } => {
            ("event", serde_json::to_string(&json::event(*imei, event)))
        }
    };
    let data = data.unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn imei_string(imei: u64) -> String {
    Imei::from_u64(imei)
        .map(|i| i.to_string())
        .unwrap_or_else(|| imei.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PositionRecord;

    #[test]
    fn a_position_event_is_one_sse_event_with_the_imei_and_the_api_fields() {
        let item = LiveItem::Position {
            imei: 864_717_003_283_581,
            pos: PositionRecord {
                time_ms: 1_445_350_871_000,
                lat_raw: 98_901_624,
                valid: true,
                ..PositionRecord::default()
            },
        };
        let text = String::from_utf8(render(&item).to_vec()).unwrap();
        assert!(text.starts_with("event: position\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
        let data: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["imei"], "864717003283581");
        assert_eq!(data["time"], "2015-10-20T14:21:11.000Z");
        assert_eq!(data["lat"], 54.9453467);
    }
}
