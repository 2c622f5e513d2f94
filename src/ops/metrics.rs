//! Counters an operator scrapes from `GET /metrics` (Prometheus text format 0.0.4).
//!
//! Atomic counters, gauges and fixed-bucket histograms in one process-wide registry,
//! [`METRICS`]: sessions, the writer and the disk guard update them on their paths (a
//! relaxed atomic add or store each; HTTP requests take one short lock), the HTTP handler
//! renders them, adding process and host figures read from /proc at that moment. Global on
//! purpose: every session and the handler reach it without threading a handle through the
//! wiring, and a counter that is only ever added to needs no owner.
//! This room never decides anything from the counters; it only counts and renders. Names
//! follow Prometheus conventions (base units, `_total` counters); labels come from
//! bounded sets only (results, kinds, route names, status codes), never from input.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// What became of bytes a tracker sent, as the `result` label of `gt06_frames_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameResult {
    /// Decoded and accepted (answered and/or stored as the protocol says).
    Ok,
    /// Dropped: the CRC does not match (strict policy).
    BadCrc,
    /// A declared end without stop bits: the connection is closed.
    Malformed,
    /// A declared length over the cap: the connection is closed.
    TooLong,
    /// A run of bytes before a start marker.
    Junk,
    /// A frame whose content does not fit its layout.
    DecodeError,
    /// A protocol number we do not decode.
    UnknownType,
    /// A decoded frame that came before the login: dropped.
    BeforeLogin,
}

impl FrameResult {
    const ALL: [FrameResult; 8] = [
        FrameResult::Ok,
        FrameResult::BadCrc,
        FrameResult::Malformed,
        FrameResult::TooLong,
        FrameResult::Junk,
        FrameResult::DecodeError,
        FrameResult::UnknownType,
        FrameResult::BeforeLogin,
    ];

    /// The label value; the same string as the `reason` in the session's log lines.
    pub fn label(self) -> &'static str {
        match self {
            FrameResult::Ok => "ok",
            FrameResult::BadCrc => "bad_crc",
            FrameResult::Malformed => "malformed",
            FrameResult::TooLong => "too_long",
            FrameResult::Junk => "junk",
            FrameResult::DecodeError => "decode_error",
            FrameResult::UnknownType => "unknown_type",
            FrameResult::BeforeLogin => "before_login",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a tracker connection ended, as the `result` label of
/// `gt06_connections_closed_total`: the session's `reason` strings, plus `device_closed`
/// (the device hung up), `shutdown` and `answer_failed` (an answer could not be written,
/// or what it acknowledges could not be stored). Anything else counts as `other`.
pub const CLOSE_RESULTS: [&str; 15] = [
    "device_closed",
    "shutdown",
    "answer_failed",
    "idle_timeout",
    "login_timeout",
    "frame_timeout",
    "write_timeout",
    "malformed",
    "too_long",
    "junk",
    "read_error",
    "disk_full",
    "store_io",
    "store_closed",
    "other",
];

/// What a refused write was, as the `kind` label of `gt06_store_writes_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Position,
    Event,
}

/// A histogram with fixed upper bounds, in integer base units (records, microseconds);
/// `scale` turns them into the exposed unit (1 for counts, 1e6 for seconds).
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    scale: f64,
    /// Per bucket, not cumulative; observations above the last bound go to `inf`.
    counts: [AtomicU64; N],
    inf: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: [u64; N], scale: f64) -> Histogram<N> {
        Histogram {
            bounds,
            scale,
            counts: [const { AtomicU64::new(0) }; N],
            inf: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.inf.load(Ordering::Relaxed)
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` is `""` or `k="v",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let le = *b as f64 / self.scale;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cum}");
        }
        cum += self.inf.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cum}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", l.trim_end_matches(','))
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cum}", braces(labels));
    }
}

/// Records per group commit.
const BATCH_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Journal write + fdatasync, microseconds.
const FLUSH_BOUNDS: [u64; 13] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];
/// HTTP request to response head, microseconds.
const HTTP_BOUNDS: [u64; 13] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Requests and latency of one HTTP route.
struct HttpRoute {
    by_status: BTreeMap<u16, u64>,
    latency: Histogram<13>,
}

/// The registry. `const`-constructible so it can be a `static`.
pub struct Metrics {
    frames: FrameCounters,
    connections_total: AtomicU64,
    connections_current: AtomicU64,
    /// Ended connections whose sockets wait for the closer thread.
    connections_closing: AtomicU64,
    connections_closed: [AtomicU64; CLOSE_RESULTS.len()],
    /// Tracker connections refused by the global cap, and by the per-address cap.
    connections_refused: [AtomicU64; 2],
    positions_stored_total: AtomicU64,
    /// Server time (ms) the newest position was handed to the store.
    last_position_ms: AtomicI64,
    writes_refused: [AtomicU64; 2],
    commit_failures: AtomicU64,
    batch_size: Histogram<13>,
    flush_seconds: Histogram<13>,
    disk_free: AtomicU64,
    disk_total: AtomicU64,
    disk_threshold: AtomicU64,
    disk_low: AtomicU64,
    store_bytes: AtomicU64,
    scratch_bytes: AtomicU64,
    http: Mutex<BTreeMap<&'static str, HttpRoute>>,
}

/// One counter per (result, protocol number), plus one per result whose protocol
/// number is not known (junk, a lost length).
struct FrameCounters {
    by_proto: [[AtomicU64; 256]; 8],
    no_proto: [AtomicU64; 8],
}

/// The process's registry.
pub static METRICS: Metrics = Metrics::new();

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            frames: FrameCounters {
                by_proto: [const { [const { AtomicU64::new(0) }; 256] }; 8],
                no_proto: [const { AtomicU64::new(0) }; 8],
            },
            connections_total: AtomicU64::new(0),
            connections_current: AtomicU64::new(0),
            connections_closing: AtomicU64::new(0),
            connections_closed: [const { AtomicU64::new(0) }; CLOSE_RESULTS.len()],
            connections_refused: [const { AtomicU64::new(0) }; 2],
            positions_stored_total: AtomicU64::new(0),
            last_position_ms: AtomicI64::new(0),
            writes_refused: [const { AtomicU64::new(0) }; 2],
            commit_failures: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_BOUNDS, 1.0),
            flush_seconds: Histogram::new(FLUSH_BOUNDS, 1e6),
            disk_free: AtomicU64::new(0),
            disk_total: AtomicU64::new(0),
            disk_threshold: AtomicU64::new(0),
            disk_low: AtomicU64::new(0),
            store_bytes: AtomicU64::new(0),
            scratch_bytes: AtomicU64::new(0),
            http: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one frame (or one run of junk) under `result`, labelled with its protocol
    /// number when known.
    pub fn frame(&self, result: FrameResult, proto: Option<u8>) {
        let c = match proto {
            Some(p) => &self.frames.by_proto[result.index()][usize::from(p)],
            None => &self.frames.no_proto[result.index()],
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A tracker connected; the returned guard counts it out when dropped.
    pub fn connection(&'static self) -> ConnectionGuard {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_current.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { metrics: self }
    }

    /// A tracker connection was refused by a cap (`per_ip`: the per-address one).
    pub fn connection_refused(&self, per_ip: bool) {
        self.connections_refused[usize::from(per_ip)].fetch_add(1, Ordering::Relaxed);
    }

    /// A tracker connection ended for `result` (one of [`CLOSE_RESULTS`], else `other`).
    pub fn connection_closed(&self, result: &str) {
        let i = CLOSE_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(CLOSE_RESULTS.len() - 1);
        self.connections_closed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `n` positions handed to the store at server time `now_ms`.
    pub fn positions_stored(&self, n: u64, now_ms: i64) {
        self.positions_stored_total.fetch_add(n, Ordering::Relaxed);
        self.last_position_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Where `gt06_last_position_age_seconds` counts from before the first position of
    /// this process: the newest one in the store, or the start.
    pub fn set_last_position(&self, ms: i64) {
        self.last_position_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn write_refused(&self, kind: Refused) {
        self.writes_refused[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes refused so far, of every kind.
    pub fn writes_refused(&self) -> u64 {
        self.writes_refused
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One group commit of `records` whose journal write and fdatasync took `flush`.
    pub fn commit(&self, records: usize, flush: std::time::Duration) {
        self.batch_size.observe(records as u64);
        self.flush_seconds.observe(flush.as_micros() as u64);
    }

    pub fn set_disk(&self, free: u64, total: u64, threshold: u64) {
        self.disk_free.store(free, Ordering::Relaxed);
        self.disk_total.store(total, Ordering::Relaxed);
        self.disk_threshold.store(threshold, Ordering::Relaxed);
    }

    pub fn set_connections_closing(&self, n: usize) {
        self.connections_closing.store(n as u64, Ordering::Relaxed);
    }

    pub fn set_disk_low(&self, low: bool) {
        self.disk_low.store(u64::from(low), Ordering::Relaxed);
    }

    pub fn set_store_bytes(&self, b: u64) {
        self.store_bytes.store(b, Ordering::Relaxed);
    }

    /// Bytes written to unsealed positions' scratch files (+) or freed with one (−).
    pub fn scratch_bytes(&self, added: u64, freed: u64) {
        self.scratch_bytes.fetch_add(added, Ordering::Relaxed);
        self.scratch_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// One HTTP request: `route` is a [`crate::http::route::Route`] variant name (a
    /// bounded set, never the raw path).
    pub fn http_request(&self, route: &'static str, status: u16, took: std::time::Duration) {
        let mut m = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let r = m.entry(route).or_insert_with(|| HttpRoute {
            by_status: BTreeMap::new(),
            latency: Histogram::new(HTTP_BOUNDS, 1e6),
        });
        *r.by_status.entry(status).or_insert(0) += 1;
        r.latency.observe(took.as_micros() as u64);
    }

    /// The value of one frame counter (for tests and diagnostics).
    pub fn frames(&self, result: FrameResult, proto: Option<u8>) -> u64 {
        match proto {
            Some(p) => self.frames.by_proto[result.index()][usize::from(p)].load(Ordering::Relaxed),
            None => self.frames.no_proto[result.index()].load(Ordering::Relaxed),
        }
    }

    /// Prometheus text exposition format 0.0.4, at server time `now_ms`. Frame series
    /// appear once non-zero, HTTP series once their route was requested; everything
    /// else is always present.
    pub fn render(&self, now_ms: i64) -> String {
        let mut out = String::with_capacity(8192);
        head(
            &mut out,
            "gt06_frames_total",
            "counter",
            "Frames (and runs of junk) received from trackers, by what became of them.",
        );
        for result in FrameResult::ALL {
            let n = self.frames.no_proto[result.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "gt06_frames_total{{result=\"{}\"}} {n}",
                    result.label()
                );
            }
            for (proto, c) in self.frames.by_proto[result.index()].iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gt06_frames_total{{result=\"{}\",proto=\"{proto:#04x}\"}} {n}",
                        result.label()
                    );
                }
            }
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let simple = [
            (
                "gt06_connections_total",
                "counter",
                "Tracker connections accepted.",
                load(&self.connections_total),
            ),
            (
                "gt06_connections_current",
                "gauge",
                "Tracker connections open now.",
                load(&self.connections_current),
            ),
            (
                "gt06_connections_closing",
                "gauge",
                "Ended tracker connections whose sockets wait to be closed.",
                load(&self.connections_closing),
            ),
            (
                "gt06_positions_stored_total",
                "counter",
                "Positions sent to the store by tracker sessions.",
                load(&self.positions_stored_total),
            ),
            (
                "gt06_store_commit_failures_total",
                "counter",
                "Group commits that could not be written (their connections were closed unanswered).",
                load(&self.commit_failures),
            ),
            (
                "gt06_store_bytes",
                "gauge",
                "Bytes the data directory occupies on disk (measured every few seconds).",
                load(&self.store_bytes),
            ),
            (
                "gt06_store_scratch_bytes",
                "gauge",
                "Bytes of unsealed positions in unnamed scratch files (not in gt06_store_bytes).",
                load(&self.scratch_bytes),
            ),
            (
                "gt06_disk_free_bytes",
                "gauge",
                "Bytes free for gt06 on the data directory's filesystem.",
                load(&self.disk_free),
            ),
            (
                "gt06_disk_size_bytes",
                "gauge",
                "Size of the data directory's filesystem in bytes.",
                load(&self.disk_total),
            ),
            (
                "gt06_disk_min_free_bytes",
                "gauge",
                "Free space under which new writes are refused (store.min_free_mb / store.min_free_percent).",
                load(&self.disk_threshold),
            ),
            (
                "gt06_disk_low",
                "gauge",
                "1 while the disk guard refuses new positions and events, else 0.",
                load(&self.disk_low),
            ),
        ];
        for (name, kind, help, v) in simple {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(
            &mut out,
            "gt06_connections_closed_total",
            "counter",
            "Tracker connections ended, by why.",
        );
        for (result, c) in CLOSE_RESULTS.iter().zip(&self.connections_closed) {
            let _ = writeln!(
                out,
                "gt06_connections_closed_total{{result=\"{result}\"}} {}",
                load(c)
            );
        }
        head(
            &mut out,
            "gt06_connections_refused_total",
            "counter",
            "Tracker connections closed at once by a connection cap.",
        );
        for (reason, c) in ["max_connections", "max_connections_per_ip"]
            .iter()
            .zip(&self.connections_refused)
        {
            let _ = writeln!(
                out,
                "gt06_connections_refused_total{{reason=\"{reason}\"}} {}",
                load(c)
            );
        }
        head(
            &mut out,
            "gt06_store_writes_refused_total",
            "counter",
            "Positions and events refused (not stored, not answered) because the disk was low.",
        );
        for (kind, c) in ["position", "event"].iter().zip(&self.writes_refused) {
            let _ = writeln!(
                out,
                "gt06_store_writes_refused_total{{kind=\"{kind}\"}} {}",
                load(c)
            );
        }
        let last = self.last_position_ms.load(Ordering::Relaxed);
        head(
            &mut out,
            "gt06_last_position_age_seconds",
            "gauge",
            "Seconds since the newest position was received (before the first one: since the newest in the store, or the start).",
        );
        let age = if last > 0 {
            (now_ms - last).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        let _ = writeln!(out, "gt06_last_position_age_seconds {age}");
        head(
            &mut out,
            "gt06_store_batch_size",
            "histogram",
            "Records per group commit.",
        );
        self.batch_size
            .render(&mut out, "gt06_store_batch_size", "");
        head(
            &mut out,
            "gt06_store_flush_seconds",
            "histogram",
            "Time to write and fdatasync one group commit to the journal.",
        );
        self.flush_seconds
            .render(&mut out, "gt06_store_flush_seconds", "");
        {
            let m = self.http.lock().unwrap_or_else(|e| e.into_inner());
            head(
                &mut out,
                "gt06_http_requests_total",
                "counter",
                "HTTP requests, by route and status.",
            );
            for (route, r) in m.iter() {
                for (status, n) in &r.by_status {
                    let _ = writeln!(
                        out,
                        "gt06_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
            head(
                &mut out,
                "gt06_http_request_duration_seconds",
                "histogram",
                "Time from an HTTP request to its response head, by route.",
            );
            for (route, r) in m.iter() {
                r.latency.render(
                    &mut out,
                    "gt06_http_request_duration_seconds",
                    &format!("route=\"{route}\","),
                );
            }
        }
        render_process(&mut out);
        out
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The process and host series, read from /proc at each scrape (a few small reads).
fn render_process(out: &mut String) {
    let (ticks, page) = unsafe {
        // SAFETY: sysconf only reads configuration values.
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_btime(&s));
    if let (Some(p), true) = (parse_stat(&stat), ticks > 0 && page > 0) {
        let ticks = ticks as f64;
        head(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the gt06 process.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            (p.utime + p.stime) as f64 / ticks
        );
        head(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the gt06 process.",
        );
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            p.rss_pages * page as u64
        );
        head(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory of the gt06 process.",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {}", p.vsize);
        if let Some(bt) = btime {
            head(
                out,
                "process_start_time_seconds",
                "gauge",
                "When the gt06 process started, in seconds since the Unix epoch.",
            );
            let _ = writeln!(
                out,
                "process_start_time_seconds {}",
                bt as f64 + p.starttime as f64 / ticks
            );
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        head(
            out,
            "process_open_fds",
            "gauge",
            "File descriptors the gt06 process has open.",
        );
        let _ = writeln!(out, "process_open_fds {}", rd.count());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        head(
            out,
            "process_max_fds",
            "gauge",
            "Most file descriptors the gt06 process may open.",
        );
        let _ = writeln!(out, "process_max_fds {}", lim.rlim_cur);
    }
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| crate::ops::doctor::parse_meminfo(&t));
    if let Some((total, available, _swap)) = mem {
        head(
            out,
            "gt06_host_memory_total_bytes",
            "gauge",
            "Memory of the machine (MemTotal).",
        );
        let _ = writeln!(out, "gt06_host_memory_total_bytes {total}");
        head(
            out,
            "gt06_host_memory_available_bytes",
            "gauge",
            "Memory the machine can still give without swapping (MemAvailable).",
        );
        let _ = writeln!(out, "gt06_host_memory_available_bytes {available}");
    }
}

/// The fields of /proc/self/stat the process series need.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        utime: n(14)?,
        stime: n(15)?,
        starttime: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// Boot time (seconds since the epoch) from /proc/stat.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Counts a connection out of `gt06_connections_current` when the session ends, however
/// it ends.
pub struct ConnectionGuard {
    metrics: &'static Metrics,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_proto_labels_only_where_known() {
        static M: Metrics = Metrics::new();
        M.frame(FrameResult::Ok, Some(0x12));
        M.frame(FrameResult::Ok, Some(0x12));
        M.frame(FrameResult::UnknownType, Some(0xEE));
        M.frame(FrameResult::Junk, None);
        M.positions_stored(2, 1_000);
        let g = M.connection();
        let text = M.render(4_500);
        assert!(
            text.contains("gt06_frames_total{result=\"ok\",proto=\"0x12\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gt06_frames_total{result=\"unknown_type\",proto=\"0xee\"} 1\n"));
        assert!(text.contains("gt06_frames_total{result=\"junk\"} 1\n"));
        assert!(text.contains("# TYPE gt06_frames_total counter\n"));
        assert!(text.contains("gt06_connections_current 1\n"));
        assert!(text.contains("gt06_positions_stored_total 2\n"));
        assert!(
            text.contains("gt06_last_position_age_seconds 3.5\n"),
            "{text}"
        );
        drop(g);
        M.connection_closed("idle_timeout");
        M.connection_closed("something_new");
        let text = M.render(0);
        assert!(text.contains("gt06_connections_current 0\n"));
        assert!(text.contains("gt06_connections_total 1\n"));
        assert!(text.contains("gt06_connections_closed_total{result=\"idle_timeout\"} 1\n"));
        assert!(text.contains("gt06_connections_closed_total{result=\"other\"} 1\n"));
        M.connection_refused(true);
        assert!(M
            .render(0)
            .contains("gt06_connections_refused_total{reason=\"max_connections_per_ip\"} 1\n"));
        assert_eq!(M.frames(FrameResult::Ok, Some(0x12)), 2);
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        static M: Metrics = Metrics::new();
        M.commit(1, std::time::Duration::from_micros(300));
        M.commit(3, std::time::Duration::from_millis(3));
        M.commit(10_000, std::time::Duration::from_secs(9));
        M.http_request("Devices", 200, std::time::Duration::from_millis(2));
        M.http_request("Devices", 404, std::time::Duration::from_millis(2));
        let text = M.render(0);
        assert!(
            text.contains("gt06_store_batch_size_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("gt06_store_batch_size_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("gt06_store_batch_size_bucket{le=\"4096\"} 2\n"));
        assert!(text.contains("gt06_store_batch_size_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("gt06_store_batch_size_sum 10004\n"));
        assert!(text.contains("gt06_store_batch_size_count 3\n"));
        assert!(text.contains("gt06_store_flush_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("gt06_store_flush_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("gt06_http_requests_total{route=\"Devices\",status=\"404\"} 1\n"));
        assert!(text.contains(
            "gt06_http_request_duration_seconds_bucket{route=\"Devices\",le=\"0.0025\"} 2\n"
        ));
        assert!(text.contains("gt06_http_request_duration_seconds_count{route=\"Devices\"} 2\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(text.contains("# TYPE gt06_host_memory_total_bytes gauge\n"));
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let line =
            "1234 (gt06 (x) y) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17 18 333 4096 25 26";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                utime: 111,
                stime: 222,
                starttime: 333,
                vsize: 4096,
                rss_pages: 25,
            })
        );
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }
}
