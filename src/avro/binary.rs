//! The Avro binary encoding, straight between bytes and JSON (no
//! intermediate `apache_avro::types::Value`, no per-record schema
//! resolution): the hot path of `decode`, `encode` and `transcode`. The JSON
//! mapping is the one in the parent module's docs; the tests check both
//! directions against `apache-avro` itself.
//!
//! Decoding refuses what `apache-avro` refuses (a bad boolean byte, an enum
//! or union index out of range, text that is not UTF-8, a length past the
//! end) and, beyond it, what a hostile payload could use to exhaust the
//! process: values nested deeper than [`MAX_DEPTH`] (a recursive schema
//! would otherwise overflow the stack), an array or map block that claims
//! more elements than the payload has bytes left, and more than
//! [`MAX_EMPTY_ELEMENTS`] elements of a type that takes no bytes (`null`)
//! in one record.

use super::AvroError;
use apache_avro::schema::{Name, Schema};
use serde_json::{Map, Number, Value as Json};
use std::collections::HashMap;

/// Named types by full name.
pub(super) type Names = HashMap<Name, Schema>;

/// Elements of a type that takes no bytes one record may hold.
pub const MAX_EMPTY_ELEMENTS: u64 = 1 << 16;

/// How deep values may nest (records, arrays, maps, unions).
pub const MAX_DEPTH: usize = 128;

/// The pattern of the types written as an Avro long (timestamps and
/// micro-times too).
macro_rules! long_like {
    () => {
        Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
    };
}

fn resolve<'a>(names: &'a Names, s: &'a Schema) -> Result<&'a Schema, AvroError> {
    match s {
        Schema::Ref { name } => names.get(name).ok_or_else(|| AvroError::UnknownType(name.fullname(None))),
        s => Ok(s),
    }
}

/// The body is not a value of the schema.
fn body(why: impl Into<String>) -> AvroError {
    AvroError::Body(why.into())
}

/// The JSON at `at` is not a value of the schema.
fn value(at: &At<'_>, why: impl ToString) -> AvroError {
    AvroError::Value { at: at.to_string(), problem: why.to_string() }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Elements of types that take no bytes still allowed.
    empty_budget: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, AvroError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| body("unexpected end of the payload"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AvroError> {
        if n > self.remaining() {
            return Err(body(format!("a length of {n} bytes runs past the end of the payload")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A zig-zag varint long.
    fn long(&mut self) -> Result<i64, AvroError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(body("a variable-length integer is longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, AvroError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| body(format!("{n} is out of the int range")))
    }

    fn len(&mut self) -> Result<usize, AvroError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| body(format!("negative length {n}")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], AvroError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, AvroError> {
        std::str::from_utf8(self.bytes()?).map_err(|e| body(format!("a string is not UTF-8: {e}")))
    }

    /// The element count of the next array or map block (0: the end).
    fn block(&mut self, empty_items: bool) -> Result<u64, AvroError> {
        let n = self.long()?;
        let count = if n < 0 {
            self.long()?; // the block's size in bytes
            n.unsigned_abs()
        } else {
            n as u64
        };
        let limit = if empty_items { self.empty_budget } else { self.remaining() as u64 };
        if count > limit {
            return Err(body(format!("a block claims {count} elements, more than the payload can hold")));
        }
        if empty_items {
            self.empty_budget -= count;
        }
        Ok(count)
    }
}

/// Whether values of `s` can take no bytes (`null`, `fixed(0)`, records of
/// such fields; a union always takes its index byte).
fn empty(names: &Names, s: &Schema, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match resolve(names, s) {
        Ok(Schema::Null) => true,
        Ok(Schema::Fixed(f)) => f.size == 0,
        Ok(Schema::Record(r)) => r.fields.iter().all(|f| empty(names, &f.schema, depth + 1)),
        _ => false,
    }
}

/// Decodes one value of `s` from `body`, which it must use up.
pub(super) fn decode(names: &Names, s: &Schema, payload: &[u8]) -> Result<Json, AvroError> {
    let mut r = Reader { buf: payload, pos: 0, empty_budget: MAX_EMPTY_ELEMENTS };
    let v = read(names, s, &mut r, 0)?;
    match r.remaining() {
        0 => Ok(v),
        n => Err(body(format!("{n} trailing bytes after the record (written with another schema?)"))),
    }
}

fn read(names: &Names, s: &Schema, r: &mut Reader<'_>, depth: usize) -> Result<Json, AvroError> {
    if depth > MAX_DEPTH {
        return Err(body(format!("values nest deeper than {MAX_DEPTH} levels")));
    }
    let depth = depth + 1;
    Ok(match resolve(names, s)? {
        Schema::Null => Json::Null,
        Schema::Boolean => match r.byte()? {
            0 => Json::Bool(false),
            1 => Json::Bool(true),
            b => return Err(body(format!("byte {b} is not a boolean"))),
        },
        Schema::Int | Schema::Date | Schema::TimeMillis => Json::from(r.int()?),
        long_like!() => Json::from(r.long()?),
        Schema::Float => {
            let b: [u8; 4] = r.take(4)?.try_into().map_err(|_| body("a float needs 4 bytes"))?;
            number(f64::from(f32::from_le_bytes(b)))
        }
        Schema::Double => {
            let b: [u8; 8] = r.take(8)?.try_into().map_err(|_| body("a double needs 8 bytes"))?;
            number(f64::from_le_bytes(b))
        }
        Schema::Bytes => latin1_string(r.bytes()?),
        Schema::String => Json::String(r.string()?.to_string()),
        Schema::Uuid => {
            let t = r.string()?;
            let u = apache_avro::Uuid::parse_str(t).map_err(|e| body(format!("{t:?} is not a UUID: {e}")))?;
            Json::String(u.to_string())
        }
        Schema::Fixed(f) => latin1_string(r.take(f.size)?),
        Schema::Enum(e) => {
            let i = r.int()?;
            let symbol = usize::try_from(i).ok().and_then(|i| e.symbols.get(i));
            Json::String(
                symbol
                    .ok_or_else(|| body(format!("enum index {i} is not one of {} symbols", e.symbols.len())))?
                    .clone(),
            )
        }
        Schema::Union(u) => {
            let i = r.long()?;
            let branch = usize::try_from(i).ok().and_then(|i| u.variants().get(i));
            read(
                names,
                branch.ok_or_else(|| body(format!("union index {i} is not one of {} branches", u.variants().len())))?,
                r,
                depth,
            )?
        }
        Schema::Array(a) => {
            let mut items = Vec::new();
            let empty = empty(names, &a.items, 0);
            loop {
                let n = r.block(empty)?;
                if n == 0 {
                    break;
                }
                items.reserve(n.min(1024) as usize);
                for _ in 0..n {
                    items.push(read(names, &a.items, r, depth)?);
                }
            }
            Json::Array(items)
        }
        Schema::Map(m) => {
            let mut o = Map::new();
            loop {
                // an entry takes at least its key's length byte
                let n = r.block(false)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let k = r.string()?.to_string();
                    o.insert(k, read(names, &m.types, r, depth)?);
                }
            }
            Json::Object(o)
        }
        Schema::Record(rec) => {
            let mut o = Map::new();
            for f in &rec.fields {
                o.insert(f.name.clone(), read(names, &f.schema, r, depth)?);
            }
            Json::Object(o)
        }
        Schema::Decimal(d) => match d.inner.as_ref() {
            Schema::Fixed(f) => latin1_string(r.take(f.size)?),
            _ => latin1_string(r.bytes()?),
        },
        Schema::Duration => latin1_string(r.take(12)?),
        Schema::BigDecimal | Schema::Ref { .. } => {
            return Err(AvroError::BigDecimal);
        }
    })
}

/// Whether `s` (and every type it reaches) has a direct encoding here.
pub(super) fn supported(names: &Names, s: &Schema, seen: &mut Vec<Name>) -> bool {
    match s {
        Schema::BigDecimal => false,
        Schema::Ref { name } => {
            if seen.contains(name) {
                return true;
            }
            seen.push(name.clone());
            names.get(name).is_some_and(|t| supported(names, t, seen))
        }
        Schema::Array(a) => supported(names, &a.items, seen),
        Schema::Map(m) => supported(names, &m.types, seen),
        Schema::Union(u) => u.variants().iter().all(|v| supported(names, v, seen)),
        Schema::Record(r) => {
            if !seen.contains(&r.name) {
                seen.push(r.name.clone());
            }
            r.fields.iter().all(|f| supported(names, &f.schema, seen))
        }
        _ => true,
    }
}

fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Encodes `j` as a value of `s` (schema-directed; see the parent module
/// for how JSON maps to each type).
pub(super) fn encode(names: &Names, s: &Schema, j: &Json) -> Result<Vec<u8>, AvroError> {
    let mut out = Vec::with_capacity(128);
    write(names, s, j, &At::Root, &mut out)?;
    Ok(out)
}

fn write(names: &Names, s: &Schema, j: &Json, at: &At<'_>, out: &mut Vec<u8>) -> Result<(), AvroError> {
    let s = resolve(names, s).map_err(|e| value(at, e))?;
    let need = |what: &str| value(at, format!("expected {what}, found {}", kind(j)));
    let int = || j.as_i64().and_then(|n| i32::try_from(n).ok());
    match s {
        Schema::Null => j.is_null().then_some(()).ok_or_else(|| need("null"))?,
        Schema::Boolean => out.push(u8::from(j.as_bool().ok_or_else(|| need("a boolean"))?)),
        Schema::Int | Schema::Date | Schema::TimeMillis => put_long(out, int().ok_or_else(|| need("an int"))?.into()),
        long_like!() => put_long(out, j.as_i64().ok_or_else(|| need("a long"))?),
        Schema::Float => {
            let x = float(j).ok_or_else(|| need("a float"))?;
            if x.is_finite() && !(x as f32).is_finite() {
                return Err(need("a float (this number is out of its range)"));
            }
            out.extend_from_slice(&(x as f32).to_le_bytes())
        }
        Schema::Double => out.extend_from_slice(&float(j).ok_or_else(|| need("a double"))?.to_le_bytes()),
        Schema::Bytes => put_bytes(out, &latin1(j).ok_or_else(|| need("bytes (a string of U+0000–U+00FF)"))?),
        Schema::String => put_bytes(out, j.as_str().ok_or_else(|| need("a string"))?.as_bytes()),
        Schema::Uuid => {
            let u =
                j.as_str().and_then(|t| apache_avro::Uuid::parse_str(t).ok()).ok_or_else(|| need("a UUID string"))?;
            put_bytes(out, u.to_string().as_bytes());
        }
        Schema::Fixed(f) => match latin1(j) {
            Some(b) if b.len() == f.size => out.extend_from_slice(&b),
            _ => return Err(need(&format!("{} bytes (a string of U+0000–U+00FF)", f.size))),
        },
        Schema::Enum(e) => {
            let i = j.as_str().and_then(|t| e.symbols.iter().position(|x| x == t));
            put_long(out, i.ok_or_else(|| need(&format!("one of {:?}", e.symbols)))? as i64);
        }
        Schema::Array(a) => {
            let items = j.as_array().ok_or_else(|| need("an array"))?;
            if !items.is_empty() {
                put_long(out, items.len() as i64);
                for (i, x) in items.iter().enumerate() {
                    write(names, &a.items, x, &At::Item(at, i), out)?;
                }
            }
            out.push(0);
        }
        Schema::Map(m) => {
            let o = j.as_object().ok_or_else(|| need("an object (map)"))?;
            if !o.is_empty() {
                put_long(out, o.len() as i64);
                for (k, x) in o {
                    put_bytes(out, k.as_bytes());
                    write(names, &m.types, x, &At::Field(at, k), out)?;
                }
            }
            out.push(0);
        }
        Schema::Record(r) => {
            let o = j.as_object().ok_or_else(|| need(&format!("an object (record {})", r.name.fullname(None))))?;
            // field names only: `lookup` also holds aliases, whose values
            // would be dropped
            if let Some(extra) = o.keys().find(|k| !r.fields.iter().any(|f| f.name == **k)) {
                return Err(value(at, format!("field {extra:?} is not in record {}", r.name.fullname(None))));
            }
            for f in &r.fields {
                let here = At::Field(at, &f.name);
                match (o.get(&f.name), &f.default) {
                    (Some(x), _) => write(names, &f.schema, x, &here, out)?,
                    (None, Some(d)) => write_default(names, &f.schema, d, &here, out)?,
                    (None, None) => return Err(value(&here, "missing, and the field has no default")),
                }
            }
        }
        Schema::Union(u) => {
            let start = out.len();
            let branch = |i: usize, v: &Json, out: &mut Vec<u8>| {
                out.truncate(start);
                put_long(out, i as i64);
                let ok = write(names, &u.variants()[i], v, at, out).is_ok();
                if !ok {
                    out.truncate(start);
                }
                ok
            };
            if j.is_null()
                && let Some(i) = u.variants().iter().position(|v| matches!(v, Schema::Null))
                && branch(i, j, out)
            {
                return Ok(());
            }
            // the first branch the value fits, a number that a `float` would
            // round going to a `double` of the union instead
            let has_double = u.variants().iter().any(|v| matches!(v, Schema::Double));
            let rounds = |v: &Schema| {
                matches!(v, Schema::Float)
                    && has_double
                    && j.as_f64().is_some_and(|x| x.is_finite() && f64::from(x as f32) != x)
            };
            if (0..u.variants().len()).any(|i| !rounds(&u.variants()[i]) && branch(i, j, out)) {
                return Ok(());
            }
            // the Avro JSON encoding: {"<type name>": value}
            if let Json::Object(o) = j
                && o.len() == 1
                && let Some((name, inner)) = o.iter().next()
                && let Some(i) = u.variants().iter().position(|v| branch_name(v).as_deref() == Some(name.as_str()))
                && branch(i, inner, out)
            {
                return Ok(());
            }
            return Err(need("a value of one of the union's types"));
        }
        Schema::Decimal(d) => {
            let b =
                latin1(j).ok_or_else(|| need("a decimal (its two's-complement bytes as a string of U+0000–U+00FF)"))?;
            match d.inner.as_ref() {
                Schema::Fixed(f) if f.size != b.len() => return Err(need(&format!("a decimal of {} bytes", f.size))),
                Schema::Fixed(_) => out.extend_from_slice(&b),
                _ => put_bytes(out, &b),
            }
        }
        Schema::Duration => match latin1(j) {
            Some(b) if b.len() == 12 => out.extend_from_slice(&b),
            _ => return Err(need("a duration (12 bytes as a string of U+0000–U+00FF)")),
        },
        Schema::BigDecimal | Schema::Ref { .. } => return Err(value(at, "this type cannot be written from JSON")),
    }
    Ok(())
}

/// A field default (JSON, as in the schema): a union field's default is of
/// its first branch.
fn write_default(names: &Names, s: &Schema, d: &Json, at: &At<'_>, out: &mut Vec<u8>) -> Result<(), AvroError> {
    match resolve(names, s).map_err(|e| value(at, e))? {
        Schema::Union(u) => {
            let first = u.variants().first().ok_or_else(|| value(at, "empty union"))?;
            put_long(out, 0);
            write(names, first, d, at, out)
        }
        s => write(names, s, d, at, out),
    }
}

/// The name a union branch goes by in the Avro JSON encoding.
fn branch_name(s: &Schema) -> Option<String> {
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

/// Where in a record a value is (`$.claim.tags[2]`), formatted only for an
/// error message.
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
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

pub(super) fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

pub(super) fn float(j: &Json) -> Option<f64> {
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
pub(super) fn latin1(j: &Json) -> Option<Vec<u8>> {
    j.as_str()?.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

pub(super) fn latin1_string(b: &[u8]) -> Json {
    Json::String(b.iter().map(|&b| char::from(b)).collect())
}

pub(super) fn number(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}
