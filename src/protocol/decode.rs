//! Frame → [`Message`], one decoder per message family. `nom` lives here and nowhere else.
//!
//! The layout of a frame is chosen from (protocol number, form, content length) and
//! decided per frame (§12: Traccar's variant is not sticky either). Decoders read what
//! their layout defines and tolerate trailing vendor extras; they never panic, never index
//! unchecked and never look at the clock or the session: what they need beyond the frame
//! comes in [`DecodeCtx`]. Whether a message is stored, acked or dropped is decided by the
//! caller (`ingest`) and `reply`.

mod alarm;
mod fields;
mod login;
mod position;

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

/// Decodes one frame. Unknown protocol numbers are not errors: they come back as
/// [`Message::Unknown`] so the caller can count them and carry on.
pub fn decode(frame: &Frame, ctx: &DecodeCtx) -> Result<Message, DecodeError> {
    let _ = ctx;
    let (proto, c) = (frame.proto, frame.content.as_slice());
    let msg = match proto {
        0x01 => login::login(c).map(Message::Login),
        0x08 => Ok(Message::Heartbeat(Default::default())),
        0x10 | 0x11 | 0x12 | 0x22 | 0xA0 => position::location(proto, c).map(Message::Location),
        0x13 | 0x23 => position::heartbeat(proto, c).map(Message::Heartbeat),
        0x16 | 0x26 | 0x27 | 0xA4 => position::alarm(proto, c).map(Message::Alarm),
        0x8A => Ok(Message::Ignored {
            proto,
            reason: "time_request",
        }),
        0x80..=0x82 => Ok(Message::Ignored {
            proto,
            reason: "command_echo",
        }),
        _ => Ok(Message::Unknown { proto }),
    };
    msg.map_err(|f| f.into_error(proto, c))
}

/// Why a family decoder failed, before the protocol number is attached.
#[derive(Debug)]
enum Failure {
    /// The layout needs more bytes than the content has.
    Short,
    /// The bytes are there but say something impossible.
    Invalid(&'static str),
}

impl Failure {
    fn into_error(self, proto: u8, content: &[u8]) -> DecodeError {
        match self {
            Failure::Short => DecodeError::Truncated {
                proto,
                len: content.len(),
            },
            Failure::Invalid(what) => DecodeError::Invalid { proto, what },
        }
    }
}

impl<E> From<nom::Err<E>> for Failure {
    fn from(_: nom::Err<E>) -> Self {
        Failure::Short
    }
}
