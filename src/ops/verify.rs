//! `gt06 verify`: opens a store read-only (with the service stopped: the journal is read,
//! not cut; nothing is migrated or written by gt06), checks every block's checksum,
//! the block index, and that no fix time is stored twice, and says what is damaged by
//! device and time range. Exit 0 when clean, 1 when anything is damaged or unreadable.
//! Given a backup directory (`manifest.json`, no `db/`), it checks the backup instead.

use crate::http::json::rfc3339;
use crate::store::{OpenOptions, Store};
use anyhow::Context;
use std::path::Path;

pub fn main(data_dir: &Path) -> anyhow::Result<bool> {
    if !data_dir.join("db").exists() && data_dir.join(super::backup::MANIFEST_FILE).exists() {
        return super::backup::verify_backup(data_dir);
    }
    anyhow::ensure!(
        data_dir.join("db").is_dir(),
        "no store at {} (expected {}/db)",
        data_dir.display(),
        data_dir.display()
    );
    let (store, replay) = Store::open_read_only(data_dir, OpenOptions::default())
        .with_context(|| format!("cannot open the store at {}", data_dir.display()))?;
    let report = store.verify()?;
    println!(
        "store {}: {} devices, {} blocks holding {} positions, {} unsealed positions in the journal, {} events",
        data_dir.display(),
        report.devices,
        report.blocks,
        report.positions,
        store.unsealed(),
        report.events
    );
    if replay.torn_tail_bytes > 0 || replay.corrupt_records > 0 {
        println!(
            "journal: {} bytes of an unfinished last write (left in place; `serve` cuts them), {} damaged records",
            replay.torn_tail_bytes, replay.corrupt_records
        );
    }
    for b in &report.bad {
        let until = b.last_ms.map(rfc3339).unwrap_or_else(|| "?".into());
        println!(
            "DAMAGED device {:015} block {} .. {}: {}",
            b.imei,
            rfc3339(b.first_ms),
            until,
            b.problem
        );
    }
    let ok = report.bad.is_empty() && replay.corrupt_records == 0;
    println!(
        "{}",
        if ok {
            "ok"
        } else {
            "store has damage (see above)"
        }
    );
    Ok(ok)
}
