//! Interim block format (bincode of the records behind a header and a CRC-32), replaced
//! by the columnar codec. Keeps the same interface.
use super::codec::PositionRecord;
pub const BLOCK_VERSION: u8 = 0;
const HEAD: usize = 25;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    pub count: u32,
    pub first_ms: i64,
    pub last_ms: i64,
    pub encoded_len: usize,
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block truncated")]
    Truncated,
    #[error("block checksum mismatch")]
    Checksum { want: u32, got: u32 },
    #[error("block version {0}")]
    Version(u8),
    #[error("block corrupt: {0}")]
    Corrupt(&'static str),
}
impl BlockError {
    pub fn reason(&self) -> &'static str {
        "block_corrupt"
    }
}
pub fn encode_block(p: &[PositionRecord]) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(p, bincode::config::standard()).unwrap_or_default();
    let mut out = vec![BLOCK_VERSION];
    out.extend((p.len() as u32).to_le_bytes());
    out.extend(p.first().map_or(0, |x| x.time_ms).to_le_bytes());
    out.extend(p.last().map_or(0, |x| x.time_ms).to_le_bytes());
    out.extend(crc32fast::hash(&body).to_le_bytes());
    out.extend(body);
    out
}
fn word<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], BlockError> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(BlockError::Truncated)
}
pub fn block_summary(b: &[u8]) -> Result<BlockSummary, BlockError> {
    if b.first() != Some(&BLOCK_VERSION) {
        return Err(BlockError::Version(b.first().copied().unwrap_or(0)));
    }
    Ok(BlockSummary {
        count: u32::from_le_bytes(word(b, 1)?),
        first_ms: i64::from_le_bytes(word(b, 5)?),
        last_ms: i64::from_le_bytes(word(b, 13)?),
        encoded_len: b.len(),
    })
}
pub fn verify_block(b: &[u8]) -> Result<BlockSummary, BlockError> {
    let s = block_summary(b)?;
    let want = u32::from_le_bytes(word(b, 21)?);
    let got = crc32fast::hash(b.get(HEAD..).unwrap_or_default());
    if want != got {
        return Err(BlockError::Checksum { want, got });
    }
    Ok(s)
}
pub fn decode_block(b: &[u8]) -> Result<Vec<PositionRecord>, BlockError> {
    verify_block(b)?;
    bincode::serde::decode_from_slice(
        b.get(HEAD..).unwrap_or_default(),
        bincode::config::standard(),
    )
    .map(|(v, _)| v)
    .map_err(|_| BlockError::Corrupt("records do not decode"))
}
