//! `gt06 doctor`: the pre-maintenance checklist. Each check says `ok`, `warn` or `fail`
//! with one sentence; exit 0 means no check failed (safe to proceed), 1 that one did, 2
//! that the configuration is bad.
//!
//! This room only looks: it opens the store read-only in spirit (like `gt06 verify`), and
//! never while a server holds it; it reads /proc and `statvfs`. The thresholds and the
//! wording are pure functions, unit-tested below.

use crate::cli::DoctorArgs;
use crate::config::{Config, Overrides, Settings};
use crate::http::json::rfc3339;
use crate::store::{OpenOptions, Store, VerifyReport};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Below this much free space (or `DISK_FAIL_PCT`) the store may soon fail to write.
pub const DISK_FAIL_BYTES: u64 = 512 * 1024 * 1024;
pub const DISK_FAIL_PCT: f64 = 5.0;
/// Operators alert at 80 % used: warn before that alert fires.
pub const DISK_WARN_PCT: f64 = 20.0;
pub const MEM_FAIL_PCT: f64 = 5.0;
pub const MEM_WARN_PCT: f64 = 20.0;
/// Trackers report every few seconds to minutes: ten silent minutes is worth a look.
pub const POSITION_STALE: Duration = Duration::from_secs(600);
/// A device fix this far ahead of the server clock means one of the two clocks is wrong.
pub const FUTURE_FIX_LIMIT: Duration = Duration::from_secs(86_400);
/// 2024-01-01T00:00:00Z: a server clock before this has not been set.
pub const SANE_CLOCK_MS: i64 = 1_704_067_200_000;
/// Backups are meant to be nightly; two days without one is a missed night.
pub const BACKUP_STALE: Duration = Duration::from_secs(2 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub message: String,
    /// Numbers behind the sentence, for `--json` readers.
    pub extra: Map<String, Value>,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            name,
            status,
            message: message.into(),
            extra: Map::new(),
        }
    }

    fn with(mut self, key: &str, v: impl Into<Value>) -> Check {
        self.extra.insert(key.to_string(), v.into());
        self
    }
}

/// `ok    store: …` — the status padded so the names line up.
pub fn format_line(c: &Check) -> String {
    format!("{:<4}  {}: {}", c.status.as_str(), c.name, c.message)
}

/// The `--json` document.
pub fn to_json(checks: &[Check]) -> Value {
    let list: Vec<Value> = checks
        .iter()
        .map(|c| {
            let mut o = Map::new();
            o.insert("name".into(), c.name.into());
            o.insert("status".into(), c.status.as_str().into());
            o.insert("message".into(), c.message.clone().into());
            for (k, v) in &c.extra {
                o.insert(k.clone(), v.clone());
            }
            Value::Object(o)
        })
        .collect();
    json!({ "checks": list, "ok": all_ok(checks) })
}

pub fn all_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// `42 s`, `7 min`, `3 h 5 min`, `2 d 4 h`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `1.5 GiB`, `300 MiB`.
pub fn human_bytes(b: u64) -> String {
    const GIB: u64 = 1024 * 1024 * 1024;
    if b >= GIB {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    } else {
        format!("{} MiB", b / (1024 * 1024))
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Free space: fail below 512 MiB or 5 %, warn below 20 %.
pub fn classify_disk(free: u64, total: u64) -> Status {
    let p = pct(free, total);
    if free < DISK_FAIL_BYTES || p < DISK_FAIL_PCT {
        Status::Fail
    } else if p < DISK_WARN_PCT {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// Free inodes (`total == 0`: the filesystem does not limit them).
pub fn classify_inodes(free: u64, total: u64) -> Status {
    let p = pct(free, total);
    if total == 0 {
        Status::Ok
    } else if p < DISK_FAIL_PCT {
        Status::Fail
    } else if p < DISK_WARN_PCT {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// Memory: fail below 5 % available, warn below 20 % or without swap.
pub fn classify_memory(available: u64, total: u64, swap_total: u64) -> Status {
    let p = pct(available, total);
    if p < MEM_FAIL_PCT {
        Status::Fail
    } else if p < MEM_WARN_PCT || swap_total == 0 {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// `(MemTotal, MemAvailable, SwapTotal)` in bytes from /proc/meminfo's text.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some((
        field("MemTotal")?,
        field("MemAvailable")?,
        field("SwapTotal")?,
    ))
}

/// The pid holding a lock on the file with inode `inode`, from /proc/locks' text.
pub fn lock_holder(locks: &str, inode: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 29927 fe:00:10059916 0 EOF"; blocked waiters have "->".
        if cols.get(1) == Some(&"->") {
            return None;
        }
        let pid: u32 = cols.get(4)?.parse().ok()?;
        let ino: u64 = cols.get(5)?.rsplit(':').next()?.parse().ok()?;
        (ino == inode).then_some(pid)
    })
}

/// Is this command line a gt06 server?
pub fn is_gt06(cmd: &str) -> bool {
    let argv0 = cmd.split_whitespace().next().unwrap_or("");
    Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some("gt06")
}

/// Is this command line the service manager (which holds sockets for `gt06.socket`)?
fn is_systemd(cmd: &str) -> bool {
    let argv0 = cmd.split_whitespace().next().unwrap_or("");
    matches!(
        Path::new(argv0).file_name().and_then(|n| n.to_str()),
        Some("systemd") | Some("init")
    )
}

/// The ports line for one address, from who (if anyone) holds it.
pub fn classify_port(
    what: &str,
    addr: SocketAddr,
    holder: Option<(u32, String)>,
    listening: bool,
) -> (Status, String) {
    match holder {
        None if listening => (
            Status::Warn,
            format!(
                "{what} {addr} is held by a process this user cannot see (run as root to name it)"
            ),
        ),
        None => (Status::Ok, format!("{what} {addr} is free")),
        Some((pid, cmd)) if is_gt06(&cmd) => (
            Status::Ok,
            format!("{what} {addr} is held by pid {pid} ({cmd}), the running gt06"),
        ),
        Some((pid, cmd)) if is_systemd(&cmd) => (
            Status::Ok,
            format!("{what} {addr} is held by pid {pid} ({cmd}) for socket activation"),
        ),
        Some((pid, cmd)) => (
            Status::Warn,
            format!("{what} {addr} is held by pid {pid} ({cmd}), which is not gt06"),
        ),
    }
}

/// Age of the newest received position; `None`: no device has a position yet.
pub fn classify_last_position(newest_received_ms: Option<i64>, now_ms: i64) -> (Status, String) {
    let Some(ms) = newest_received_ms else {
        return (Status::Ok, "no devices yet".into());
    };
    let age = Duration::from_millis(now_ms.saturating_sub(ms).max(0) as u64);
    let status = if age > POSITION_STALE {
        Status::Warn
    } else {
        Status::Ok
    };
    (
        status,
        format!(
            "newest position received {} ago ({})",
            human_age(age),
            rfc3339(ms)
        ),
    )
}

/// Server clock after 2024, and the newest device fix not more than a day ahead of it.
pub fn classify_clock(now_ms: i64, newest_fix: Option<(u64, i64)>) -> (Status, String) {
    if now_ms < SANE_CLOCK_MS {
        return (
            Status::Fail,
            format!(
                "server clock says {}, before 2024: set the time (NTP) first",
                rfc3339(now_ms)
            ),
        );
    }
    match newest_fix {
        Some((imei, fix)) if fix > now_ms + FUTURE_FIX_LIMIT.as_millis() as i64 => (
            Status::Fail,
            format!(
                "device {imei:015} has a fix at {}, {} ahead of the server clock ({}): a device or server clock is wrong",
                rfc3339(fix),
                human_age(Duration::from_millis((fix - now_ms) as u64)),
                rfc3339(now_ms)
            ),
        ),
        Some((_, fix)) => (
            Status::Ok,
            format!(
                "server time {}; newest device fix {} is not ahead of it",
                rfc3339(now_ms),
                rfc3339(fix)
            ),
        ),
        None => (Status::Ok, format!("server time {}", rfc3339(now_ms))),
    }
}

pub fn main(args: &DoctorArgs) -> anyhow::Result<bool> {
    let loaded = Config::load(args.config.as_deref()).and_then(|c| {
        c.with_overrides(&Overrides {
            data_dir: args.data_dir.clone(),
            ..Default::default()
        })
        .validate()
    });
    let settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            let check = Check::new("config", Status::Fail, e.to_string());
            print_report(&[check], args.json);
            return Err(e.into());
        }
    };
    let checks = run(&settings, args.config.as_deref());
    print_report(&checks, args.json);
    Ok(all_ok(&checks))
}

fn print_report(checks: &[Check], as_json: bool) {
    if as_json {
        println!("{}", to_json(checks));
    } else {
        for c in checks {
            println!("{}", format_line(c));
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Every check but `config`'s failure, in checklist order.
pub fn run(s: &Settings, config: Option<&Path>) -> Vec<Check> {
    let now = now_ms();
    let config_msg = match config {
        Some(p) => format!("{} is valid", p.display()),
        None => "embedded defaults (no --config given)".to_string(),
    };
    let mut checks = vec![Check::new("config", Status::Ok, config_msg)];
    let (store_check, devices) = check_store(s);
    checks.push(store_check);
    checks.push(check_disk(&s.data_dir));
    checks.push(check_memory());
    checks.push(check_ports(s));
    let newest_fix = devices.as_ref().and_then(|d| {
        d.iter()
            .filter_map(|(imei, fix, _)| fix.map(|f| (*imei, f)))
            .max_by_key(|(_, f)| *f)
    });
    let (st, msg) = classify_clock(now, newest_fix);
    checks.push(Check::new("clock", st, msg).with("server_time_ms", now));
    checks.push(match &devices {
        Some(d) => {
            let newest = d.iter().filter_map(|(_, _, r)| *r).max();
            let (st, msg) = classify_last_position(newest, now);
            let c = Check::new("last_position", st, msg);
            match newest {
                Some(ms) => c.with("age_ms", (now - ms).max(0)),
                None => c,
            }
        }
        None => Check::new(
            "last_position",
            Status::Warn,
            "not checked: the store was not opened",
        ),
    });
    checks.push(check_backup(&s.data_dir, now));
    checks
}

/// Per device: (IMEI, newest fix time, its receipt time).
type FixTimes = Vec<(u64, Option<i64>, Option<i64>)>;

fn check_store(s: &Settings) -> (Check, Option<FixTimes>) {
    let db = s.data_dir.join("db");
    if !db.is_dir() {
        return (
            Check::new(
                "store",
                Status::Fail,
                format!(
                    "no store at {} (expected {})",
                    s.data_dir.display(),
                    db.display()
                ),
            ),
            None,
        );
    }
    if let Some(pid) = store_lock_holder(&db.join("db")) {
        let cmd = cmdline(pid);
        return (
            Check::new(
                "store",
                Status::Warn,
                format!(
                    "store in use by a running server (pid {pid}{}) — stop it to verify",
                    if cmd.is_empty() {
                        String::new()
                    } else {
                        format!(": {cmd}")
                    }
                ),
            )
            .with("pid", pid),
            None,
        );
    }
    if let Err(problem) = crate::store::sledfile::check_log(&db.join("db")) {
        return (
            Check::new(
                "store",
                Status::Fail,
                format!("cannot open: {}: {problem}", s.data_dir.display()),
            ),
            None,
        );
    }
    let (store, replay) = match Store::open_read_only(
        &s.data_dir,
        OpenOptions {
            cache_bytes: s.cache_bytes,
        },
    ) {
        Ok(o) => o,
        Err(e) => {
            let text = e.to_string();
            // The lock probe above can race a server starting; sled's own lock error says so.
            if text.contains("could not acquire lock") {
                let holder = [s.tcp_listen, s.http_listen]
                    .into_iter()
                    .find_map(super::port_holder)
                    .map(|(pid, cmd)| format!(" (pid {pid}: {cmd})"))
                    .unwrap_or_default();
                return (
                    Check::new(
                        "store",
                        Status::Warn,
                        format!("store in use by a running server{holder} — stop it to verify"),
                    ),
                    None,
                );
            }
            return (
                Check::new(
                    "store",
                    Status::Fail,
                    format!("cannot open: {}: {text}", s.data_dir.display()),
                ),
                None,
            );
        }
    };
    let devices: FixTimes = store
        .devices()
        .into_iter()
        .map(|(imei, d)| {
            let p = d.last_position.as_ref();
            (imei, p.map(|p| p.time_ms), p.map(|p| p.received_ms))
        })
        .collect();
    let report = match store.verify() {
        Ok(r) => r,
        Err(e) => {
            return (
                Check::new(
                    "store",
                    Status::Fail,
                    format!("cannot verify {}: {e}", s.data_dir.display()),
                ),
                Some(devices),
            )
        }
    };
    let corrupt = replay.corrupt_records;
    (
        store_verdict(&s.data_dir, &report, corrupt, store.unsealed()),
        Some(devices),
    )
}

/// The store line from a verify report.
pub fn store_verdict(
    dir: &Path,
    report: &VerifyReport,
    corrupt_journal_records: usize,
    unsealed: usize,
) -> Check {
    let extra = |c: Check| {
        c.with("devices", report.devices)
            .with("positions", report.positions + unsealed as u64)
            .with("damaged_blocks", report.bad.len())
    };
    if report.bad.is_empty() && corrupt_journal_records == 0 {
        return extra(Check::new(
            "store",
            Status::Ok,
            format!(
                "{} opens and verifies: {} devices, {} positions, {} events",
                dir.display(),
                report.devices,
                report.positions + unsealed as u64,
                report.events
            ),
        ));
    }
    let mut parts: Vec<String> = report
        .bad
        .iter()
        .map(|b| {
            format!(
                "device {:015} {} .. {} ({})",
                b.imei,
                rfc3339(b.first_ms),
                b.last_ms.map(rfc3339).unwrap_or_else(|| "?".into()),
                b.problem
            )
        })
        .collect();
    if corrupt_journal_records > 0 {
        parts.push(format!("{corrupt_journal_records} damaged journal records"));
    }
    extra(Check::new(
        "store",
        Status::Fail,
        format!("{} is damaged: {}", dir.display(), parts.join("; ")),
    ))
}

/// The pid holding sled's lock on `db_file`, from /proc/locks.
fn store_lock_holder(db_file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(db_file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    lock_holder(&locks, inode)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `statvfs` of `dir`, or of its nearest existing parent.
fn statvfs(dir: &Path) -> Option<(PathBuf, libc::statvfs)> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `out` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut out) };
    (rc == 0).then_some((p, out))
}

fn check_disk(dir: &Path) -> Check {
    let Some((at, v)) = statvfs(dir) else {
        return Check::new(
            "disk",
            Status::Fail,
            format!("cannot read the filesystem of {}", dir.display()),
        );
    };
    let frsize = v.f_frsize;
    let (free, total) = (v.f_bavail * frsize, v.f_blocks * frsize);
    let (ifree, itotal) = (v.f_favail, v.f_files);
    let status = classify_disk(free, total).max(classify_inodes(ifree, itotal));
    let inodes = if itotal == 0 {
        "inodes not limited".to_string()
    } else {
        format!(
            "{ifree} of {itotal} inodes free ({:.1} %)",
            pct(ifree, itotal)
        )
    };
    Check::new(
        "disk",
        status,
        format!(
            "{} free of {} ({:.1} %) and {inodes} at {} (fail below 512 MiB or 5 %, warn below 20 %)",
            human_bytes(free),
            human_bytes(total),
            pct(free, total),
            at.display()
        ),
    )
    .with("free_bytes", free)
    .with("total_bytes", total)
    .with("free_inodes", ifree)
    .with("total_inodes", itotal)
}

fn check_memory() -> Check {
    let parsed = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t));
    let Some((total, avail, swap)) = parsed else {
        return Check::new("memory", Status::Warn, "cannot read /proc/meminfo");
    };
    let status = classify_memory(avail, total, swap);
    let swap_text = if swap == 0 {
        "no swap".to_string()
    } else {
        format!("{} swap", human_bytes(swap))
    };
    Check::new(
        "memory",
        status,
        format!(
            "{} available of {} ({:.1} %), {swap_text} (fail below 5 %, warn below 20 % or without swap)",
            human_bytes(avail),
            human_bytes(total),
            pct(avail, total)
        ),
    )
    .with("available_bytes", avail)
    .with("total_bytes", total)
    .with("swap_bytes", swap)
}

fn check_ports(s: &Settings) -> Check {
    let mut status = Status::Ok;
    let mut parts = Vec::new();
    for (what, addr) in [("GT06", s.tcp_listen), ("HTTP", s.http_listen)] {
        if addr.port() == 0 {
            parts.push(format!("{what} {addr} picks a free port"));
            continue;
        }
        let (st, msg) = classify_port(
            what,
            addr,
            super::port_holder(addr),
            super::port_listening(addr.port()),
        );
        status = status.max(st);
        parts.push(msg);
    }
    Check::new("ports", status, parts.join("; "))
}

fn check_backup(data_dir: &Path, now: i64) -> Check {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut consider = |p: PathBuf| {
        if let Ok(t) = std::fs::metadata(&p).and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, p));
            }
        }
    };
    let backups = data_dir
        .parent()
        .map(|p| p.join("backups"))
        .unwrap_or_else(|| data_dir.join("../backups"));
    consider(data_dir.join("backup.last"));
    if let Ok(entries) = std::fs::read_dir(&backups) {
        for e in entries.flatten() {
            consider(e.path());
        }
    }
    let Some((t, p)) = newest else {
        return Check::new(
            "backup",
            Status::Warn,
            format!(
                "no backup found (neither {} nor {})",
                data_dir.join("backup.last").display(),
                backups.display()
            ),
        );
    };
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let age = Duration::from_millis((now - ms).max(0) as u64);
    let status = if age > BACKUP_STALE {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new(
        "backup",
        status,
        format!("newest backup {} is {} old", p.display(), human_age(age)),
    )
    .with("age_ms", (now - ms).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    #[test]
    fn disk_fails_below_512_mib_or_5_percent_and_warns_below_20() {
        assert_eq!(classify_disk(100 * GIB, 200 * GIB), Status::Ok);
        assert_eq!(classify_disk(30 * GIB, 200 * GIB), Status::Warn);
        assert_eq!(classify_disk(9 * GIB, 200 * GIB), Status::Fail);
        // 8 GB root volume at 95 %: 400 MiB free is under the absolute floor.
        assert_eq!(classify_disk(400 * MIB, 8 * GIB), Status::Fail);
        assert_eq!(classify_disk(511 * MIB, 1024 * MIB), Status::Fail);
    }

    #[test]
    fn inodes_unlimited_filesystems_are_ok() {
        assert_eq!(classify_inodes(0, 0), Status::Ok);
        assert_eq!(classify_inodes(4, 100), Status::Fail);
        assert_eq!(classify_inodes(10, 100), Status::Warn);
        assert_eq!(classify_inodes(50, 100), Status::Ok);
    }

    #[test]
    fn memory_warns_without_swap_and_fails_below_5_percent() {
        assert_eq!(classify_memory(50, 100, 10), Status::Ok);
        assert_eq!(classify_memory(50, 100, 0), Status::Warn);
        assert_eq!(classify_memory(10, 100, 10), Status::Warn);
        assert_eq!(classify_memory(4, 100, 10), Status::Fail);
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24684568 kB\nMemFree:  1 kB\nMemAvailable:   23821036 kB\nSwapTotal:             0 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24684568 * 1024, 23821036 * 1024, 0))
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn lock_holder_matches_the_inode_and_skips_waiters() {
        let locks = "1: FLOCK  ADVISORY  WRITE 29927 fe:00:10059916 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 400 fe:00:5734759 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 27465 fe:00:5734759 0 EOF\n";
        assert_eq!(lock_holder(locks, 5734759), Some(27465));
        assert_eq!(lock_holder(locks, 10059916), Some(29927));
        assert_eq!(lock_holder(locks, 1), None);
    }

    #[test]
    fn ports_held_by_gt06_are_ok_and_by_others_warn() {
        let a: SocketAddr = "0.0.0.0:5023".parse().unwrap();
        assert_eq!(classify_port("GT06", a, None, false).0, Status::Ok);
        assert_eq!(classify_port("GT06", a, None, true).0, Status::Warn);
        let (st, msg) = classify_port(
            "GT06",
            a,
            Some((
                812,
                "/usr/bin/gt06 serve --config /etc/gt06/gt06.toml".into(),
            )),
            true,
        );
        assert_eq!(st, Status::Ok);
        assert!(msg.contains("pid 812"), "{msg}");
        let (st, msg) = classify_port("GT06", a, Some((9, "node server.js".into())), true);
        assert_eq!(st, Status::Warn);
        assert_eq!(
            msg,
            "GT06 0.0.0.0:5023 is held by pid 9 (node server.js), which is not gt06"
        );
        assert_eq!(
            classify_port("GT06", a, Some((1, "/sbin/init".into())), true).0,
            Status::Ok
        );
    }

    #[test]
    fn clock_before_2024_or_fixes_a_day_ahead_fail() {
        let now = 1_800_000_000_000;
        assert_eq!(classify_clock(1_600_000_000_000, None).0, Status::Fail);
        assert_eq!(classify_clock(now, None).0, Status::Ok);
        assert_eq!(
            classify_clock(now, Some((1, now + 3_600_000))).0,
            Status::Ok
        );
        let (st, msg) = classify_clock(now, Some((864717003283581, now + 2 * 86_400_000)));
        assert_eq!(st, Status::Fail);
        assert!(msg.contains("864717003283581"), "{msg}");
    }

    #[test]
    fn last_position_older_than_10_min_warns() {
        let now = 1_800_000_000_000;
        assert_eq!(
            classify_last_position(None, now),
            (Status::Ok, "no devices yet".to_string())
        );
        let (st, msg) = classify_last_position(Some(now - 30_000), now);
        assert_eq!(st, Status::Ok);
        assert!(
            msg.starts_with("newest position received 30 s ago"),
            "{msg}"
        );
        assert_eq!(
            classify_last_position(Some(now - 11 * 60_000), now).0,
            Status::Warn
        );
    }

    #[test]
    fn lines_and_json_say_the_same() {
        let checks = vec![
            Check::new("disk", Status::Warn, "little space").with("free_bytes", 5u64),
            Check::new("store", Status::Ok, "fine"),
        ];
        assert_eq!(format_line(&checks[0]), "warn  disk: little space");
        assert_eq!(format_line(&checks[1]), "ok    store: fine");
        let v = to_json(&checks);
        assert_eq!(v["ok"], true);
        assert_eq!(v["checks"][0]["status"], "warn");
        assert_eq!(v["checks"][0]["free_bytes"], 5);
        let failed = [Check::new("store", Status::Fail, "gone")];
        assert_eq!(to_json(&failed)["ok"], false);
    }

    #[test]
    fn ages_and_sizes_read_naturally() {
        assert_eq!(human_age(Duration::from_secs(42)), "42 s");
        assert_eq!(human_age(Duration::from_secs(7 * 60)), "7 min");
        assert_eq!(human_age(Duration::from_secs(3 * 3600 + 300)), "3 h 5 min");
        assert_eq!(
            human_age(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2 d 4 h"
        );
        assert_eq!(human_bytes(300 * MIB), "300 MiB");
        assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
    }

    #[test]
    fn gt06_is_recognised_by_its_program_name() {
        assert!(is_gt06("/usr/bin/gt06 serve"));
        assert!(is_gt06("gt06"));
        assert!(!is_gt06("/usr/bin/gt06-helper"));
        assert!(!is_gt06(""));
    }
}
