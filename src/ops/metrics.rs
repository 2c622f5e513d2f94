//! Counters an operator scrapes from `GET /metrics` (Prometheus text format 0.0.4).
//!
//! A handful of `AtomicU64`s in one process-wide registry, [`METRICS`]: sessions bump
//! them on their hot path (one relaxed atomic add per frame), the HTTP handler renders
//! them. Global on purpose: every session and the handler reach it without threading a
//! handle through the wiring, and a counter that is only ever added to needs no owner.
//! This room never decides anything from the counters; it only counts and renders.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// One counter per (result, protocol number), plus one per result whose protocol
/// number is not known (junk, a lost length).
struct FrameCounters {
    by_proto: [[AtomicU64; 256]; 8],
    no_proto: [AtomicU64; 8],
}

/// The registry. `const`-constructible so it can be a `static`.
pub struct Metrics {
    frames: FrameCounters,
    connections_total: AtomicU64,
    connections_current: AtomicU64,
    positions_stored_total: AtomicU64,
    /// Tracker connections refused by the global cap, and by the per-address cap.
    connections_refused: [AtomicU64; 2],
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
            positions_stored_total: AtomicU64::new(0),
            connections_refused: [const { AtomicU64::new(0) }; 2],
        }
    }

    /// A tracker connection was refused by a cap (`per_ip`: the per-address one).
    pub fn connection_refused(&self, per_ip: bool) {
        self.connections_refused[usize::from(per_ip)].fetch_add(1, Ordering::Relaxed);
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

    pub fn positions_stored(&self, n: u64) {
        self.positions_stored_total.fetch_add(n, Ordering::Relaxed);
    }

    /// The value of one frame counter (for tests and diagnostics).
    pub fn frames(&self, result: FrameResult, proto: Option<u8>) -> u64 {
        match proto {
            Some(p) => self.frames.by_proto[result.index()][usize::from(p)].load(Ordering::Relaxed),
            None => self.frames.no_proto[result.index()].load(Ordering::Relaxed),
        }
    }

    /// Prometheus text exposition format 0.0.4. Frame series appear once non-zero.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let _ = writeln!(
            out,
            "# HELP gt06_frames_total Frames (and runs of junk) received from trackers, by what became of them."
        );
        let _ = writeln!(out, "# TYPE gt06_frames_total counter");
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
        let simple = [
            (
                "gt06_connections_total",
                "counter",
                "Tracker connections accepted.",
                &self.connections_total,
            ),
            (
                "gt06_connections_current",
                "gauge",
                "Tracker connections open now.",
                &self.connections_current,
            ),
            (
                "gt06_positions_stored_total",
                "counter",
                "Positions sent to the store by tracker sessions.",
                &self.positions_stored_total,
            ),
        ];
        for (name, kind, help, c) in simple {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP gt06_connections_refused_total Tracker connections closed at once by a connection cap."
        );
        let _ = writeln!(out, "# TYPE gt06_connections_refused_total counter");
        for (reason, c) in ["max_connections", "max_connections_per_ip"]
            .iter()
            .zip(&self.connections_refused)
        {
            let _ = writeln!(
                out,
                "gt06_connections_refused_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out
    }
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
        M.positions_stored(2);
        let g = M.connection();
        let text = M.render();
        assert!(
            text.contains("gt06_frames_total{result=\"ok\",proto=\"0x12\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gt06_frames_total{result=\"unknown_type\",proto=\"0xee\"} 1\n"));
        assert!(text.contains("gt06_frames_total{result=\"junk\"} 1\n"));
        assert!(text.contains("# TYPE gt06_frames_total counter\n"));
        assert!(text.contains("gt06_connections_current 1\n"));
        assert!(text.contains("gt06_positions_stored_total 2\n"));
        M.connection_refused(true);
        assert!(M
            .render()
            .contains("gt06_connections_refused_total{reason=\"max_connections_per_ip\"} 1\n"));
        drop(g);
        assert!(M.render().contains("gt06_connections_current 0\n"));
        assert!(M.render().contains("gt06_connections_total 1\n"));
        assert_eq!(M.frames(FrameResult::Ok, Some(0x12)), 2);
    }
}
