//! Live fan-out: every position and event, once durable, to whoever watches
//! (`GET /api/live`).
//!
//! The store writer publishes each committed batch into one bounded broadcast ring; each
//! subscriber reads the ring at its own pace. A subscriber that falls a whole ring
//! behind loses the oldest items (it is told how many), and one that stops reading is
//! dropped by its HTTP stream.
//!
//! **Architecture invariant:** live fan-out never slows ingest. Publishing never waits
//! and never allocates per subscriber; with no subscriber it costs one uncontended lock
//! per batch; nothing is buffered per client beyond the shared ring.

use crate::store::{EventRecord, Op, PositionRecord, WriteReq};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Items the shared ring holds. A subscriber more than this behind skips.
pub const CAPACITY: usize = 4096;

/// One durable change, as subscribers get it.
#[derive(Debug)]
pub enum LiveItem {
    Position { imei: u64, pos: PositionRecord },
    Event { imei: u64, event: EventRecord },
}

impl LiveItem {
    pub fn imei(&self) -> u64 {
        match self {
            LiveItem::Position { imei, .. } | LiveItem::Event { imei, .. } => *imei,
        }
    }
}

/// The sending side and the place to subscribe. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<LiveItem>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::Sender::new(CAPACITY),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveItem>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Publishes the positions and events of a batch that is durable. Called on the
    /// writer thread: it never blocks, and does nothing at all without subscribers.
    pub fn publish(&self, batch: &[WriteReq]) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for op in batch.iter().flat_map(|r| &r.ops) {
            let item = match op {
                Op::Position { imei, pos } => LiveItem::Position {
                    imei: *imei,
                    pos: pos.clone(),
                },
                Op::Event { imei, event } => LiveItem::Event {
                    imei: *imei,
                    event: event.clone(),
                },
                _ => continue,
            };
            // An error only means the last subscriber just left.
            if self.tx.send(Arc::new(item)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(imei: u64, t: i64) -> WriteReq {
        WriteReq::one(
            Op::Position {
                imei,
                pos: PositionRecord {
                    time_ms: t,
                    ..PositionRecord::default()
                },
            },
            None,
        )
    }

    #[test]
    fn subscribers_get_positions_and_events_in_order_and_nothing_else() {
        let hub = Hub::new();
        // No subscriber: publishing is a no-op.
        hub.publish(&[position(1, 1)]);
        let mut rx = hub.subscribe();
        let seen = WriteReq::one(
            Op::Seen {
                imei: 1,
                at_ms: 5,
                login: None,
                status: None,
            },
            None,
        );
        let event = WriteReq::one(
            Op::Event {
                imei: 2,
                event: EventRecord {
                    time_ms: 3,
                    received_ms: 3,
                    kind: "sos".into(),
                    lat_raw: None,
                    lon_raw: None,
                    text: None,
                },
            },
            None,
        );
        hub.publish(&[position(1, 2), seen, event]);
        assert!(
            matches!(&*rx.try_recv().unwrap(), LiveItem::Position { imei: 1, pos } if pos.time_ms == 2)
        );
        assert!(
            matches!(&*rx.try_recv().unwrap(), LiveItem::Event { imei: 2, event } if event.kind == "sos")
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_subscriber_that_falls_behind_skips_and_publishing_never_waits() {
        let hub = Hub::new();
        let mut rx = hub.subscribe();
        let batch: Vec<WriteReq> = (0..CAPACITY as i64 + 10).map(|t| position(1, t)).collect();
        hub.publish(&batch);
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert!(
            matches!(&*rx.try_recv().unwrap(), LiveItem::Position { pos, .. } if pos.time_ms == 10)
        );
    }
}
