//! Finding frame boundaries in a byte stream (gt06-protocol.md §4.2).

/// 0x7878 (one-byte length) or 0x7979 (two-byte length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Short,
    Long,
}

/// One frame cut out of the stream. Owns its bytes (frames cross a task boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub form: Form,
    pub proto: u8,
    /// Bytes after the protocol number up to (not including) the serial.
    pub content: Vec<u8>,
    /// `None` for the length-less 365GPS frames that carry no serial.
    pub serial: Option<u16>,
    /// `None` when the frame kind carries no CRC; `Some(false)` only under lenient policy.
    pub crc_ok: Option<bool>,
    /// The whole frame, start bits to stop bits.
    pub raw: Vec<u8>,
}

/// Limits and policy of the splitter.
#[derive(Clone, Copy, Debug)]
pub struct SplitOptions {
    /// Largest declared frame accepted; a larger declared size means we lost sync.
    pub max_frame: usize,
    /// Decode frames with a bad CRC instead of rejecting them (`protocol.crc = "lenient"`).
    pub lenient_crc: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions { max_frame: 2048, lenient_crc: false }
    }
}

/// Why bytes at the head of the buffer are not a frame. Every variant says how many bytes
/// to drop (`consumed`) so the caller can carry on; whether to carry on is its decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{skipped} bytes of junk before a start marker")]
    Junk { skipped: usize },
    #[error("declared frame length {declared} exceeds the cap {cap}")]
    TooLong { declared: usize, cap: usize },
    #[error("no stop bits where the declared length ends")]
    Malformed { skip: usize },
    #[error("bad crc on proto {proto:#04x}: frame says {got:#06x}, bytes give {want:#06x}")]
    BadCrc { proto: u8, want: u16, got: u16, len: usize },
}

impl FrameError {
    /// Bytes the caller should drop from the head of its buffer.
    pub fn consumed(&self) -> usize {
        todo!()
    }
    /// Stable snake_case reason: log field, metric label.
    pub fn reason(&self) -> &'static str {
        todo!()
    }
}

/// Looks for one frame at the head of `buf`. `Ok(None)`: need more bytes.
/// `Ok(Some((frame, n)))`: a frame occupying the first `n` bytes.
pub fn split(buf: &[u8], opts: &SplitOptions) -> Result<Option<(Frame, usize)>, FrameError> {
    let _ = (buf, opts);
    todo!()
}
