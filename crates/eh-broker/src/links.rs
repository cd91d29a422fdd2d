//! Send (produce) and receive (consume) links.
//!
//! Produce: every delivery is stored, then settled `Accepted`. A batch delivery
//! (message-format `0x80013700`) carries one serialized AMQP message per data section;
//! each becomes its own event, all in one partition: the partition of the link address,
//! else the hash of `x-opt-partition-key` (envelope, else first message), else
//! round-robin. Faults reject with `com.microsoft:server-busy`; the broker never uses
//! `Released`/`Modified` (the Rust SDK treats those as success).
//!
//! Consume: events are sent pre-settled, as link credit allows, waking on appends; the
//! link ends when the client detaches (answered, or `close()` hangs on the client) or
//! when it is kicked (epoch steal, fault), with the kick's error.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{Receiver, RecvError, Sender};
use fe2o3_amqp_types::definitions::{self, AmqpError};
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::{Symbol, Value};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::Shared;
use crate::hash::partition_for_key;
use crate::state::{ANN_PARTITION_KEY, AmqpMessage, Hub, Partition, RxGuard, annotation_string};

/// Message format of an Event Hubs batch.
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
const READ_CHUNK: usize = 64;

/// Attach already answered: detach at once with `error`.
pub(crate) async fn refuse(endpoint: LinkEndpoint, error: definitions::Error) {
    let _ = match endpoint {
        LinkEndpoint::Sender(tx) => timeout(CLOSE_TIMEOUT, tx.close_with_error(error)).await.map(|_| ()),
        LinkEndpoint::Receiver(rx) => timeout(CLOSE_TIMEOUT, rx.close_with_error(error)).await.map(|_| ()),
    };
}

fn decode_error(desc: impl Into<String>) -> definitions::Error {
    definitions::Error::new(AmqpError::DecodeError, Some(desc.into()), None)
}

/// Events of one delivery: (message, size in bytes) each, and the batch's partition key.
type Events = (Vec<(AmqpMessage, usize)>, Option<String>);

/// A delivery that is not a valid event or batch of events.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadDelivery(String);

/// Splits a delivery into its events.
fn events_of(format: u32, message: AmqpMessage) -> Result<Events, BadDelivery> {
    if format == BATCH_FORMAT {
        let envelope_key = annotation_string(&message, ANN_PARTITION_KEY);
        let sections = match message.body {
            Body::Data(batch) => batch,
            _ => return Err(BadDelivery("a batch message must carry data sections".to_owned())),
        };
        let mut events = Vec::new();
        for data in sections {
            let bytes = data.0.into_vec();
            let Deserializable(inner) = serde_amqp::from_slice::<Deserializable<AmqpMessage>>(&bytes)
                .map_err(|e| BadDelivery(format!("batch entry is not an AMQP message: {e}")))?;
            events.push((inner, bytes.len()));
        }
        let key = envelope_key.or_else(|| events.first().and_then(|(m, _)| annotation_string(m, ANN_PARTITION_KEY)));
        Ok((events, key))
    } else {
        let size = serde_amqp::to_vec(&Serializable(&message)).map(|v| v.len()).unwrap_or(1);
        let key = annotation_string(&message, ANN_PARTITION_KEY);
        Ok((vec![(message, size)], key))
    }
}

pub(crate) async fn produce(shared: Arc<Shared>, mut rx: Receiver, hub: Arc<Hub>, partition: Option<u32>) {
    let link = rx.name().to_owned();
    loop {
        let delivery = match rx.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(RecvError::MessageDecode(e)) => {
                warn!(%link, error = ?e, "undecodable delivery; closing the link");
                let _ = timeout(CLOSE_TIMEOUT, rx.close_with_error(decode_error(format!("{e:?}")))).await;
                return;
            }
            Err(e) => {
                debug!(%link, error = ?e, "send link ended");
                let _ = timeout(CLOSE_TIMEOUT, rx.close()).await;
                return;
            }
        };
        let format = delivery.message_format().unwrap_or(0);
        let (info, message) = delivery.into_parts();
        if shared.faults.take_server_busy() {
            debug!(%link, "fault: rejecting send with server-busy");
            let err = definitions::Error::new(
                definitions::ErrorCondition::Custom(Symbol::from("com.microsoft:server-busy")),
                Some("The server is busy (fault injected by the test broker). Please retry.".to_owned()),
                None,
            );
            if let Err(e) = rx.reject(info, err).await {
                debug!(%link, error = ?e, "reject disposition failed");
            }
            continue;
        }
        match events_of(format, message) {
            Ok((events, key)) if !events.is_empty() => {
                let p = partition
                    .or_else(|| key.as_deref().map(|k| partition_for_key(k, hub.partitions.len() as u32)))
                    .unwrap_or_else(|| hub.next_round_robin());
                let n = events.len();
                let first = hub.partitions[p as usize].append(events, key.as_deref());
                shared.deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(%link, hub = %hub.name, partition = p, events = n, first_seq = first, "stored");
                // Answer after a network-like pause: fe2o3-amqp 0.16's sender records an
                // unsettled delivery only after its transfer is written, so an outcome
                // that arrives within microseconds (loopback) can be missed and the
                // client's send then waits forever. Azure answers in milliseconds.
                tokio::time::sleep(ACK_DELAY).await;
                if let Err(e) = rx.accept(info).await {
                    debug!(%link, error = ?e, "accept disposition failed");
                }
            }
            Ok(_) => {
                // An empty batch: nothing to store.
                if let Err(e) = rx.accept(info).await {
                    debug!(%link, error = ?e, "accept disposition failed");
                }
            }
            Err(desc) => {
                warn!(%link, %desc, "rejecting delivery");
                if let Err(e) = rx.reject(info, decode_error(desc.to_string())).await {
                    debug!(%link, error = ?e, "reject disposition failed");
                }
            }
        }
    }
}

enum Wake {
    Data,
    Detached,
    Kicked(Option<definitions::Error>),
}

/// Pause before a send's outcome (see the produce loop).
const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

pub(crate) async fn consume(
    mut tx: Sender,
    partition: Arc<Partition>,
    mut next: usize,
    mut kicked: oneshot::Receiver<definitions::Error>,
    guard: RxGuard,
) {
    let link = tx.name().to_owned();
    let mut changes = partition.subscribe();
    let mut kick_open = true;
    let outcome = 'outer: loop {
        let batch = partition.read_from(next, READ_CHUNK);
        if batch.is_empty() {
            changes.borrow_and_update();
            if partition.len() > next {
                continue;
            }
            let wake = tokio::select! {
                _ = tx.on_detach() => Wake::Detached,
                k = &mut kicked, if kick_open => Wake::Kicked(k.ok()),
                r = changes.changed() => if r.is_ok() { Wake::Data } else { Wake::Detached },
            };
            match wake {
                Wake::Data => continue,
                Wake::Kicked(None) => {
                    kick_open = false;
                    continue;
                }
                other => break other,
            }
        }
        for record in batch {
            let sendable = Sendable::builder().message(Message::clone(&record.message)).settled(true).build();
            let sent = tokio::select! {
                r = tx.send(sendable) => Ok(r),
                k = &mut kicked, if kick_open => Err(k.ok()),
            };
            match sent {
                Ok(Ok(_)) => next += 1,
                Ok(Err(e)) => {
                    // The client detached while we waited for credit (already answered).
                    debug!(%link, error = ?e, "receive link ended during send");
                    drop(guard);
                    return;
                }
                Err(Some(err)) => break 'outer Wake::Kicked(Some(err)),
                Err(None) => {
                    kick_open = false;
                    break;
                }
            }
        }
    };
    drop(guard);
    match outcome {
        Wake::Kicked(Some(err)) => {
            debug!(%link, partition = partition.id, error = ?err.condition, "kicking receiver");
            let _ = timeout(CLOSE_TIMEOUT, tx.close_with_error(err)).await;
        }
        _ => {
            debug!(%link, partition = partition.id, "receiver detached by client");
            let _ = timeout(CLOSE_TIMEOUT, tx.close()).await;
        }
    }
}
