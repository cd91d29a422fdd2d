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

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value as Avro;
use serde_json::{Map, Number, Value as Json};
use std::collections::HashMap;

/// Largest allocation a decode may make for one length prefix (a hostile
/// payload cannot make the process allocate more than this at once).
pub const MAX_ALLOCATION: usize = 64 << 20;

/// A parsed Avro schema with its named types.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
    canonical: String,
    text: String,
}

impl AvroSchema {
    /// Parses a schema's JSON text.
    pub fn parse(text: &str) -> Result<Self, String> {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION);
        let schema = Schema::parse_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(|e| format!("not a valid Avro schema: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let canonical = schema.canonical_form();
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
    pub fn decode(&self, body: &[u8], reader: Option<&AvroSchema>) -> Result<Json, String> {
        let mut rest = body;
        let v = apache_avro::from_avro_datum(&self.schema, &mut rest, reader.map(|r| &r.schema))
            .map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the record (written with another schema?)", rest.len()));
        }
        Ok(to_json(&v))
    }

    /// Checks that `body` decodes with this schema, using every byte.
    pub fn check(&self, body: &[u8]) -> Result<(), String> {
        let mut rest = body;
        apache_avro::from_avro_datum(&self.schema, &mut rest, None).map_err(|e| e.to_string())?;
        if rest.is_empty() { Ok(()) } else { Err(format!("{} trailing bytes after the record", rest.len())) }
    }

    /// Encodes `json` as Avro binary with this schema.
    pub fn encode(&self, json: &Json) -> Result<Vec<u8>, String> {
        let v = self.value_of(json, &self.schema, &At::Root)?;
        apache_avro::to_avro_datum(&self.schema, v).map_err(|e| e.to_string())
    }

    fn resolve<'a>(&'a self, s: &'a Schema, at: &At<'_>) -> Result<&'a Schema, String> {
        match s {
            Schema::Ref { name } => {
                self.names.get(name).ok_or_else(|| format!("{at}: unknown type {}", name.fullname(None)))
            }
            s => Ok(s),
        }
    }

    fn value_of(&self, j: &Json, s: &Schema, at: &At<'_>) -> Result<Avro, String> {
        let s = self.resolve(s, at)?;
        let need = |what: &str| format!("{at}: expected {what}, found {}", kind(j));
        let want = |what: &str| Err(need(what));
        Ok(match s {
            Schema::Null => match j {
                Json::Null => Avro::Null,
                _ => return want("null"),
            },
            Schema::Boolean => match j {
                Json::Bool(b) => Avro::Boolean(*b),
                _ => return want("a boolean"),
            },
            Schema::Int => Avro::Int(int(j).ok_or_else(|| need("an int"))?),
            Schema::Long => Avro::Long(long(j).ok_or_else(|| need("a long"))?),
            Schema::Float => Avro::Float(float(j).ok_or_else(|| need("a float"))? as f32),
            Schema::Double => Avro::Double(float(j).ok_or_else(|| need("a double"))?),
            Schema::Bytes => Avro::Bytes(latin1(j).ok_or_else(|| need("bytes (a string of U+0000–U+00FF)"))?),
            Schema::String => match j {
                Json::String(t) => Avro::String(t.clone()),
                _ => return want("a string"),
            },
            Schema::Uuid => match j.as_str().and_then(|t| apache_avro::Uuid::parse_str(t).ok()) {
                Some(u) => Avro::Uuid(u),
                None => return want("a UUID string"),
            },
            Schema::Fixed(f) => match latin1(j) {
                Some(b) if b.len() == f.size => Avro::Fixed(f.size, b),
                _ => return want(&format!("{} bytes (a string of U+0000–U+00FF)", f.size)),
            },
            Schema::Enum(e) => match j.as_str() {
                Some(t) if e.symbols.iter().any(|x| x == t) => {
                    Avro::Enum(e.symbols.iter().position(|x| x == t).unwrap_or_default() as u32, t.to_string())
                }
                _ => return want(&format!("one of {:?}", e.symbols)),
            },
            Schema::Array(a) => match j {
                Json::Array(items) => Avro::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| self.value_of(x, &a.items, &At::Item(at, i)))
                        .collect::<Result<_, _>>()?,
                ),
                _ => return want("an array"),
            },
            Schema::Map(m) => match j {
                Json::Object(o) => Avro::Map(
                    o.iter()
                        .map(|(k, x)| Ok((k.clone(), self.value_of(x, &m.types, &At::Field(at, k))?)))
                        .collect::<Result<_, String>>()?,
                ),
                _ => return want("an object (map)"),
            },
            Schema::Record(r) => {
                let Json::Object(o) = j else { return want(&format!("an object (record {})", r.name.fullname(None))) };
                if let Some(extra) = o.keys().find(|k| !r.lookup.contains_key(*k)) {
                    return Err(format!("{at}: field {extra:?} is not in record {}", r.name.fullname(None)));
                }
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let here = At::Field(at, &f.name);
                    let v = match (o.get(&f.name), &f.default) {
                        (Some(x), _) => self.value_of(x, &f.schema, &here)?,
                        (None, Some(d)) => self.default(d, &f.schema, &here)?,
                        (None, None) => return Err(format!("{here}: missing, and the field has no default")),
                    };
                    fields.push((f.name.clone(), v));
                }
                Avro::Record(fields)
            }
            Schema::Union(u) => {
                if j.is_null()
                    && let Some(i) = u.variants().iter().position(|v| matches!(v, Schema::Null))
                {
                    return Ok(Avro::Union(i as u32, Box::new(Avro::Null)));
                }
                // the Avro JSON encoding: {"<type name>": value}
                if let Json::Object(o) = j
                    && o.len() == 1
                    && let Some((name, inner)) = o.iter().next()
                    && let Some(i) =
                        u.variants().iter().position(|v| self.branch_name(v).as_deref() == Some(name.as_str()))
                    && let Ok(v) = self.value_of(inner, &u.variants()[i], at)
                {
                    return Ok(Avro::Union(i as u32, Box::new(v)));
                }
                for (i, v) in u.variants().iter().enumerate() {
                    if let Ok(x) = self.value_of(j, v, at) {
                        return Ok(Avro::Union(i as u32, Box::new(x)));
                    }
                }
                return want("a value of one of the union's types");
            }
            Schema::Date => Avro::Date(int(j).ok_or_else(|| need("a date (days, int)"))?),
            Schema::TimeMillis => Avro::TimeMillis(int(j).ok_or_else(|| need("an int"))?),
            Schema::TimeMicros => Avro::TimeMicros(long(j).ok_or_else(|| need("a long"))?),
            Schema::TimestampMillis => Avro::TimestampMillis(long(j).ok_or_else(|| need("a long"))?),
            Schema::TimestampMicros => Avro::TimestampMicros(long(j).ok_or_else(|| need("a long"))?),
            Schema::TimestampNanos => Avro::TimestampNanos(long(j).ok_or_else(|| need("a long"))?),
            Schema::LocalTimestampMillis => Avro::LocalTimestampMillis(long(j).ok_or_else(|| need("a long"))?),
            Schema::LocalTimestampMicros => Avro::LocalTimestampMicros(long(j).ok_or_else(|| need("a long"))?),
            Schema::LocalTimestampNanos => Avro::LocalTimestampNanos(long(j).ok_or_else(|| need("a long"))?),
            Schema::Decimal(d) => match latin1(j) {
                Some(b) => {
                    if let Schema::Fixed(f) = d.inner.as_ref()
                        && f.size != b.len()
                    {
                        return want(&format!("a decimal of {} bytes", f.size));
                    }
                    Avro::Decimal(apache_avro::Decimal::from(b))
                }
                None => return want("a decimal (its two's-complement bytes as a string of U+0000–U+00FF)"),
            },
            Schema::Duration => match latin1(j).and_then(|b| <[u8; 12]>::try_from(b).ok()) {
                Some(b) => Avro::Duration(apache_avro::Duration::from(b)),
                None => return want("a duration (12 bytes as a string of U+0000–U+00FF)"),
            },
            Schema::BigDecimal | Schema::Ref { .. } => {
                return Err(format!("{at}: this type cannot be written from JSON"));
            }
        })
    }

    /// A field default (JSON, as in the schema) as a value of `s`. A union
    /// field's default is of its first branch.
    fn default(&self, d: &Json, s: &Schema, at: &At<'_>) -> Result<Avro, String> {
        match self.resolve(s, at)? {
            Schema::Union(u) => match u.variants().first() {
                Some(first) => Ok(Avro::Union(0, Box::new(self.value_of(d, first, at)?))),
                None => Err(format!("{at}: empty union")),
            },
            s => self.value_of(d, s, at),
        }
    }

    /// The name a union branch goes by in the Avro JSON encoding.
    fn branch_name(&self, s: &Schema) -> Option<String> {
        Some(match s {
            Schema::Null => "null".into(),
            Schema::Boolean => "boolean".into(),
            Schema::Int => "int".into(),
            Schema::Long => "long".into(),
            Schema::Float => "float".into(),
            Schema::Double => "double".into(),
            Schema::Bytes => "bytes".into(),
            Schema::String => "string".into(),
            Schema::Array(_) => "array".into(),
            Schema::Map(_) => "map".into(),
            Schema::Record(r) => r.name.fullname(None),
            Schema::Enum(e) => e.name.fullname(None),
            Schema::Fixed(f) => f.name.fullname(None),
            Schema::Ref { name } => name.fullname(None),
            _ => return None,
        })
    }
}

/// Where in a record a value is (`$.claim.tags[2]`), formatted only for an
/// error message.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Field(&'a At<'a>, &'a str),
    Item(&'a At<'a>, usize),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root => f.write_str("$"),
            At::Field(p, n) => write!(f, "{p}.{n}"),
            At::Item(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn long(j: &Json) -> Option<i64> {
    j.as_i64()
}

fn int(j: &Json) -> Option<i32> {
    j.as_i64().and_then(|n| i32::try_from(n).ok())
}

fn float(j: &Json) -> Option<f64> {
    match j {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Bytes from a string of code points U+0000–U+00FF.
fn latin1(j: &Json) -> Option<Vec<u8>> {
    j.as_str()?.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn latin1_string(b: &[u8]) -> Json {
    Json::String(b.iter().map(|&b| char::from(b)).collect())
}

fn number(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
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
        Avro::BigDecimal(d) => Json::String(d.to_string()),
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
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn bytes_that_do_not_fit_fail_to_decode() {
        let s = AvroSchema::parse(CLAIM).unwrap();
        let good = s.encode(&json!({"id": "c", "n": 1})).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(s.decode(&trailing, None).unwrap_err().contains("trailing"));
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

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

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
