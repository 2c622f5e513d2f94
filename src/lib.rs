//! gt06: one process that takes GT06 trackers over TCP, stores their positions in sled,
//! and serves them over HTTP with a web map. See ARCHITECTURE.md for the rooms.

pub mod protocol;
