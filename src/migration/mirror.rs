//! The mirror: the stage of a worker (task `mirror:<entity>`, consumer group
//! `conveyor-mirror` on the old side) that copies every message to the new
//! side — key, headers, payload and timestamp kept, the partition index kept
//! when both sides have as many partitions (otherwise the key places it),
//! and a `conveyor-origin` header naming the original. Being a worker, it
//! commits an old-side position only after the copy is acknowledged, retries
//! and pauses like any worker, and drains on reload and shutdown.
//!
//! A message that is itself a copy *from* the new side (an earlier mirror
//! the other way) is not copied back.

use super::origin::{self, Origin};
use crate::stages::{Emit, Stage, StageError};
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;

pub struct Mirror {
    /// The old side: its transport's config name and the entity's name there.
    pub from: (String, String),
    /// The new side, likewise.
    pub to: (String, String),
    /// Keep the partition index (the partition counts match).
    pub keep_partition: bool,
    /// `migrate.transcode`: copies leave Azure-framed. A message that
    /// cannot be transcoded is not dropped: the mirror has no dead-letter
    /// entity, so it is tried again in place and the mirror shows the error.
    pub transcode: Option<std::sync::Arc<crate::schema::Transcoder>>,
}

impl Mirror {
    /// The copy of `msg`; `None` for a copy from the new side.
    fn copy(&self, msg: &PipelineMessage) -> Option<OutboundMessage> {
        if Origin::of(&msg.headers).is_some_and(|o| o.is_from(&self.to.0, &self.to.1)) {
            return None;
        }
        let mut headers = msg.headers.clone();
        headers.set(origin::HEADER, Origin::render(&self.from.0, &self.from.1, msg.partition, msg.position));
        Some(OutboundMessage {
            key: msg.key.clone(),
            headers,
            payload: msg.payload.clone(),
            partition: self.keep_partition.then_some(msg.partition),
            timestamp_ms: Some(msg.timestamp_ms),
        })
    }
}

#[async_trait]
impl Stage for Mirror {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let Some(mut copy) = self.copy(msg) else { return Ok(()) };
        if let Some(t) = &self.transcode {
            copy = t.transcode(copy).await?;
        }
        out.push(Emit { output: 0, message: copy });
        Ok(())
    }

    fn process_now(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Option<Result<(), StageError>> {
        if self.transcode.is_some() {
            return None;
        }
        out.extend(self.copy(msg).map(|message| Emit { output: 0, message }));
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Headers;

    #[tokio::test]
    async fn a_copy_keeps_everything_and_names_its_original() {
        let m = Mirror {
            from: ("kafka".into(), "t".into()),
            to: ("hubs".into(), "h".into()),
            keep_partition: true,
            transcode: None,
        };
        let mut h = Headers::default();
        h.set("traceparent", "00-1-2-01");
        h.0.push(("traceparent".into(), "second".into()));
        let msg = PipelineMessage {
            entity: "e".into(),
            partition: 3,
            position: 77,
            key: Some("k".into()),
            headers: h.clone(),
            payload: "p".into(),
            timestamp_ms: 1_700_000_000_123,
        };
        let mut out = Vec::new();
        m.process(&msg, &mut out).await.unwrap();
        let c = &out[0].message;
        assert_eq!(
            (c.key.as_deref(), c.payload.as_ref(), c.partition, c.timestamp_ms),
            (Some(&b"k"[..]), &b"p"[..], Some(3), Some(1_700_000_000_123))
        );
        assert_eq!(&c.headers.0[..2], &h.0[..], "headers kept, in order, repeats too");
        assert_eq!(c.headers.get_str(origin::HEADER), Some("kafka/t/3@77"));
        // placed by key when the partition counts differ
        let by_key = Mirror { keep_partition: false, ..m };
        out.clear();
        by_key.process(&msg, &mut out).await.unwrap();
        assert_eq!(out[0].message.partition, None);
        // a copy from the new side is not copied back
        let mut back = msg.clone();
        back.headers.set(origin::HEADER, Origin::render("hubs", "h", 0, 1));
        out.clear();
        by_key.process(&back, &mut out).await.unwrap();
        assert!(out.is_empty());
        // without transcoding the mirror answers at once, the same
        for m in [&msg, &back] {
            let (mut now, mut later) = (Vec::new(), Vec::new());
            assert!(matches!(by_key.process_now(m, &mut now), Some(Ok(()))));
            by_key.process(m, &mut later).await.unwrap();
            let render = |v: &Vec<Emit>| format!("{:?}", v.iter().map(|e| &e.message).collect::<Vec<_>>());
            assert_eq!(render(&now), render(&later));
        }
    }
}
