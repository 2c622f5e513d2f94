//! Key bytes, hand-written big-endian so sled's byte order is (device, time) order.
//!
//! Never bincode here: bincode 2's standard config writes little-endian varints, which
//! would sort 256 before 1.

/// Position key: IMEI (u64 BE) ‖ fix time (ms since the Unix epoch, u64 BE).
pub fn position(imei: u64, time_ms: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&imei.to_be_bytes());
    k[8..].copy_from_slice(&clamp_time(time_ms).to_be_bytes());
    k
}

/// Event key: IMEI ‖ time ‖ a 32-bit discriminator, so two different events at the
/// same instant do not overwrite each other while an identical re-sent alarm does.
pub fn event(imei: u64, time_ms: i64, discriminator: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&position(imei, time_ms));
    k[16..].copy_from_slice(&discriminator.to_be_bytes());
    k
}

/// Device key: the IMEI alone.
pub fn device(imei: u64) -> [u8; 8] {
    imei.to_be_bytes()
}

/// Reads the IMEI and time back from a position or event key.
pub fn split_time_key(k: &[u8]) -> Option<(u64, i64)> {
    let imei = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let t = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((imei, i64::try_from(t).unwrap_or(i64::MAX)))
}

/// Reads the IMEI back from a device key.
pub fn split_device_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?))
}

/// Times before 1970 never reach the store (ingest rejects them), but a key must still
/// be total: clamp rather than wrap.
fn clamp_time(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_device_then_time() {
        let a = position(1, 255);
        let b = position(1, 256);
        let c = position(2, 0);
        assert!(a < b && b < c);
        assert_eq!(split_time_key(&b), Some((1, 256)));
    }

    #[test]
    fn event_key_keeps_time_order_and_discriminates() {
        assert!(event(7, 10, u32::MAX) < event(7, 11, 0));
        assert_ne!(event(7, 10, 1), event(7, 10, 2));
        assert_eq!(split_time_key(&event(7, 10, 3)), Some((7, 10)));
    }
}
