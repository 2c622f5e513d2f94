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
    /// Positions per second per tracker (0.1 = one every 10 s).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Server address of the GT06 port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5023")]
    pub target: String,
    /// Seconds to run; 0 runs until interrupted.
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// A heartbeat (whose answer is timed) after every K positions.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_every: u32,
    /// IMEI of the first tracker; the others follow it.
    #[arg(long, default_value_t = 860_000_000_000_001)]
    pub imei_base: u64,
    /// Seed of the tracks; the same seed drives the same routes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
