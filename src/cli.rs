//! Command-line surface (API.md, "Command line"). Flags are `Option`s so that "not
//! given" can be told from "given the default" when they are merged over the config.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "gt06",
    version,
    about = "GPS tracking appliance for GT06-family trackers: ingest, store, API and web map in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: GT06 TCP ingest, JSON API and web map.
    Serve(ServeArgs),
    /// Run a fleet of simulated GT06 trackers against a server (for demos and load).
    Simulate(SimulateArgs),
    /// Decode a capture (hex; frames glued, cut or spaced) into one JSON line per frame.
    Decode(crate::ops::decode::DecodeArgs),
    /// Pre-maintenance checklist (store, disk, memory, ports, clock, last position, backup);
    /// exit 0 when nothing fails, 1 when a check fails, 2 on bad config.
    Doctor(DoctorArgs),
    /// Check a store's integrity (stop the service first), or a backup directory; exit 1
    /// if anything is damaged.
    Verify(VerifyArgs),
    /// Consistent backup of a store, from the running server (devices keep being answered)
    /// or, with none running, from the store itself; exit 2 if DIR is not new or empty.
    Backup(BackupArgs),
    /// Restore a backup into a data dir (the server stopped); exit 2 if DIR holds data and
    /// --force is not given.
    Restore(RestoreArgs),
    /// Benchmark the store: write a synthetic fleet into an empty DIR, measure, print JSON.
    BenchStore(BenchStoreArgs),
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Directory holding the store.
    #[arg(long, value_name = "DIR", default_value = "./gt06-data")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// New or empty directory to write the backup to.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Config file (TOML) naming the data dir; without it the embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the store (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Backup directory (made by `gt06 backup`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Data dir to restore into: new or empty, or an old store replaced with --force.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (TOML) naming the data dir.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Replace the store already in the data dir.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// Config file (TOML); without it the embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the store (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// One JSON object instead of one line per check.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchStoreArgs {
    /// Empty (or absent) directory to build the benchmark store in.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub devices: u32,
    /// Positions per device (devices interleaved, as a live server sees them).
    #[arg(long, default_value_t = 10_000)]
    pub per_device: u32,
    /// Seconds between two fixes of a device.
    #[arg(long, default_value_t = 10)]
    pub step_secs: u32,
    /// Most requests per group commit.
    #[arg(long, default_value_t = 4096)]
    pub max_batch: usize,
    /// Unsealed positions that trigger a checkpoint.
    #[arg(long, default_value_t = 2_000_000)]
    pub checkpoint_positions: usize,
    /// A request waits for durability every this many (as a heartbeat would).
    #[arg(long, default_value_t = 1000)]
    pub ack_every: u64,
    /// sled's cache, MiB (`store.cache_mb`; the default is the server's).
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// Internal: only reopen and read an existing benchmark store (the second process).
    #[arg(long, hide = true)]
    pub read_phase: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Config file (TOML); without it the embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the store (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// GT06 listen address, e.g. 0.0.0.0:5023; port 0 picks a free port (overrides `tcp.listen`).
    #[arg(long, value_name = "ADDR")]
    pub tcp_listen: Option<String>,
    /// HTTP listen address, e.g. 0.0.0.0:8080; port 0 picks a free port (overrides `http.listen`).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Number of simulated trackers (one TCP connection each).
    #[arg(long, default_value_t = 10)]
    pub devices: u32,
    /// Positions per second per tracker (0.1 = one every 10 s). Ignored with --max.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Server address of the GT06 port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5023")]
    pub target: String,
    /// Seconds to run; 0 runs until interrupted.
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// A heartbeat (whose answer is timed) after every K positions; 0 sends none.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_every: u32,
    /// IMEI of the first tracker; the others follow it.
    #[arg(long, default_value_t = 860_000_000_000_001)]
    pub imei_base: u64,
    /// Seed of the tracks; the same seed drives the same routes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds over which the trackers connect, evenly spread (0 = all at once).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub ramp: f64,
    /// Send as fast as the server answers: each tracker keeps at most --window
    /// heartbeats (each after --heartbeat-every positions) unanswered.
    #[arg(long)]
    pub max: bool,
    /// With --max: unanswered heartbeats a tracker may have before it waits.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub window: u32,
    /// Print the summary as one JSON object on stdout (the text goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}
