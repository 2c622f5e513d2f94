//! One integration-test crate: every test starts the real `gt06` binary and talks to it
//! over TCP as trackers do and over HTTP as the map and scripts do.

mod api;
mod backup;
mod decode;
mod device_time;
mod disk;
mod doctor;
mod durability;
mod harness;
mod ingest;
mod limits;
mod live;
mod metrics;
mod ops;
mod replay;
mod restart;
mod simulate;
mod systemd;
