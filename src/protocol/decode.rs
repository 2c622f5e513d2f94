//! Frame → [`Message`], one decoder per message family. `nom` lives here and nowhere else.
//!
//! The layout of a frame is chosen from (protocol number, form, content length) and
//! decided per frame (§12: Traccar's variant is not sticky either). Decoders read what
//! their layout defines and tolerate trailing vendor extras; they never panic, never index
//! unchecked and never look at the clock or the session: what they need beyond the frame
//! comes in [`DecodeCtx`]. Whether a message is stored, acked or dropped is decided by the
//! caller (`ingest`) and `reply`.

mod alarm;
mod cells;
mod fields;
mod info;
mod login;
mod modular;
mod position;
mod vendor;

use super::{Form, Frame, Message, Status};

/// What decoding needs to know about the connection besides the frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeCtx {
    /// The device's configured model family; `Standard` unless configured, because the
    /// frames themselves do not say which of these firmwares sent them (§12.2).
    pub model: Model,
}

/// Firmware families whose frames the standard layouts misread (§12.2). Anything not
/// listed is `Standard`: GT06/GT06N/TR06/JM01/GT800/VL01/VL03 need no setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Model {
    #[default]
    Standard,
    /// NT11/NT20/NT26/NT40/NT46/VL100/XT40: 0x22/0x25 start with source, IMEI and device
    /// time and end with power, battery, odometer and engine hours.
    Nt,
    /// QH302R: 0x12 starts with the IMEI.
    Qh302r,
    /// LW*: own alarm meanings; 0x13's alarm/language word is the supply voltage.
    Lw,
    /// SEEWORLD: own alarm meanings; 0x13's alarm byte is the supply voltage.
    Seeworld,
    /// R11: 0x13's voltage-level slot is a u16 supply voltage.
    R11,
    /// VL103/LL303/VL512/G18: own alarm meanings.
    Vl,
}

impl Model {
    /// The family of a model name as devices and Traccar's `model` attribute spell it
    /// (`NT20`, `LW4G-4B`, `SEEWORLD`, `VL103` …); unknown names are `Standard`.
    pub fn from_name(name: &str) -> Model {
        let name = name.trim().to_ascii_uppercase();
        match name.as_str() {
            "NT11" | "NT20" | "NT26" | "NT40" | "NT46" | "VL100" | "XT40" => Model::Nt,
            "QH302R" => Model::Qh302r,
            "SEEWORLD" => Model::Seeworld,
            "R11" => Model::R11,
            "VL103" | "LL303" | "VL512" | "G18" => Model::Vl,
            n if n.starts_with("LW") => Model::Lw,
            _ => Model::Standard,
        }
    }
}

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
    let model = ctx.model;
    let (proto, c) = (frame.proto, frame.content);
    let len = c.len();
    let ignored = |reason| Ok(Message::Ignored { proto, reason });
    let msg = match proto {
        0x01 => login::login(c).map(Message::Login),
        0x08 => Ok(Message::Heartbeat(Status::default())),
        0x22 | 0x25 if model == Model::Nt => position::nt_location(proto, c).map(Message::Location),
        0x12 if model == Model::Qh302r => {
            position::location(proto, c.get(8..).unwrap_or_default()).map(Message::Location)
        }
        0x10 | 0x11 | 0x12 | 0x22 | 0xA0 => position::location(proto, c).map(Message::Location),
        0x13 if c.len() == 5 && model != Model::Standard => {
            position::heartbeat_by_model(model, c).map(Message::Heartbeat)
        }
        0x13 | 0x23 => position::heartbeat(proto, c).map(Message::Heartbeat),
        0x16 | 0x26 | 0x27 | 0xA4 => position::alarm(proto, c, model).map(Message::Alarm),

        // 365GPS WiFi/LBS: byte 2 of the frame is the access-point count.
        0x17 | 0x69 if frame.serial.is_none() => {
            let n_wifi = frame.raw.get(2).copied().unwrap_or(0);
            cells::wifi_365gps(proto, n_wifi, c).map(Message::Cells)
        }
        // SPACE10X (LEN ≥ 0x17) packs a multi-cell list Traccar skips too.
        0x19 if len + 5 >= 0x17 => ignored("multi_cell_unsupported"),
        0x19 | 0xA5 => position::lbs_alarm(proto, c, model).map(Message::Alarm),
        0x18 | 0x28 | 0x2C | 0x2E | 0xA1 => cells::multi_cell(proto, c).map(Message::Cells),
        0xA2 if len != 0x40 - 5 => cells::multi_cell(proto, c).map(Message::Cells),
        0xA7 => cells::single_cell_4g(c).map(Message::Cells),
        0x24 if len == 0x31 - 5 => cells::wanway_s20(c).map(Message::Cells),
        0x24 if len != 0x2E - 5 => cells::multi_cell(proto, c).map(Message::Cells),
        0xF3 => cells::wifi_0xf3(c).map(Message::Cells),

        0x61 => position::ibutton_0x61(c).map(Message::Location),
        0x32 if frame.form == Form::Short => position::sl4x_0x32(c, model).map(Message::Alarm),
        0xA3 if len == 39 => position::fence_0xa3(c, model).map(Message::Alarm),
        // SEEWORLD status (LEN 0x0C / 0x18).
        0xA3 => position::seeworld_status_0xa3(c).map(Message::Heartbeat),
        0x36 if len != 0x35 - 5 => position::status_modules(c).map(Message::Heartbeat),
        0x17 | 0x1E | 0x24 | 0x2D | 0x31 | 0x36 | 0x37 | 0x38 | 0xA2 => {
            position::other_location(proto, c).map(|loc| match loc {
                Some(loc) => Message::Location(loc),
                None => Message::Unknown { proto },
            })
        }

        0x70 => modular::modular_0x70(c),
        0x95 => vendor::dashcam_0x95(c).map(Message::Alarm),
        0x34 if len >= 54 => vendor::x1_0x34(c).map(Message::Location),
        0x32 | 0x33 if frame.form == Form::Long => vendor::az735_long(proto, c),
        0x94 => info::info_0x94(frame.form, c).map(Message::Info),
        0xF1 => info::status_0xf1(c).map(Message::Info),
        0xF2 => info::peripheral_0xf2(c).map(Message::Info),
        0x9B => info::passthrough_0x9b(c).map(Message::Info),
        0x8C => info::obd_0x8c(c).map(Message::Info),
        0x15 => info::reply_0x15(c),
        0x21 => info::reply_0x21(c).map(|(flag, text)| match position::position_text(&text) {
            Some(loc) => Message::Location(loc),
            None => Message::CommandReply { flag, text },
        }),

        0x8A => ignored("time_request"),
        0x80..=0x82 => ignored("command_echo"),
        0x2A => ignored("address_request"),
        0x35 => ignored("photo_info"),
        0x14 => ignored("satellite_snr"),
        0xB0 => ignored("attendance"),
        0xFD => ignored("firmware_version"),
        0x65 => ignored("obd_trouble_codes"),
        0x66 => ignored("obd_pid_data"),
        0x84 => ignored("vendor_long_form"),
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
