//! Device-side frames (login, location, heartbeat, alarm) for `gt06 simulate` and tests,
//! and the server's command frame (0x80).
