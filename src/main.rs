//! Wiring: parse the command line, then start (and stop, in order) the rooms.
//!
//! This is the only file that spawns the long-lived tasks and threads; each has an owner
//! here that waits for it at shutdown.

use anyhow::Context;
use clap::Parser;
use gt06::cli::{Cli, Command, ServeArgs};
use gt06::config::{Config, ConfigError, Overrides, Settings};
use gt06::ingest::{self, IngestCtx, Online};
use gt06::ops::systemd::{Activated, Notifier};
use gt06::protocol::SplitOptions;
use gt06::store::{self, Store};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn main() -> ExitCode {
    gt06::store::memory::limit_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_main(args),
        Command::Simulate(args) => gt06::simulate::main(args),
        Command::Decode(args) => return gt06::ops::decode::main(args),
        Command::BenchStore(args) => gt06::ops::bench_store::main(args),
        Command::Doctor(args) => match gt06::ops::doctor::main(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Backup(args) => gt06::ops::backup::backup_main(&args),
        Command::Restore(args) => gt06::ops::backup::restore_main(&args),
        Command::Verify(args) => match gt06::ops::verify::main(&args.data_dir) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gt06: {e:#}");
            // Bad configuration is the operator's to fix (2); everything else is a
            // runtime failure (1).
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<gt06::ops::backup::UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn serve_main(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        tcp_listen: args.tcp_listen.clone(),
        http_listen: args.http_listen.clone(),
    };
    let settings = Config::load(args.config.as_deref())?
        .with_overrides(&overrides)
        .validate()?;
    init_logging(&settings.log_level);
    // Before any thread starts: this reads and unsets the LISTEN_* variables.
    let activated = gt06::ops::systemd::take_listen_fds()?;
    let notifier = gt06::ops::systemd::Notifier::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gt06-rt")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(settings, activated, notifier))
}

fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    // journald stamps every line itself; a second timestamp is noise.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().with_ansi(false).init();
    } else {
        fmt.init();
    }
}

/// Binds with SO_REUSEADDR so a restart never trips over TIME_WAIT, and turns "address
/// in use" into one line naming the address and, where /proc tells, who holds it.
fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot create a socket for {what} on {addr}"))?;
    sock.set_reuseaddr(true)
        .with_context(|| format!("cannot set SO_REUSEADDR for {addr}"))?;
    if let Err(e) = sock.bind(addr) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            let holder = gt06::ops::port_holder(addr)
                .map(|(pid, cmd)| format!(" (held by pid {pid}: {cmd})"))
                .unwrap_or_default();
            anyhow::bail!("cannot listen on {addr} for {what}: address already in use{holder}");
        }
        return Err(e).with_context(|| format!("cannot listen on {addr} for {what}"));
    }
    sock.listen(1024)
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// A listener handed over by the service manager, or a fresh one bound to `addr`.
fn listener(
    passed: Option<std::net::TcpListener>,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<TcpListener> {
    match passed {
        Some(l) => TcpListener::from_std(l)
            .with_context(|| format!("cannot use the passed socket for {what}")),
        None => bind(addr, what),
    }
}

async fn serve(s: Settings, activated: Activated, notifier: Notifier) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create data dir {}", s.data_dir.display()))?;
    let stop_signal = shutdown_signal();
    if let Some(summary) = &activated.summary {
        tracing::info!("{summary}");
    }
    let nofile = ingest::limits::raise_nofile();
    let fd_soft = match nofile {
        Ok(l) => {
            tracing::info!(
                soft = l.soft,
                hard = l.hard,
                was = l.before,
                "file descriptor limit"
            );
            l.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file descriptor limit; assuming 1024");
            1024
        }
    };
    let limits = ingest::limits::ConnLimits::new(
        ingest::limits::connection_cap(s.max_connections, fd_soft),
        s.max_connections_per_ip,
    );
    if s.max_connections > limits.max_total() {
        tracing::warn!(
            configured = s.max_connections,
            cap = limits.max_total(),
            "tcp.max_connections is above what the file descriptor limit allows; lowered"
        );
    }
    tracing::info!(
        max_connections = limits.max_total(),
        max_connections_per_ip = limits.max_per_ip(),
        "tracker connection caps"
    );
    let tcp = listener(activated.gt06, s.tcp_listen, "GT06 trackers")?;
    let http = listener(activated.http, s.http_listen, "HTTP")?;
    let opened = Store::open(
        &s.data_dir,
        store::OpenOptions {
            cache_bytes: s.cache_bytes,
        },
    )?;
    let replay = opened.replay.clone();
    if replay.torn_tail_bytes > 0 || replay.corrupt_records > 0 {
        tracing::warn!(
            torn_tail_bytes = replay.torn_tail_bytes,
            corrupt_records = replay.corrupt_records,
            "journal had an unfinished or damaged end (expected after a crash)"
        );
    }
    let store = opened.store.clone();
    // The disk guard measures before the writer takes its first request, then every
    // second; `gt06_last_position_age_seconds` counts from the newest stored position.
    let guard = store.disk().clone();
    guard.set_min_free(s.min_free);
    guard.refresh();
    guard.measure_store();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    gt06::ops::metrics::METRICS.set_last_position(store.newest_received_ms().unwrap_or(now));
    let guard_cancel = CancellationToken::new();
    let guard_task = tokio::spawn(guard.watch(guard_cancel.clone()));
    tracing::info!(
        positions = store.count_positions(),
        replayed_batches = replay.batches,
        migrated = opened.migrated,
        "store open"
    );
    let live = gt06::live::Hub::new();
    let (writer, writer_thread) = store::writer::spawn(
        opened,
        store::writer::WriterOptions {
            max_batch: s.max_batch,
            min_commit_interval: s.min_commit_interval,
            checkpoint_positions: s.checkpoint_positions,
            checkpoint_interval: s.checkpoint_interval,
            retention: s.retention,
            live: Some(live.clone()),
            ..Default::default()
        },
    )
    .context("cannot start the store writer")?;
    // Online backups: `gt06 backup` asks over DATA_DIR/control.sock. Without it the
    // server still runs; only an offline backup is possible.
    let control_cancel = CancellationToken::new();
    let control_tasks = TaskTracker::new();
    let control_task = match gt06::ops::control::bind(&s.data_dir) {
        Ok(l) => Some(tokio::spawn(gt06::ops::control::serve(
            l,
            store.clone(),
            control_cancel.clone(),
            control_tasks.clone(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: online backups are not possible");
            None
        }
    };
    let tcp_addr = tcp.local_addr()?;
    let http_addr = http.local_addr()?;
    write_ports(&s.data_dir, tcp_addr, http_addr)?;
    tracing::info!(tcp = %tcp_addr, http = %http_addr, data_dir = %s.data_dir.display(), "gt06 listening");
    let writer_thread = Arc::new(std::sync::Mutex::new(Some(writer_thread)));
    notify(
        &notifier,
        &format!("READY=1\nSTATUS=listening on {tcp_addr} (GT06) and {http_addr} (HTTP)"),
    );
    let watchdog_cancel = CancellationToken::new();
    let watchdog_task = notifier.watchdog.map(|every| {
        tokio::spawn(watchdog(
            notifier.clone(),
            every,
            writer_thread.clone(),
            store.clone(),
            watchdog_cancel.clone(),
        ))
    });

    let cancel = CancellationToken::new();
    let online = Online::default();
    let closer = ingest::closer::Closer::spawn();
    let ingest_ctx = Arc::new(IngestCtx {
        writer,
        online: online.clone(),
        idle_timeout: s.idle_timeout,
        write_timeout: s.write_timeout,
        login_timeout: s.login_timeout,
        frame_timeout: s.frame_timeout,
        limits,
        closer: closer.clone(),
        split: SplitOptions {
            max_frame: s.max_frame_bytes,
            lenient_crc: s.lenient_crc,
        },
        devices: s.devices.clone(),
    });
    let sessions = TaskTracker::new();
    let http_conns = TaskTracker::new();
    let ingest_task = tokio::spawn(ingest::serve(
        tcp,
        ingest_ctx,
        cancel.clone(),
        sessions.clone(),
    ));
    let app = Arc::new(gt06::http::App {
        store: store.clone(),
        online,
        live,
        live_stall_timeout: s.live_stall_timeout,
    });
    let http_cancel = CancellationToken::new();
    let http_task = tokio::spawn(gt06::http::serve(
        http,
        app,
        http_cancel.clone(),
        http_conns.clone(),
    ));

    stop_signal.await;
    notify(&notifier, "STOPPING=1");
    tracing::info!("shutting down: no new connections");
    cancel.cancel();
    // A backup under way stops (its client sees an incomplete dump), so the writer can
    // seal at its final checkpoint.
    control_cancel.cancel();
    if let Some(t) = control_task {
        let _ = t.await;
    }
    control_tasks.close();
    if tokio::time::timeout(Duration::from_secs(40), control_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("a backup export did not stop within 40 s");
    }
    let _ = std::fs::remove_file(gt06::ops::control::socket_path(&s.data_dir));
    let _ = ingest_task.await;
    sessions.close();
    if tokio::time::timeout(Duration::from_secs(10), sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tracker sessions did not end within 10 s");
    }
    // Ended connections still waiting for the idle-priority closer get their FIN now,
    // not whenever the process exits.
    closer.close_now();
    // The last session held the last writer handle: the writer now drains and stops.
    tracing::info!("sessions ended; draining the store writer");
    watchdog_cancel.cancel();
    if let Some(t) = watchdog_task {
        let _ = t.await;
    }
    let handle = writer_thread.lock().ok().and_then(|mut h| h.take());
    let joined = tokio::task::spawn_blocking(move || handle.map(|h| h.join())).await;
    if !matches!(joined, Ok(Some(Ok(())))) {
        tracing::error!("store writer ended abnormally");
    }
    guard_cancel.cancel();
    let _ = guard_task.await;
    http_cancel.cancel();
    let _ = http_task.await;
    http_conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), http_conns.wait()).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Tells the service manager `state`; a failure is logged, never fatal (the service
/// works without a manager).
fn notify(notifier: &Notifier, state: &str) {
    if let Err(e) = notifier.notify(state) {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}

/// Sends `WATCHDOG=1` every `every` while the store writer thread is alive. Once it has
/// ended, the pings stop, so systemd's watchdog restarts a server that can no longer store.
async fn watchdog(
    notifier: Notifier,
    every: Duration,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    store: gt06::store::Store,
    cancel: CancellationToken,
) {
    tracing::info!(every_ms = every.as_millis() as u64, "watchdog pings on");
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let alive = writer
            .lock()
            .map(|h| h.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        if !alive {
            tracing::error!("store writer has stopped: no more watchdog pings");
            return;
        }
        // Stuck checkpoints with room on the disk mean sled refuses writes until it is
        // reopened: let systemd restart us (the journal replays). While the disk is still
        // low a restart would not help, so keep running and keep answering.
        if let (Some(n), None) = (store.checkpoints_failing(), store.disk().problem()) {
            tracing::error!(failed_in_a_row = n, "checkpoints keep failing with free disk space: no more watchdog pings, so systemd restarts gt06");
            return;
        }
        notify(&notifier, "WATCHDOG=1");
    }
}

/// `DATA_DIR/ports.json`, written atomically once both listeners are bound, so a script
/// that sees the file can connect.
fn write_ports(dir: &std::path::Path, tcp: SocketAddr, http: SocketAddr) -> anyhow::Result<()> {
    // A wildcard listen address is reachable on loopback; that is what a script wants.
    let reachable = |mut a: SocketAddr| {
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    };
    let (tcp, http) = (reachable(tcp), reachable(http));
    let body = serde_json::json!({ "tcp": tcp.to_string(), "http": http.to_string() });
    let tmp = dir.join("ports.json.tmp");
    let dst = dir.join("ports.json");
    std::fs::write(&tmp, body.to_string())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("cannot write {}", dst.display()))?;
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers (before READY=1 is sent, so a stop that follows
/// readiness at once still drains instead of killing) and returns a future that ends at
/// the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
