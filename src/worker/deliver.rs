//! Delivery: a batch's writes sorted into buckets — one per output (with
//! `tee` copies), the retry entity, the dead-letter entity — and sent by one
//! send path, all buckets at once, waiting for every acknowledgement.
//!
//! A target that refuses a message *for good* (`Permanent`: too large, a
//! header it cannot carry) fails the whole send; the bucket is then sent one
//! message at a time to find the refused ones. A refused output or retry
//! message is dead-lettered instead (the lane builds its envelope); a
//! refused envelope is sent again trimmed (no payload, its size and SHA-256
//! instead). When even that is refused, or there is no dead-letter entity,
//! the delivery is *stuck*: the lane pauses with the reason and tries again
//! later, and the batch stays uncommitted — a restart loop is never the
//! outcome. What was acknowledged leaves its bucket, so a second call sends
//! only the rest. Any other failure ends the lane (the batch is redelivered).

use super::{OutputTarget, WorkerSpec};
use crate::classify::ErrorCategory;
use crate::consume::ConsumeError;
use crate::dlq::Envelope;
use crate::stages::Emit;
use crate::transport::{OutboundMessage, Refusal, TransportError};
use bytes::Bytes;

/// Messages to write to one target, each with the index (in the batch) of
/// the message it came from (`sources[i]` for `messages[i]`).
#[derive(Default)]
pub(super) struct Bucket {
    sources: Vec<usize>,
    messages: Vec<OutboundMessage>,
}

impl Bucket {
    fn push(&mut self, source: usize, message: OutboundMessage) {
        self.sources.push(source);
        self.messages.push(message);
    }

    fn len(&self) -> usize {
        self.messages.len()
    }
}

/// A message a target refused for good: its batch index, itself, why.
type Rejected = (usize, OutboundMessage, TransportError);

/// A dead letter: a batch message's envelope.
pub(super) struct Dead {
    pub envelope: Envelope,
    pub key: Option<Bytes>,
    pub category: ErrorCategory,
}

/// Why a delivery did not finish.
pub(super) enum DeliverError {
    /// Worth retrying the batch from the start (the lane ends; the
    /// supervisor restarts it).
    Failed(ConsumeError),
    /// Refused for good and nowhere left to put it: the lane pauses.
    Stuck { entity: String, reason: String, messages: usize },
}

/// Builds the dead letter for batch message `source`, refused by `entity`
/// with `error`; `None` when the worker has no dead-letter entity.
pub(super) type Refused<'a> = dyn Fn(usize, &str, &TransportError) -> Option<Dead> + Sync + 'a;

/// One batch's writes.
pub(super) struct Delivery {
    outputs: Vec<Bucket>,
    retries: Bucket,
    dead: Vec<Dead>,
}

impl Delivery {
    pub fn new(outputs: usize) -> Self {
        Delivery {
            outputs: (0..outputs).map(|_| Bucket::default()).collect(),
            retries: Bucket::default(),
            dead: Vec::new(),
        }
    }

    /// Messages still to write.
    pub fn len(&self) -> usize {
        self.outputs.iter().map(Bucket::len).sum::<usize>() + self.retries.len() + self.dead.len()
    }

    /// A stage's emit, and its copies to the `tee` outputs when it went to
    /// `default`.
    pub fn emit(&mut self, source: usize, e: Emit, tee: &Option<(usize, Vec<usize>)>) {
        if let Some((default, tees)) = tee
            && e.output == *default
        {
            for t in tees {
                self.outputs[*t].push(source, e.message.clone());
            }
        }
        self.outputs[e.output].push(source, e.message);
    }

    pub fn retry(&mut self, source: usize, message: OutboundMessage) {
        self.retries.push(source, message);
    }

    pub fn dead(&mut self, d: Dead) {
        self.dead.push(d);
    }

    /// Sends everything and waits for the acknowledgements (see the module
    /// docs).
    pub async fn send(&mut self, spec: &WorkerSpec, refused: &Refused<'_>) -> Result<(), DeliverError> {
        let outputs = futures::future::join_all(
            self.outputs.iter_mut().zip(&spec.outputs).map(|(items, target)| send_items(target, items, None)),
        );
        let retry_target = spec.retry.as_ref().map(|r| &r.via);
        let retries = async {
            match retry_target {
                Some(t) => send_items(t, &mut self.retries, spec.retry.as_ref().map(|r| &r.scheduled)).await,
                None => Ok(Vec::new()),
            }
        };
        let (outs, retried) = futures::future::join(outputs, retries).await;
        let mut rejected = Vec::new();
        for (r, target) in outs.into_iter().zip(&spec.outputs) {
            rejected.extend(r?.into_iter().map(|(source, message, e)| (source, message, target, e)));
        }
        if let Some(t) = retry_target {
            rejected.extend(retried?.into_iter().map(|(source, message, e)| (source, message, t, e)));
        }
        let mut stuck: Option<DeliverError> = None;
        for (source, message, target, e) in rejected {
            spec.metrics.refused(&target.entity).inc();
            tracing::warn!(
                worker = %spec.name, message_topic = %spec.host.entity, message_consumer_group = %spec.host.group,
                entity = %target.entity, error = %e, source_position = source,
                "an output refused a message for good; it is dead-lettered instead"
            );
            match refused(source, &target.entity, &e) {
                Some(d) => self.dead.push(d),
                None => {
                    // keep it: a later attempt may find the output changed
                    let reason = format!("{} refused a message and the worker has no dead_letter: {e}", target.entity);
                    let messages = match &stuck {
                        Some(DeliverError::Stuck { messages, .. }) => messages + 1,
                        _ => 1,
                    };
                    stuck = Some(DeliverError::Stuck { entity: target.entity.clone(), reason, messages });
                    self.outputs_or_retries(target, spec).push(source, message);
                }
            }
        }
        self.send_dead(spec).await?;
        match stuck {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The bucket that feeds `target` (to put back what could not go).
    fn outputs_or_retries(&mut self, target: &OutputTarget, spec: &WorkerSpec) -> &mut Bucket {
        match spec.outputs.iter().position(|o| std::ptr::eq(o, target)) {
            Some(i) => &mut self.outputs[i],
            None => &mut self.retries,
        }
    }

    async fn send_dead(&mut self, spec: &WorkerSpec) -> Result<(), DeliverError> {
        if self.dead.is_empty() {
            return Ok(());
        }
        let Some(target) = &spec.dead_letter else {
            return Err(DeliverError::Stuck {
                entity: spec.host.entity.clone(),
                reason: "a message must be dead-lettered but the worker has no dead_letter".into(),
                messages: self.dead.len(),
            });
        };
        let msgs: Vec<OutboundMessage> = self.dead.iter().map(|d| d.envelope.to_message(d.key.clone())).collect();
        match target.producer.send(&target.physical, msgs).await {
            Ok(_) => {
                for d in self.dead.drain(..) {
                    target.produced.inc();
                    spec.metrics.dead_lettered(d.category).inc();
                }
                return Ok(());
            }
            Err(e) if e.category() != ErrorCategory::Permanent => {
                return Err(DeliverError::Failed(ConsumeError::Produce { entity: target.entity.clone(), source: e }));
            }
            Err(_) => {}
        }
        // one at a time; a refused envelope goes again trimmed
        let mut stuck = Vec::new();
        for mut d in std::mem::take(&mut self.dead) {
            let mut result = target.producer.send(&target.physical, vec![d.envelope.to_message(d.key.clone())]).await;
            if let Err(e) = &result
                && e.category() == ErrorCategory::Permanent
            {
                d.envelope.trim();
                spec.metrics.trimmed().inc();
                tracing::warn!(
                    worker = %spec.name, message_topic = %spec.host.entity, entity = %target.entity, error = %e,
                    message_partition = d.envelope.origin.partition, message_offset = d.envelope.origin.position,
                    "the dead-letter entity refused the envelope; writing it without the payload"
                );
                let key = d.key.clone().filter(|k| k.len() <= 1024);
                result = target.producer.send(&target.physical, vec![d.envelope.to_message(key)]).await;
            }
            match result {
                Ok(_) => {
                    target.produced.inc();
                    spec.metrics.dead_lettered(d.category).inc();
                }
                Err(e) if e.category() == ErrorCategory::Permanent => stuck.push((d, e)),
                Err(e) => {
                    self.dead.push(d);
                    self.dead.extend(stuck.into_iter().map(|(d, _)| d));
                    return Err(DeliverError::Failed(ConsumeError::Produce {
                        entity: target.entity.clone(),
                        source: e,
                    }));
                }
            }
        }
        if stuck.is_empty() {
            return Ok(());
        }
        let reason = format!(
            "{} refuses even a trimmed dead-letter envelope: {}",
            target.entity,
            stuck.first().map(|(_, e)| e.to_string()).unwrap_or_default()
        );
        let messages = stuck.len();
        self.dead.extend(stuck.into_iter().map(|(d, _)| d));
        Err(DeliverError::Stuck { entity: target.entity.clone(), reason, messages })
    }
}

/// Sends `bucket` to `target`; on a permanent refusal, one at a time.
/// Acknowledged messages leave the bucket; returns the refused ones.
async fn send_items(
    target: &OutputTarget,
    bucket: &mut Bucket,
    also_count: Option<&prometheus_client::metrics::counter::Counter>,
) -> Result<Vec<Rejected>, DeliverError> {
    if bucket.messages.is_empty() {
        return Ok(Vec::new());
    }
    let failed = |e| DeliverError::Failed(ConsumeError::Produce { entity: target.entity.clone(), source: e });
    let count = |n: usize| {
        target.produced.inc_by(n as u64);
        if let Some(c) = also_count {
            c.inc_by(n as u64);
        }
    };
    // a failure that is not a refusal ends the lane (the batch is delivered
    // again), so the bucket's messages can go without a copy
    let n = bucket.messages.len();
    match target.producer.send_or_return(&target.physical, std::mem::take(&mut bucket.messages)).await {
        Ok(_) => {
            count(n);
            bucket.sources.clear();
            return Ok(Vec::new());
        }
        Err(Refusal { error, batch: Some(batch) }) if error.category() == ErrorCategory::Permanent => {
            bucket.messages = batch;
        }
        Err(Refusal { error, .. }) => return Err(failed(error)),
    }
    let mut refused = Vec::new();
    let (sources, messages) = (std::mem::take(&mut bucket.sources), std::mem::take(&mut bucket.messages));
    for (source, message) in sources.into_iter().zip(messages) {
        match target.producer.send_or_return(&target.physical, vec![message]).await {
            Ok(_) => count(1),
            Err(Refusal { error, batch: Some(mut one) }) if error.category() == ErrorCategory::Permanent => {
                match one.pop() {
                    Some(message) => refused.push((source, message, error)),
                    None => return Err(failed(error)),
                }
            }
            Err(Refusal { error, .. }) => {
                // what was refused stays refused; the rest is sent again later
                return Err(failed(error));
            }
        }
    }
    Ok(refused)
}
