//! A transport for unit tests: its subscription replays the assignments a
//! test sends, and its group positions are whatever the test sets. It
//! carries no messages (`Idle` readers wait forever).

use super::{
    Assignment, EntitySpec, GroupPosition, GroupSpec, OutboundMessage, PartitionInfo, PartitionReader, PipelineMessage,
    ProduceResult, Producer, Seek, StartPosition, Subscription, Transport, TransportError,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What a test sends to the subscription.
pub type Script = mpsc::UnboundedSender<Result<Assignment, TransportError>>;

pub struct Scripted {
    events: Mutex<Option<mpsc::UnboundedReceiver<Result<Assignment, TransportError>>>>,
    /// What `group_positions` answers.
    pub positions: Mutex<Vec<GroupPosition>>,
    subscribed: AtomicU32,
}

impl Scripted {
    /// How often `subscribe` was called.
    pub fn subscriptions(&self) -> u32 {
        self.subscribed.load(Ordering::SeqCst)
    }
}

/// A scripted transport and the sender of its assignments.
pub fn scripted() -> (Arc<Scripted>, Script) {
    let (tx, rx) = mpsc::unbounded_channel();
    let t = Scripted { events: Mutex::new(Some(rx)), positions: Mutex::new(Vec::new()), subscribed: AtomicU32::new(0) };
    (Arc::new(t), tx)
}

struct ScriptedSub(mpsc::UnboundedReceiver<Result<Assignment, TransportError>>);

#[async_trait]
impl Subscription for ScriptedSub {
    async fn next(&mut self) -> Result<Assignment, TransportError> {
        match self.0.recv().await {
            Some(a) => a,
            None => std::future::pending().await,
        }
    }
}

/// A reader of partition `.0` that never yields a message.
pub struct Idle(pub u32);

#[async_trait]
impl PartitionReader for Idle {
    fn partition(&self) -> u32 {
        self.0
    }
    async fn fetch(&mut self, _max: usize, _out: &mut Vec<PipelineMessage>) -> Result<(), TransportError> {
        std::future::pending().await
    }
    async fn commit(&mut self, _last: &PipelineMessage) -> Result<(), TransportError> {
        Ok(())
    }
}

/// The scripted transport's producer: it carries no messages.
struct Refuse;

#[async_trait]
impl Producer for Refuse {
    async fn send(&self, _entity: &str, _batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        Err(TransportError::Closed { transport: "scripted".into() })
    }
}

#[async_trait]
impl Transport for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(Refuse)
    }
    /// The first subscription replays the script; later ones wait forever.
    async fn subscribe(&self, _e: &str, _g: &str, _s: StartPosition) -> Result<Box<dyn Subscription>, TransportError> {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
        let rx = self.events.lock().unwrap().take().unwrap_or_else(|| mpsc::unbounded_channel().1);
        Ok(Box::new(ScriptedSub(rx)))
    }
    async fn partitions(&self, _e: &str) -> Result<Vec<PartitionInfo>, TransportError> {
        Ok(vec![])
    }
    async fn ensure(&self, _e: &[EntitySpec], _g: &[GroupSpec]) -> Result<(), TransportError> {
        Ok(())
    }
    async fn group_positions(&self, _e: &str, _g: &str) -> Result<Vec<GroupPosition>, TransportError> {
        Ok(self.positions.lock().unwrap().clone())
    }
    async fn open_reader(&self, _e: &str, _p: u32, _f: Seek) -> Result<Box<dyn PartitionReader>, TransportError> {
        Err(TransportError::ReadOnly)
    }
}
