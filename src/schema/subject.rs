//! Confluent subject name strategies: the subject a value schema is
//! registered under when Conveyor writes to a topic.

pub use crate::config::SubjectStrategy;

/// The strategy names subjects after the schema's top-level type, and the
/// schema has none (it is not a record, enum or fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} needs a schema whose top level is a named type")]
pub struct Unnamed(pub SubjectStrategy);

/// The subject of a value written to `topic` with a schema whose top-level
/// full name is `record` (`None`: not a named type).
pub fn subject(strategy: SubjectStrategy, topic: &str, record: Option<&str>) -> Result<String, Unnamed> {
    let named = || record.ok_or(Unnamed(strategy));
    Ok(match strategy {
        SubjectStrategy::TopicName => format!("{topic}-value"),
        SubjectStrategy::RecordName => named()?.to_string(),
        SubjectStrategy::TopicRecordName => format!("{topic}-{}", named()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubjectStrategy::*;

    #[test]
    fn strategies() {
        let table = [
            (TopicName, "claims", Some("com.acme.Claim"), Ok("claims-value")),
            (TopicName, "claims", None, Ok("claims-value")),
            (RecordName, "claims", Some("com.acme.Claim"), Ok("com.acme.Claim")),
            (TopicRecordName, "claims", Some("com.acme.Claim"), Ok("claims-com.acme.Claim")),
            (RecordName, "claims", None, Err(Unnamed(RecordName))),
            (TopicRecordName, "claims", None, Err(Unnamed(TopicRecordName))),
        ];
        for (s, topic, record, want) in table {
            assert_eq!(subject(s, topic, record).as_deref().map_err(|e| *e), want, "{s:?}");
        }
    }
}
