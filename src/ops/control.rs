//! The control socket `DATA_DIR/control.sock`: how `gt06 backup` asks a running server for
//! a consistent dump of its store.
//!
//! Only the service's own user and root may use it: the socket file is mode 0600 and every
//! connection's peer credentials are checked. It is not part of the HTTP API, which has no
//! authentication.
//!
//! Protocol: the client sends one line of JSON, `{"cmd":"backup"}`; the server answers with
//! a dump (`store::backup`) and closes. The server never writes the backup's target (the
//! client does, so that its errors are the client's to report), and the freeze it takes
//! ends when the dump is sent, when the client stops reading (write timeout), after
//! [`MAX_FREEZE`], or at shutdown, whichever comes first.

use crate::store::backup::write_refusal;
use crate::store::Store;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SOCKET_NAME: &str = "control.sock";
/// How long a backup waits for a checkpoint under way to end before giving up.
pub const CHECKPOINT_WAIT: Duration = Duration::from_secs(120);
/// Longest freeze: past this the export stops and sealing resumes.
pub const MAX_FREEZE: Duration = Duration::from_secs(3600);
/// A client that takes no bytes for this long is gone; the freeze ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the control socket (replacing a stale one: the caller holds the store, so no
/// other server uses this data dir) with mode 0600.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts control connections until `cancel`; exports run on `tasks` (blocking pool).
pub async fn serve(
    listener: UnixListener,
    store: Store,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (store, cancel2, tasks2) = (store.clone(), cancel.clone(), tasks.clone());
        tasks.spawn(async move { handle(stream, store, cancel2, tasks2).await });
    }
}

async fn handle(stream: UnixStream, store: Store, cancel: CancellationToken, tasks: TaskTracker) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(c) if c.uid() == me || c.uid() == 0 => {}
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                "control socket: refused a connection from another user"
            );
            if let Ok(s) = stream.into_std() {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                let mut w = BufWriter::new(s);
                let _ = write_refusal(
                    &mut w,
                    &format!("only uid {me} (the server's user) and root may ask for a backup"),
                );
            }
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket: no peer credentials");
            return;
        }
    }
    let mut line = String::new();
    let mut r = BufReader::new(stream);
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        (&mut r).take(1024).read_line(&mut line),
    )
    .await;
    let Ok(std_stream) = r.into_inner().into_std() else {
        return;
    };
    let _ = std_stream.set_nonblocking(false);
    let _ = std_stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let cmd = match read {
        Ok(Ok(_)) => serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["cmd"].as_str().map(str::to_owned)),
        _ => None,
    };
    tasks.spawn_blocking(move || {
        // Small: a client that stops reading stops the export (and its freeze) soon.
        let mut out = BufWriter::with_capacity(64 * 1024, std_stream);
        if cmd.as_deref() != Some("backup") {
            let _ = write_refusal(
                &mut out,
                "unknown control request (expected {\"cmd\":\"backup\"})",
            );
            return;
        }
        export(&store, &mut out, &cancel);
    });
}

fn export(
    store: &Store,
    out: &mut BufWriter<std::os::unix::net::UnixStream>,
    cancel: &CancellationToken,
) {
    let started = Instant::now();
    let frozen = match store.freeze_for_backup(CHECKPOINT_WAIT) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "backup refused");
            let _ = write_refusal(out, &e.to_string());
            return;
        }
    };
    tracing::info!(
        journal_segments = frozen.journal_segments(),
        "backup: sealing paused, sending a dump"
    );
    let result = frozen.export(out, &mut || {
        if cancel.is_cancelled() {
            Err("the server is shutting down".into())
        } else if started.elapsed() > MAX_FREEZE {
            Err(format!(
                "the backup took longer than {} s",
                MAX_FREEZE.as_secs()
            ))
        } else {
            Ok(())
        }
    });
    drop(frozen);
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((journal_records, entries)) => tracing::info!(
            journal_records,
            entries,
            ms,
            "backup: dump sent, sealing resumed"
        ),
        Err(e) => tracing::warn!(error = %e, ms, "backup: dump not completed, sealing resumed"),
    }
}
