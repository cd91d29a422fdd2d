//! Property tests of the loader: no input panics it, every error carries at
//! least one issue, and an error in a mutated shipped config is located on a
//! line of the file (see `UNLOCATED` for the one kind that cannot be).

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

const SHIPPED: [(&str, &str); 6] = [
    ("config.yaml", include_str!("../../config.yaml")),
    ("config/eventhubs.yaml", include_str!("../../config/eventhubs.yaml")),
    ("config/kafka.yaml", include_str!("../../config/kafka.yaml")),
    ("config/migration.yaml", include_str!("../../config/migration.yaml")),
    ("config/mixed.yaml", include_str!("../../config/mixed.yaml")),
    ("config/orders.yaml", include_str!("../../config/orders.yaml")),
];

/// Issues about the file as a whole, which have no line: a section that is
/// not there at all.
const UNLOCATED: &str = "missing section `";

/// Whether the path index (yaml-rust2) reads all of `text` as interpolated.
/// It is stricter than serde_yaml (libyaml): e.g. `---` at the start of a
/// line inside a multi-line quoted scalar stops it, serde_yaml reads on, and
/// issues about what comes after have no position. That gap is known and
/// reported, not hidden: only texts the index reads whole must locate all.
fn fully_indexed(text: &str) -> bool {
    match interpolate::interpolate(text, |_| None) {
        Ok(t) => locate::PathIndex::build(&t).syntax_error().is_none(),
        Err(_) => true,
    }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

fn load_text(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    load_str(text, Path::new(file), |_| None)
}

/// Checks what holds of any load: an error has issues, and a located issue
/// points into the text.
fn check_any(text: &str, r: &Result<Loaded, ConfigError>) -> Result<(), TestCaseError> {
    let Err(e) = r else { return Ok(()) };
    prop_assert!(!e.issues.is_empty(), "an error without issues");
    let lines = text.lines().count();
    for i in &e.issues {
        if let Some((l, c)) = i.pos {
            prop_assert!(l >= 1 && l <= lines + 1 && c >= 1, "{} is outside the text ({} lines)", i, lines);
        }
    }
    Ok(())
}

/// One edit of a config file, as a person might botch it.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    /// Replaces up to `len` characters from a character of the file by `with`.
    Replace {
        at: Index,
        len: usize,
        with: String,
    },
    /// Indents a line by `by` more spaces (negative: removes up to that many).
    Indent {
        line: Index,
        by: i8,
    },
    SwapLines(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let junk = prop_oneof![
        "[-:{}\\[\\],'\"#&*!|>?%@` \t\n$.a-z0-9é]{0,6}",
        Just(String::new()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("---\n".to_string()),
        ".{0,6}",
    ];
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), 0usize..40, junk).prop_map(|(at, len, with)| Mutation::Replace { at, len, with }),
        (any::<Index>(), prop_oneof![Just(-4i8), Just(-2), Just(-1), Just(1), Just(2), Just(4)])
            .prop_map(|(line, by)| Mutation::Indent { line, by }),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        Mutation::DuplicateLine(i) => {
            let i = i.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
        Mutation::Replace { at, len, with } => {
            let chars: Vec<char> = text.chars().collect();
            let a = at.index(chars.len());
            let b = (a + len).min(chars.len());
            return chars[..a].iter().chain(with.chars().collect::<Vec<_>>().iter()).chain(&chars[b..]).collect();
        }
        Mutation::Indent { line, by } => {
            let i = line.index(lines.len());
            let l = &lines[i];
            lines[i] = if *by > 0 {
                format!("{}{l}", " ".repeat(*by as usize))
            } else {
                let strip = l.len() - l.trim_start_matches(' ').len();
                l[strip.min(by.unsigned_abs() as usize)..].to_string()
            };
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
    }
    lines.join("\n") + "\n"
}

#[test]
fn every_shipped_config_loads() {
    for (name, text) in SHIPPED {
        if let Err(e) = load_text(text, name) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn a_syntax_error_after_the_first_document_is_located() {
    // serde_yaml reports this one as "more than one document", without a
    // position: the indented `service:` mapping ends where `transports:`
    // starts at column 1
    let text = SHIPPED[5].1.replace("\nservice:\n", "\n  service:\n");
    let e = load_text(&text, "orders.yaml").unwrap_err();
    assert_eq!(e.issues.len(), 1, "{e}");
    assert_eq!(e.issues[0].pos.map(|(l, _)| l), Some(18), "{e}");
    assert!(text.lines().nth(17).unwrap().starts_with("transports:"));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_load_never_panics_on_arbitrary_text(text in any::<String>()) {
        let r = load_text(&text, "c.yaml");
        check_any(&text, &r)?;
    }

    #[test]
    fn config_load_never_panics_on_yaml_ish_text(
        pieces in prop::collection::vec(
            prop::sample::select(vec![
                "a", "b:", ": ", "- ", "-", " ", "  ", "\n", "\t", "{", "}", "[", "]", ",", "'", "\"", "#", "&x ",
                "*x", "? ", "|", ">", "!t ", "---", "...", "%YAML 1.2\n", "~", "1", "é", "${", "${A}", "${A:-b}",
                "$${", "transports:", "entities:", "workers:", "sources:", "service:", "simulation:",
                "\n  x: { type: embedded }", "\n  e: { transport: x }", "\n  w: { input: e }",
            ]),
            0..24,
        ),
    ) {
        let text = pieces.concat();
        let r = load_text(&text, "c.yaml");
        check_any(&text, &r)?;
    }

    #[test]
    fn config_mutations_of_shipped_files_report_located_issues(
        file in 0..SHIPPED.len(),
        edits in prop::collection::vec(mutation(), 1..3),
    ) {
        let (name, original) = SHIPPED[file];
        let text = edits.iter().fold(original.to_string(), |t, m| mutate(&t, m));
        let r = load_text(&text, name);
        check_any(&text, &r)?;
        let Err(e) = r else { return Ok(()) };
        let whole = fully_indexed(&text);
        for i in &e.issues {
            let Some((l, _)) = i.pos else {
                let about_the_file = i.message.starts_with(UNLOCATED) && i.path.is_empty();
                prop_assert!(about_the_file || !whole, "no line for: {}", i);
                continue;
            };
            if !i.path.is_empty() {
                // the line holds the key of the path (or of an ancestor), or a sequence item
                let line = text.lines().nth(l - 1).unwrap_or("");
                let on_line = line.contains('-') || i.path.split('.').any(|s| !s.is_empty() && line.contains(s));
                prop_assert!(on_line, "{} points at line {} = {:?}", i, l, line);
            }
        }
    }
}
