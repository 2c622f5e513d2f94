//! Login (0x01, §6): the IMEI, and the optional type id and time-zone word.

use nom::bytes::complete::take;
use nom::combinator::opt;
use nom::number::complete::be_u16;

use super::Failure;
use crate::protocol::types::{Imei, Login};

pub(super) fn login(c: &[u8]) -> Result<Login, Failure> {
    let (rest, id) = take::<_, _, nom::error::Error<&[u8]>>(8usize)(c)?;
    let imei = imei_from_bcd(id).ok_or(Failure::Invalid("terminal id is not a 15-digit imei"))?;
    // The 365GPS login carries one version byte instead of the type id: only a full word
    // is a type id, so its 9-byte content yields none.
    let (rest, type_id) = opt(be_u16::<_, nom::error::Error<&[u8]>>)(rest)?;
    let (_, tz_word) = opt(be_u16::<_, nom::error::Error<&[u8]>>)(rest)?;
    Ok(Login {
        imei,
        type_id,
        tz_offset_min: tz_word.map(tz_offset_minutes),
    })
}

/// Hex digits of the 8 bytes minus the first nibble (Traccar does exactly this, so a
/// non-zero first nibble is lost there too). No Luhn check: real devices fail it.
fn imei_from_bcd(id: &[u8]) -> Option<Imei> {
    let mut v: u64 = 0;
    for (n, nibble) in id.iter().flat_map(|b| [b >> 4, b & 0x0F]).enumerate() {
        if n == 0 {
            continue;
        }
        if nibble > 9 {
            return None;
        }
        v = v * 10 + u64::from(nibble);
    }
    Imei::from_u64(v)
}

/// Time-zone word: bits 15–4 are `HHMM` as a decimal number, bit 3 set = west (§6).
fn tz_offset_minutes(word: u16) -> i16 {
    let v = word >> 4;
    let minutes = (v / 100 * 60 + v % 100) as i16;
    if word & 0x0008 != 0 {
        -minutes
    } else {
        minutes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zone_word_examples_of_the_reference() {
        assert_eq!(tz_offset_minutes(0x3201), 480);
        assert_eq!(tz_offset_minutes(0x190A), -240);
        assert_eq!(tz_offset_minutes(0x0000), 0);
        assert_eq!(tz_offset_minutes(0x2120), 330);
    }

    #[test]
    fn imei_drops_the_first_nibble_and_rejects_hex_letters() {
        let id = [0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81];
        assert_eq!(
            imei_from_bcd(&id).map(|i| i.to_string()),
            Some("864717003283581".into())
        );
        let bad = [0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x8F];
        assert_eq!(imei_from_bcd(&bad), None);
    }
}
