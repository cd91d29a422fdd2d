//! Reading an entity to the end it had when the read began — for tools
//! that must see everything or say why not (`dlq`, `migrate verify`).
//!
//! The first fetch of a partition that holds records waits up to
//! [`FIRST_FETCH`] and fails when nothing arrives ([`ScanError::Stalled`]):
//! a broker that does not answer is an error, never "nothing there". A
//! partition whose last positions cannot be read (Kafka compaction or
//! transaction markers) ends after [`IDLE_FETCH`] without a record, with a
//! warning naming them.

use super::{PartitionInfo, PartitionReader, PipelineMessage, Seek, Transport, TransportError};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the first record of a partition that holds records.
pub const FIRST_FETCH: Duration = Duration::from_secs(30);
/// Longest wait for more records once a partition has answered.
pub const IDLE_FETCH: Duration = Duration::from_secs(5);

/// Why a scan could not read everything.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{entity:?}: {source}")]
    Transport { entity: String, source: TransportError },
    #[error(
        "{entity:?} partition {partition}: no record arrived within {waited:?} (the partition ends at {end}); nothing after it was read"
    )]
    Stalled { entity: String, partition: u32, end: i64, waited: Duration },
}

/// What to do after a batch.
pub enum Next {
    More,
    Stop,
}

/// Reads `r` from where it stands up to `end` (exclusive), batch by batch,
/// handing each to `each`. `Ok(Next::Stop)` when `each` stopped.
pub async fn read_until<E: From<ScanError>>(
    r: &mut Box<dyn PartitionReader>,
    entity: &str,
    end: i64,
    each: &mut impl AsyncFnMut(&mut Box<dyn PartitionReader>, Vec<PipelineMessage>) -> Result<Next, E>,
) -> Result<Next, E> {
    let partition = r.partition();
    let mut at: Option<i64> = None;
    loop {
        let mut batch = Vec::new();
        let wait = if at.is_none() { FIRST_FETCH } else { IDLE_FETCH };
        match tokio::time::timeout(wait, r.fetch(500, &mut batch)).await {
            Ok(res) => res.map_err(|source| ScanError::Transport { entity: entity.to_string(), source })?,
            Err(_) => match at {
                None => {
                    return Err(ScanError::Stalled { entity: entity.to_string(), partition, end, waited: wait }.into());
                }
                Some(last) => {
                    tracing::warn!(
                        entity,
                        partition,
                        from = last + 1,
                        end,
                        "the last positions of the partition cannot be read (compacted, or transaction markers); done with it"
                    );
                    return Ok(Next::More);
                }
            },
        }
        batch.retain(|m| m.position < end);
        let reached = batch.last().is_some_and(|m| m.position + 1 >= end);
        if let Some(m) = batch.last() {
            at = Some(m.position);
        } else if at.is_some() {
            // records beyond the end only: done
            return Ok(Next::More);
        }
        if !batch.is_empty()
            && let Next::Stop = each(r, batch).await?
        {
            return Ok(Next::Stop);
        }
        if reached {
            return Ok(Next::More);
        }
    }
}

/// Reads every record of `physical` (config key `entity`, for messages)
/// present when called, partition by partition, as no consumer group.
/// Returns the extents it read up to.
pub async fn browse<E: From<ScanError>>(
    t: &Arc<dyn Transport>,
    entity: &str,
    physical: &str,
    mut each: impl AsyncFnMut(&mut Box<dyn PartitionReader>, Vec<PipelineMessage>) -> Result<Next, E>,
) -> Result<Vec<PartitionInfo>, E> {
    let terr = |source| ScanError::Transport { entity: entity.to_string(), source };
    let parts = t.partitions(physical).await.map_err(terr)?;
    for p in &parts {
        if p.next <= p.earliest {
            continue;
        }
        let mut r = t.open_reader(physical, p.partition, Seek::Earliest).await.map_err(terr)?;
        if let Next::Stop = read_until(&mut r, entity, p.next, &mut each).await? {
            break;
        }
    }
    Ok(parts)
}
