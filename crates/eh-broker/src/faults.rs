//! Fault injection for tests.
//!
//! Every method takes `&self` and is thread-safe. Armed counters ("the next n ...")
//! are consumed by the broker as the matching requests arrive; [`Faults::counts`]
//! reports how many faults were actually applied, so tests can assert that the
//! client really saw them.
//!
//! Caveat: [`Faults::steal_partition`] kicks the current receivers like a higher-epoch
//! receiver would, but no phantom receiver stays registered: a client that reconnects
//! afterwards (with any epoch) is admitted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fe2o3_amqp_types::definitions::{self, LinkError};

use crate::Shared;
use crate::state::lock;

/// How many of each fault were applied so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Send deliveries rejected with `com.microsoft:server-busy`.
    pub server_busy: u32,
    /// CBS put-token requests answered with status 401.
    pub cbs_unauthorized: u32,
    /// Receive links detached with `amqp:link:detach-forced`.
    pub detached_receivers: u32,
    /// TCP connections cut.
    pub dropped_connections: u32,
    /// Receive links kicked with `amqp:link:stolen` by [`Faults::steal_partition`].
    pub stolen_receivers: u32,
}

#[derive(Default)]
pub(crate) struct FaultState {
    server_busy_armed: AtomicU32,
    cbs_401_armed: AtomicU32,
    server_busy: AtomicU32,
    cbs_unauthorized: AtomicU32,
    detached_receivers: AtomicU32,
    dropped_connections: AtomicU32,
    stolen_receivers: AtomicU32,
}

fn take_one(armed: &AtomicU32) -> bool {
    armed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
}

impl FaultState {
    /// Consumes one armed server-busy fault; true when this send must be rejected.
    pub(crate) fn take_server_busy(&self) -> bool {
        let hit = take_one(&self.server_busy_armed);
        if hit {
            self.server_busy.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Consumes one armed CBS 401 fault.
    pub(crate) fn take_cbs_unauthorized(&self) -> bool {
        let hit = take_one(&self.cbs_401_armed);
        if hit {
            self.cbs_unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

/// Fault switches of a running [`crate::Broker`].
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

impl Faults {
    /// The next `n` send deliveries are rejected with `com.microsoft:server-busy`.
    pub fn server_busy_sends(&self, n: u32) {
        self.shared.faults.server_busy_armed.store(n, Ordering::Release);
    }

    /// The next `n` CBS put-token requests are answered with status 401.
    pub fn cbs_unauthorized(&self, n: u32) {
        self.shared.faults.cbs_401_armed.store(n, Ordering::Release);
    }

    /// Detaches every partition receive link of `hub` with `amqp:link:detach-forced`.
    pub fn detach_receivers(&self, hub: &str) {
        let Some(h) = self.shared.state.existing(hub) else { return };
        let mut n = 0;
        for p in &h.partitions {
            n += p.kick(None, || {
                definitions::Error::new(
                    LinkError::DetachForced,
                    Some("The link was detached by the test broker (fault injection)".to_owned()),
                    None,
                )
            });
        }
        tracing::info!(hub, receivers = n, "fault: detached receivers");
        self.shared.faults.detached_receivers.fetch_add(n, Ordering::Relaxed);
    }

    /// Abruptly closes every live TCP connection.
    pub fn drop_connections(&self) {
        let n = self.shared.kill_connections();
        tracing::info!(connections = n, "fault: dropped connections");
        self.shared.faults.dropped_connections.fetch_add(n, Ordering::Relaxed);
    }

    /// Kicks the receivers of (hub, consumer group, partition) with `amqp:link:stolen`,
    /// as a new higher-epoch receiver would.
    pub fn steal_partition(&self, hub: &str, consumer_group: &str, partition: u32) {
        let Some(h) = self.shared.state.existing(hub) else { return };
        let Some(p) = h.partition(partition) else { return };
        let cg = consumer_group.to_lowercase();
        let n = p.kick(Some(&cg), || {
            definitions::Error::new(
                LinkError::Stolen,
                Some(format!(
                    "New receiver with a higher epoch was created on partition {partition}; this receiver is disconnected"
                )),
                None,
            )
        });
        tracing::info!(hub, consumer_group, partition, receivers = n, "fault: partition stolen");
        self.shared.faults.stolen_receivers.fetch_add(n, Ordering::Relaxed);
    }

    /// How many faults were applied so far.
    pub fn counts(&self) -> FaultCounts {
        let f = &self.shared.faults;
        FaultCounts {
            server_busy: f.server_busy.load(Ordering::Relaxed),
            cbs_unauthorized: f.cbs_unauthorized.load(Ordering::Relaxed),
            detached_receivers: f.detached_receivers.load(Ordering::Relaxed),
            dropped_connections: f.dropped_connections.load(Ordering::Relaxed),
            stolen_receivers: f.stolen_receivers.load(Ordering::Relaxed),
        }
    }

    /// Live TCP connections (diagnostics).
    pub fn live_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}
