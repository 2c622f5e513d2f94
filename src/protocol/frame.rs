//! Finding frame boundaries in a byte stream (gt06-protocol.md §4.2).
//!
//! `split` looks at the head of a connection's read buffer and says one of: "need more
//! bytes", "here is a frame of n bytes", or "drop these n bytes, they are not a frame".
//! It never decodes content (that is `decode`), never keeps state between calls (the
//! caller owns the buffer) and never waits for more data once every length the frame
//! could plausibly have is buffered: a stalled splitter means no acks and a device that
//! reconnects forever.

use super::crc::crc16_x25;

/// 0x7878 (one-byte length) or 0x7979 (two-byte length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Short,
    Long,
}

/// One frame cut out of the stream. Owns its bytes (frames cross a task boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub form: Form,
    pub proto: u8,
    /// Bytes after the protocol number up to (not including) the serial.
    pub content: &'a [u8],
    /// `None` for the length-less 365GPS frames that carry no serial.
    pub serial: Option<u16>,
    /// `None` when the frame kind carries no CRC; `Some(false)` only under lenient policy.
    pub crc_ok: Option<bool>,
    /// The whole frame, start bits to stop bits.
    pub raw: &'a [u8],
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
        SplitOptions {
            max_frame: 2048,
            lenient_crc: false,
        }
    }
}

/// Why bytes at the head of the buffer are not a frame. Every variant says how many bytes
/// to drop (`consumed`) so the caller can carry on; whether to carry on is its decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Bytes before the first `78 78`/`79 79`: line noise, or the tail of a frame we lost.
    #[error("{skipped} bytes of junk before a start marker")]
    Junk { skipped: usize },
    /// The length field claims more than `max_frame`: we are not at a real frame start.
    /// Only the start marker is consumed, so the next call resynchronises.
    #[error("declared frame length {declared} exceeds the cap {cap}")]
    TooLong { declared: usize, cap: usize },
    /// Every plausible end of the frame is buffered and none holds `0D 0A` (or one does but
    /// its CRC says it is not a frame). `skip` reaches the next start marker.
    #[error("no stop bits where the declared length ends")]
    Malformed { skip: usize },
    /// A well-delimited frame of `len` bytes whose CRC does not match (strict policy).
    #[error("bad crc on proto {proto:#04x}: frame says {got:#06x}, bytes give {want:#06x}")]
    BadCrc {
        proto: u8,
        want: u16,
        got: u16,
        len: usize,
    },
}

impl FrameError {
    /// Bytes the caller should drop from the head of its buffer.
    ///
    /// `TooLong` drops only the start marker: the length field is what we distrust, so the
    /// next call resynchronises on the next marker (reported as `Junk`) instead of
    /// throwing away a frame that may follow.
    pub fn consumed(&self) -> usize {
        match self {
            FrameError::Junk { skipped } => *skipped,
            FrameError::TooLong { .. } => MARKER_LEN,
            FrameError::Malformed { skip } => *skip,
            FrameError::BadCrc { len, .. } => *len,
        }
    }

    /// Stable snake_case reason: log field, metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Junk { .. } => "junk",
            FrameError::TooLong { .. } => "too_long",
            FrameError::Malformed { .. } => "malformed",
            FrameError::BadCrc { .. } => "bad_crc",
        }
    }
}

type SplitResult<'a> = Result<Option<(Frame<'a>, usize)>, FrameError>;

const MARKER_LEN: usize = 2;
const SHORT_MARKER: [u8; 2] = [0x78, 0x78];
const LONG_MARKER: [u8; 2] = [0x79, 0x79];
const STOP: [u8; 2] = [0x0D, 0x0A];
/// Serial (2) + CRC (2) + stop bits (2) at the tail of every frame that has a serial.
const TAIL_WITH_CRC: usize = 6;

const PROTO_LOGIN: u8 = 0x01;
const PROTO_365_GPS_ONLINE: u8 = 0x10;
const PROTO_365_GPS_OFFLINE: u8 = 0x11;
const PROTO_365_WIFI_OFFLINE: u8 = 0x17;
const PROTO_365_WIFI_ONLINE: u8 = 0x69;
/// Byte 2 of a 0x17 frame that marks the RFID variant, which has a real length byte.
const RFID_0X17_LEN: u8 = 0x28;

/// Looks for one frame at the head of `buf`. `Ok(None)`: need more bytes.
/// `Ok(Some((frame, n)))`: a frame occupying the first `n` bytes.
pub fn split<'a>(
    buf: &'a [u8],
    opts: &SplitOptions,
) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
    let junk = leading_junk(buf);
    if junk > 0 {
        return Err(FrameError::Junk { skipped: junk });
    }
    let form = match buf.get(..MARKER_LEN) {
        Some(m) if m == SHORT_MARKER => Form::Short,
        Some(m) if m == LONG_MARKER => Form::Long,
        // Empty, or a lone first byte of a marker: wait for the second.
        _ => return Ok(None),
    };
    let header = match form {
        Form::Short => 4,
        Form::Long => 5,
    };
    let (Some(declared), Some(&proto)) = (declared_size(buf, form), buf.get(header - 1)) else {
        return Ok(None);
    };

    if form == Form::Short
        && matches!(proto, PROTO_365_WIFI_OFFLINE | PROTO_365_WIFI_ONLINE)
        && !(proto == PROTO_365_WIFI_OFFLINE && buf.get(2) == Some(&RFID_0X17_LEN))
    {
        // A frame of these types with a true length byte and a good CRC is taken as such;
        // a 365GPS frame matching both by chance would need stop bits and a CRC in place.
        let plain = buf.get(..declared).filter(|raw| {
            declared >= 10
                && ends_with_stop(raw, declared)
                && raw.get(2..declared - 4).map(crc16_x25) == be16(raw, declared - 4)
        });
        if let Some(raw) = plain {
            return build_frame(raw, form, proto, declared, opts).map(|f| Some((f, declared)));
        }
        if let Some(result) = split_365gps_wifi(buf, proto, opts) {
            return result;
        }
    }
    if declared > opts.max_frame {
        return Err(FrameError::TooLong {
            declared,
            cap: opts.max_frame,
        });
    }

    let Some(size) = pick_size(buf, form, proto, declared) else {
        return if all_candidates_buffered(buf, declared) {
            Err(FrameError::Malformed {
                skip: skip_to_next_marker(buf),
            })
        } else {
            Ok(None)
        };
    };
    let Some(raw) = buf.get(..size) else {
        return Ok(None);
    };
    build_frame(raw, form, proto, declared, opts).map(|f| Some((f, size)))
}

/// Bytes before the first start marker. A trailing lone 0x78/0x79 is kept: it may be the
/// first half of a marker whose second half has not arrived.
fn leading_junk(buf: &[u8]) -> usize {
    let found = buf
        .windows(2)
        .position(|w| w == SHORT_MARKER || w == LONG_MARKER);
    match found {
        Some(pos) => pos,
        None => match buf.last() {
            Some(0x78 | 0x79) => buf.len() - 1,
            _ => buf.len(),
        },
    }
}

/// Total frame size the length field claims (`LEN + 5` short, `LEN + 6` long).
fn declared_size(buf: &[u8], form: Form) -> Option<usize> {
    match form {
        Form::Short => buf.get(2).map(|&len| usize::from(len) + 5),
        Form::Long => match buf.get(2..4) {
            Some(&[hi, lo]) => Some(usize::from(u16::from_be_bytes([hi, lo])) + 6),
            _ => None,
        },
    }
}

/// Bytes to drop after a malformed frame: up to the next start marker after this one's,
/// or everything but a possible half marker at the end.
fn skip_to_next_marker(buf: &[u8]) -> usize {
    let rest = buf.get(1..).unwrap_or_default();
    (1 + leading_junk(rest)).min(buf.len()).max(1)
}

/// The big-endian word at `at`, if the buffer holds it.
fn be16(buf: &[u8], at: usize) -> Option<u16> {
    match buf.get(at..at + 2) {
        Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
        _ => None,
    }
}

fn ends_with_stop(buf: &[u8], size: usize) -> bool {
    size >= 2 && buf.get(size - 2..size) == Some(&STOP[..])
}

fn starts_with_marker(buf: &[u8], at: usize) -> bool {
    matches!(buf.get(at..at + 2), Some(m) if m == SHORT_MARKER || m == LONG_MARKER)
}

/// Once bytes up to `T+2` are buffered, every candidate end has been looked at.
fn all_candidates_buffered(buf: &[u8], declared: usize) -> bool {
    buf.len() >= declared + 2
}

/// Which of the candidate sizes (§4.2 steps 4–5) ends in stop bits, if any can be decided.
///
/// The declared size wins; then one or two bytes more (length bytes that count only the
/// content, or a 0x13 that is two short); then up to three bytes fewer. A shorter
/// candidate is only trusted before the declared size has arrived when waiting would be
/// wrong or pointless: a login (the 365GPS login is three bytes short and its device waits
/// for our answer), or when the next frame's start marker follows it right away. Otherwise
/// a partial frame that happens to contain `0D 0A` could be cut short.
fn pick_size(buf: &[u8], form: Form, proto: u8, declared: usize) -> Option<usize> {
    let min = match form {
        Form::Short => 6,
        Form::Long => 7,
    };
    if buf.len() >= declared && ends_with_stop(buf, declared) && declared >= min {
        return Some(declared);
    }
    let longer_known = buf.len() >= declared + 2;
    for size in [declared + 1, declared + 2] {
        if buf.len() >= size && ends_with_stop(buf, size) {
            return Some(size);
        }
    }
    let declared_arrived = buf.len() >= declared;
    for back in 1..=3 {
        let Some(size) = declared.checked_sub(back) else {
            continue;
        };
        if size < min || buf.len() < size || !ends_with_stop(buf, size) {
            continue;
        }
        let trusted = (declared_arrived && longer_known)
            || proto == PROTO_LOGIN && form == Form::Short
            || starts_with_marker(buf, size);
        if trusted {
            return Some(size);
        }
    }
    None
}

/// 365GPS WiFi/LBS frames (0x17/0x69): byte 2 counts WiFi access points, so the size is
/// structural — time 6, APs × 7, cell count, MCC/MNC 3, cells × 5 — and there is no serial
/// and no CRC. `None` when the structural end holds no stop bits: then the frame is taken
/// to be an ordinary one with a real length byte.
fn split_365gps_wifi<'a>(buf: &'a [u8], proto: u8, opts: &SplitOptions) -> Option<SplitResult<'a>> {
    let Some(&n_wifi) = buf.get(2) else {
        return Some(Ok(None));
    };
    let cell_count_at = 10 + 7 * usize::from(n_wifi);
    let Some(&n_cells) = buf.get(cell_count_at) else {
        return Some(Ok(None));
    };
    let size = cell_count_at + 1 + 3 + 5 * usize::from(n_cells) + 2;
    if size > opts.max_frame {
        return Some(Err(FrameError::TooLong {
            declared: size,
            cap: opts.max_frame,
        }));
    }
    let Some(raw) = buf.get(..size) else {
        return Some(Ok(None));
    };
    if !ends_with_stop(raw, size) {
        return None;
    }
    let frame = Frame {
        form: Form::Short,
        proto,
        content: raw.get(4..size - 2).unwrap_or_default(),
        serial: None,
        crc_ok: None,
        raw,
    };
    Some(Ok(Some((frame, size))))
}

/// Builds the frame from exactly its bytes, checking the CRC where the layout has one.
fn build_frame<'a>(
    raw: &'a [u8],
    form: Form,
    proto: u8,
    declared: usize,
    opts: &SplitOptions,
) -> Result<Frame<'a>, FrameError> {
    let size = raw.len();
    let header = match form {
        Form::Short => 4,
        Form::Long => 5,
    };
    let crc_less = |content_end: usize| Frame {
        form,
        proto,
        content: raw.get(header..content_end).unwrap_or_default(),
        serial: None,
        crc_ok: None,
        raw,
    };

    if form == Form::Short {
        // 365GPS heartbeat `78 78 01 08 0D 0A` and anything else whose length field is too
        // small to hold a serial and a CRC.
        if declared < 10 {
            return Ok(crc_less(size - 2));
        }
        // 365GPS login: IMEI + one version byte, three bytes short of what LEN says.
        if proto == PROTO_LOGIN && size + 3 == declared {
            return Ok(crc_less(size - 2));
        }
    }
    if size < header + TAIL_WITH_CRC {
        return Ok(crc_less(size - 2));
    }

    let serial_at = size - TAIL_WITH_CRC;
    let (Some(&[s_hi, s_lo]), Some(&[c_hi, c_lo]), Some(covered)) = (
        raw.get(serial_at..serial_at + 2),
        raw.get(size - 4..size - 2),
        raw.get(2..size - 4),
    ) else {
        return Ok(crc_less(size - 2));
    };
    let got = u16::from_be_bytes([c_hi, c_lo]);
    let want = crc16_x25(covered);
    let crc_ok = got == want;

    // 365GPS 0x10/0x11: the length byte counts only the content, no serial, no CRC.
    if !crc_ok
        && form == Form::Short
        && matches!(proto, PROTO_365_GPS_ONLINE | PROTO_365_GPS_OFFLINE)
        && size == declared + 1
    {
        return Ok(crc_less(size - 2));
    }
    // Off the declared length, a CRC that does not match means the stop bits were found
    // by chance (a start marker in junk, a misread length): resync instead of dropping
    // a whole "frame" that may hold the start of the next real one.
    if !crc_ok && size != declared {
        return Err(FrameError::Malformed {
            skip: skip_to_next_marker(raw),
        });
    }
    if !crc_ok && !opts.lenient_crc {
        return Err(FrameError::BadCrc {
            proto,
            want,
            got,
            len: size,
        });
    }
    Ok(Frame {
        form,
        proto,
        content: raw.get(header..serial_at).unwrap_or_default(),
        serial: Some(u16::from_be_bytes([s_hi, s_lo])),
        crc_ok: Some(crc_ok),
        raw,
    })
}
