//! Confluent subject name strategies: the subject a value schema is
//! registered under when Conveyor writes to a topic.

pub use crate::config::SubjectStrategy;

/// The subject of a value written to `topic` with a schema whose top-level
/// full name is `record` (`None`: not a named type).
pub fn subject(strategy: SubjectStrategy, topic: &str, record: Option<&str>) -> Result<String, String> {
    let named = || record.ok_or_else(|| format!("{strategy:?} needs a schema whose top level is a named type"));
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
            (RecordName, "claims", None, Err(())),
            (TopicRecordName, "claims", None, Err(())),
        ];
        for (s, topic, record, want) in table {
            assert_eq!(subject(s, topic, record).as_deref().map_err(|_| ()), want, "{s:?}");
        }
    }
}
