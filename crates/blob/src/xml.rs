//! The XML the client reads: `List Blobs` results and error bodies.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::BlobItem;

/// One page of a `List Blobs` answer.
#[derive(Debug, Default)]
pub(crate) struct ListPage {
    pub items: Vec<BlobItem>,
    /// Empty or absent when this is the last page.
    pub next_marker: Option<String>,
}

#[derive(Default)]
struct Partial {
    name: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
    size: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// Parses `EnumerationResults`. Metadata names are lower-cased (they are
/// case-insensitive in the service, and come back lower-cased in headers).
/// Why a listing's XML could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct XmlError(String);

pub(crate) fn parse_list(xml: &str) -> Result<ListPage, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut name_encoded = false;
    let mut cur: Option<Partial> = None;
    let mut page = ListPage::default();

    loop {
        let ev =
            reader.read_event().map_err(|e| XmlError(format!("bad XML at byte {}: {e}", reader.buffer_position())))?;
        let (open, close): (Option<String>, bool) = match &ev {
            Event::Start(e) | Event::Empty(e) => {
                let n = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if n == "Name" {
                    name_encoded = e
                        .try_get_attribute("Encoded")
                        .ok()
                        .flatten()
                        .and_then(|a| a.unescape_value().ok().map(|v| v.eq_ignore_ascii_case("true")))
                        .unwrap_or(false);
                }
                (Some(n), matches!(ev, Event::Empty(_)))
            }
            Event::End(_) => (None, true),
            Event::Text(t) => {
                text.push_str(&t.unescape().map_err(|e| XmlError(format!("bad XML text: {e}")))?);
                continue;
            }
            Event::CData(c) => {
                text.push_str(&String::from_utf8_lossy(c.as_ref()));
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if let Some(n) = open {
            text.clear();
            if n == "Blob" && stack.last().map(String::as_str) == Some("Blobs") {
                cur = Some(Partial::default());
            }
            stack.push(n);
        }
        if !close {
            continue;
        }
        let value = std::mem::take(&mut text);
        let depth = stack.len();
        let at = |i: usize| -> &str { if depth >= i { stack[depth - i].as_str() } else { "" } };
        match (at(3), at(2), at(1)) {
            (_, "EnumerationResults", "NextMarker") => {
                page.next_marker = Some(value).filter(|v| !v.is_empty());
            }
            (_, "Blobs", "Blob") => {
                let p = cur.take().ok_or_else(|| XmlError("unbalanced <Blob>".into()))?;
                page.items.push(finish(p)?);
            }
            (_, "Blob", "Name") => {
                if let Some(p) = cur.as_mut() {
                    p.name = Some(if name_encoded { percent_decode(&value) } else { value });
                }
            }
            ("Blob", "Properties", field) => {
                if let Some(p) = cur.as_mut() {
                    match field {
                        "Etag" => p.etag = Some(value),
                        "Last-Modified" => p.last_modified = Some(value),
                        "Content-Length" => p.size = Some(value),
                        _ => {}
                    }
                }
            }
            ("Blob", "Metadata", key) => {
                if let Some(p) = cur.as_mut() {
                    p.metadata.insert(key.to_ascii_lowercase(), value);
                }
            }
            _ => {}
        }
        stack.pop();
    }
    if stack.is_empty() && cur.is_none() { Ok(page) } else { Err(XmlError("truncated XML".into())) }
}

fn finish(p: Partial) -> Result<BlobItem, XmlError> {
    let name = p.name.ok_or_else(|| XmlError("a <Blob> without <Name>".into()))?;
    let etag = p.etag.ok_or_else(|| XmlError(format!("blob {name}: no <Etag>")))?;
    let lm = p.last_modified.ok_or_else(|| XmlError(format!("blob {name}: no <Last-Modified>")))?;
    let last_modified =
        httpdate::parse_http_date(&lm).map_err(|_| XmlError(format!("blob {name}: bad <Last-Modified> {lm:?}")))?;
    let size = match p.size.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse().map_err(|_| XmlError(format!("blob {name}: bad <Content-Length> {s:?}")))?,
    };
    Ok(BlobItem { name, etag: crate::normalize_etag(&etag), last_modified, size, metadata: p.metadata })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(Code, first line of Message)` of an `<Error>` body, when it is one.
pub(crate) fn parse_error(xml: &str) -> (Option<String>, Option<String>) {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let (mut code, mut message) = (None, None);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                stack.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                text.clear();
            }
            Ok(Event::Text(t)) => {
                if let Ok(t) = t.unescape() {
                    text.push_str(&t);
                }
            }
            Ok(Event::End(_)) => {
                let n = stack.pop().unwrap_or_default();
                if stack.len() == 1 && stack[0] == "Error" {
                    let v = std::mem::take(&mut text);
                    match n.as_str() {
                        "Code" => code = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
                        "Message" => message = v.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned),
                        _ => {}
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const PAGE1: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="https://acct.blob.core.windows.net/" ContainerName="ckpt">
  <Prefix>hub/</Prefix>
  <MaxResults>2</MaxResults>
  <Blobs>
    <Blob>
      <Name>hub/$default/ownership/0</Name>
      <Properties>
        <Creation-Time>Thu, 01 Jan 2015 00:00:00 GMT</Creation-Time>
        <Last-Modified>Fri, 26 Jun 2015 23:39:12 GMT</Last-Modified>
        <Etag>0x8D27E8A2B5F6A10</Etag>
        <Content-Length>0</Content-Length>
        <Content-Type>application/octet-stream</Content-Type>
        <BlobType>BlockBlob</BlobType>
      </Properties>
      <Metadata>
        <OwnerId>node-1</OwnerId>
        <empty />
        <amp>a&amp;b &lt;c&gt;</amp>
      </Metadata>
    </Blob>
    <Blob>
      <Name Encoded="true">hub/odd%EF%BF%BEname</Name>
      <Properties>
        <Last-Modified>Fri, 26 Jun 2015 23:39:13 GMT</Last-Modified>
        <Etag>"0x8D27E8A2B5F6A11"</Etag>
        <Content-Length>12345678901</Content-Length>
      </Properties>
    </Blob>
  </Blobs>
  <NextMarker>2!100!MDAwMDE2IWh1Yi9vZGQ-</NextMarker>
</EnumerationResults>"#;

    #[test]
    fn list_page_with_metadata_and_marker() {
        let p = parse_list(PAGE1).unwrap();
        assert_eq!(p.items.len(), 2);
        let a = &p.items[0];
        assert_eq!(a.name, "hub/$default/ownership/0");
        assert_eq!(a.etag, "\"0x8D27E8A2B5F6A10\"");
        assert_eq!(a.size, 0);
        assert_eq!(a.last_modified, UNIX_EPOCH + Duration::from_secs(1435361952));
        assert_eq!(a.metadata.get("ownerid").map(String::as_str), Some("node-1"));
        assert_eq!(a.metadata.get("empty").map(String::as_str), Some(""));
        assert_eq!(a.metadata.get("amp").map(String::as_str), Some("a&b <c>"));
        assert_eq!(a.metadata.len(), 3);
        let b = &p.items[1];
        assert_eq!(b.name, "hub/odd\u{FFFE}name");
        assert_eq!(b.etag, "\"0x8D27E8A2B5F6A11\"", "quoted etags stay quoted once");
        assert_eq!(b.size, 12345678901);
        assert!(b.metadata.is_empty());
        assert_eq!(p.next_marker.as_deref(), Some("2!100!MDAwMDE2IWh1Yi9vZGQ-"));
    }

    #[test]
    fn last_page_and_empty() {
        let p = parse_list(r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Blobs /><NextMarker /></EnumerationResults>"#).unwrap();
        assert!(p.items.is_empty());
        assert_eq!(p.next_marker, None);
        let p =
            parse_list(r#"<EnumerationResults><Blobs></Blobs><NextMarker></NextMarker></EnumerationResults>"#).unwrap();
        assert_eq!(p.next_marker, None);
        // a BlobPrefix (only with a delimiter, which we never send) is ignored
        let p = parse_list(
            r#"<EnumerationResults><Blobs><BlobPrefix><Name>x/</Name></BlobPrefix></Blobs></EnumerationResults>"#,
        )
        .unwrap();
        assert!(p.items.is_empty());
    }

    #[test]
    fn list_errors() {
        assert!(
            parse_list("<EnumerationResults><Blobs><Blob><Name>x</Name></Blob></Blobs></EnumerationResults>").is_err()
        );
        assert!(parse_list("<EnumerationResults><Blobs><Blob><Name>x</Name><Properties><Etag>1</Etag><Last-Modified>yesterday</Last-Modified></Properties></Blob></Blobs></EnumerationResults>").unwrap_err().to_string().contains("Last-Modified"));
        assert!(parse_list("<EnumerationResults><Blobs>").is_err());
    }

    #[test]
    fn error_body() {
        let (c, m) = parse_error(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ConditionNotMet</Code><Message>The condition specified using HTTP conditional header(s) is not met.\nRequestId:abc\nTime:2015-06-26T23:39:12.0000000Z</Message></Error>",
        );
        assert_eq!(c.as_deref(), Some("ConditionNotMet"));
        assert_eq!(m.as_deref(), Some("The condition specified using HTTP conditional header(s) is not met."));
        assert_eq!(parse_error(""), (None, None));
        assert_eq!(parse_error("not xml at all"), (None, None));
    }
}
