//! HTTP: the JSON API, health endpoints and the embedded web map, over hyper.
//!
//! Requests become a [`route::Route`] first (pure), then one `match` calls a handler;
//! errors become responses only in [`error`]. This room reads the store and never writes
//! it; it never blocks a tokio worker on a long scan (those run on the blocking pool).

pub mod error;
pub mod export;
pub mod json;
pub mod live;
pub mod route;

use crate::ingest::Online;
use crate::ops::metrics::METRICS;
use crate::protocol::Imei;
use crate::store::Store;
use bytes::Bytes;
use error::ApiError;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use route::{Route, TrackFormat};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The web page and Leaflet, compiled into the binary so the `.deb` and the tests serve
/// the same bytes (`debug-embed` makes debug builds embed too).
#[derive(rust_embed::RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// Default and largest page size of `/positions`.
const DEFAULT_LIMIT: usize = 10_000;
const MAX_LIMIT: usize = 100_000;
/// Largest track export: a device reporting every second for eleven days.
const MAX_EXPORT: usize = 1_000_000;

/// What handlers can see.
pub struct App {
    pub store: Store,
    pub online: Online,
    /// Durable positions and events, for `/api/live`.
    pub live: crate::live::Hub,
    /// How long a live stream may stay unread before it is closed.
    pub live_stall_timeout: Duration,
}

type Body = Full<Bytes>;

/// Serves HTTP until `cancel` fires, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = crate::ingest::limits::AcceptBackoff::default();
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.succeeded();
                    x
                }
                Err(e) => {
                    let (wait, first) = backoff.failed();
                    if first {
                        tracing::warn!(error = %e, "http accept failed; backing off");
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let cancel = cancel.clone();
        // Lets a live stream whose client stopped reading drop its whole connection.
        let kill = CancellationToken::new();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        tracker.spawn(async move {
            let svc = {
                let (kill, cancel) = (kill.clone(), cancel.clone());
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    let conn = live::Conn {
                        peer,
                        fd,
                        kill: kill.clone(),
                        shutdown: cancel.clone(),
                    };
                    async move { Ok::<_, Infallible>(handle_conn(&app, req, conn).await) }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(sock), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = kill.cancelled() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracing::info!("http listener stopped accepting");
}

/// The live stream needs its connection; every other request is answered by `handle`.
async fn handle_conn(
    app: &Arc<App>,
    req: Request<Incoming>,
    conn: live::Conn,
) -> Response<Either<Body, live::SseBody>> {
    if let Ok(Route::Live) = Route::parse(req.method(), req.uri().path()) {
        let started = std::time::Instant::now();
        let resp = match live::respond(app, req.uri().query().unwrap_or(""), conn) {
            Ok(resp) => resp.map(Either::Right),
            Err(e) => json_response(e.status(), &e.body()).map(Either::Left),
        };
        // Counted when the stream starts: its duration is the time to the response head.
        METRICS.http_request("Live", resp.status().as_u16(), started.elapsed());
        return resp;
    }
    handle(app, req).await.map(Either::Left)
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    // Requests that match no route count as "Unmatched": the raw path never becomes a
    // label.
    let (label, result) = match Route::parse(req.method(), &path) {
        Ok(route) => (route.label(), dispatch(app, route, &query).await),
        Err(e) => ("Unmatched", Err(e)),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(reason = e.reason(), error = %e, %path, "request failed");
            }
            json_response(e.status(), &e.body())
        }
    };
    METRICS.http_request(label, resp.status().as_u16(), started.elapsed());
    resp
}

async fn dispatch(app: &Arc<App>, route: Route, query: &str) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Asset(path) => asset(&path),
        Route::Devices => devices(app).await,
        Route::Device(imei) => device(app, imei).await,
        Route::Positions(imei) => positions(app, imei, query).await,
        Route::Track(imei, format) => track(app, imei, format, query).await,
        Route::Events => events(app, query).await,
        // `handle_conn` serves it before `dispatch`: the stream needs its connection.
        Route::Live => Err(ApiError::NotFound("/api/live".into())),
        Route::HealthLive => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        Route::HealthReady => Ok(ready(app)),
        Route::Metrics => Ok(metrics()),
    }
}

/// Runs a store read on the blocking pool: range scans can take milliseconds.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

async fn devices(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let list: Vec<json::Device> = app
        .store
        .devices()
        .iter()
        .map(|(imei, d)| {
            json::device(
                *imei,
                d,
                app.online.is_online(*imei),
                app.online.time_offset_suspect_min(*imei),
            )
        })
        .collect();
    Ok(json_response(StatusCode::OK, &list))
}

async fn device(app: &Arc<App>, imei: Imei) -> Result<Response<Body>, ApiError> {
    let key = imei.as_u64();
    let d = app
        .store
        .device(key)
        .ok_or_else(|| ApiError::UnknownDevice(imei.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json::device(
            key,
            &d,
            app.online.is_online(key),
            app.online.time_offset_suspect_min(key),
        ),
    ))
}

async fn positions(app: &Arc<App>, imei: Imei, query: &str) -> Result<Response<Body>, ApiError> {
    let q = RangeQuery::parse(query)?;
    let key = imei.as_u64();
    let body = blocking(app, move |app| {
        if app.store.device(key).is_none() {
            return Err(ApiError::UnknownDevice(imei.to_string()));
        }
        let (list, next) = app.store.positions(key, q.from_ms, q.to_ms, q.limit)?;
        // Written here, off the async threads: a day at 1 Hz is ~19 MB of JSON.
        Ok(json::positions_body(&imei.to_string(), &list, next))
    })
    .await?;
    Ok(bytes_response(StatusCode::OK, body))
}

async fn track(
    app: &Arc<App>,
    imei: Imei,
    format: TrackFormat,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let q = RangeQuery::parse(query)?;
    let key = imei.as_u64();
    let list = blocking(app, move |app| {
        if app.store.device(key).is_none() {
            return Err(ApiError::UnknownDevice(imei.to_string()));
        }
        Ok(app.store.positions(key, q.from_ms, q.to_ms, MAX_EXPORT)?.0)
    })
    .await?;
    let name = imei.to_string();
    let (body, ctype, ext) = match format {
        TrackFormat::Gpx => (
            export::gpx(&name, &list).into_bytes(),
            "application/gpx+xml",
            "gpx",
        ),
        TrackFormat::GeoJson => (
            serde_json::to_vec(&export::geojson(&name, &list)).unwrap_or_default(),
            "application/geo+json",
            "geojson",
        ),
        TrackFormat::Csv => (
            export::csv(&name, &list).into_bytes(),
            "text/csv; charset=utf-8",
            "csv",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\"")) {
        headers.insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn events(app: &Arc<App>, query: &str) -> Result<Response<Body>, ApiError> {
    let q = RangeQuery::parse(query)?;
    let mut imei = None;
    let mut kind = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "imei" if !v.is_empty() => {
                imei = Some(Imei::parse(&v).ok_or(ApiError::BadParam {
                    param: "imei",
                    problem: format!("`{v}` is not a 15-digit IMEI"),
                })?)
            }
            "type" if !v.is_empty() => kind = Some(v),
            _ => {}
        }
    }
    let list = blocking(app, move |app| {
        let events = app
            .store
            .events(imei.map(Imei::as_u64), q.from_ms, q.to_ms, q.limit)?;
        Ok(events
            .iter()
            .filter(|(_, e)| kind.as_ref().is_none_or(|k| &e.kind == k))
            .map(|(i, e)| json::event(*i, e))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(json_response(StatusCode::OK, &list))
}

fn metrics() -> Response<Body> {
    let body = METRICS.render(crate::ingest::session::now_ms());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Ready means "can take data": the store answers and the disk guard lets it write.
/// While the disk is low the server still serves reads and answers devices, but says
/// here (503, check `disk`) that new positions are being refused.
fn ready(app: &App) -> Response<Body> {
    let mut failing = Vec::new();
    if let Err(e) = app.store.ping() {
        failing.push(
            serde_json::json!({"check": "store", "reason": e.reason(), "message": e.to_string()}),
        );
    }
    if let Some((reason, message)) = app.store.disk().problem() {
        failing.push(serde_json::json!({"check": "disk", "reason": reason, "message": message}));
    }
    if let Some(n) = app.store.checkpoints_failing() {
        failing.push(serde_json::json!({
            "check": "checkpoint",
            "reason": "checkpoints_failing",
            "message": format!("{n} checkpoints in a row failed; the journal holds the data; a restart (with free disk space) clears it"),
        }));
    }
    if failing.is_empty() {
        json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "devices_online": app.online.count()}),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "failing": failing}),
        )
    }
}

fn asset(path: &str) -> Result<Response<Body>, ApiError> {
    let path = if path.is_empty() { "index.html" } else { path };
    let file = Assets::get(path).ok_or_else(|| ApiError::NotFound(format!("/{path}")))?;
    let mut resp = Response::new(Full::new(Bytes::from(file.data.into_owned())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Every embedded asset path (for the test that fetches them all).
pub fn asset_paths() -> Vec<String> {
    Assets::iter().map(|p| p.into_owned()).collect()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    bytes_response(
        status,
        serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// A JSON body already written.
fn bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `from`, `to`, `limit` of a range request, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RangeQuery {
    from_ms: i64,
    to_ms: i64,
    limit: usize,
}

impl RangeQuery {
    fn parse(query: &str) -> Result<RangeQuery, ApiError> {
        let mut q = RangeQuery {
            from_ms: 0,
            to_ms: i64::MAX,
            limit: DEFAULT_LIMIT,
        };
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "from" | "to" => {
                    let t = json::parse_rfc3339(&v).ok_or_else(|| ApiError::BadParam {
                        param: if k == "from" { "from" } else { "to" },
                        problem: format!("`{v}` is not an RFC 3339 time like 2026-02-11T08:30:00Z"),
                    })?;
                    if k == "from" {
                        q.from_ms = t;
                    } else {
                        q.to_ms = t;
                    }
                }
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| ApiError::BadParam {
                            param: "limit",
                            problem: format!("`{v}` is not a number from 1 to {MAX_LIMIT}"),
                        })?;
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// `a=1&b=x%3Ay` → pairs, percent- and plus-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded() {
        let q =
            RangeQuery::parse("from=2015-10-20T14%3A21%3A11Z&to=2015-10-20T15:00:00.000Z&limit=5")
                .unwrap();
        assert_eq!(q.from_ms, 1_445_350_871_000);
        assert_eq!(q.limit, 5);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41+b"), "A b");
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, name) in [
            ("from=yesterday", "from"),
            ("to=1", "to"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
        ] {
            match RangeQuery::parse(q) {
                Err(ApiError::BadParam { param, .. }) => assert_eq!(param, name),
                other => panic!("{q}: {other:?}"),
            }
        }
    }
}
