//! gt06: one process that takes GT06 trackers over TCP, stores their positions in sled,
//! and serves them over HTTP with a web map. See ARCHITECTURE.md for the rooms.

pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod live;
pub mod ops;
pub mod protocol;
pub mod simulate;
pub mod store;
