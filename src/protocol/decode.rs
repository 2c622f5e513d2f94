//! Frame → [`Message`], one decoder per message family. `nom` lives here and nowhere else.

use super::{Frame, Message};

/// What decoding needs to know about the connection besides the frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeCtx {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("proto {proto:#04x}: content too short ({len} bytes) for its layout")]
    Truncated { proto: u8, len: usize },
    #[error("proto {proto:#04x}: {what}")]
    Invalid { proto: u8, what: &'static str },
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Invalid { .. } => "invalid",
        }
    }
}

pub fn decode(frame: &Frame, ctx: &DecodeCtx) -> Result<Message, DecodeError> {
    let _ = (frame, ctx);
    todo!()
}
