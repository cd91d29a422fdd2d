//! Avro records as JSON, through the `apache-avro` crate.
//!
//! **JSON mapping** (both ways, schema-directed when writing): records and
//! maps are objects, arrays are arrays, a union is its value alone (`null`,
//! or the value of the first branch it fits, in the schema's order; the
//! Avro JSON encoding's `{"<branch type>": value}` is accepted too), an enum
//! is its symbol, `bytes`/`fixed` (and decimals, durations) are strings of
//! code points U+0000–U+00FF, one per byte (as the Avro JSON encoding
//! writes them), `float`/`double` that are not finite are the strings
//! `"NaN"`, `"Infinity"`, `"-Infinity"`, logical dates and times are their
//! numbers, a UUID is its string. Writing fills a record field that is
//! missing from the JSON with the field's default and refuses a field the
//! schema does not have (nothing is dropped silently).
//!
//! Decoding checks that the record uses every byte of the body: trailing
//! bytes mean the payload was written with another schema.

mod binary;

use binary::{latin1_string, number};

use apache_avro::schema::Schema;
use apache_avro::types::Value as Avro;
use serde_json::{Map, Value as Json};

/// Largest allocation `apache-avro` may make for one length prefix (the
/// reader-schema path; the direct decoder bounds elements by the payload).
pub const MAX_ALLOCATION: usize = 64 << 20;

/// A parsed Avro schema with its named types.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    schema: Schema,
    names: binary::Names,
    canonical: String,
    text: String,
}

/// Why a schema, a body or a JSON value was refused; the message says what
/// and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    /// The schema text does not parse or its names do not resolve.
    #[error("not a valid Avro schema: {0}")]
    Schema(String),
    /// The schema uses the big-decimal logical type (its JSON form is not
    /// settled).
    #[error("the big-decimal logical type is not supported")]
    BigDecimal,
    /// A named type the schema refers to is not defined in it.
    #[error("unknown type {0}")]
    UnknownType(String),
    /// The body is not one value of the writer schema using every byte.
    #[error("{0}")]
    Body(String),
    /// The body does not resolve to the reader schema.
    #[error("does not resolve to the reader schema: {0}")]
    Resolve(String),
    /// The JSON at `at` (`$.claim.items[2]`) is not a value of the schema.
    #[error("{at}: {problem}")]
    Value { at: String, problem: String },
    /// `apache-avro` panicked on the schema or value (it has `unwrap`s on
    /// names and values).
    #[error("{0}: apache-avro failed on it (a name or value it cannot handle)")]
    Panicked(&'static str),
}

/// `f()`, with a panic inside `apache-avro` turned into an error.
fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, AvroError>) -> Result<T, AvroError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(AvroError::Panicked(what)))
}

/// `text` with `logicalType: uuid` removed from `fixed` types: `apache-avro`
/// 0.21 would read and write those as strings, not as the 16 bytes other
/// Avro implementations write; without it they are a plain `fixed(16)`.
fn uuid_fixed_as_fixed(text: &str) -> String {
    fn walk(v: &mut Json) -> bool {
        let mut changed = false;
        match v {
            Json::Object(o) => {
                if o.get("type").and_then(Json::as_str) == Some("fixed")
                    && o.get("logicalType").and_then(Json::as_str) == Some("uuid")
                {
                    o.remove("logicalType");
                    changed = true;
                }
                for x in o.values_mut() {
                    changed |= walk(x);
                }
            }
            Json::Array(a) => {
                for x in a {
                    changed |= walk(x);
                }
            }
            _ => {}
        }
        changed
    }
    match serde_json::from_str::<Json>(text) {
        Ok(mut v) => {
            if walk(&mut v) {
                v.to_string()
            } else {
                text.to_string()
            }
        }
        Err(_) => text.to_string(),
    }
}

impl AvroSchema {
    /// Parses a schema's JSON text. `big-decimal` is refused (its JSON form
    /// is not settled); a `fixed` UUID is read as its 16 bytes.
    pub fn parse(text: &str) -> Result<Self, AvroError> {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION);
        let bad = |e: apache_avro::Error| AvroError::Schema(e.to_string());
        let (schema, names) = guarded("not a valid Avro schema", || {
            let schema = Schema::parse_str(&uuid_fixed_as_fixed(text)).map_err(bad)?;
            let names: binary::Names = apache_avro::schema::ResolvedSchema::try_from(&schema)
                .map_err(bad)?
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), (*s).clone()))
                .collect();
            Ok((schema, names))
        })?;
        if !binary::supported(&names, &schema, &mut Vec::new()) {
            return Err(AvroError::BigDecimal);
        }
        let canonical = guarded("not a valid Avro schema", || Ok(schema.canonical_form()))?;
        Ok(AvroSchema { schema, names, canonical, text: text.to_string() })
    }

    /// The Parsing Canonical Form: equal for schemas that write the same
    /// bytes, whatever their formatting, docs and defaults.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The schema's text as given (what is registered: the canonical form
    /// would drop defaults and docs).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The full name of the top-level named type (`com.acme.Claim`), if it
    /// is one (record, enum, fixed).
    pub fn full_name(&self) -> Option<String> {
        match &self.schema {
            Schema::Record(r) => Some(r.name.fullname(None)),
            Schema::Enum(e) => Some(e.name.fullname(None)),
            Schema::Fixed(f) => Some(f.name.fullname(None)),
            _ => None,
        }
    }

    /// Decodes `body` (Avro binary written with this schema) into JSON,
    /// resolved to `reader` when given (schema evolution).
    pub fn decode(&self, body: &[u8], reader: Option<&AvroSchema>) -> Result<Json, AvroError> {
        // the direct decoder bounds depth and size: only a body it accepts
        // goes on to apache-avro's schema resolution
        let direct = binary::decode(&self.names, &self.schema, body)?;
        let Some(reader) = reader else { return Ok(direct) };
        guarded("resolving to the reader schema", || {
            let mut rest = body;
            let v = apache_avro::from_avro_datum(&self.schema, &mut rest, Some(&reader.schema))
                .map_err(|e| AvroError::Resolve(e.to_string()))?;
            Ok(to_json(&v))
        })
    }

    /// Checks that `body` decodes with this schema, using every byte.
    pub fn check(&self, body: &[u8]) -> Result<(), AvroError> {
        binary::decode(&self.names, &self.schema, body).map(|_| ())
    }

    /// Encodes `json` as Avro binary with this schema.
    pub fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        binary::encode(&self.names, &self.schema, json)
    }
}

/// A decoded value as JSON (see the module docs for the mapping).
pub fn to_json(v: &Avro) -> Json {
    match v {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => Json::from(*n),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => Json::from(*n),
        Avro::Float(f) => number(f64::from(*f)),
        Avro::Double(f) => number(*f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => latin1_string(b),
        Avro::String(s) => Json::String(s.clone()),
        Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Union(_, v) => to_json(v),
        Avro::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Avro::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect::<Map<_, _>>()),
        Avro::Record(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Avro::Decimal(d) => match <Vec<u8>>::try_from(d) {
            Ok(b) => latin1_string(&b),
            Err(_) => Json::Null,
        },
        Avro::BigDecimal(d) => Json::String(d.to_string()), // refused at parse
        Avro::Duration(d) => latin1_string(&<[u8; 12]>::from(*d)),
        Avro::Uuid(u) => Json::String(u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLAIM: &str = r#"{"type":"record","name":"Claim","namespace":"com.acme","fields":[
        {"name":"id","type":"string"},
        {"name":"n","type":"int"},
        {"name":"amount","type":["null","double"],"default":null},
        {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["NEW","CLOSED"]},"default":"NEW"},
        {"name":"raw","type":"bytes","default":""},
        {"name":"parts","type":{"type":"map","values":"long"},"default":{}},
        {"name":"next","type":["null","Claim"],"default":null},
        {"name":"hash","type":{"type":"fixed","name":"H","size":2},"default":"\u0000\u0000"}
    ]}"#;

    #[test]
    fn records_round_trip_through_json() {
        let s = AvroSchema::parse(CLAIM).unwrap();
        assert_eq!(s.full_name().as_deref(), Some("com.acme.Claim"));
        let full = json!({"id": "c1", "n": -3, "amount": 1.5, "tags": ["a", "é"], "kind": "CLOSED",
            "raw": "\u{0}\u{ff}A", "parts": {"x": 9_000_000_000_i64}, "hash": "\u{1}\u{fe}",
            "next": {"id": "c0", "n": 0, "amount": null, "tags": [], "kind": "NEW", "raw": "", "parts": {}, "next": null, "hash": "ab"}});
        let bytes = s.encode(&full).unwrap();
        assert_eq!(s.decode(&bytes, None).unwrap(), full);
        // defaults fill missing fields; the Avro JSON union form is accepted
        let short = json!({"id": "c2", "n": 1, "amount": {"double": 2.0}});
        let back = s.decode(&s.encode(&short).unwrap(), None).unwrap();
        assert_eq!(back["amount"], 2.0);
        assert_eq!((back["kind"].as_str(), back["tags"].as_array().map(Vec::len)), (Some("NEW"), Some(0)));
    }

    #[test]
    fn json_that_does_not_fit_is_refused_naming_the_field() {
        let s = AvroSchema::parse(CLAIM).unwrap();
        let table = [
            (json!({"n": 1}), "$.id: missing"),
            (json!({"id": "x", "n": 1, "extra": true}), "field \"extra\" is not in record com.acme.Claim"),
            (json!({"id": "x", "n": 3_000_000_000_i64}), "$.n: expected an int"),
            (json!({"id": "x", "n": 1, "kind": "OPEN"}), "$.kind: expected one of"),
            (json!({"id": "x", "n": 1, "raw": "€"}), "$.raw: expected bytes"),
            (json!({"id": "x", "n": 1, "hash": "abc"}), "$.hash: expected 2 bytes"),
            (json!({"id": "x", "n": 1, "tags": [1]}), "$.tags[0]: expected a string"),
            (json!([1]), "expected an object"),
        ];
        for (input, want) in table {
            let e = s.encode(&input).unwrap_err();
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn bytes_that_do_not_fit_fail_to_decode() {
        let s = AvroSchema::parse(CLAIM).unwrap();
        let good = s.encode(&json!({"id": "c", "n": 1})).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(s.decode(&trailing, None).unwrap_err().to_string().contains("trailing"));
        assert!(s.check(&trailing).is_err());
        assert!(s.check(&good).is_ok());
        for cut in 0..good.len() {
            assert!(s.decode(&good[..cut], None).is_err(), "a record cut at {cut} bytes");
        }
        // a huge length prefix is refused, not allocated
        let huge = [0xfe, 0xff, 0xff, 0xff, 0x0f];
        assert!(s.decode(&huge, None).is_err());
        assert!(AvroSchema::parse("{\"type\":\"record\"}").is_err());
    }

    #[test]
    fn evolution_reads_old_records_with_a_new_schema() {
        let v1 = AvroSchema::parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#).unwrap();
        let v2 = AvroSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":7}]}"#,
        )
        .unwrap();
        let old = v1.encode(&json!({"a": "x"})).unwrap();
        assert_eq!(v1.decode(&old, Some(&v2)).unwrap(), json!({"a": "x", "b": 7}));
        let new = v2.encode(&json!({"a": "y", "b": 1})).unwrap();
        assert_eq!(v2.decode(&new, Some(&v1)).unwrap(), json!({"a": "y"}));
        assert_ne!(v1.canonical(), v2.canonical());
        let v1_spaced = AvroSchema::parse(
            r#"{ "type": "record", "name": "R", "doc": "d", "fields": [ {"name": "a", "type": "string"} ] }"#,
        )
        .unwrap();
        assert_eq!(v1.canonical(), v1_spaced.canonical());
    }

    #[test]
    fn non_finite_floats_and_logical_types() {
        let s = AvroSchema::parse(
            r#"{"type":"record","name":"T","fields":[{"name":"f","type":"float"},{"name":"d","type":"double"},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"u","type":{"type":"string","logicalType":"uuid"}}]}"#,
        )
        .unwrap();
        let v = json!({"f": "NaN", "d": "-Infinity", "ts": 1_700_000_000_000_i64, "u": "67e55044-10b1-426f-9247-bb680e5fe0c8"});
        assert_eq!(s.decode(&s.encode(&v).unwrap(), None).unwrap(), v);
    }

    const LOGICAL: &str = r#"{"type":"record","name":"L","fields":[
        {"name":"d","type":{"type":"int","logicalType":"date"}},
        {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"u","type":{"type":"string","logicalType":"uuid"}},
        {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"decf","type":{"type":"fixed","name":"DF","size":4,"logicalType":"decimal","precision":8,"scale":1}},
        {"name":"dur","type":{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}},
        {"name":"f","type":"float"},{"name":"b","type":"boolean"}
    ]}"#;

    /// `apache-avro`'s own decoding of `body`, as JSON.
    fn oracle(schema: &str, body: &[u8]) -> Result<Json, String> {
        let s = Schema::parse_str(schema).unwrap();
        let mut rest = body;
        let v = apache_avro::from_avro_datum(&s, &mut rest, None).map_err(|e| e.to_string())?;
        if rest.is_empty() { Ok(to_json(&v)) } else { Err("trailing".into()) }
    }

    #[test]
    fn the_direct_codec_agrees_with_apache_avro_on_logical_types() {
        let s = AvroSchema::parse(LOGICAL).unwrap();
        let v = json!({"d": 19000, "tm": 3_600_000, "ts": -5, "u": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "dec": "\u{ff}\u{1}", "decf": "\u{0}\u{0}\u{1}\u{2}", "dur": "\u{1}\u{0}\u{0}\u{0}\u{2}\u{0}\u{0}\u{0}\u{3}\u{0}\u{0}\u{0}",
            "f": 1.5, "b": true});
        let bytes = s.encode(&v).unwrap();
        assert_eq!(oracle(LOGICAL, &bytes).unwrap(), v);
        assert_eq!(s.decode(&bytes, None).unwrap(), v);
        // big-decimal is refused, clearly
        let big = AvroSchema::parse(
            r#"{"type":"record","name":"B","fields":[{"name":"x","type":{"type":"bytes","logicalType":"big-decimal"}}]}"#,
        );
        assert!(matches!(big, Err(AvroError::BigDecimal)));
    }

    #[test]
    fn hostile_schemas_and_payloads_are_errors_not_crashes() {
        // apache-avro panics on some names: a clean error here
        assert!(
            AvroSchema::parse(r#"{"type":"record","name":"claim-v2","fields":[]}"#)
                .unwrap_err()
                .to_string()
                .contains("not a valid Avro schema")
        );
        // a record nested 5,000 deep through its recursive field: refused, no stack overflow
        let s = AvroSchema::parse(CLAIM).unwrap();
        let mut body = Vec::new();
        for _ in 0..5000 {
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]); // empty fields, then `next`: the record branch
        }
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..5001 {
            body.extend_from_slice(b"ab");
        }
        assert!(s.decode(&body, None).unwrap_err().to_string().contains("deeper than"));
        assert!(s.check(&body).is_err());
        let reader = AvroSchema::parse(CLAIM).unwrap();
        assert!(s.decode(&body, Some(&reader)).is_err(), "the reader-schema path is guarded by the same checks");
        // a few bytes claiming a million nulls, in blocks: refused
        let nulls = AvroSchema::parse(r#"{"type":"array","items":"null"}"#).unwrap();
        let mut many = Vec::new();
        for _ in 0..20 {
            many.extend_from_slice(&[0x80, 0x89, 0x0f]); // 125,000 elements a block
        }
        many.push(0);
        assert!(nulls.decode(&many, None).unwrap_err().to_string().contains("more than the payload"));
        assert_eq!(nulls.decode(&[6, 0], None).unwrap(), json!([null, null, null]));
        // records whose fields take no bytes count as such
        let empties = AvroSchema::parse(
            r#"{"type":"array","items":{"type":"record","name":"E","fields":[{"name":"n","type":"null"}]}}"#,
        )
        .unwrap();
        assert!(empties.decode(&many, None).is_err());
    }

    #[test]
    fn aliases_unions_floats_and_fixed_uuids_are_written_faithfully() {
        let aliased = AvroSchema::parse(
            r#"{"type":"record","name":"A","fields":[{"name":"a","type":"long","aliases":["b"],"default":0}]}"#,
        )
        .unwrap();
        assert!(
            aliased.encode(&json!({"b": 1})).unwrap_err().to_string().contains("field \"b\" is not in record"),
            "an alias key is not dropped"
        );
        // the plain value first: a map with a key named like a branch stays a map
        let u = AvroSchema::parse(r#"["null",{"type":"map","values":"long"},"long"]"#).unwrap();
        assert_eq!(u.decode(&u.encode(&json!({"long": 5})).unwrap(), None).unwrap(), json!({"long": 5}));
        assert_eq!(u.decode(&u.encode(&json!(5)).unwrap(), None).unwrap(), json!(5));
        // a number a float would round goes to the double
        let f = AvroSchema::parse(r#"["float","double"]"#).unwrap();
        assert_eq!(f.decode(&f.encode(&json!(0.1)).unwrap(), None).unwrap(), json!(0.1));
        assert_eq!(f.encode(&json!(1.5)).unwrap()[0], 0, "exact in a float: the float branch");
        let plain = AvroSchema::parse(r#""float""#).unwrap();
        assert!(plain.encode(&json!(1e300)).unwrap_err().to_string().contains("out of its range"));
        // a fixed(16) UUID is its 16 bytes, as other Avro implementations write it
        let fu = AvroSchema::parse(r#"{"type":"fixed","name":"U","size":16,"logicalType":"uuid"}"#).unwrap();
        let sixteen: String = (0u8..16).map(char::from).collect();
        let bytes = fu.encode(&json!(sixteen)).unwrap();
        assert_eq!(bytes, (0u8..16).collect::<Vec<_>>());
        assert_eq!(fu.decode(&bytes, None).unwrap(), json!(sixteen));
        assert!(fu.text().contains("uuid"), "the text registered is the one given");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any bytes: the direct decoder and apache-avro agree (the same
            /// JSON, or both refuse), except where the direct one refuses a
            /// block claiming more elements than the payload holds.
            #[test]
            fn the_direct_decoder_agrees_with_apache_avro(bytes in proptest::collection::vec(any::<u8>(), 0..48), which in 0..2usize) {
                let text = [super::CLAIM, super::LOGICAL][which];
                let s = AvroSchema::parse(text).unwrap();
                match (s.decode(&bytes, None), super::oracle(text, &bytes)) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (Err(e), Ok(_)) => prop_assert!(e.to_string().contains("more than the payload"), "refused what apache-avro reads: {}", e),
                    (Ok(a), Err(e)) => prop_assert!(false, "read {} where apache-avro refuses: {}", a, e),
                }
            }

            /// A valid record with a few bytes changed or cut: the same
            /// agreement, deep inside the record.
            #[test]
            fn mutated_records_decode_alike(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
                let s = AvroSchema::parse(super::CLAIM).unwrap();
                let v = json!({"id": "c1", "n": 300, "amount": 1.5, "tags": ["a", "bé"], "kind": "CLOSED", "raw": "\u{0}\u{ff}",
                    "parts": {"x": -9}, "hash": "\u{1}\u{2}", "next": {"id": "c0", "n": 0, "hash": "ab", "tags": ["t"]}});
                let mut bytes = s.encode(&v).unwrap();
                for (i, b) in edits {
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                match (s.decode(&bytes, None), super::oracle(super::CLAIM, &bytes)) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (Err(e), Ok(_)) => prop_assert!(e.to_string().contains("more than the payload"), "refused what apache-avro reads: {}", e),
                    (Ok(a), Err(e)) => prop_assert!(false, "read {} where apache-avro refuses: {}", a, e),
                }
            }

            /// Any record the schema admits: apache-avro reads what the
            /// direct encoder wrote, as the same JSON.
            #[test]
            fn apache_avro_reads_what_the_direct_encoder_writes(
                id in ".{0,8}", n in any::<i32>(), amount in proptest::option::of(any::<f64>()),
                tags in proptest::collection::vec(".{0,4}", 0..4), raw in proptest::collection::vec(any::<u8>(), 0..6),
                parts in proptest::collection::btree_map("[a-z]{1,3}", any::<i64>(), 0..4), closed in any::<bool>(),
            ) {
                let raw: String = raw.iter().map(|&b| char::from(b)).collect();
                let amount = match amount { Some(f) if f.is_finite() => json!(f), _ => Json::Null };
                let v = json!({"id": id, "n": n, "amount": amount, "tags": tags, "kind": if closed { "CLOSED" } else { "NEW" },
                    "raw": raw, "parts": parts, "next": null, "hash": "ab"});
                let s = AvroSchema::parse(super::CLAIM).unwrap();
                let bytes = s.encode(&v).unwrap();
                prop_assert_eq!(super::oracle(super::CLAIM, &bytes).unwrap(), v);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any bytes, decoded with a schema of every kind of type: an
            /// answer, never a panic.
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let s = AvroSchema::parse(super::CLAIM).unwrap();
                let _ = s.decode(&bytes, None);
                let _ = s.check(&bytes);
            }

            /// Any JSON, encoded with the same schema: an answer, never a panic.
            #[test]
            fn any_json_encodes_or_fails_cleanly(id in ".{0,8}", n in any::<i64>(), raw in ".{0,4}", tag in ".{0,3}") {
                let s = AvroSchema::parse(super::CLAIM).unwrap();
                let v = serde_json::json!({"id": id, "n": n, "raw": raw, "tags": [tag], "kind": tag, "hash": raw});
                if let Ok(bytes) = s.encode(&v) {
                    prop_assert!(s.decode(&bytes, None).is_ok());
                }
            }
        }
    }
}
