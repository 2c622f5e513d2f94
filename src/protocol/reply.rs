//! Which bytes a device gets in answer to a frame (gt06-protocol.md §9), as pure functions.

use super::{Frame, Message};

/// The answer to `msg` (decoded from `frame`), or `None` when the device expects none.
/// `now_ms` is the server's current UTC time, used only by the 0x8A time reply.
pub fn reply(msg: &Message, frame: &Frame, now_ms: i64) -> Option<Vec<u8>> {
    let _ = (msg, frame, now_ms);
    todo!()
}
