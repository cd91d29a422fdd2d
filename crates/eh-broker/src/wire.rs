//! The byte pump between a client socket and the broker's AMQP engine.
//!
//! Two jobs:
//! 1. **Kill switch**: the pump is a task of its own; aborting it closes the socket
//!    abruptly ([`crate::Faults::drop_connections`]).
//! 2. **Performative padding for pyamqp.** fe2o3-amqp encodes performatives as AMQP
//!    lists with trailing null fields omitted (valid AMQP), but the Python SDK's
//!    decoder indexes frame fields by position (`frame[9]` of Open, `frame[13]` of
//!    Attach, and the Transfer payload is expected at index 11). Outgoing frames are
//!    therefore re-encoded with every field of their performative present (missing
//!    ones as null). To make room for those few extra bytes, the client's `Open`
//!    `max-frame-size` is lowered by [`FRAME_MARGIN`] on the way in, so the engine
//!    never fills a frame to the client's real limit.
//!
//! Anything that does not parse as expected is passed through unchanged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

/// Bytes kept free in every outgoing frame for padding.
pub(crate) const FRAME_MARGIN: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client → broker.
    Inbound,
    /// Broker → client.
    Outbound,
}

/// Runs until either side closes.
pub(crate) async fn pump(tcp: TcpStream, engine: DuplexStream) {
    let (mut tr, mut tw) = tcp.into_split();
    let (mut er, mut ew) = tokio::io::split(engine);
    {
        let inbound = relay(&mut tr, &mut ew, Dir::Inbound);
        let outbound = relay(&mut er, &mut tw, Dir::Outbound);
        tokio::pin!(inbound, outbound);
        let client_closed = tokio::select! {
            _ = &mut inbound => true,
            _ = &mut outbound => false,
        };
        if client_closed {
            // The engine saw EOF (relay shuts its writer down); let it finish writing
            // (e.g. its Close) briefly.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut outbound).await;
        }
    }
    let _ = tw.shutdown().await;
}

async fn relay<R, W>(r: &mut R, w: &mut W, dir: Dir) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut passthrough = false;
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            if !buf.is_empty() {
                w.write_all(&buf).await?;
            }
            w.flush().await?;
            let _ = w.shutdown().await;
            return Ok(());
        }
        if passthrough {
            w.write_all(&chunk[..n]).await?;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::with_capacity(buf.len() + 64);
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.len() < 4 {
                break;
            }
            if &rest[..4] == b"AMQP" {
                if rest.len() < 8 {
                    break;
                }
                out.extend_from_slice(&rest[..8]);
                pos += 8;
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size < 8 {
                // Not AMQP framing we understand: stop interfering.
                passthrough = true;
                break;
            }
            if rest.len() < size {
                break;
            }
            fix_frame(&rest[..size], dir, &mut out);
            pos += size;
        }
        buf.drain(..pos);
        if passthrough {
            out.append(&mut buf);
        }
        w.write_all(&out).await?;
    }
}

/// Number of fields of a performative, by frame type and descriptor code.
fn field_count(frame_type: u8, code: u64) -> Option<u32> {
    Some(match (frame_type, code) {
        (0, 0x10) => 10, // open
        (0, 0x11) => 8,  // begin
        (0, 0x12) => 14, // attach
        (0, 0x13) => 11, // flow
        (0, 0x14) => 11, // transfer
        (0, 0x15) => 6,  // disposition
        (0, 0x16) => 3,  // detach
        (0, 0x17) => 1,  // end
        (0, 0x18) => 1,  // close
        (1, 0x40) => 1,  // sasl-mechanisms
        (1, 0x41) => 3,  // sasl-init
        (1, 0x42) => 1,  // sasl-challenge
        (1, 0x43) => 1,  // sasl-response
        (1, 0x44) => 2,  // sasl-outcome
        _ => return None,
    })
}

/// Field counts of described lists nested in performatives that pyamqp reads
/// by position (the error of a `rejected` outcome or of a close/detach, the
/// source and target of an attach, ...).
fn nested_field_count(code: u64) -> Option<u32> {
    Some(match code {
        0x1d => 3,  // error
        0x23 => 2,  // received
        0x25 => 1,  // rejected
        0x27 => 3,  // modified
        0x28 => 11, // source
        0x29 => 7,  // target
        _ => return None,
    })
}

/// `fields` (`count` AMQP values) with every nested described list padded,
/// followed by nulls up to `want` fields.
fn rewrite_fields(fields: &[u8], count: u32, want: u32) -> Option<(Vec<u8>, u32)> {
    let mut out = Vec::with_capacity(fields.len() + 16);
    let mut i = 0;
    for _ in 0..count {
        let end = skip_value(fields, i)?;
        rewrite_value(&fields[i..end], &mut out);
        i = end;
    }
    if i != fields.len() {
        return None;
    }
    let n = count.max(want);
    out.resize(out.len() + (n - count) as usize, 0x40);
    Some((out, n))
}

/// Copies one AMQP value, padding it if it is a described list we know.
fn rewrite_value(v: &[u8], out: &mut Vec<u8>) {
    let padded = (|| {
        if v.first() != Some(&0x00) {
            return None;
        }
        let (code, at) = match *v.get(1)? {
            0x53 => (u64::from(*v.get(2)?), 3),
            0x80 => (u64::from_be_bytes(v.get(2..10)?.try_into().ok()?), 10),
            _ => return None,
        };
        let want = nested_field_count(code)?;
        let (count, fields_start, list_end) = match *v.get(at)? {
            0x45 => (0, at + 1, at + 1),
            0xC0 => (u32::from(*v.get(at + 2)?), at + 3, at + 2 + *v.get(at + 1)? as usize),
            0xD0 => {
                let size = u32::from_be_bytes(v.get(at + 1..at + 5)?.try_into().ok()?) as usize;
                (u32::from_be_bytes(v.get(at + 5..at + 9)?.try_into().ok()?), at + 9, at + 5 + size)
            }
            _ => return None,
        };
        if list_end != v.len() {
            return None;
        }
        let (f, n) = rewrite_fields(&v[fields_start..list_end], count, want)?;
        let mut o = v[..at].to_vec();
        encode_list(&f, n, &mut o);
        Some(o)
    })();
    match padded {
        Some(p) => out.extend_from_slice(&p),
        None => out.extend_from_slice(v),
    }
}

/// A performative's list inside a frame body.
struct Perf {
    code: u64,
    /// Offset of the list constructor in the body.
    list_start: usize,
    /// Offset just after the list (start of the payload, if any).
    list_end: usize,
    fields_start: usize,
    count: u32,
}

fn parse_perf(body: &[u8]) -> Option<Perf> {
    if body.len() < 3 || body[0] != 0x00 {
        return None;
    }
    let (code, list_start) = match body[1] {
        0x53 => (u64::from(body[2]), 3),
        0x80 if body.len() >= 10 => (u64::from_be_bytes(body[2..10].try_into().ok()?), 10),
        _ => return None,
    };
    let ctor = *body.get(list_start)?;
    let (count, fields_start, list_end) = match ctor {
        0x45 => (0, list_start + 1, list_start + 1),
        0xC0 => {
            let size = *body.get(list_start + 1)? as usize;
            let count = u32::from(*body.get(list_start + 2)?);
            (count, list_start + 3, list_start + 2 + size)
        }
        0xD0 => {
            let size = u32::from_be_bytes(body.get(list_start + 1..list_start + 5)?.try_into().ok()?) as usize;
            let count = u32::from_be_bytes(body.get(list_start + 5..list_start + 9)?.try_into().ok()?);
            (count, list_start + 9, list_start + 5 + size)
        }
        _ => return None,
    };
    if list_end > body.len() || fields_start > list_end {
        return None;
    }
    Some(Perf { code, list_start, list_end, fields_start, count })
}

/// Offset just after the AMQP value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    let c = *b.get(i)?;
    let i = i + 1;
    let end = match c {
        0x00 => {
            let after_descriptor = skip_value(b, i)?;
            return skip_value(b, after_descriptor);
        }
        0x40..=0x45 => i,
        0x50..=0x56 => i + 1,
        0x60..=0x61 => i + 2,
        0x70..=0x73 => i + 4,
        0x80..=0x84 => i + 8,
        0x94 | 0x98 => i + 16,
        0xA0..=0xA3 | 0xC0..=0xC1 | 0xE0 => i + 1 + *b.get(i)? as usize,
        0xB0..=0xB3 | 0xD0..=0xD1 | 0xF0 => i + 4 + u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize,
        _ => return None,
    };
    (end <= b.len()).then_some(end)
}

fn encode_list(fields: &[u8], count: u32, out: &mut Vec<u8>) {
    if fields.len() < 255 && count <= 255 {
        out.push(0xC0);
        out.push((fields.len() + 1) as u8);
        out.push(count as u8);
    } else {
        out.push(0xD0);
        out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(fields);
}

/// Appends `frame` to `out`, fixed up for `dir`.
fn fix_frame(frame: &[u8], dir: Dir, out: &mut Vec<u8>) {
    match rebuild(frame, dir) {
        Some(fixed) => out.extend_from_slice(&fixed),
        None => out.extend_from_slice(frame),
    }
}

fn rebuild(frame: &[u8], dir: Dir) -> Option<Vec<u8>> {
    let doff = frame[4] as usize * 4;
    let frame_type = frame[5];
    if doff < 8 || doff >= frame.len() {
        return None; // empty (heartbeat) or malformed frame
    }
    let body = &frame[doff..];
    let perf = parse_perf(body)?;
    let fields = &body[perf.fields_start..perf.list_end];
    let (new_fields, new_count) = match dir {
        Dir::Outbound => {
            let want = field_count(frame_type, perf.code)?;
            let (f, n) = rewrite_fields(fields, perf.count, want)?;
            if n == perf.count && f == fields {
                return None;
            }
            (f, n)
        }
        Dir::Inbound => {
            if frame_type != 0 || perf.code != 0x10 || perf.count < 3 {
                return None;
            }
            // Split container-id, hostname, max-frame-size, rest.
            let a = skip_value(fields, 0)?;
            let b = skip_value(fields, a)?;
            let c = skip_value(fields, b)?;
            let current = match fields[b] {
                0x40 => u32::MAX,
                0x43 => 0,
                0x52 => u32::from(fields[b + 1]),
                0x70 => u32::from_be_bytes(fields[b + 1..b + 5].try_into().ok()?),
                _ => return None,
            };
            if current <= 2 * FRAME_MARGIN {
                return None;
            }
            let mut f = fields[..b].to_vec();
            f.push(0x70);
            f.extend_from_slice(&(current - FRAME_MARGIN).to_be_bytes());
            f.extend_from_slice(&fields[c..]);
            (f, perf.count)
        }
    };
    let mut new_body = Vec::with_capacity(body.len() + 32);
    new_body.extend_from_slice(&body[..perf.list_start]);
    encode_list(&new_fields, new_count, &mut new_body);
    new_body.extend_from_slice(&body[perf.list_end..]);
    let size = doff + new_body.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(&frame[4..doff]);
    out.extend_from_slice(&new_body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut f = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[2, frame_type, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn pads_end_list0() {
        let f = frame(0, &[0x00, 0x53, 0x17, 0x45]);
        let fixed = rebuild(&f, Dir::Outbound).unwrap();
        assert_eq!(&fixed[8..], &[0x00, 0x53, 0x17, 0xC0, 0x02, 0x01, 0x40]);
        assert_eq!(u32::from_be_bytes(fixed[..4].try_into().unwrap()) as usize, fixed.len());
    }

    #[test]
    fn pads_nested_error_of_rejected() {
        // disposition(role, first=0, last=null, settled=true, state=rejected(error(condition)))
        let err = [0x00, 0x53, 0x1d, 0xC0, 0x05, 0x01, 0xA3, 0x02, b'x', b'y'];
        let mut rejected = vec![0x00, 0x53, 0x25, 0xC0, (err.len() + 1) as u8, 0x01];
        rejected.extend_from_slice(&err);
        let mut fields = vec![0x41, 0x43, 0x40, 0x41];
        fields.extend_from_slice(&rejected);
        let mut body = vec![0x00, 0x53, 0x15, 0xC0, (fields.len() + 1) as u8, 0x05];
        body.extend_from_slice(&fields);
        let f = frame(0, &body);
        let out = rebuild(&f, Dir::Outbound).expect("rewritten");
        let b = &out[8..];
        let perf = parse_perf(b).unwrap();
        assert_eq!(perf.count, 6, "disposition padded to 6 fields");
        // the nested error now has 3 fields: condition, null, null
        let tail = &b[perf.fields_start..perf.list_end];
        let needle = [0x00, 0x53, 0x1d, 0xC0, 0x07, 0x03, 0xA3, 0x02, b'x', b'y', 0x40, 0x40];
        assert!(tail.windows(needle.len()).any(|w| w == needle), "{tail:x?}");
    }

    #[test]
    fn pads_transfer_keeps_payload() {
        // transfer(handle=0 small uint, delivery-id=uint0) + payload
        let mut body = vec![0x00, 0x53, 0x14, 0xC0, 0x03, 0x02, 0x43, 0x43];
        body.extend_from_slice(b"PAYLOAD");
        let fixed = rebuild(&frame(0, &body), Dir::Outbound).unwrap();
        let perf = parse_perf(&fixed[8..]).unwrap();
        assert_eq!(perf.count, 11);
        assert!(fixed.ends_with(b"PAYLOAD"));
    }

    #[test]
    fn lowers_client_max_frame_size() {
        // open("c", "h", max-frame-size=65536 as uint)
        let body =
            [0x00, 0x53, 0x10, 0xC0, 0x0C, 0x03, 0xA1, 0x01, b'c', 0xA1, 0x01, b'h', 0x70, 0x00, 0x01, 0x00, 0x00];
        let fixed = rebuild(&frame(0, &body), Dir::Inbound).unwrap();
        let b = &fixed[8..];
        let perf = parse_perf(b).unwrap();
        let fields = &b[perf.fields_start..perf.list_end];
        let at = skip_value(fields, skip_value(fields, 0).unwrap()).unwrap();
        assert_eq!(fields[at], 0x70);
        assert_eq!(u32::from_be_bytes(fields[at + 1..at + 5].try_into().unwrap()), 65536 - FRAME_MARGIN);
    }

    #[test]
    fn full_lists_untouched() {
        let body = [0x00, 0x53, 0x18, 0xC0, 0x02, 0x01, 0x40];
        assert!(rebuild(&frame(0, &body), Dir::Outbound).is_none());
    }
}
