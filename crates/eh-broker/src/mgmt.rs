//! `$cbs` and `$management` request/response nodes.
//!
//! - `$cbs` `put-token`: answered `status-code` 202 (token not checked), or 401 when the
//!   fault is armed.
//! - `$management` `READ` of `com.microsoft:eventhub` / `com.microsoft:partition`: a map
//!   body with the field names and AMQP types the SDKs decode (the Rust SDK rejects or
//!   panics on other types; `partition_ids` is an AMQP *array* of strings).
//!
//! Every reply carries `correlation-id` = the request's `message-id` and the
//! application properties `status-code` (int) and `status-description` (string).
//! Routing: a request with `reply-to` goes to the reply link (same session) whose
//! target or source address matches it (Rust: `rust_amqp_cbs`, `eventhubs_management`);
//! without `reply-to` to the reply link whose source is the node (Python).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::link::{Receiver, RecvError, Sender};
use fe2o3_amqp_types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp_types::primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::Shared;
use crate::addr::{self, Node};
use crate::state::{AmqpMessage, lock};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a reply waits for its reply link to attach.
const REPLY_LINK_WAIT: Duration = Duration::from_secs(5);

static NEXT_REPLY_LINK: AtomicU64 = AtomicU64::new(1);

/// Reply links of one session, by normalized address.
#[derive(Default)]
pub(crate) struct Replies {
    links: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<AmqpMessage>)>>,
}

impl Replies {
    fn find(&self, keys: &[String]) -> Option<mpsc::UnboundedSender<AmqpMessage>> {
        let links = lock(&self.links);
        keys.iter().find_map(|k| links.get(k).map(|(_, tx)| tx.clone()))
    }

    async fn deliver(&self, reply_to: Option<&str>, node: Node, reply: AmqpMessage) {
        let mut keys = Vec::new();
        if let Some(r) = reply_to {
            keys.push(addr::reply_key(r));
        }
        keys.push(node.address().to_owned());
        let deadline = tokio::time::Instant::now() + REPLY_LINK_WAIT;
        loop {
            if let Some(tx) = self.find(&keys) {
                if tx.send(reply).is_err() {
                    debug!(?keys, "reply link went away before the reply");
                }
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(?keys, "no reply link for a {} request; reply dropped", node.address());
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Owns one reply link: forwards replies pre-settled until the client detaches.
pub(crate) async fn reply_link(mut tx: Sender, keys: Vec<String>, replies: Arc<Replies>) {
    let id = NEXT_REPLY_LINK.fetch_add(1, Ordering::Relaxed);
    let (queue, mut rx) = mpsc::unbounded_channel();
    {
        let mut links = lock(&replies.links);
        for k in &keys {
            links.insert(k.clone(), (id, queue.clone()));
        }
    }
    drop(queue);
    loop {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = tx.on_detach() => None,
        };
        let Some(msg) = next else { break };
        let sendable = Sendable::builder().message(msg).settled(true).build();
        if let Err(e) = tx.send(sendable).await {
            debug!(error = ?e, "reply link ended during send");
            lock(&replies.links).retain(|_, (i, _)| *i != id);
            return;
        }
    }
    lock(&replies.links).retain(|_, (i, _)| *i != id);
    let _ = timeout(CLOSE_TIMEOUT, tx.close()).await;
}

fn app_prop(m: &AmqpMessage, key: &str) -> Option<String> {
    let ap = m.application_properties.as_ref()?;
    match ap.0.get(key)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn reply(request: &AmqpMessage, status: i32, description: &str, body: Value) -> AmqpMessage {
    let correlation =
        request.properties.as_ref().and_then(|p| p.message_id.clone().or_else(|| p.correlation_id.clone()));
    let mut props = Properties::builder().build();
    props.correlation_id = correlation;
    let mut ap = OrderedMap::new();
    ap.insert("status-code".to_owned(), SimpleValue::Int(status));
    ap.insert("status-description".to_owned(), SimpleValue::String(description.to_owned()));
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(props),
        application_properties: Some(ApplicationProperties(ap)),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_owned()), v);
    }
    Value::Map(m)
}

fn cbs_reply(shared: &Shared, req: &AmqpMessage) -> AmqpMessage {
    let op = app_prop(req, "operation").unwrap_or_default();
    if !op.eq_ignore_ascii_case("put-token") {
        return reply(req, 400, &format!("unsupported CBS operation {op:?}"), Value::Null);
    }
    let name = app_prop(req, "name").unwrap_or_default();
    if shared.faults.take_cbs_unauthorized() {
        debug!(%name, "fault: CBS put-token answered 401");
        return reply(req, 401, "Unauthorized (fault injected by the test broker)", Value::Null);
    }
    debug!(%name, "CBS put-token accepted");
    reply(req, 202, "Accepted", Value::Null)
}

fn mgmt_reply(shared: &Shared, req: &AmqpMessage) -> AmqpMessage {
    let op = app_prop(req, "operation").unwrap_or_default();
    let kind = app_prop(req, "type").unwrap_or_default();
    let Some(name) = app_prop(req, "name") else {
        return reply(req, 400, "missing 'name'", Value::Null);
    };
    if !op.eq_ignore_ascii_case("READ") {
        return reply(req, 400, &format!("unsupported management operation {op:?}"), Value::Null);
    }
    let hub = shared.state.hub(&name);
    match kind.as_str() {
        "com.microsoft:eventhub" => {
            let ids: Vec<Value> = (0..hub.partitions.len()).map(|i| Value::String(i.to_string())).collect();
            let body = map(vec![
                ("name", Value::String(hub.name.clone())),
                ("type", Value::String("com.microsoft:eventhub".to_owned())),
                ("created_at", Value::Timestamp(Timestamp::from_milliseconds(hub.created_ms))),
                ("partition_count", Value::Int(hub.partitions.len() as i32)),
                ("partition_ids", Value::Array(Array(ids))),
            ]);
            reply(req, 200, "OK", body)
        }
        "com.microsoft:partition" => {
            let pid = app_prop(req, "partition").unwrap_or_default();
            let Some(p) = pid.parse::<u32>().ok().and_then(|p| hub.partition(p)) else {
                return reply(
                    req,
                    404,
                    &format!("The partition '{pid}' does not exist in event hub '{}'", hub.name),
                    Value::Null,
                );
            };
            let last = p.last();
            let body = map(vec![
                ("type", Value::String("com.microsoft:partition".to_owned())),
                ("name", Value::String(hub.name.clone())),
                ("partition", Value::String(p.id.to_string())),
                ("begin_sequence_number", Value::Long(0)),
                ("last_enqueued_sequence_number", Value::Long(last.as_ref().map_or(-1, |r| r.seq))),
                ("last_enqueued_sequence_number_epoch", Value::Long(0)),
                (
                    "last_enqueued_offset",
                    Value::String(last.as_ref().map_or("-1".to_owned(), |r| r.offset.to_string())),
                ),
                (
                    "last_enqueued_time_utc",
                    Value::Timestamp(Timestamp::from_milliseconds(last.as_ref().map_or(0, |r| r.enqueued_ms))),
                ),
                ("is_partition_empty", Value::Bool(last.is_none())),
            ]);
            reply(req, 200, "OK", body)
        }
        other => reply(req, 404, &format!("unknown entity type {other:?}"), Value::Null),
    }
}

/// Serves the requests of one request link (client sender to `$cbs`/`$management`).
pub(crate) async fn serve_requests(shared: Arc<Shared>, mut rx: Receiver, node: Node, replies: Arc<Replies>) {
    loop {
        let delivery = match rx.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(RecvError::MessageDecode(e)) => {
                warn!(error = ?e, node = node.address(), "undecodable request; closing the link");
                let err = fe2o3_amqp_types::definitions::Error::new(
                    fe2o3_amqp_types::definitions::AmqpError::DecodeError,
                    Some(format!("{e:?}")),
                    None,
                );
                let _ = timeout(CLOSE_TIMEOUT, rx.close_with_error(err)).await;
                return;
            }
            Err(e) => {
                debug!(error = ?e, node = node.address(), "request link ended");
                let _ = timeout(CLOSE_TIMEOUT, rx.close()).await;
                return;
            }
        };
        let (info, request) = delivery.into_parts();
        if let Err(e) = rx.accept(info).await {
            debug!(error = ?e, "accept disposition failed");
        }
        let response = match node {
            Node::Cbs => cbs_reply(&shared, &request),
            Node::Management => mgmt_reply(&shared, &request),
        };
        let reply_to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        replies.deliver(reply_to.as_deref(), node, response).await;
    }
}
