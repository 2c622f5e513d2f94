//! CRC-16/X-25 ("CRC-ITU" in GT06 documents): reflected 0x8408, init 0xFFFF, xorout 0xFFFF.
//!
//! The table is generated at compile time from the polynomial: vendor PDFs circulate tables
//! with corrupted rows, so none is typed in here. This file only computes checksums; where
//! they are checked and what a mismatch means is `frame`'s business.

/// Reflected form of the CCITT polynomial 0x1021, as GT06 devices process bits LSB first.
const POLY_REFLECTED: u16 = 0x8408;

/// One entry per byte value: the CRC register after shifting that byte through.
const TABLE: [u16; 256] = build_table();

/// `SLICES[k][b]`: the register after byte `b` and then `k` zero bytes. Four bytes then
/// cost four independent lookups instead of a chain of four: every frame is checked,
/// and the byte-at-a-time chain was a visible part of ingest's time under load.
const SLICES: [[u16; 256]; 4] = build_slices();

const fn build_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

const fn build_slices() -> [[u16; 256]; 4] {
    let mut slices = [TABLE; 4];
    let mut k = 1;
    while k < 4 {
        let mut i = 0;
        while i < 256 {
            let prev = slices[k - 1][i];
            slices[k][i] = (prev >> 8) ^ TABLE[(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    slices
}

/// CRC-16/X-25 of `data`. Check value: `crc16_x25(b"123456789") == 0x906E`.
pub fn crc16_x25(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        // The register overlaps the first two bytes; the other two enter it as they are.
        let x = u32::from(crc) ^ u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        crc = SLICES[3][(x & 0xFF) as usize]
            ^ SLICES[2][((x >> 8) & 0xFF) as usize]
            ^ SLICES[1][((x >> 16) & 0xFF) as usize]
            ^ SLICES[0][(x >> 24) as usize];
    }
    for &b in quads.remainder() {
        crc = (crc >> 8) ^ TABLE[usize::from((crc ^ u16::from(b)) & 0xFF)];
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same CRC computed bit by bit, straight from the §3 description.
    fn bitwise(data: &[u8]) -> u16 {
        let mut crc = 0xFFFFu16;
        for &b in data {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x8408
                } else {
                    crc >> 1
                };
            }
        }
        crc ^ 0xFFFF
    }

    #[test]
    fn check_value_of_ascii_digits_is_906e() {
        assert_eq!(crc16_x25(b"123456789"), 0x906E);
    }

    #[test]
    fn table_matches_known_entries() {
        assert_eq!(TABLE[1], 0x1189);
        assert_eq!(TABLE[128], 0x8408);
    }

    #[test]
    fn worked_examples_of_the_protocol_reference() {
        let cases: &[(&[u8], u16)] = &[
            (&[0x05, 0x01, 0x00, 0x05], 0x9FF8),
            (&[0x05, 0x13, 0x01, 0x00], 0xE1A0),
            (&[0x05, 0x01, 0x00, 0x09], 0x5594),
            (&[0x00, 0x08, 0x94, 0x0B, 0x02, 0xE3, 0x04, 0x86], 0x1420),
            (
                &[
                    0x12, 0x80, 0x0C, 0x00, 0x00, 0x00, 0x00, b'R', b'e', b'l', b'a', b'y', b',',
                    b'1', b'#', 0x00, 0x00,
                ],
                0x9DEE,
            ),
            (
                &[
                    0x0D, 0x01, 0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, 0x00, 0x09,
                ],
                0x3F04,
            ),
        ];
        for (data, want) in cases {
            assert_eq!(crc16_x25(data), *want, "crc of {data:02x?}");
        }
    }

    #[test]
    fn table_form_equals_bitwise_form() {
        let mut data = Vec::new();
        for i in 0..300u32 {
            data.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
            assert_eq!(crc16_x25(&data), bitwise(&data));
        }
        assert_eq!(crc16_x25(&[]), bitwise(&[]));
    }
}
