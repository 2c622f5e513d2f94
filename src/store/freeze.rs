//! The freeze: while an online backup reads the store, sled's logical contents must not
//! change, yet devices must keep being answered.
//!
//! The writer thread writes sled in exactly three places: checkpoints (sealing, device
//! records, retention), and event inserts at each commit. A freeze therefore (1) waits for
//! a checkpoint under way to end and refuses to start new ones, and (2) holds new events
//! here, in memory, instead of inserting them into sled (they are in the journal already,
//! and readers see them through [`Gate::held_events`]). Group commits, journal appends and
//! answers go on as before; only sealing waits. After the thaw the writer inserts the held
//! events ([`Gate::release_held`]) before it seals anything, so no journal segment holding
//! them can be deleted before they are in sled.
//!
//! **Architecture invariant:** while frozen, no code path writes sled; every position and
//! event committed before the freeze is in sled or in a journal segment that existed at the
//! freeze, below the length it had then.
//!
//! This room never reads or writes the backup itself ([`super::backup`] does).

use super::codec::{self, EventRecord};
use super::StoreError;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// A backup asked for a freeze: no new checkpoint starts.
    wanted: bool,
    /// The freeze holds: no sled write until the thaw.
    frozen: bool,
    checkpoint_running: bool,
    /// Events committed while frozen, by their `events` key.
    held: BTreeMap<Vec<u8>, EventRecord>,
}

/// Shared by the writer (checkpoints, events) and a backup (freeze, thaw).
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    cond: Condvar,
}

/// Why a freeze was not granted.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("another backup is running")]
    Busy,
    #[error("a checkpoint under way did not finish within {0:?}; try again")]
    CheckpointTooLong(Duration),
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer asks before sealing; false while a backup wants or holds a freeze.
    pub fn begin_checkpoint(&self) -> bool {
        let mut s = self.lock();
        if s.wanted {
            return false;
        }
        s.checkpoint_running = true;
        true
    }

    /// The writer says the checkpoint ended (its journal segments are gone or kept).
    pub fn end_checkpoint(&self) {
        self.lock().checkpoint_running = false;
        self.cond.notify_all();
    }

    /// Inserts a committed event into `tree`, or holds it while frozen.
    pub fn put_event(
        &self,
        tree: &sled::Tree,
        key: Vec<u8>,
        event: &EventRecord,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.frozen {
            s.held.insert(key, event.clone());
            return Ok(());
        }
        // Inserted under the lock, so a freeze begins either before or after it.
        tree.insert(key, codec::encode(event))?;
        Ok(())
    }

    /// After a thaw, moves held events into `tree` (the writer calls this before it
    /// seals). Returns how many moved.
    pub fn release_held(&self, tree: &sled::Tree) -> Result<usize, StoreError> {
        let mut s = self.lock();
        if s.frozen || s.held.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for (k, e) in &s.held {
            batch.insert(k.as_slice(), codec::encode(e));
        }
        tree.apply_batch(batch)?;
        let n = s.held.len();
        s.held.clear();
        Ok(n)
    }

    /// Held events whose key is in `lo..hi` (for reads while frozen).
    pub fn held_events(&self, lo: &[u8], hi: Option<&[u8]>) -> Vec<(Vec<u8>, EventRecord)> {
        let s = self.lock();
        if s.held.is_empty() {
            return Vec::new();
        }
        s.held
            .range(lo.to_vec()..)
            .take_while(|(k, _)| hi.is_none_or(|h| k.as_slice() < h))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Freezes: waits up to `wait` for a checkpoint under way to end. `on_frozen` runs
    /// under the lock at the moment the freeze begins (the journal lengths are taken
    /// there).
    pub fn freeze<T>(
        &self,
        wait: Duration,
        on_frozen: impl FnOnce() -> T,
    ) -> Result<T, FreezeError> {
        let mut s = self.lock();
        if s.wanted {
            return Err(FreezeError::Busy);
        }
        s.wanted = true;
        let (mut s, _) = self
            .cond
            .wait_timeout_while(s, wait, |s| s.checkpoint_running)
            .unwrap_or_else(|e| e.into_inner());
        if s.checkpoint_running {
            s.wanted = false;
            return Err(FreezeError::CheckpointTooLong(wait));
        }
        s.frozen = true;
        Ok(on_frozen())
    }

    pub fn thaw(&self) {
        let mut s = self.lock();
        s.wanted = false;
        s.frozen = false;
    }

    #[cfg(test)]
    pub fn is_frozen(&self) -> bool {
        self.lock().frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn ev(kind: &str) -> EventRecord {
        EventRecord {
            time_ms: 1,
            received_ms: 2,
            kind: kind.into(),
            lat_raw: None,
            lon_raw: None,
            text: None,
        }
    }

    #[test]
    fn freeze_waits_for_the_running_checkpoint_and_blocks_new_ones() {
        let gate = Arc::new(Gate::default());
        assert!(gate.begin_checkpoint());
        let g2 = gate.clone();
        let ender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            g2.end_checkpoint();
        });
        let started = Instant::now();
        gate.freeze(Duration::from_secs(10), || ()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
        ender.join().unwrap();
        assert!(gate.is_frozen());
        assert!(
            !gate.begin_checkpoint(),
            "a checkpoint started while frozen"
        );
        assert!(matches!(
            gate.freeze(Duration::from_secs(1), || ()),
            Err(FreezeError::Busy)
        ));
        gate.thaw();
        assert!(gate.begin_checkpoint());
    }

    #[test]
    fn a_checkpoint_that_does_not_end_makes_the_freeze_give_up_and_undo_itself() {
        let gate = Gate::default();
        assert!(gate.begin_checkpoint());
        assert!(matches!(
            gate.freeze(Duration::from_millis(50), || ()),
            Err(FreezeError::CheckpointTooLong(_))
        ));
        assert!(!gate.is_frozen());
        gate.end_checkpoint();
        assert!(
            gate.begin_checkpoint(),
            "a failed freeze kept blocking checkpoints"
        );
    }

    #[test]
    fn events_are_held_while_frozen_readable_and_released_after_the_thaw() {
        let dir = std::env::temp_dir().join(format!("gt06-freeze-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::open(&dir).unwrap();
        let tree = db.open_tree("events").unwrap();
        let gate = Gate::default();
        gate.put_event(&tree, b"a".to_vec(), &ev("sos")).unwrap();
        gate.freeze(Duration::from_secs(1), || ()).unwrap();
        gate.put_event(&tree, b"b".to_vec(), &ev("power_cut"))
            .unwrap();
        assert_eq!(tree.len(), 1, "sled written while frozen");
        assert_eq!(gate.held_events(b"", None).len(), 1);
        assert!(gate.held_events(b"a", Some(b"b")).is_empty());
        assert_eq!(
            gate.release_held(&tree).unwrap(),
            0,
            "released while frozen"
        );
        gate.thaw();
        assert_eq!(gate.release_held(&tree).unwrap(), 1);
        assert_eq!(tree.len(), 2);
        assert!(gate.held_events(b"", None).is_empty());
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
