//! A check of sled's log file made before sled opens it.
//!
//! Why: sled 0.34 opens a file of garbage as an empty database and then writes over it,
//! so a damaged store would look like a new one, and be lost, instead of being refused.
//! This room only reads the file; it never repairs it.

use std::path::Path;

/// Checks sled's log file before sled sees it. A live log has at least one segment (at a multiple of the
/// segment size in `db/conf`) whose header checksum holds; sled overwrites freed segments
/// with filler, so only "none at all" is taken as damage.
pub fn check_log(db_file: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let conf = db_file.with_file_name("conf");
    // `conf` ends in a binary checksum: read it lossily.
    let segment = std::fs::read(&conf)
        .ok()
        .and_then(|b| segment_size(&String::from_utf8_lossy(&b)))
        .unwrap_or(512 * 1024);
    let f = std::fs::File::open(db_file)
        .map_err(|e| format!("cannot read {}: {e}", db_file.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", db_file.display()))?
        .len();
    let mut head = [0u8; SLED_HEADER_LEN];
    let mut at = 0u64;
    while at + SLED_HEADER_LEN as u64 <= len {
        if f.read_exact_at(&mut head, at).is_ok() && sled_header_ok(&head) {
            return Ok(());
        }
        at += segment;
    }
    Err(format!(
        "{} has no valid segment header (the file is damaged)",
        db_file.display()
    ))
}

/// `segment_size: 524288` from sled's `conf` file.
pub fn segment_size(conf: &str) -> Option<u64> {
    conf.lines()
        .find_map(|l| l.strip_prefix("segment_size:")?.trim().parse().ok())
        .filter(|n| *n >= SLED_HEADER_LEN as u64)
}

/// Length of a segment header in sled 0.34's log (`pagecache/constants.rs`).
const SLED_HEADER_LEN: usize = 20;

/// sled 0.34's segment header: `crc32(bytes 4..20) ^ 0xFFFF_FFFF` little-endian in bytes
/// 0..4, then two XOR-ed sequence numbers (`pagecache/logger.rs`, `SegmentHeader`).
pub fn sled_header_ok(head: &[u8]) -> bool {
    let (Some(stored), Some(body)) = (head.get(0..4), head.get(4..SLED_HEADER_LEN)) else {
        return false;
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    crc32fast::hash(body) == stored ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_segment_header_is_checked_by_its_crc() {
        // The first 20 bytes of a fresh store's DATA_DIR/db/db.
        let good = [
            0xff, 0xba, 0xc7, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0,
            0, 0, 0x80,
        ];
        assert!(sled_header_ok(&good));
        let mut bad = good;
        bad[5] ^= 1;
        assert!(!sled_header_ok(&bad));
        assert!(!sled_header_ok(&[0xa5; 20]));
        assert!(!sled_header_ok(&good[..10]));
        assert!(!sled_header_ok(&[]));
        assert_eq!(
            segment_size("segment_size: 524288\nuse_compression: false\n"),
            Some(524288)
        );
        assert_eq!(segment_size("use_compression: false\n"), None);
    }
}
