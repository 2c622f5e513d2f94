//! What an alarm code means (§11). Vendor meanings (Concox VL03 document) first; where the
//! vendor list is silent, Traccar's default (model-independent) meaning. Codes neither
//! names stay [`AlarmKind::Other`] so they are still stored and counted.

use crate::protocol::types::AlarmKind;
use crate::protocol::Model;

/// The alarm byte of ST5 and its relatives (§11.1). Only 0 means "no alarm": every other
/// code is reported, named or not, because the device re-sends what we do not ack.
pub(crate) fn from_alarm_code(code: u8) -> Option<AlarmKind> {
    let kind = match code {
        0x00 => return None,
        0x01 => AlarmKind::Sos,
        0x02 => AlarmKind::PowerCut,
        0x03 => AlarmKind::Vibration,
        0x04 => AlarmKind::GeofenceEnter,
        0x05 => AlarmKind::GeofenceExit,
        0x06 => AlarmKind::Overspeed,
        0x09 => AlarmKind::Tow,
        0x0E | 0x0F | 0x19 => AlarmKind::LowBattery,
        0x11 | 0x15 => AlarmKind::PowerOff,
        0x13 | 0x25 | 0x32 => AlarmKind::Tampering,
        0x14 => AlarmKind::Door,
        0x18 => AlarmKind::Removing,
        0x1A | 0x27 | 0x28 | 0x30 | 0xF1 => AlarmKind::HardBraking,
        0x1B | 0x2A | 0x2B | 0x2E => AlarmKind::HardCornering,
        0x23 => AlarmKind::Fall,
        0x26 | 0x29 | 0xF0 => AlarmKind::HardAcceleration,
        0x2C | 0xF2 => AlarmKind::Accident,
        0xFE => AlarmKind::AccOn,
        0xFF => AlarmKind::AccOff,
        other => AlarmKind::Other(other),
    };
    Some(kind)
}

/// Bits 5–3 of the terminal information byte (§11.2): the vendor's four alarms, plus
/// Traccar's 111 = removal. 110 (Traccar: "geofence", direction unknown) is left out.
pub(crate) fn from_status_bits(info: u8) -> Option<AlarmKind> {
    match (info >> 3) & 0b111 {
        0b001 => Some(AlarmKind::Vibration),
        0b010 => Some(AlarmKind::PowerCut),
        0b011 => Some(AlarmKind::LowBattery),
        0b100 => Some(AlarmKind::Sos),
        0b111 => Some(AlarmKind::Removing),
        _ => None,
    }
}

/// Codes whose meaning a model family changes (§11.1, Traccar's model-specific column).
fn model_override(model: Model, code: u8) -> Option<AlarmKind> {
    match (model, code) {
        (Model::Vl, 0x28) => Some(AlarmKind::PowerOff),
        (Model::Lw, 0x18) => Some(AlarmKind::Accident),
        (Model::Lw, 0x19) => Some(AlarmKind::HardAcceleration),
        (Model::Seeworld, 0x28) => Some(AlarmKind::HardCornering),
        (Model::Seeworld, 0x29) => Some(AlarmKind::Accident),
        _ => None,
    }
}

/// The alarm byte when it says something (as the model reads it), else the status bits.
pub(crate) fn kind(model: Model, code: u8, info: u8) -> Option<AlarmKind> {
    model_override(model, code)
        .or_else(|| from_alarm_code(code))
        .or_else(|| from_status_bits(info))
}
