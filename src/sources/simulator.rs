//! `type: simulator`: emits synthetic JSON events at a fixed
//! rate, so the default `config.yaml` shows a pipeline working with nothing
//! else installed.
//!
//! Each event is `{"id","seq","source","ts","amount"[,"pad"]}` keyed by its
//! `id`; ids are unique across restarts (they carry a per-run prefix). With
//! `malformed_ratio`, that share of events is deliberately not JSON. A send
//! waits for the transport's acknowledgement (and its backpressure), so the
//! rate is a ceiling, not a promise. A drain lets the send in flight finish,
//! so every event written is counted (`conveyor_source_events_total`).

use crate::health::{TaskHealth, TaskState};
use crate::supervisor::Exit;
use crate::transport::{OutboundMessage, Producer, now_ms};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// A running simulator's settings.
#[derive(Debug, Clone)]
pub struct Simulator {
    pub name: String,
    pub entity: String,
    pub physical: String,
    pub rate: f64,
    pub count: Option<u64>,
    pub malformed_ratio: f64,
    pub pad_bytes: usize,
    pub kind: crate::config::SimKind,
    pub attachments: Option<String>,
}

impl Simulator {
    /// Runs until cancelled (or `count` events were sent). `emitted` carries
    /// over restarts so `count` is honoured across them.
    pub async fn run(
        &self,
        producer: Arc<dyn Producer>,
        counter: Counter,
        health: Arc<TaskHealth>,
        cancel: CancellationToken,
    ) -> Option<Exit> {
        let run_id = format!("{:08x}", fastrand::u32(..));
        let tick = Duration::from_millis(10);
        let per_tick = self.rate * tick.as_secs_f64();
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut credit = 0.0f64;
        let mut seq: u64 = counter.get();
        let pad = "x".repeat(self.pad_bytes);
        health.set(TaskState::Ready);
        loop {
            if self.count.is_some_and(|c| seq >= c) {
                return Some(Exit::Finished);
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = interval.tick() => {}
            }
            credit += per_tick;
            let mut n = credit.floor() as u64;
            credit -= n as f64;
            if let Some(c) = self.count {
                n = n.min(c - seq);
            }
            if n == 0 {
                continue;
            }
            let batch: Vec<OutboundMessage> = (0..n).map(|i| self.event(&run_id, seq + i, &pad)).collect();
            // a send in flight is finished, not dropped: a dropped send may
            // still be delivered, and would then be an event nobody counted
            let sent = producer.send(&self.physical, batch).await;
            match sent {
                Ok(_) => {
                    seq += n;
                    counter.inc_by(n);
                }
                Err(e) => {
                    return Some(Exit::Failed(e.category(), format!("writing to {:?}: {e}", self.entity)));
                }
            }
        }
    }

    fn event(&self, run_id: &str, seq: u64, pad: &str) -> OutboundMessage {
        let id = format!("{}-{run_id}-{seq}", self.name);
        let malformed = self.malformed_ratio > 0.0 && fastrand::f64() < self.malformed_ratio;
        let payload = if malformed {
            format!("not json: {id}")
        } else {
            let mut v = match self.kind {
                crate::config::SimKind::Generic => serde_json::json!({
                    "id": id,
                    "seq": seq,
                    "source": self.name,
                    "ts": now_ms(),
                    "amount": (fastrand::u32(100..1_000_000) as f64) / 100.0,
                }),
                crate::config::SimKind::Verisk => serde_json::json!({
                    "id": id,
                    "seq": seq,
                    "type": "xact",
                    "claim_id": format!("XA-{:06}", seq % 50_000),
                    "event_type": (["status_change", "estimate_uploaded", "document_added"][fastrand::usize(0..3)]),
                    "attachment_url": format!("{}/{id}.pdf", self.attachments.as_deref().unwrap_or("http://127.0.0.1:9470/files")),
                    "ts": now_ms(),
                }),
                crate::config::SimKind::Claimx => serde_json::json!({
                    "id": id,
                    "seq": seq,
                    "type": "claimx",
                    "claim_id": format!("CX-{:06}", seq % 50_000),
                    "task": { "type": (["itel_cabinet", "mitigation", "inspection", "inspection"][fastrand::usize(0..4)]), "id": format!("T-{seq}") },
                    "attachment_url": format!("{}/{id}.pdf", self.attachments.as_deref().unwrap_or("http://127.0.0.1:9470/files")),
                    "ts": now_ms(),
                }),
            };
            if !pad.is_empty() {
                v["pad"] = serde_json::Value::String(pad.to_string());
            }
            v.to_string()
        };
        OutboundMessage { key: Some(Bytes::from(id)), payload: Bytes::from(payload), ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::transport::{ProduceResult, TransportError};
    use std::sync::Mutex;

    /// Like a broker client: a batch is handed over (and will be written)
    /// at once, acknowledged 100 ms later.
    #[derive(Default)]
    struct Slow(Mutex<usize>);

    #[async_trait::async_trait]
    impl Producer for Slow {
        async fn send(&self, _entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
            *self.0.lock().unwrap() += batch.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Vec::new())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_during_a_send_leaves_no_event_uncounted() {
        let sim = Simulator {
            name: "s".into(),
            entity: "e".into(),
            physical: "e".into(),
            rate: 1000.0,
            count: None,
            malformed_ratio: 0.0,
            pad_bytes: 0,
            kind: crate::config::SimKind::Generic,
            attachments: None,
        };
        let producer = Arc::new(Slow::default());
        let counter = Counter::default();
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (producer, counter, cancel) = (producer.clone(), counter.clone(), cancel.clone());
            async move { sim.run(producer, counter, Health::new().task("s", "source"), cancel).await }
        });
        // cancel while a send is in flight
        tokio::time::sleep(Duration::from_millis(250)).await;
        cancel.cancel();
        run.await.unwrap();
        let written = *producer.0.lock().unwrap();
        assert!(written > 0);
        assert_eq!(counter.get() as usize, written, "every event written is counted");
    }
}
