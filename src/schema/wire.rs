//! Wire formats of schema-framed messages, as pure functions:
//!
//! - **Confluent**: byte `0` (the magic byte), the schema id as 4 bytes
//!   big-endian, then the encoded record (Avro binary).
//! - **Azure Schema Registry**: the record alone (Avro binary); the schema id
//!   travels in the content type, `avro/binary+<schema id>`, which Event
//!   Hubs carries in the message's `content-type` property (Conveyor's
//!   `content-type` header, see the Event Hubs transport).

/// The header that carries a message's content type (on Event Hubs, the
/// AMQP `content-type` property).
pub use crate::transport::CONTENT_TYPE_HEADER as CONTENT_TYPE;

/// The content type prefix of Azure-framed Avro.
pub const AZURE_AVRO: &str = "avro/binary";

/// Why bytes are not a framed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("payload of {0} bytes is shorter than the 5-byte Confluent header")]
    Short(usize),
    #[error("payload starts with byte {0:#04x}, not the Confluent magic byte 0")]
    Magic(u8),
    #[error("content type {0:?} is not `avro/binary+<schema id>`")]
    ContentType(String),
}

/// Splits a Confluent-framed payload into (schema id, body).
pub fn confluent_split(payload: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match payload {
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [m, _, _, _, _, ..] => Err(FrameError::Magic(*m)),
        short => Err(FrameError::Short(short.len())),
    }
}

/// A Confluent-framed payload of `body` written with schema `id`.
pub fn confluent_frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(0);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The schema id in an Azure content type (`avro/binary+<id>`; spaces and
/// case of the MIME type ignored, as the Python encoder does).
pub fn azure_schema_id(content_type: &str) -> Result<&str, FrameError> {
    let bad = || FrameError::ContentType(crate::text::clip(content_type, 128).to_string());
    let (mime, id) = content_type.split_once('+').ok_or_else(bad)?;
    let id = id.trim();
    let valid_id = !id.is_empty() && !id.contains('+') && id.bytes().all(|b| b.is_ascii_graphic());
    if mime.trim().eq_ignore_ascii_case(AZURE_AVRO) && valid_id { Ok(id) } else { Err(bad()) }
}

/// The content type of Azure-framed Avro written with schema `id`.
pub fn azure_content_type(id: &str) -> String {
    format!("{AZURE_AVRO}+{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_frames() {
        type Row<'a> = (&'a [u8], Result<(u32, &'a [u8]), FrameError>);
        let table: &[Row] = &[
            (&[0, 0, 0, 0, 7, 1, 2], Ok((7, &[1, 2]))),
            (&[0, 0, 0, 1, 0], Ok((256, &[]))),
            (&[0, 0xff, 0xff, 0xff, 0xff, 9], Ok((u32::MAX, &[9]))),
            (&[1, 0, 0, 0, 7, 1], Err(FrameError::Magic(1))),
            (b"{\"a\":1}", Err(FrameError::Magic(b'{'))),
            (&[0, 0, 0, 7], Err(FrameError::Short(4))),
            (&[], Err(FrameError::Short(0))),
        ];
        for (i, (input, want)) in table.iter().enumerate() {
            assert_eq!(&confluent_split(input), want, "row {i}");
        }
        let framed = confluent_frame(300, b"xy");
        assert_eq!(framed, [0, 0, 0, 1, 44, b'x', b'y']);
        assert_eq!(confluent_split(&framed), Ok((300, &b"xy"[..])));
    }

    #[test]
    fn azure_content_types() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(azure_content_type(id), format!("avro/binary+{id}"));
        let ok = [format!("avro/binary+{id}"), format!("Avro/Binary+{id}"), format!(" avro/binary + {id} ")];
        for ct in &ok {
            assert_eq!(azure_schema_id(ct), Ok(id), "{ct:?}");
        }
        for bad in [
            "avro/binary",
            "avro/binary+",
            "application/json",
            "avro/binary+a+b",
            "text/plain+x",
            "avro/binary+a b",
            "+",
        ] {
            assert!(azure_schema_id(bad).is_err(), "{bad:?}");
        }
        // a long or non-ASCII content type is clipped on a char boundary in the error
        let long = format!("é{}", "€".repeat(200));
        let e = azure_schema_id(&long).unwrap_err().to_string();
        assert!(e.len() < 600, "{e}");
    }
}
