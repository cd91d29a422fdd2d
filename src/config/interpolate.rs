//! `${VAR}` / `${VAR:-default}` interpolation of the raw config text.
//!
//! Interpolation runs on the text before YAML parsing so that values from the
//! environment can appear anywhere a scalar can. `$${` is a literal `${`.
//! Replacements that contain no newline keep every line number intact, so
//! later errors still point at the right line of the file.

/// One unresolved reference: the variable, and where it stands (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub var: String,
    pub line: usize,
    pub column: usize,
}

/// Interpolates `text` with `lookup`; returns the new text or every
/// unresolved variable (with its position).
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Unresolved>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let bytes = text.as_bytes();
    let (mut line, mut line_start) = (1usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
        if b == b'$' && bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') {
            out.push_str("${");
            i += 3;
            continue;
        }
        if b == b'$'
            && bytes.get(i + 1) == Some(&b'{')
            && let Some(end) = text[i + 2..].find('}')
        {
            let inner = &text[i + 2..i + 2 + end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            if valid {
                match lookup(name).filter(|v| !(v.is_empty() && default.is_some())) {
                    Some(v) => out.push_str(&v),
                    None => match default {
                        Some(d) => out.push_str(d),
                        None => missing.push(Unresolved { var: name.to_string(), line, column: i - line_start + 1 }),
                    },
                }
                // a default may span lines: keep counting them
                if let Some(nl) = inner.rfind('\n') {
                    line += inner.matches('\n').count();
                    line_start = i + 2 + nl + 1;
                }
                i += 2 + end + 1;
                continue;
            }
        }
        // push the whole UTF-8 character starting at i
        let ch_len = utf8_len(b);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    if missing.is_empty() { Ok(out) } else { Err(missing) }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let got = interpolate("a: ${HOST}\nb: ${NOPE:-x y}\nc: ${EMPTY:-d}\né: ${HOST}", env);
        assert_eq!(got.unwrap(), "a: broker:9092\nb: x y\nc: d\né: broker:9092");
    }

    #[test]
    fn escape_keeps_literal() {
        assert_eq!(interpolate("a: $${HOST}", env).unwrap(), "a: ${HOST}");
    }

    #[test]
    fn reports_every_missing_variable_with_position() {
        let err = interpolate("a: 1\nb: ${ONE}\n  c: x ${TWO}", env).unwrap_err();
        assert_eq!(
            err,
            vec![
                Unresolved { var: "ONE".into(), line: 2, column: 4 },
                Unresolved { var: "TWO".into(), line: 3, column: 8 },
            ]
        );
    }

    #[test]
    fn leaves_non_variables_alone() {
        assert_eq!(interpolate("a: ${not valid} $x ${", env).unwrap(), "a: ${not valid} $x ${");
    }

    #[test]
    fn a_default_spanning_lines_keeps_later_positions_right() {
        // the first reference swallows a newline as its default (`\n${NOPE`)
        let err = interpolate("${NOPE:-\n${NOPE}${NOPE}", env).unwrap_err();
        assert_eq!(err, vec![Unresolved { var: "NOPE".into(), line: 2, column: 8 }]);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// Text made of the pieces interpolation looks at, and anything else.
        fn text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                2 => Just("$".to_string()),
                4 => Just("${".to_string()),
                2 => Just("$${".to_string()),
                4 => Just("${NOPE:-".to_string()),
                3 => Just("${NOPE}".to_string()),
                4 => Just("}".to_string()),
                2 => Just(":-".to_string()),
                4 => Just("\n".to_string()),
                4 => prop::sample::select(vec!["HOST", "EMPTY", "NOPE", "_1", "é", "€", "𝄞"]).prop_map(str::to_string),
                2 => ".{0,4}",
                1 => any::<String>(),
            ];
            prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
        }

        fn env(name: &str) -> Option<String> {
            match name {
                "HOST" => Some("h€st:1".into()),
                "EMPTY" => Some(String::new()),
                "_1" => Some("${NOPE}".into()),
                _ => None,
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn interpolate_never_panics_and_locates_what_is_missing(t in text()) {
                match interpolate(&t, env) {
                    Ok(_) => {}
                    Err(missing) => {
                        prop_assert!(!missing.is_empty());
                        let lines: Vec<&str> = t.split('\n').collect();
                        for m in missing {
                            prop_assert!(m.line >= 1 && m.column >= 1);
                            let line = lines[m.line - 1];
                            let want = format!("${{{}", m.var);
                            prop_assert!(line.as_bytes()[m.column - 1..].starts_with(want.as_bytes()), "{:?} in {:?}", m, line);
                        }
                    }
                }
            }

            #[test]
            fn interpolate_without_a_dollar_is_identity(t in text()) {
                let t = t.replace('$', "");
                prop_assert_eq!(interpolate(&t, env), Ok(t.clone()));
            }

            #[test]
            fn interpolate_replaces_values_defaults_and_escapes(
                before in "[^$\n]{0,8}",
                after in "[^$\n]{0,8}",
                default in "[^}\n]{0,8}",
            ) {
                let got = interpolate(&format!("{before}${{HOST}}{after}"), env);
                prop_assert_eq!(got, Ok(format!("{before}h€st:1{after}")));
                let got = interpolate(&format!("{before}${{NOPE:-{default}}}{after}"), env);
                prop_assert_eq!(got, Ok(format!("{before}{default}{after}")));
                let got = interpolate(&format!("{before}$${{HOST}}{after}"), env);
                prop_assert_eq!(got, Ok(format!("{before}${{HOST}}{after}")));
            }
        }
    }
}
