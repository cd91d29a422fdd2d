//! JSON helpers shared by the stages: dotted paths into a message
//! (`claim.id`, `items.0.name`) and `{{path}}` templates.

use serde_json::{Map, Value};

/// The value at a dotted path.
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| match v {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Removes and returns the value at a dotted path.
pub fn take(v: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (get_mut(v, p)?, l),
        None => (v, path),
    };
    parent.as_object_mut()?.remove(last)
}

/// The value at a dotted path, mutably (objects only).
pub fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(v, |v, k| v.as_object_mut()?.get_mut(k))
}

/// Sets a dotted path, creating objects on the way (a non-object in the way
/// is replaced).
pub fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let mut parts = path.split('.').peekable();
    while let Some(k) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            obj.insert(k.to_string(), value);
            return;
        }
        cur = obj.entry(k.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Replaces `{{path}}` by the message's field there (strings raw, other
/// values as JSON; a missing field is empty). `encode` percent-encodes.
pub fn render(template: &str, v: &Value, encode: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else {
            out.push_str(&rest[i..]);
            return out;
        };
        let path = rest[i + 2..i + j].trim();
        let text = match get(v, path) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        if encode {
            for b in text.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
        } else {
            out.push_str(&text);
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_templates() {
        let v = serde_json::json!({"a": {"b": "x y"}, "n": 3});
        assert_eq!(render("/p/{{a.b}}/{{n}}/{{missing}}", &v, true), "/p/x%20y/3/");
        assert_eq!(render("{{ a.b }}!", &v, false), "x y!");
        assert_eq!(render("open {{a.b", &v, false), "open {{a.b", "an unclosed placeholder stays as written");
        assert_eq!(render("{{a.b}}", &serde_json::json!({"a": {"b": "é/€"}}), true), "%C3%A9%2F%E2%82%AC");
    }

    #[test]
    fn paths_get_and_set() {
        let mut v = serde_json::json!({"a": [{"b": 1}], "s": "x"});
        assert_eq!(get(&v, "a.0.b"), Some(&Value::from(1)));
        assert_eq!(get(&v, "a.9.b"), None);
        set(&mut v, "s.t", Value::from(2));
        assert_eq!(v["s"]["t"], 2, "a non-object in the way is replaced");
        assert_eq!(take(&mut v, "s.t"), Some(Value::from(2)));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        /// Any JSON value, a few levels deep.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c0-2.]{0,3}|.{0,4}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Template-ish text: placeholders, half placeholders, braces, dots, multi-byte text.
        fn template() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("{{".to_string()),
                Just("}}".to_string()),
                Just("{".to_string()),
                Just("}".to_string()),
                Just(".".to_string()),
                Just(" ".to_string()),
                "[a-c0-2]{1,3}",
                ".{0,4}",
            ];
            prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
        }

        /// A key a `{{path}}` can name: no `.`, no `}` (both end it), no
        /// surrounding whitespace (trimmed).
        fn key() -> impl Strategy<Value = String> {
            ".{0,8}".prop_map(|k| k.replace(['.', '}'], "").trim().to_string())
        }

        /// Literal text around a placeholder (no `{`, so no placeholder starts in it).
        fn literal() -> impl Strategy<Value = String> {
            ".{0,12}".prop_map(|s| s.replace('{', ""))
        }

        fn percent_decode(s: &str) -> Vec<u8> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            out
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn render_never_panics(t in template(), v in json(), encode in any::<bool>()) {
                let _ = render(&t, &v, encode);
            }

            #[test]
            fn render_without_placeholders_is_identity(t in template(), v in json(), encode in any::<bool>()) {
                let mut t = t;
                while t.contains("{{") {
                    t = t.replace("{{", "{");
                }
                prop_assert_eq!(render(&t, &v, encode), t);
            }

            #[test]
            fn render_one_string_placeholder_gives_the_string(
                k in key(),
                s in ".{0,16}",
                (before, after) in (literal(), literal()),
                pad in prop::sample::select(vec!["", " ", "  "]),
            ) {
                let v = serde_json::json!({ k.as_str(): s.as_str() });
                prop_assert_eq!(render(&format!("{{{{{pad}{k}{pad}}}}}"), &v, false), s.clone());
                let t = format!("{before}{{{{{k}}}}}{after}");
                prop_assert_eq!(render(&t, &v, false), format!("{before}{s}{after}"));
                // encoded: only unreserved bytes stay, and it decodes back
                let e = render(&format!("{{{{{k}}}}}"), &v, true);
                prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)), "{}", e);
                prop_assert_eq!(percent_decode(&e), s.into_bytes());
            }

            #[test]
            fn render_other_values_as_json(k in key(), x in json()) {
                let v = serde_json::json!({ k.as_str(): x.clone() });
                let want = match &x {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                prop_assert_eq!(render(&format!("{{{{{k}}}}}"), &v, false), want);
            }
        }
    }
}
