//! Text helpers that are safe on any input.
//!
//! Every place that shortens a string for a log line, an error message, a
//! header or a table goes through [`clip`] or [`truncate`]: they cut at the
//! last UTF-8 character boundary at or below the byte limit, so a limit that
//! falls inside a multi-byte character never panics (`String::truncate`
//! does). Bytes that are not UTF-8 are shown lossily by [`clip_bytes`].

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Shortens `s` in place to at most `max` bytes, at a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    let keep = clip(s, max).len();
    s.truncate(keep);
}

/// At most `max` bytes of `b` as text (invalid UTF-8 replaced), cut at a
/// character boundary of the result.
pub fn clip_bytes(b: &[u8], max: usize) -> String {
    let mut s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
    truncate(&mut s, max);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_character_boundaries_only() {
        // 'é' is 2 bytes, '€' 3, '𝄞' 4: every limit inside one backs off
        let s = "aé€𝄞z";
        let cases = [
            (0, ""),
            (1, "a"),
            (2, "a"),
            (3, "aé"),
            (4, "aé"),
            (5, "aé"),
            (6, "aé€"),
            (9, "aé€"),
            (10, "aé€𝄞"),
            (11, "aé€𝄞z"),
            (100, "aé€𝄞z"),
        ];
        for (max, want) in cases {
            assert_eq!(clip(s, max), want, "max {max}");
            let mut owned = s.to_string();
            truncate(&mut owned, max);
            assert_eq!(owned, want, "truncate {max}");
        }
    }

    #[test]
    fn clip_bytes_never_panics_on_broken_utf8() {
        let b = [b'a', 0xe2, 0x82, 0xff, b'b', 0xf0];
        for max in 0..8 {
            let s = clip_bytes(&b, max);
            assert!(s.len() <= max, "{max}: {s:?}");
        }
        assert_eq!(clip_bytes("€uro".as_bytes(), 2), "");
    }
}
