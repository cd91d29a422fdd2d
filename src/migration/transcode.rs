//! Cut-over producers of an entity whose migration transcodes
//! (`migrate.transcode`): a [`Producer`] that turns each message
//! Azure-framed (`schema::Transcoder`) before the new side's producer
//! sends it. A message that cannot be transcoded fails the send as the
//! schema error's category: `Permanent` ones are found one by one and
//! dead-lettered by the worker's delivery, a registry outage fails the
//! batch, which is sent again after the lane restarts (never dead-lettered).

use crate::schema::Transcoder;
use crate::transport::{OutboundMessage, ProduceResult, Producer, TransportError};
use async_trait::async_trait;
use std::sync::Arc;

pub struct Transcoding {
    pub inner: Arc<dyn Producer>,
    pub transcoder: Arc<Transcoder>,
}

#[async_trait]
impl Producer for Transcoding {
    async fn send(&self, entity: &str, batch: Vec<OutboundMessage>) -> Result<Vec<ProduceResult>, TransportError> {
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let m = self.transcoder.transcode(m).await.map_err(|e| TransportError::Other {
                category: e.category(),
                kind: e.kind(),
                message: e.to_string(),
            })?;
            out.push(m);
        }
        self.inner.send(entity, out).await
    }
}
