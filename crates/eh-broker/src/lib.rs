//! A local Azure Event Hubs test broker (AMQP 1.0, Event Hubs dialect), built on
//! fe2o3-amqp's acceptor.
//!
//! It speaks enough of the service protocol for the official SDKs (Rust
//! `azure_messaging_eventhubs` 0.16, Python `azure-eventhub` 5.15) to produce, consume,
//! read hub/partition properties and authorize, over plain TCP:
//!
//! - SASL ANONYMOUS/PLAIN/MSSBCBS all accepted; any Open hostname; CBS tokens are
//!   accepted unchecked (`status-code` 202).
//! - `$management` READ of `com.microsoft:eventhub` and `com.microsoft:partition`.
//! - Send links to `hub` or `hub/Partitions/N` (attach carries `max-message-size`);
//!   batches (format `0x80013700`) are split into events; partition keys use the
//!   service's hash ([`hash::partition_for_key`]).
//! - Receive links from `hub/ConsumerGroups/<cg>/Partitions/<n>` with selector filters
//!   (offset, sequence number, enqueued time, `-1`, `@latest`), pre-settled deliveries,
//!   epochs (`com.microsoft:epoch`) with `amqp:link:stolen`.
//! - Fault injection through [`Faults`].
//!
//! Client quirks the broker accommodates (found against the Python SDK's `pyamqp`):
//! performatives are re-encoded with all their fields ([`wire`](crate) module), Begin
//! carries an explicit `handle-max`, dispositions are always settled (receiver settle
//! mode `first`), and deliveries to receivers are always pre-settled (sender settle mode
//! `settled`) although Python asks for `unsettled`.
//!
//! Everything is in memory: no retention, no persistence, no TLS, no quotas (e.g. no
//! limit of 5 receivers per consumer group and partition), no checkpoint store (that is
//! blob storage, not Event Hubs). Hubs are created on first use.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use conveyor_eh_broker::{Broker, BrokerConfig};
//! let broker = Broker::start(BrokerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() }).await?;
//! let cs = format!(
//!     "Endpoint=sb://{};SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true",
//!     broker.local_addr()
//! );
//! # let _ = cs;
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

mod addr;
mod conn;
mod faults;
pub use conveyor_eh_hash as hash;
mod links;
mod mgmt;
mod state;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fe2o3_amqp_types::messaging::Body;
use fe2o3_amqp_types::primitives::{SimpleValue, Value};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

pub use faults::{FaultCounts, Faults};

use state::{State, lock};

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to bind (port 0 picks a free port; see [`Broker::local_addr`]).
    pub listen: SocketAddr,
    /// Partition count of hubs created on first use.
    pub partitions: u32,
    /// `max-message-size` announced on every link attach.
    pub max_message_size: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 5672)), partitions: 4, max_message_size: 1_048_576 }
    }
}

/// One stored event, as seen by tests.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub partition: u32,
    pub sequence_number: i64,
    pub offset: i64,
    /// Data sections concatenated; an `amqp-value` string/binary body as its bytes; other
    /// bodies in their debug rendering.
    pub body: Vec<u8>,
    pub partition_key: Option<String>,
    /// Application properties rendered as text (binary → lossy UTF-8).
    pub properties: Vec<(String, String)>,
}

pub(crate) struct Shared {
    pub(crate) cfg: BrokerConfig,
    pub(crate) state: State,
    pub(crate) faults: faults::FaultState,
    /// Kill switches (socket pump tasks) of live connections.
    pub(crate) conns: Mutex<HashMap<u64, AbortHandle>>,
    next_conn: AtomicU64,
    /// Produce deliveries stored (a batch is one).
    pub(crate) deliveries: AtomicU64,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Aborts every socket pump; returns how many connections were cut.
    pub(crate) fn kill_connections(&self) -> u32 {
        let pumps: Vec<AbortHandle> = lock(&self.conns).drain().map(|(_, h)| h).collect();
        for p in &pumps {
            p.abort();
        }
        pumps.len() as u32
    }
}

/// A running broker. Dropping it stops it too (like [`Broker::shutdown`], without waiting).
pub struct Broker {
    shared: Arc<Shared>,
    faults: Faults,
    local_addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            self.shared.kill_connections();
        }
    }
}

impl Broker {
    /// Binds `cfg.listen` and starts accepting connections.
    pub async fn start(cfg: BrokerConfig) -> std::io::Result<Broker> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: State::new(cfg.partitions),
            cfg,
            faults: Default::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            deliveries: AtomicU64::new(0),
        });
        let accept = tokio::spawn(conn::accept_loop(listener, shared.clone()));
        tracing::info!(%local_addr, "event hubs test broker listening");
        Ok(Broker { faults: Faults { shared: shared.clone() }, shared, local_addr, accept: Some(accept) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A connection string for this broker (both SDKs dial plain AMQP with it; the Rust
    /// SDK also needs `with_custom_endpoint(format!("amqp://{addr}"))`).
    pub fn connection_string(&self) -> String {
        format!("Endpoint=sb://{};SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true", self.local_addr)
    }

    /// Fault switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Creates a hub with `partitions` partitions if it does not exist yet (an existing hub
    /// keeps its partitions).
    pub fn create_hub(&self, hub: &str, partitions: u32) {
        self.shared.state.create(hub, partitions);
    }

    /// How many produce deliveries (a batch counts once) were stored.
    pub fn deliveries(&self) -> u64 {
        self.shared.deliveries.load(Ordering::Relaxed)
    }

    /// Every stored event of `hub` (name matched case-insensitively), by partition then
    /// sequence number. Empty for an unknown hub.
    pub fn events(&self, hub: &str) -> Vec<StoredEvent> {
        let Some(h) = self.shared.state.existing(hub) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in &h.partitions {
            for r in p.all() {
                out.push(StoredEvent {
                    partition: p.id,
                    sequence_number: r.seq,
                    offset: r.offset,
                    body: body_bytes(&r.message.body),
                    partition_key: r.partition_key.clone(),
                    properties: r
                        .message
                        .application_properties
                        .as_ref()
                        .map(|ap| ap.0.iter().map(|(k, v)| (k.clone(), simple_text(v))).collect())
                        .unwrap_or_default(),
                });
            }
        }
        out
    }

    /// The first half of a service restart: stops accepting and cuts every
    /// connection, keeping every hub's events (the service's storage is
    /// durable; only its front end goes away). [`Broker::resume`] ends it.
    pub async fn suspend(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let cut = self.shared.kill_connections();
        tracing::info!(local_addr = %self.local_addr, connections = cut, "event hubs test broker suspended");
    }

    /// Accepts again on the same address, with the state kept.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.accept.is_none() {
            let listener = TcpListener::bind(self.local_addr).await?;
            self.accept = Some(tokio::spawn(conn::accept_loop(listener, self.shared.clone())));
            tracing::info!(local_addr = %self.local_addr, "event hubs test broker resumed");
        }
        Ok(())
    }

    /// Stops accepting, cuts every connection and ends all broker tasks.
    pub async fn shutdown(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        self.shared.kill_connections();
        tracing::info!(local_addr = %self.local_addr, "event hubs test broker stopped");
    }
}

fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(v) => match &v.0 {
            Value::Binary(b) => b.to_vec(),
            Value::String(s) => s.as_bytes().to_vec(),
            other => format!("{other:?}").into_bytes(),
        },
        Body::Sequence(s) => format!("{s:?}").into_bytes(),
        Body::Empty => Vec::new(),
    }
}

fn simple_text(v: &SimpleValue) -> String {
    match v {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(x) => x.to_string(),
        SimpleValue::Ushort(x) => x.to_string(),
        SimpleValue::Uint(x) => x.to_string(),
        SimpleValue::Ulong(x) => x.to_string(),
        SimpleValue::Byte(x) => x.to_string(),
        SimpleValue::Short(x) => x.to_string(),
        SimpleValue::Int(x) => x.to_string(),
        SimpleValue::Long(x) => x.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Null => String::new(),
        other => format!("{other:?}"),
    }
}

/// Command-line options of the broker (`conveyor-eh-broker`, `conveyor dev eventhubs`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on (plain AMQP, no TLS).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub listen: SocketAddr,
    /// Partitions of each hub (hubs are created on first use).
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// max-message-size announced on link attach, in bytes.
    #[arg(long, default_value_t = 1_048_576)]
    pub max_message_size: u64,
}

/// Runs the broker until SIGINT/SIGTERM. Prints `conveyor-eh-broker listening on ADDR`
/// on stdout once bound.
pub async fn serve(args: Args) -> std::io::Result<()> {
    let broker = Broker::start(BrokerConfig {
        listen: args.listen,
        partitions: args.partitions,
        max_message_size: args.max_message_size,
    })
    .await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "conveyor-eh-broker listening on {}", broker.local_addr())?;
        out.flush()?;
    }
    wait_for_signal().await?;
    broker.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
