//! The disk guard: watches the free space of the data directory's filesystem and tells
//! the writer, the sessions and `/health/ready` when the store must stop taking new data.
//!
//! The threshold is the *smaller* of `store.min_free_mb` and `store.min_free_percent` of
//! the filesystem's size (defaults 512 MiB and 5 %): 512 MiB on any volume over 10 GiB,
//! 5 % on smaller ones, so a small volume is not "full" from the day it is installed.
//! Below it the guard is *low*: the writer journals and seals nothing, sessions refuse
//! positions and events (counted, unanswered), and everything else keeps going. It clears
//! once free space is back above the threshold plus a small margin ([`resume_at`]), so a
//! disk hovering at the line does not flap. A real "no space left" from a write (the
//! threshold was too low, or the disk filled between two checks) makes it low at once,
//! until free space has grown a little beyond what was left when that write failed.
//!
//! This room only measures, decides and reports (log lines, metrics); it never deletes
//! or writes anything. State is a few atomics: the hot path (`is_low`) is one load.

use crate::ops::metrics::METRICS;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
/// Once low, the error line is repeated this often (with what was refused meanwhile).
const LOG_EVERY: Duration = Duration::from_secs(60);
/// The writer re-reads free space itself when the last reading is older than this.
const STALE: Duration = Duration::from_secs(1);

/// `store.min_free_mb` and `store.min_free_percent`, in the units the guard uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinFree {
    pub bytes: u64,
    pub percent: u8,
}

impl MinFree {
    /// The guard is off (a real "no space left" is still handled).
    pub const OFF: MinFree = MinFree {
        bytes: 0,
        percent: 0,
    };

    /// The smaller of the two limits, on a filesystem of `total` bytes.
    pub fn threshold(self, total: u64) -> u64 {
        let pct = (u128::from(total) * u128::from(self.percent) / 100) as u64;
        self.bytes.min(pct)
    }
}

/// Free space at which a low guard clears: the threshold plus 1/16 of it (at least
/// 1 MiB), so writing again does not at once push it back under.
pub fn resume_at(threshold: u64) -> u64 {
    threshold.saturating_add((threshold / 16).max(MIB))
}

/// Whether the store may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Free space is under the threshold.
    Low,
    /// A write failed for lack of space while `free_at` bytes were reported free.
    Full {
        free_at: u64,
    },
}

impl Level {
    /// The `reason` of log lines and of `/health/ready`.
    pub fn reason(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Low => "disk_low",
            Level::Full { .. } => "disk_full",
        }
    }
}

/// The next level after reading `free` bytes free against `threshold`. Pure.
pub fn decide(level: Level, free: u64, threshold: u64) -> Level {
    match level {
        Level::Ok if free < threshold => Level::Low,
        Level::Ok => Level::Ok,
        Level::Low if free >= resume_at(threshold) => Level::Ok,
        Level::Low => Level::Low,
        Level::Full { free_at } => {
            if free >= resume_at(threshold).max(free_at.saturating_add(MIB)) {
                Level::Ok
            } else {
                Level::Full { free_at }
            }
        }
    }
}

/// Free and total bytes of the filesystem holding `dir` (what an unprivileged writer may
/// still use, so ext4's reserved blocks do not count as free).
pub fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `out` is a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut out) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = out.f_frsize as u64;
    Ok((out.f_bavail as u64 * unit, out.f_blocks as u64 * unit))
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, not apparent sizes).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() {
                stack.push(entry.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// When the guard last measured and last complained.
struct Clock {
    checked: Option<Instant>,
    logged: Option<Instant>,
    /// Refused writes already reported in a log line.
    refused_logged: u64,
}

/// The guard of one data directory. Shared (`Arc`) by the writer, sessions and HTTP.
pub struct DiskGuard {
    dir: PathBuf,
    min_bytes: AtomicU64,
    min_percent: AtomicU8,
    /// 0 ok, 1 low, 2 full.
    level: AtomicU8,
    full_at: AtomicU64,
    free: AtomicU64,
    total: AtomicU64,
    threshold: AtomicU64,
    clock: Mutex<Clock>,
}

impl DiskGuard {
    /// A guard for `dir` that is off until [`DiskGuard::set_min_free`] (it still turns
    /// low when told of a real "no space left").
    pub fn new(dir: &Path) -> DiskGuard {
        DiskGuard {
            dir: dir.to_path_buf(),
            min_bytes: AtomicU64::new(0),
            min_percent: AtomicU8::new(0),
            level: AtomicU8::new(0),
            full_at: AtomicU64::new(0),
            free: AtomicU64::new(0),
            total: AtomicU64::new(0),
            threshold: AtomicU64::new(0),
            clock: Mutex::new(Clock {
                checked: None,
                logged: None,
                refused_logged: 0,
            }),
        }
    }

    pub fn set_min_free(&self, m: MinFree) {
        self.min_bytes.store(m.bytes, Ordering::Relaxed);
        self.min_percent.store(m.percent, Ordering::Relaxed);
    }

    /// True while new data must not be written.
    pub fn is_low(&self) -> bool {
        self.level.load(Ordering::Acquire) != 0
    }

    pub fn level(&self) -> Level {
        match self.level.load(Ordering::Acquire) {
            0 => Level::Ok,
            1 => Level::Low,
            _ => Level::Full {
                free_at: self.full_at.load(Ordering::Relaxed),
            },
        }
    }

    fn set_level(&self, l: Level) {
        let v = match l {
            Level::Ok => 0,
            Level::Low => 1,
            Level::Full { free_at } => {
                self.full_at.store(free_at, Ordering::Relaxed);
                2
            }
        };
        self.level.store(v, Ordering::Release);
        METRICS.set_disk_low(v != 0);
    }

    /// `(free, total, threshold)` bytes as last measured.
    pub fn reading(&self) -> (u64, u64, u64) {
        (
            self.free.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.threshold.load(Ordering::Relaxed),
        )
    }

    /// One sentence for `/health/ready` while low, `None` while writing.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let level = self.level();
        if level == Level::Ok {
            return None;
        }
        let (free, total, threshold) = self.reading();
        let what = match level {
            Level::Full { .. } => "a write failed: no space left on the device",
            _ => "free space is below store.min_free_mb / store.min_free_percent",
        };
        Some((
            level.reason(),
            format!(
                "{what} ({} MiB free of {} MiB, threshold {} MiB): new positions and events are refused until space is freed",
                free / MIB,
                total / MIB,
                threshold / MIB
            ),
        ))
    }

    /// Measures free space now, moves the level, logs transitions (and, while low, one
    /// error line a minute) and publishes the metrics.
    pub fn refresh(&self) {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.checked = Some(Instant::now());
        let (free, total) = match statvfs(&self.dir) {
            Ok(x) => x,
            Err(e) => {
                // Not knowing is not a reason to stop writing: a real ENOSPC still is.
                if clock.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    clock.logged = Some(Instant::now());
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot read the free space of the data directory");
                }
                return;
            }
        };
        let min = MinFree {
            bytes: self.min_bytes.load(Ordering::Relaxed),
            percent: self.min_percent.load(Ordering::Relaxed),
        };
        let threshold = min.threshold(total);
        self.free.store(free, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.threshold.store(threshold, Ordering::Relaxed);
        METRICS.set_disk(free, total, threshold);
        let before = self.level();
        let after = decide(before, free, threshold);
        if after != before {
            self.set_level(after);
        }
        let refused = METRICS.writes_refused();
        match (before == Level::Ok, after == Level::Ok) {
            (true, false) => {
                clock.logged = Some(Instant::now());
                clock.refused_logged = refused;
                tracing::error!(
                    reason = after.reason(),
                    free_mib = free / MIB,
                    threshold_mib = threshold / MIB,
                    "disk almost full: refusing new positions and events (reads and device answers go on); free space to resume"
                );
            }
            (false, true) => {
                tracing::info!(
                    free_mib = free / MIB,
                    refused = refused - clock.refused_logged,
                    "disk space is back: storing positions and events again"
                );
                clock.logged = None;
            }
            (false, false) if clock.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) => {
                clock.logged = Some(Instant::now());
                tracing::error!(
                    reason = after.reason(),
                    free_mib = free / MIB,
                    threshold_mib = threshold / MIB,
                    refused = refused - clock.refused_logged,
                    "disk still almost full: positions and events are being refused"
                );
                clock.refused_logged = refused;
            }
            _ => {}
        }
    }

    /// [`DiskGuard::refresh`] unless another caller measured within the last second.
    pub fn refresh_if_stale(&self) {
        let stale = self
            .clock
            .lock()
            .map(|c| c.checked.is_none_or(|t| t.elapsed() >= STALE))
            .unwrap_or(true);
        if stale {
            self.refresh();
        }
    }

    /// Free bytes right now (`None` when the filesystem cannot be asked).
    pub fn free_now(&self) -> Option<u64> {
        statvfs(&self.dir).ok().map(|(f, _)| f)
    }

    /// A write failed with "no space left": low at once, whatever the threshold says.
    pub fn disk_full(&self) {
        let free = statvfs(&self.dir).map(|(f, _)| f).unwrap_or(0);
        let was = self.level();
        self.set_level(Level::Full { free_at: free });
        if was == Level::Ok {
            let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            clock.logged = Some(Instant::now());
            clock.refused_logged = METRICS.writes_refused();
            tracing::error!(
                reason = "disk_full",
                free_mib = free / MIB,
                "no space left on the device: refusing new positions and events (reads and device answers go on); free space to resume"
            );
        }
    }

    /// Measures the data directory for `gt06_store_bytes`.
    pub fn measure_store(&self) {
        METRICS.set_store_bytes(dir_bytes(&self.dir));
    }

    /// Measures every second (and the store's size every few seconds) until `cancel`.
    pub async fn watch(self: std::sync::Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let g = self.clone();
            let measure = n % 5 == 0;
            n += 1;
            // statvfs and a directory walk may block on a slow disk: not on a worker.
            let _ = tokio::task::spawn_blocking(move || {
                g.refresh();
                if measure {
                    g.measure_store();
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_smaller_of_the_two_limits() {
        let m = MinFree {
            bytes: 512 * MIB,
            percent: 5,
        };
        // 8 GiB volume: 5 % is 409.6 MiB, under 512 MiB.
        assert_eq!(m.threshold(8 * 1024 * MIB), 8 * 1024 * MIB / 20);
        // 100 GiB: 512 MiB.
        assert_eq!(m.threshold(100 * 1024 * MIB), 512 * MIB);
        assert_eq!(MinFree::OFF.threshold(100 * 1024 * MIB), 0);
        let absolute = MinFree {
            bytes: 8 * MIB,
            percent: 100,
        };
        assert_eq!(absolute.threshold(64 * MIB), 8 * MIB);
    }

    #[test]
    fn low_clears_only_above_the_margin_and_full_only_after_space_grew() {
        let t = 100 * MIB;
        assert_eq!(decide(Level::Ok, t, t), Level::Ok);
        assert_eq!(decide(Level::Ok, t - 1, t), Level::Low);
        // Back at the threshold is not enough: the margin keeps it from flapping.
        assert_eq!(decide(Level::Low, t, t), Level::Low);
        assert_eq!(decide(Level::Low, resume_at(t), t), Level::Ok);
        assert_eq!(resume_at(t), t + t / 16);
        assert_eq!(resume_at(0), MIB);
        // A failed write at 3 MiB free with the guard off: clears at 4 MiB.
        let full = Level::Full { free_at: 3 * MIB };
        assert_eq!(decide(full, 3 * MIB, 0), full);
        assert_eq!(decide(full, 4 * MIB, 0), Level::Ok);
        // ...and never below the threshold's own margin.
        assert_eq!(decide(full, 4 * MIB, 10 * MIB), full);
        assert_eq!(decide(full, resume_at(10 * MIB), 10 * MIB), Level::Ok);
    }

    #[test]
    fn statvfs_and_dir_bytes_read_a_real_directory() {
        let d = std::env::temp_dir().join(format!("gt06-guard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), vec![1u8; 10_000]).unwrap();
        let (free, total) = statvfs(&d).unwrap();
        assert!(total > 0 && free <= total);
        assert!(dir_bytes(&d) >= 10_000);
        let g = DiskGuard::new(&d);
        g.refresh();
        assert!(!g.is_low());
        assert!(g.problem().is_none());
        // Asking for more than the whole disk makes it low.
        g.set_min_free(MinFree {
            bytes: u64::MAX,
            percent: 100,
        });
        g.refresh();
        assert_eq!(g.level(), Level::Low);
        assert_eq!(g.problem().unwrap().0, "disk_low");
        g.set_min_free(MinFree::OFF);
        g.refresh();
        assert!(!g.is_low());
        let _ = std::fs::remove_dir_all(&d);
    }
}
