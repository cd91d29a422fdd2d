//! `type: map` — JSON validation, reshaping, idempotency ids and routing.
//!
//! Steps, in order: parse (a JSON object, else `invalid_json`), `schema`
//! (JSON Schema, else `schema`), `require` (else `missing_field`), `rename`,
//! `drop`, `set`, `id`, `route`. All failures are `Permanent`: the same
//! input fails the same way every time. Without reshaping steps the payload
//! bytes are forwarded as they came (zero-copy).

use super::json::{get, set, take};
use super::{BuildError, Emit, Outputs, Stage, StageError};
use crate::classify::ErrorCategory;
use crate::config::{Condition, IdConfig, MapConfig, MapSchema};
use crate::transport::{OutboundMessage, PipelineMessage};
use async_trait::async_trait;
use serde_json::Value;

pub struct MapStage {
    require: Vec<String>,
    schema: Option<jsonschema::Validator>,
    /// `schema: { registry }`: payloads are framed records, decoded first.
    decoder: Option<crate::schema::codec::Decoder>,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
    set: Vec<(String, Value)>,
    id: Option<IdConfig>,
    route: Vec<(usize, Condition)>,
    default: Option<usize>,
}

impl MapStage {
    pub fn new(cfg: &MapConfig, outputs: &Outputs, cx: &super::Context) -> Result<Self, BuildError> {
        let (schema, decoder) = match &cfg.schema {
            Some(MapSchema::Json(s)) => {
                (Some(jsonschema::validator_for(s).map_err(|e| BuildError::Schema(e.to_string()))?), None)
            }
            Some(MapSchema::Registry(r)) => (None, Some(cx.decoder(&r.registry, None)?)),
            None => (None, None),
        };
        let route = cfg
            .route
            .iter()
            .map(|r| {
                outputs.index(&r.output).map(|i| (i, r.when.clone())).ok_or(BuildError::UnknownOutput(r.output.clone()))
            })
            .collect::<Result<_, _>>()?;
        let default = outputs.index("default");
        if default.is_none() && cfg.route.is_empty() {
            return Err(BuildError::NoDefaultOutput);
        }
        Ok(MapStage {
            require: cfg.require.clone(),
            schema,
            decoder,
            rename: cfg.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            drop: cfg.drop.clone(),
            set: cfg.set.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            id: cfg.id.clone(),
            route,
            default,
        })
    }

    /// A stage that only checks required fields (tests, simple configs).
    pub fn require_only(require: Vec<String>, output: usize) -> Self {
        MapStage {
            require,
            schema: None,
            decoder: None,
            rename: vec![],
            drop: vec![],
            set: vec![],
            id: None,
            route: vec![],
            default: Some(output),
        }
    }

    fn reshapes(&self) -> bool {
        self.decoder.is_some()
            || !(self.rename.is_empty() && self.drop.is_empty() && self.set.is_empty() && self.id.is_none())
    }
}

/// Whether `c` holds for `v`.
pub fn matches(v: &Value, c: &Condition) -> bool {
    let f = get(v, &c.field).filter(|f| !f.is_null());
    if let Some(e) = c.exists
        && f.is_some() != e
    {
        return false;
    }
    if let Some(eq) = &c.equals
        && f != Some(eq)
    {
        return false;
    }
    if let Some(ne) = &c.not_equals
        && f == Some(ne)
    {
        return false;
    }
    if let Some(set) = &c.one_of
        && !f.is_some_and(|f| set.contains(f))
    {
        return false;
    }
    let num = f.and_then(Value::as_f64);
    if let Some(gt) = c.gt
        && !num.is_some_and(|n| n > gt)
    {
        return false;
    }
    if let Some(lt) = c.lt
        && !num.is_some_and(|n| n < lt)
    {
        return false;
    }
    true
}

fn sha256_hex(parts: &[&Value]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(serde_json::to_vec(p).expect("JSON values serialize"));
        h.update([0x1f]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Stage for MapStage {
    async fn process(&self, msg: &PipelineMessage, out: &mut Vec<Emit>) -> Result<(), StageError> {
        let mut schema_id = None;
        let mut v: Value = match &self.decoder {
            Some(d) => {
                let decoded = d.decode(&msg.payload, &msg.headers).await?;
                schema_id = Some(decoded.schema_id);
                decoded.json
            }
            None => serde_json::from_slice(&msg.payload).map_err(|e| StageError::InvalidJson(e.to_string()))?,
        };
        if !v.is_object() {
            return Err(StageError::InvalidJson("expected a JSON object".into()));
        }
        if let Some(s) = &self.schema
            && let Err(e) = s.validate(&v)
        {
            return Err(StageError::other(
                ErrorCategory::Permanent,
                "schema",
                format!("payload does not match the schema at {}: {e}", e.instance_path()),
            ));
        }
        if let Some(missing) = self.require.iter().find(|f| get(&v, f).is_none_or(Value::is_null)) {
            return Err(StageError::MissingField(missing.clone()));
        }
        let reshaped = self.reshapes();
        if reshaped {
            for (from, to) in &self.rename {
                if let Some(x) = take(&mut v, from) {
                    set(&mut v, to, x);
                }
            }
            for d in &self.drop {
                take(&mut v, d);
            }
            for (path, value) in &self.set {
                set(&mut v, path, value.clone());
            }
            if let Some(id) = &self.id {
                let null = Value::Null;
                let parts: Vec<&Value> = id.from.iter().map(|f| get(&v, f).unwrap_or(&null)).collect();
                let h = sha256_hex(&parts);
                set(&mut v, &id.into, Value::String(h));
            }
        }
        let output = match self.route.iter().find(|(_, c)| matches(&v, c)) {
            Some((i, _)) => *i,
            None => self.default.ok_or_else(|| {
                StageError::other(
                    ErrorCategory::Permanent,
                    "no_route",
                    "no route matched and there is no `default` output",
                )
            })?,
        };
        let payload = if reshaped {
            bytes::Bytes::from(serde_json::to_vec(&v).expect("JSON values serialize"))
        } else {
            msg.payload.clone()
        };
        let mut m = OutboundMessage::from_message(msg);
        m.payload = payload;
        if let Some(id) = schema_id {
            m.headers.0.retain(|(n, _)| n != crate::schema::wire::CONTENT_TYPE);
            m.headers.set(super::SCHEMA_ID_HEADER, id);
        }
        out.push(Emit { output, message: m });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(p: &str) -> PipelineMessage {
        crate::stages::test_message(p.as_bytes())
    }

    fn stage(yaml: &str, outputs: &[&str]) -> MapStage {
        let cfg: MapConfig = serde_yaml::from_str(yaml).unwrap();
        MapStage::new(&cfg, &Outputs::new(outputs.iter().map(|s| s.to_string())), &Default::default()).unwrap()
    }

    async fn run(s: &MapStage, p: &str) -> Result<(usize, Value), StageError> {
        let mut out = Vec::new();
        s.process(&msg(p), &mut out).await?;
        let e = out.pop().unwrap();
        Ok((e.output, serde_json::from_slice(&e.message.payload).unwrap()))
    }

    #[tokio::test]
    async fn validates_required_fields() {
        let s = MapStage::require_only(vec!["id".into()], 0);
        let mut out = Vec::new();
        s.process(&msg(r#"{"id":"a"}"#), &mut out).await.unwrap();
        assert_eq!(out.len(), 1);
        for bad in ["not json", "[1]", r#"{"x":1}"#, r#"{"id":null}"#] {
            let e = s.process(&msg(bad), &mut out).await.unwrap_err();
            assert_eq!(e.category(), ErrorCategory::Permanent, "{e}");
        }
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn reshapes_ids_and_routes() {
        let s = stage(
            r#"
require: [id, task.type]
rename: { amount: claim.amount }
drop: [pad]
set: { meta.stage: enriched }
id: { into: event_id, from: [id, task.type] }
route:
  - { output: itel, when: { field: task.type, equals: itel_cabinet } }
  - { output: big, when: { field: claim.amount, gt: 1000 } }
"#,
            &["default", "itel", "big"],
        );
        let (o, v) = run(&s, r#"{"id":"1","task":{"type":"itel_cabinet"},"amount":5,"pad":"x"}"#).await.unwrap();
        assert_eq!(o, 1);
        assert_eq!(v["claim"]["amount"], 5);
        assert!(v.get("pad").is_none() && v.get("amount").is_none());
        assert_eq!(v["meta"]["stage"], "enriched");
        assert_eq!(v["event_id"].as_str().unwrap().len(), 64);
        let (o, v2) = run(&s, r#"{"id":"2","task":{"type":"other"},"amount":5000}"#).await.unwrap();
        assert_eq!(o, 2, "routed by a reshaped field");
        assert_ne!(v["event_id"], v2["event_id"]);
        let (o, _) = run(&s, r#"{"id":"3","task":{"type":"other"},"amount":1}"#).await.unwrap();
        assert_eq!(o, 0, "unmatched goes to default");
        // same inputs, same id
        let (_, again) = run(&s, r#"{"id":"1","task":{"type":"itel_cabinet"},"amount":7}"#).await.unwrap();
        assert_eq!(again["event_id"], v["event_id"]);
    }

    #[tokio::test]
    async fn schema_and_unrouted_failures_are_permanent() {
        let s = stage(
            r#"
schema: { type: object, required: [id], properties: { id: { type: string }, n: { type: integer, minimum: 0 } } }
route: [ { output: only, when: { field: kind, in: [a, b] } } ]
"#,
            &["only"],
        );
        assert_eq!(run(&s, r#"{"id":"x","kind":"a"}"#).await.unwrap().0, 0);
        let e = run(&s, r#"{"id":"x","n":-1,"kind":"a"}"#).await.unwrap_err();
        assert_eq!((e.category(), e.kind()), (ErrorCategory::Permanent, "schema"), "{e}");
        assert!(e.to_string().contains("/n"), "{e}");
        let e = run(&s, r#"{"id":"x","kind":"c"}"#).await.unwrap_err();
        assert_eq!(e.kind(), "no_route");
    }

    #[test]
    fn conditions() {
        let v: Value = serde_json::json!({"a": {"b": 3}, "s": "x", "n": null});
        let c = |y: &str| serde_yaml::from_str::<Condition>(y).unwrap();
        assert!(matches(&v, &c("{ field: a.b, gt: 2, lt: 4 }")));
        assert!(!matches(&v, &c("{ field: a.b, gt: 3 }")));
        assert!(matches(&v, &c("{ field: s, in: [x, y] }")));
        assert!(matches(&v, &c("{ field: n, exists: false }")));
        assert!(matches(&v, &c("{ field: s, not_equals: z }")));
        assert!(!matches(&v, &c("{ field: missing, equals: 1 }")));
    }
}
