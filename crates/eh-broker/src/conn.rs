//! TCP accept loop, the connection kill switch, and per-session attach dispatch.
//!
//! Each accepted socket is bridged to the AMQP engine through an in-memory duplex pipe
//! pumped by a task of its own (see [`crate::wire`], which also pads frames for pyamqp); [`crate::Faults::drop_connections`] aborts that pump,
//! which closes the socket abruptly (the client sees a dropped connection, no AMQP
//! `close`) and ends the broker-side engine.
//!
//! SASL: any mechanism the client picks among ANONYMOUS, PLAIN and MSSBCBS succeeds; the
//! Open hostname and CBS tokens are not checked. No TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAcceptor, SessionAcceptor,
    SupportedReceiverSettleModes, SupportedSenderSettleModes,
};
use fe2o3_amqp_types::definitions::{self, AmqpError, LinkError, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp_types::messaging::TargetArchetype;
use fe2o3_amqp_types::performatives::Attach;
use fe2o3_amqp_types::primitives::{Array, Symbol, Value};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::Shared;
use crate::addr::{self, Node, Path};
use crate::links;
use crate::mgmt::{self, Replies};
use crate::state::{Admission, lock};

const EPOCH_PROPERTY: &str = "com.microsoft:epoch";
const HANDLE_MAX: u32 = 65535;

/// Accepts every SASL mechanism offered here, whatever the credentials.
#[derive(Debug, Clone, Default)]
struct AcceptAnySasl;

impl SaslAcceptor for AcceptAnySasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("ANONYMOUS"), Symbol::from("PLAIN"), Symbol::from("MSSBCBS")])
    }

    fn on_init(&mut self, _init: SaslInit) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let id = shared.next_id();
                let (near, far) = tokio::io::duplex(256 * 1024);
                let pump = tokio::spawn(crate::wire::pump(tcp, far));
                lock(&shared.conns).insert(id, pump.abort_handle());
                handlers.spawn(handle_connection(shared.clone(), near, id, peer));
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
}

async fn handle_connection(shared: Arc<Shared>, io: tokio::io::DuplexStream, id: u64, peer: SocketAddr) {
    debug!(conn = id, %peer, "connection accepted");
    let acceptor = ConnectionAcceptor::builder()
        .container_id("conveyor-eh-broker")
        .max_frame_size(65536u32)
        .sasl_acceptor(AcceptAnySasl)
        .build();
    // An explicit handle-max: fe2o3 omits the default (2^32-1) from Begin, and pyamqp
    // then compares against None when it attaches a link.
    let session_acceptor = SessionAcceptor::builder().handle_max(HANDLE_MAX).build();
    match timeout(Duration::from_secs(30), acceptor.accept(io)).await {
        Ok(Ok(mut conn)) => {
            let mut sessions = JoinSet::new();
            while let Some(incoming) = conn.next_incoming_session().await {
                match session_acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => {
                        sessions.spawn(handle_session(shared.clone(), session, id));
                    }
                    Err(e) => warn!(conn = id, error = ?e, "session begin failed"),
                }
                while sessions.try_join_next().is_some() {}
            }
            let _ = timeout(Duration::from_secs(2), conn.close()).await;
        }
        Ok(Err(e)) => debug!(conn = id, error = ?e, "connection open failed"),
        Err(_) => debug!(conn = id, "connection open timed out"),
    }
    if let Some(pump) = lock(&shared.conns).remove(&id) {
        pump.abort();
    }
    debug!(conn = id, "connection ended");
}

fn source_address(a: &Attach) -> Option<String> {
    a.source.as_ref().and_then(|s| s.address.clone())
}

fn target_address(a: &Attach) -> Option<String> {
    match a.target.as_deref() {
        Some(TargetArchetype::Target(t)) => t.address.clone(),
        _ => None,
    }
}

fn epoch_of(a: &Attach) -> Option<i64> {
    let v = a.properties.as_ref()?.get(&Symbol::from(EPOCH_PROPERTY))?;
    match v {
        Value::Long(x) => Some(*x),
        Value::Int(x) => Some(i64::from(*x)),
        Value::Short(x) => Some(i64::from(*x)),
        Value::Byte(x) => Some(i64::from(*x)),
        Value::Ulong(x) => i64::try_from(*x).ok(),
        Value::Uint(x) => Some(i64::from(*x)),
        _ => None,
    }
}

fn not_found(desc: String) -> definitions::Error {
    definitions::Error::new(AmqpError::NotFound, Some(desc), None)
}

async fn handle_session(shared: Arc<Shared>, mut session: ListenerSessionHandle, conn: u64) {
    let replies = Arc::new(Replies::default());
    // Links where the broker receives (client send links, request links): receiver
    // settle mode is always `first`, so dispositions go out settled. (Python's send
    // links ask for `second` but only complete a send on a *settled* disposition.)
    let receiving = LinkAcceptor::builder()
        .max_message_size(shared.cfg.max_message_size)
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    // Links where the broker sends (receive links, reply links): sender settle mode is
    // always `settled`. Python's receive links ask for `unsettled` yet never settle, so
    // an unsettled delivery would wait for a disposition forever.
    let sending = LinkAcceptor::builder()
        .max_message_size(shared.cfg.max_message_size)
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    let mut links = JoinSet::new();
    while let Some(attach) = session.next_incoming_attach().await {
        let remote_sends = attach.role == Role::Sender;
        let (source, target) = (source_address(&attach), target_address(&attach));
        let address = if remote_sends { target.clone() } else { source.clone() }.unwrap_or_default();
        let path = addr::parse(&address);
        let name = attach.name.clone();
        debug!(conn, link = %name, role = ?attach.role, %address, "attach");

        // Epoch and start position are read before the attach is consumed.
        let epoch = epoch_of(&attach);
        let selector = attach.source.as_deref().and_then(addr::selector_text);

        // Decide what to do before accepting (so bad links are accepted and then detached).
        enum Plan {
            Requests(Node),
            Replies,
            Produce(Arc<crate::state::Hub>, Option<u32>),
            Consume(Arc<crate::state::Partition>, crate::state::StartPos, String),
            Refuse(definitions::Error),
        }
        let plan = match (&path, remote_sends) {
            (Path::Node(n), true) => Plan::Requests(*n),
            (Path::Node(_), false) => Plan::Replies,
            (Path::Send { hub, partition }, true) => {
                let h = shared.state.hub(hub);
                match partition {
                    None => Plan::Produce(h, None),
                    Some(p) => match p.parse::<u32>().ok().filter(|p| h.partition(*p).is_some()) {
                        Some(p) => Plan::Produce(h, Some(p)),
                        None => Plan::Refuse(not_found(format!(
                            "The partition '{p}' does not exist in event hub '{}'",
                            h.name
                        ))),
                    },
                }
            }
            (Path::Receive { hub, consumer_group, partition }, false) => {
                let h = shared.state.hub(hub);
                match partition.parse::<u32>().ok().and_then(|p| h.partition(p).cloned()) {
                    None => Plan::Refuse(not_found(format!(
                        "The partition '{partition}' does not exist in event hub '{}'",
                        h.name
                    ))),
                    Some(p) => match selector.as_deref().map(addr::parse_selector).transpose() {
                        Ok(start) => Plan::Consume(
                            p,
                            start.unwrap_or(crate::state::StartPos::Latest),
                            consumer_group.to_lowercase(),
                        ),
                        Err(e) => {
                            Plan::Refuse(definitions::Error::new(AmqpError::InvalidField, Some(e.to_string()), None))
                        }
                    },
                }
            }
            _ => Plan::Refuse(not_found(format!("The messaging entity '{address}' could not be found"))),
        };

        // Epoch admission happens before the attach is answered, so a winning receiver
        // kicks the old ones first.
        let (plan, admission) = match plan {
            Plan::Consume(p, start, cg) => match p.admit(&cg, epoch) {
                Admission::Admitted { guard, kicked } => (Plan::Consume(p, start, cg), Some((guard, kicked))),
                Admission::Refused(desc) => {
                    (Plan::Refuse(definitions::Error::new(LinkError::Stolen, Some(desc), None)), None)
                }
            },
            other => (other, None),
        };

        let acceptor = if remote_sends { &receiving } else { &sending };
        let endpoint = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(e) => e,
            Err(e) => {
                warn!(conn, link = %name, error = ?e, "attach failed");
                continue;
            }
        };
        match (plan, endpoint) {
            (Plan::Requests(node), LinkEndpoint::Receiver(rx)) => {
                links.spawn(mgmt::serve_requests(shared.clone(), rx, node, replies.clone()));
            }
            (Plan::Replies, LinkEndpoint::Sender(tx)) => {
                let keys: Vec<String> = [source, target].into_iter().flatten().map(|a| addr::reply_key(&a)).collect();
                links.spawn(mgmt::reply_link(tx, keys, replies.clone()));
            }
            (Plan::Produce(hub, partition), LinkEndpoint::Receiver(rx)) => {
                links.spawn(links::produce(shared.clone(), rx, hub, partition));
            }
            (Plan::Consume(p, start, _cg), LinkEndpoint::Sender(tx)) => {
                let Some((guard, kicked)) = admission else { continue };
                let next = p.resolve_start(&start);
                debug!(conn, link = %name, partition = p.id, ?start, next, ?epoch, "receiver attached");
                links.spawn(links::consume(tx, p, next, kicked, guard));
            }
            (Plan::Refuse(err), endpoint) => {
                debug!(conn, link = %name, error = ?err, "refusing link");
                links.spawn(links::refuse(endpoint, err));
            }
            (_, endpoint) => {
                links.spawn(links::refuse(endpoint, not_found("unexpected link role".to_owned())));
            }
        }
        while links.try_join_next().is_some() {}
    }
    // The client ended the session (or the connection went away).
    let _ = timeout(Duration::from_secs(2), session.end()).await;
    debug!(conn, "session ended");
}
