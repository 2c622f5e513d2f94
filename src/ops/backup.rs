//! `gt06 backup` and `gt06 restore`, and `gt06 verify` of a backup.
//!
//! A backup is a directory holding `store.dump` (a consistent dump of the store, see
//! `store::backup`) and `manifest.json` (what it holds per device, and the size and CRC-32
//! of the dump), written last: a directory without a manifest is not a backup. Online, the
//! dump comes from the running server over its control socket (`ops::control`); with no
//! server, this process opens the store itself. Either way this process alone writes the
//! target, so a full or read-only target is reported here and never touches the store.
//!
//! Exit codes: 0 done; 1 failed (I/O, damage, server unreachable or holding the target);
//! 2 misuse (bad arguments, a non-empty target without `--force`).

use crate::cli::{BackupArgs, RestoreArgs};
use crate::config::{Config, Overrides};
use crate::http::json::{parse_rfc3339, rfc3339};
use crate::store::backup::{self, DumpError, Summary};
use crate::store::{OpenOptions, Store};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Misuse of the command line: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const DUMP_FILE: &str = "store.dump";
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: &str = "gt06-backup";
const MANIFEST_VERSION: u32 = 1;
/// Where a restore builds the store before it replaces the old one.
const STAGING: &str = ".restore-partial";

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub gt06_version: String,
    pub created: String,
    pub source: String,
    /// "online" (from a running server) or "offline" (the store opened by `gt06 backup`).
    pub mode: String,
    pub totals: Totals,
    pub devices: Vec<DeviceEntry>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Totals {
    pub devices: u64,
    pub positions: u64,
    pub events: u64,
    pub first_fix: Option<String>,
    pub last_fix: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub imei: String,
    pub positions: u64,
    pub first_fix: Option<String>,
    pub last_fix: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file, 8 lowercase hex digits.
    pub crc32: String,
}

impl Manifest {
    fn summary(&self) -> anyhow::Result<Summary> {
        let t = |s: &Option<String>| -> anyhow::Result<Option<i64>> {
            s.as_deref()
                .map(|v| {
                    parse_rfc3339(v).with_context(|| format!("bad time {v:?} in the manifest"))
                })
                .transpose()
        };
        let mut out = Summary {
            events: self.totals.events,
            ..Summary::default()
        };
        for d in &self.devices {
            let imei: u64 = d
                .imei
                .parse()
                .with_context(|| format!("bad IMEI {:?} in the manifest", d.imei))?;
            out.devices.insert(
                imei,
                backup::DeviceSummary {
                    positions: d.positions,
                    first_ms: t(&d.first_fix)?,
                    last_ms: t(&d.last_fix)?,
                },
            );
        }
        Ok(out)
    }
}

fn data_dir_of(config: Option<&Path>, data_dir: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let s = Config::load(config)?
        .with_overrides(&Overrides {
            data_dir: data_dir.cloned(),
            ..Default::default()
        })
        .validate()?;
    Ok(s.data_dir)
}

fn is_empty_dir(p: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(p)?.next().is_none())
}

/// Reads through to `out` (the dump file), keeping its size and CRC-32; a failed write is
/// reported as such, naming the file.
struct Tee<R, W> {
    inner: R,
    out: W,
    path: PathBuf,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot write the backup to {}: {e}", self.path.display()),
            ));
        }
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Where the dump comes from.
enum Source {
    Server(std::os::unix::net::UnixStream),
    /// This process opened the store; an exporting thread writes into the pipe.
    Local(
        std::os::unix::net::UnixStream,
        std::thread::JoinHandle<Result<(), DumpError>>,
    ),
}

fn open_source(data_dir: &Path) -> anyhow::Result<Source> {
    let sock = super::control::socket_path(data_dir);
    match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(mut s) => {
            // The server may first wait (up to 2 min) for a checkpoint under way.
            s.set_read_timeout(Some(
                super::control::CHECKPOINT_WAIT + Duration::from_secs(60),
            ))?;
            s.write_all(b"{\"cmd\":\"backup\"}\n")
                .with_context(|| format!("cannot talk to the server at {}", sock.display()))?;
            return Ok(Source::Server(s));
        }
        Err(e) => {
            if backup::in_use(data_dir) {
                bail!(
                    "a running server holds {} but its control socket {} does not answer ({e}); \
                     run gt06 backup as the service user or root, or stop the server for an offline backup",
                    data_dir.display(),
                    sock.display()
                );
            }
        }
    }
    if !data_dir.join("db").is_dir() {
        bail!(
            "no store at {} (expected {}/db)",
            data_dir.display(),
            data_dir.display()
        );
    }
    let opened = Store::open(data_dir, OpenOptions::default())
        .with_context(|| format!("cannot open the store at {}", data_dir.display()))?;
    let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
    let join = std::thread::spawn(move || {
        let frozen = opened.store.freeze_for_backup(Duration::from_secs(1))?;
        let mut out = BufWriter::with_capacity(1 << 20, tx);
        frozen.export(&mut out, &mut || Ok(())).map(|_| ())
    });
    Ok(Source::Local(rx, join))
}

pub fn backup_main(args: &BackupArgs) -> anyhow::Result<()> {
    let data_dir = data_dir_of(args.config.as_deref(), args.data_dir.as_ref())?;
    let to = &args.to;
    let created_dir = match std::fs::metadata(to) {
        Ok(m) if !m.is_dir() => {
            return Err(
                UsageError(format!("backup target {} is not a directory", to.display())).into(),
            )
        }
        Ok(_) => {
            if !is_empty_dir(to).with_context(|| format!("cannot read {}", to.display()))? {
                return Err(UsageError(format!(
                    "backup target {} is not empty; give a new or empty directory",
                    to.display()
                ))
                .into());
            }
            false
        }
        Err(_) => {
            std::fs::create_dir_all(to)
                .with_context(|| format!("cannot create the backup directory {}", to.display()))?;
            true
        }
    };
    let result = write_backup(&data_dir, to);
    if result.is_err() {
        // A failed backup must not look like one: remove what was written.
        let _ = std::fs::remove_file(to.join(DUMP_FILE));
        let _ = std::fs::remove_file(to.join(format!("{MANIFEST_FILE}.tmp")));
        let _ = std::fs::remove_file(to.join(MANIFEST_FILE));
        if created_dir {
            let _ = std::fs::remove_dir(to);
        }
    }
    let m = result?;
    println!(
        "backup of {} ({}) in {}: {} devices, {} positions ({} .. {}), {} events, {} bytes",
        data_dir.display(),
        m.mode,
        to.display(),
        m.totals.devices,
        m.totals.positions,
        m.totals.first_fix.as_deref().unwrap_or("-"),
        m.totals.last_fix.as_deref().unwrap_or("-"),
        m.totals.events,
        m.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    // For `gt06 doctor`'s backup age; best effort, the backup is complete without it.
    let _ = std::fs::write(
        data_dir.join("backup.last"),
        format!("{}\n{}\n", m.created, to.display()),
    );
    Ok(())
}

fn write_backup(data_dir: &Path, to: &Path) -> anyhow::Result<Manifest> {
    let dump_path = to.join(DUMP_FILE);
    let file = File::create(&dump_path)
        .with_context(|| format!("cannot write the backup to {}", dump_path.display()))?;
    let source = open_source(data_dir)?;
    let (mode, stream) = match &source {
        Source::Server(s) => ("online", s.try_clone()?),
        Source::Local(s, _) => ("offline", s.try_clone()?),
    };
    let mut tee = Tee {
        inner: BufReader::with_capacity(1 << 20, stream),
        out: BufWriter::with_capacity(1 << 20, file),
        path: dump_path.clone(),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let checked = backup::check(&mut tee);
    // Closing our end makes a server (or the local exporter) stop at once on a failure.
    source_close(source, checked.is_ok())?;
    let summary = checked.map_err(|e| match e {
        DumpError::Refused(why) => anyhow::anyhow!("the server refused the backup: {why}"),
        DumpError::Truncated(_) => anyhow::anyhow!("{e} (did the server stop?)"),
        e => anyhow::Error::new(e),
    })?;
    let Tee {
        out, crc, bytes, ..
    } = tee;
    let file = out.into_inner().map_err(|e| {
        anyhow::anyhow!(
            "cannot write the backup to {}: {}",
            dump_path.display(),
            e.error()
        )
    })?;
    file.sync_all()
        .with_context(|| format!("cannot write the backup to {}", dump_path.display()))?;
    let manifest = manifest(data_dir, mode, &summary, bytes, crc.finalize());
    let tmp = to.join(format!("{MANIFEST_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(&manifest)?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, to.join(MANIFEST_FILE))?;
        File::open(to)?.sync_all()
    };
    write().with_context(|| format!("cannot write the backup manifest in {}", to.display()))?;
    Ok(manifest)
}

/// Ends the source; for a local export, its own error (if any) explains a failure.
fn source_close(source: Source, ok: bool) -> anyhow::Result<()> {
    match source {
        Source::Server(s) => {
            let _ = s.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        Source::Local(s, join) => {
            let _ = s.shutdown(std::net::Shutdown::Both);
            match join.join() {
                Ok(Err(e)) if ok => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}

fn manifest(data_dir: &Path, mode: &str, s: &Summary, bytes: u64, crc: u32) -> Manifest {
    let now = crate::ingest::session::now_ms();
    let source = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        gt06_version: env!("CARGO_PKG_VERSION").into(),
        created: rfc3339(now),
        source: source.display().to_string(),
        mode: mode.into(),
        totals: Totals {
            devices: s.devices.len() as u64,
            positions: s.positions(),
            events: s.events,
            first_fix: s.first_ms().map(rfc3339),
            last_fix: s.last_ms().map(rfc3339),
        },
        devices: s
            .devices
            .iter()
            .map(|(imei, d)| DeviceEntry {
                imei: format!("{imei:015}"),
                positions: d.positions,
                first_fix: d.first_ms.map(rfc3339),
                last_fix: d.last_ms.map(rfc3339),
            })
            .collect(),
        files: vec![FileEntry {
            path: DUMP_FILE.into(),
            bytes,
            crc32: format!("{crc:08x}"),
        }],
    }
}

fn read_manifest(from: &Path) -> anyhow::Result<Manifest> {
    let path = from.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a complete gt06 backup: cannot read {}: {e}",
            from.display(),
            path.display()
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a gt06 backup manifest", path.display()))?;
    if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION {
        bail!(
            "{} has format {:?} version {}; this build reads {MANIFEST_FORMAT:?} version {MANIFEST_VERSION}",
            path.display(),
            m.format,
            m.version
        );
    }
    Ok(m)
}

/// Checks every file of the backup against its size and CRC-32 in the manifest.
fn check_files(from: &Path, m: &Manifest) -> anyhow::Result<()> {
    for f in &m.files {
        if f.path.contains('/') || f.path.starts_with('.') {
            bail!("manifest names an unexpected file {:?}", f.path);
        }
        let path = from.join(&f.path);
        let mut file =
            File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            bytes += n as u64;
        }
        let crc = format!("{:08x}", h.finalize());
        if bytes != f.bytes || crc != f.crc32 {
            bail!(
                "backup file {} is damaged: {bytes} bytes with CRC-32 {crc}, the manifest says {} bytes with CRC-32 {}",
                path.display(),
                f.bytes,
                f.crc32
            );
        }
    }
    Ok(())
}

/// `gt06 verify` of a backup directory: checksums, then every record of the dump, then
/// agreement with the manifest. Does not build a store.
pub fn verify_backup(from: &Path) -> anyhow::Result<bool> {
    let m = read_manifest(from)?;
    check_files(from, &m)?;
    let path = from.join(DUMP_FILE);
    let file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let got = match backup::check(BufReader::with_capacity(1 << 20, file)) {
        Ok(s) => s,
        Err(e) => {
            println!("backup {}: {e}", from.display());
            return Ok(false);
        }
    };
    println!(
        "backup {} taken {} of {}: {} devices, {} positions, {} events",
        from.display(),
        m.created,
        m.source,
        got.devices.len(),
        got.positions(),
        got.events
    );
    if let Some(diff) = got.difference(&m.summary()?) {
        println!("backup disagrees with its manifest: {diff}");
        return Ok(false);
    }
    println!("ok");
    Ok(true)
}

pub fn restore_main(args: &RestoreArgs) -> anyhow::Result<()> {
    if args.data_dir.is_none() && args.config.is_none() {
        return Err(UsageError(
            "restore needs --data-dir DIR (or --config FILE naming data_dir)".into(),
        )
        .into());
    }
    let data_dir = data_dir_of(args.config.as_deref(), args.data_dir.as_ref())?;
    let from = &args.from;
    let m = read_manifest(from)?;
    let exists = data_dir.exists();
    if exists {
        if !data_dir.is_dir() {
            return Err(UsageError(format!("{} is not a directory", data_dir.display())).into());
        }
        // What an interrupted restore left behind does not count.
        let empty = std::fs::read_dir(&data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?
            .flatten()
            .all(|e| e.file_name() == STAGING);
        if !empty && !args.force {
            return Err(UsageError(format!(
                "{} is not empty; restore replaces a store only with --force",
                data_dir.display()
            ))
            .into());
        }
        let holds_store = data_dir.join("db").is_dir() || data_dir.join("journal").is_dir();
        if !empty && !holds_store {
            return Err(UsageError(format!(
                "{} is not empty and holds no gt06 store; refusing to replace it",
                data_dir.display()
            ))
            .into());
        }
    }
    if backup::in_use(&data_dir)
        || std::os::unix::net::UnixStream::connect(super::control::socket_path(&data_dir)).is_ok()
    {
        bail!(
            "a running server holds {}; stop it first (systemctl stop gt06.socket gt06-http.socket gt06.service)",
            data_dir.display()
        );
    }
    check_files(from, &m)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let staging = data_dir.join(STAGING);
    let _ = std::fs::remove_dir_all(&staging);
    let result = restore_into(from, &m, &data_dir, &staging);
    let _ = std::fs::remove_dir_all(&staging);
    let (got, blocks) = result?;
    println!(
        "restored {} (taken {}) into {}: {} devices, {} positions, {} events in {} blocks; verify ok",
        from.display(),
        m.created,
        data_dir.display(),
        got.devices.len(),
        got.positions(),
        got.events,
        blocks
    );
    Ok(())
}

fn restore_into(
    from: &Path,
    m: &Manifest,
    data_dir: &Path,
    staging: &Path,
) -> anyhow::Result<(Summary, u64)> {
    let path = from.join(DUMP_FILE);
    let file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (got, report) = backup::import(BufReader::with_capacity(1 << 20, file), staging)
        .with_context(|| format!("cannot restore {}", from.display()))?;
    if let Some(diff) = got.difference(&m.summary()?) {
        bail!("the restored store disagrees with the backup's manifest: {diff}");
    }
    // Built and verified aside; now it replaces the old store.
    for name in ["db", "journal"] {
        let dst = data_dir.join(name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst)
                .with_context(|| format!("cannot remove {}", dst.display()))?;
        }
        std::fs::rename(staging.join(name), &dst)
            .with_context(|| format!("cannot move the restored store into {}", dst.display()))?;
    }
    let _ = std::fs::remove_file(data_dir.join("ports.json"));
    File::open(data_dir)?.sync_all()?;
    give_to_owner_of(data_dir);
    Ok((got, report.blocks))
}

/// Run as root for a service user: the restored files get the data dir's owner, so the
/// service can open them.
fn give_to_owner_of(data_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || meta.uid() == 0 {
        return;
    }
    fn walk(p: &Path, uid: u32, gid: u32) {
        let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    for name in ["db", "journal"] {
        walk(&data_dir.join(name), meta.uid(), meta.gid());
    }
}
