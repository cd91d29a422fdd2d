//! The Blob Storage checkpoint store (layout: see the parent module).

use super::{Checkpoint, CheckpointStore, Ownership, prefix, wrap};
use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use conveyor_blob::{BlobClient, Condition, PutOptions};

pub struct BlobStore {
    client: BlobClient,
    container: String,
}

impl BlobStore {
    pub fn new(client: BlobClient, container: String) -> Self {
        BlobStore { client, container }
    }
}

#[async_trait::async_trait]
impl CheckpointStore for BlobStore {
    async fn claim_ownership(&self, ownerships: &[Ownership]) -> azure_core::Result<Vec<Ownership>> {
        let mut claimed = Vec::new();
        let mut first_error = None;
        for o in ownerships {
            let name = format!(
                "{}{}",
                prefix(&o.fully_qualified_namespace, &o.event_hub_name, &o.consumer_group, "ownership"),
                o.partition_id
            );
            let owner = o.owner_id.clone().unwrap_or_default();
            let condition = match &o.etag {
                Some(e) => Condition::IfMatch(e.to_string()),
                None => Condition::IfNoneMatchAny,
            };
            let meta = [("ownerid", owner.as_str())];
            let opts = PutOptions { content_type: None, metadata: &meta, condition };
            match self.client.put(&self.container, &name, bytes::Bytes::new(), opts).await {
                Ok(r) => {
                    let mut o = o.clone();
                    o.etag = Some(Etag::from(r.etag));
                    o.last_modified_time = Some(OffsetDateTime::from(r.last_modified));
                    claimed.push(o);
                }
                Err(e) if e.is_condition_failed() => {
                    tracing::debug!(partition = %o.partition_id, hub = %o.event_hub_name, "ownership claim lost the race");
                }
                Err(e) => {
                    tracing::warn!(partition = %o.partition_id, hub = %o.event_hub_name, error = %e, "ownership claim failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if claimed.is_empty() => Err(wrap(e)),
            _ => Ok(claimed),
        }
    }

    async fn list_checkpoints(&self, ns: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Checkpoint>> {
        let p = prefix(ns, hub, group, "checkpoint");
        let items = self.client.list(&self.container, &p).await.map_err(wrap)?;
        Ok(items
            .into_iter()
            .filter_map(|b| {
                let pid = b.name.strip_prefix(&p)?.to_string();
                Some(Checkpoint {
                    fully_qualified_namespace: ns.to_string(),
                    event_hub_name: hub.to_string(),
                    consumer_group: group.to_string(),
                    partition_id: pid,
                    offset: b.metadata.get("offset").cloned(),
                    sequence_number: b.metadata.get("sequencenumber").and_then(|s| s.parse().ok()),
                })
            })
            .collect())
    }

    async fn list_ownerships(&self, ns: &str, hub: &str, group: &str) -> azure_core::Result<Vec<Ownership>> {
        let p = prefix(ns, hub, group, "ownership");
        let items = self.client.list(&self.container, &p).await.map_err(wrap)?;
        Ok(items
            .into_iter()
            .filter_map(|b| {
                let pid = b.name.strip_prefix(&p)?.to_string();
                Some(Ownership {
                    fully_qualified_namespace: ns.to_string(),
                    event_hub_name: hub.to_string(),
                    consumer_group: group.to_string(),
                    partition_id: pid,
                    owner_id: b.metadata.get("ownerid").filter(|s| !s.is_empty()).cloned(),
                    etag: Some(Etag::from(b.etag)),
                    last_modified_time: Some(OffsetDateTime::from(b.last_modified)),
                })
            })
            .collect())
    }

    async fn update_checkpoint(&self, c: Checkpoint) -> azure_core::Result<()> {
        let name = format!(
            "{}{}",
            prefix(&c.fully_qualified_namespace, &c.event_hub_name, &c.consumer_group, "checkpoint"),
            c.partition_id
        );
        let seq = c.sequence_number.map(|s| s.to_string());
        let mut meta: Vec<(&str, &str)> = Vec::new();
        if let Some(o) = &c.offset {
            meta.push(("offset", o));
        }
        if let Some(s) = &seq {
            meta.push(("sequencenumber", s));
        }
        let opts = PutOptions { content_type: None, metadata: &meta, condition: Condition::None };
        self.client.put(&self.container, &name, bytes::Bytes::new(), opts).await.map_err(wrap)?;
        Ok(())
    }
}
