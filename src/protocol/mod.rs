//! Pure GT06: bytes in, typed messages out, reply bytes back.
//!
//! This room splits a byte stream into frames (`frame`), checks CRC-16/X-25 (`crc`),
//! decodes each frame into a typed [`Message`] (`decode`), builds the bytes a device
//! expects in answer (`reply`) and encodes device-side frames for the simulator and
//! tests (`encode`).
//!
//! **Architecture invariant:** nothing here knows about tokio, sled, sockets or the clock.
//! The current time, when a reply needs it (0x8A), is an argument. On any input every
//! function returns a value or an error; nothing panics, nothing allocates beyond the
//! frame cap. `ingest/` decides what to do with errors; this room never logs.

pub mod crc;
pub mod decode;
pub mod encode;
pub mod frame;
pub mod reply;
pub mod types;

pub use decode::{decode, DecodeCtx, DecodeError, Model};
pub use frame::{split, Form, Frame, FrameError, SplitOptions};
pub use reply::{reply, reply_into};
pub use types::*;

#[cfg(test)]
mod tests;
