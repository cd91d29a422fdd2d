//! Maps YAML paths (`workers.orders-forward.input`) to their line and column
//! in the source text, so validation errors can say where they are.
//!
//! serde's data model drops positions; this index is built from a second,
//! event-level pass over the same text with `yaml-rust2`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A position in the config file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Index from path segments to the position of the key (for mapping entries)
/// or of the item (for sequence entries).
#[derive(Debug, Default)]
pub struct PathIndex {
    positions: HashMap<Vec<String>, Pos>,
    /// Where each YAML document of the text starts (a config is one).
    documents: Vec<Pos>,
    /// The first syntax error of the text, if any, with its message.
    syntax_error: Option<(Pos, String)>,
    /// Where each key of the top-level mapping starts, in order (also keys
    /// that are not strings, which have no path).
    top_keys: Vec<Pos>,
    /// Where the first document's content starts.
    content: Option<Pos>,
    /// The text, for [`find_in_text`] where the index has no answer.
    text: String,
}

impl PathIndex {
    /// Builds the index; a text that does not parse yields an empty index
    /// (the YAML parser reports that error itself).
    pub fn build(text: &str) -> Self {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        let syntax_error = parser.load(&mut rx, true).err().map(|e| (pos(e.marker()), e.info().to_string()));
        let text = text.to_string();
        PathIndex {
            positions: rx.positions,
            documents: rx.documents,
            syntax_error,
            top_keys: rx.top_keys,
            content: rx.content,
            text,
        }
    }

    /// Where the `n`-th key of the top-level mapping starts.
    pub fn top_key(&self, n: usize) -> Option<Pos> {
        self.top_keys.get(n).copied()
    }

    /// Where the document's content starts (for a problem with the whole
    /// file, such as a root that is not a mapping).
    pub fn content(&self) -> Option<Pos> {
        self.content
    }

    /// Whether the index covers the whole text (its parser read it all).
    pub fn complete(&self) -> bool {
        self.syntax_error.is_none()
    }

    /// The first syntax error this parser found, for when the YAML
    /// deserializer reports one without a position.
    pub fn syntax_error(&self) -> Option<&(Pos, String)> {
        self.syntax_error.as_ref()
    }

    /// Where the second YAML document starts, if the text holds more than one.
    pub fn second_document(&self) -> Option<Pos> {
        self.documents.get(1).copied()
    }

    /// The position of `path`, or of its nearest ancestor that is known.
    /// Where the index stopped early (its parser is stricter than the
    /// deserializer's) or knows no part of the path, the text is searched for
    /// the keys of the path.
    pub fn find(&self, path: &[String]) -> Option<Pos> {
        let indexed = (0..=path.len()).rev().find_map(|n| self.positions.get(&path[..n]).map(|p| (n, *p)));
        // (or the two parsers read a key differently: `?key` is a plain
        // scalar to one, a complex-key indicator to the other)
        if (self.syntax_error.is_some() || indexed.is_none())
            && indexed.is_none_or(|(n, _)| n < path.len())
            && let Some((n, p)) = find_in_text(&self.text, path)
            && indexed.is_none_or(|(m, _)| n > m)
        {
            return Some(p);
        }
        indexed.map(|(_, p)| p)
    }
}

/// The line of the deepest key of `path` found in `text` by indentation
/// alone (block keys `name:`; a flow value such as `{ transport: x }` is
/// not entered), with how many segments matched: a fallback for text the
/// event parser could not read to the end.
fn find_in_text(text: &str, path: &[String]) -> Option<(usize, Pos)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<(usize, Pos)> = None;
    let (mut from, mut parent_indent) = (0usize, -1i64);
    for (depth, seg) in path.iter().enumerate() {
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(from) {
            let body = l.trim_start();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let indent = (l.len() - body.len()) as i64;
            if indent <= parent_indent {
                break; // left the parent's block
            }
            let key = key_of(body);
            if key == Some(seg.as_str()) {
                hit = Some((i, indent));
                break;
            }
        }
        let Some((i, indent)) = hit else { break };
        found = Some((depth + 1, Pos { line: i + 1, column: indent as usize + 1 }));
        from = i + 1;
        parent_indent = indent;
    }
    found
}

/// The key of a block mapping line (`key: value`, `key:`): what comes before
/// the first `:` that is followed by a space or ends the line, unquoted.
fn key_of(body: &str) -> Option<&str> {
    let bytes = body.as_bytes();
    let at =
        (0..bytes.len()).find(|&i| bytes[i] == b':' && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()))?;
    Some(body[..at].trim().trim_matches(|c| c == '"' || c == '\''))
}

/// The first top-level line of `text` that does not start with a plain key
/// (`name:`): where a key that is not a string (an anchor, a complex key, a
/// flow collection) most likely is, for when the index could not read it.
pub fn unusual_top_key(text: &str) -> Option<Pos> {
    text.lines().enumerate().find_map(|(i, l)| {
        let first = l.chars().next()?;
        if first.is_whitespace() || first == '#' || l.starts_with("---") || l.starts_with("...") {
            return None;
        }
        let key_end = l.find(':').unwrap_or(l.len());
        let plain = first.is_ascii_alphabetic()
            && l[..key_end].trim_end().chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        (!plain || key_end == l.len()).then_some(Pos { line: i + 1, column: 1 })
    })
}

enum Frame {
    Map { key: Option<String>, expecting_key: bool },
    Seq { index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    path: Vec<String>,
    positions: HashMap<Vec<String>, Pos>,
    documents: Vec<Pos>,
    top_keys: Vec<Pos>,
    content: Option<Pos>,
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 lines are 1-based, columns 0-based.
    Pos { line: m.line(), column: m.col() + 1 }
}

impl Receiver {
    /// Called before a value (scalar or container) at `mark` is read:
    /// returns whether the value is in the position of a mapping key.
    fn enter_value(&mut self, mark: &Marker) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { expecting_key: true, .. }) => true,
            Some(Frame::Map { key, expecting_key }) => {
                *expecting_key = true;
                let _ = key;
                false
            }
            Some(Frame::Seq { index }) => {
                let i = *index;
                *index += 1;
                self.path.push(i.to_string());
                self.positions.entry(self.path.clone()).or_insert(pos(mark));
                false
            }
            None => false,
        }
    }

    /// Called after a value finished: pops the path segment it pushed.
    fn leave_value(&mut self) {
        match self.stack.last() {
            Some(Frame::Map { key: Some(_), .. }) | Some(Frame::Seq { .. }) => {
                self.path.pop();
            }
            _ => {}
        }
        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
            *key = None;
        }
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if let Event::DocumentStart = ev {
            self.documents.push(pos(&mark));
            return;
        }
        if self.documents.len() > 1 {
            return; // only the first document is indexed
        }
        if matches!(ev, Event::Scalar(..) | Event::Alias(_) | Event::MappingStart(..) | Event::SequenceStart(..)) {
            // a block mapping's start is marked after its first key: the
            // earliest mark is where the content starts
            let p = pos(&mark);
            if self.content.is_none_or(|c| (p.line, p.column) < (c.line, c.column)) {
                self.content = Some(p);
            }
            if let [Frame::Map { expecting_key: true, .. }] = self.stack.as_slice() {
                self.top_keys.push(pos(&mark));
            }
        }
        match ev {
            Event::Scalar(value, ..) => {
                if self.enter_value(&mark) {
                    if let Some(Frame::Map { key, expecting_key }) = self.stack.last_mut() {
                        *key = Some(value.clone());
                        *expecting_key = false;
                    }
                    self.path.push(value);
                    self.positions.insert(self.path.clone(), pos(&mark));
                } else {
                    self.leave_value();
                }
            }
            Event::Alias(_) if !self.enter_value(&mark) => {
                self.leave_value();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // complex keys are not indexed; treat the container as a value
                let _ = self.enter_value(&mark);
                self.stack.push(match ev {
                    Event::MappingStart(..) => Frame::Map { key: None, expecting_key: true },
                    _ => Frame::Seq { index: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('/').map(str::to_string).collect()
    }

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text = "service:\n  name: x\nworkers:\n  w1:\n    input: a.b\n    list:\n      - one\n      - two\n  w2: { input: c }\n";
        let idx = PathIndex::build(text);
        assert_eq!(idx.find(&p("service/name")), Some(Pos { line: 2, column: 3 }));
        assert_eq!(idx.find(&p("workers/w1/input")), Some(Pos { line: 5, column: 5 }));
        assert_eq!(idx.find(&p("workers/w1/list/1")), Some(Pos { line: 8, column: 9 }));
        assert_eq!(idx.find(&p("workers/w2/input")), Some(Pos { line: 9, column: 9 }));
        // unknown leaf falls back to the nearest ancestor
        assert_eq!(idx.find(&p("workers/w2/nope")), Some(Pos { line: 9, column: 3 }));
        assert_eq!(idx.second_document(), None);
    }

    #[test]
    fn locates_top_level_keys_of_any_kind_and_the_content() {
        let text = "# comment\n\nservice: {}\n? [a, b]\n: x\n7: y\n";
        let ix = PathIndex::build(text);
        assert_eq!(ix.content(), Some(Pos { line: 3, column: 1 }));
        assert_eq!(ix.top_key(0), Some(Pos { line: 3, column: 1 }));
        assert_eq!(ix.top_key(1).map(|p| p.line), Some(4));
    }

    #[test]
    fn where_the_parser_stops_early_keys_are_found_in_the_text() {
        // yaml-rust2 refuses the anchored key; serde_yaml reads on
        let text = "transports:\n&akafka:\n    type: kafka\nentities:\n  orders.in: { transport: kafka }\n";
        let ix = PathIndex::build(text);
        assert!(!ix.complete());
        let p = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(ix.find(&p("entities/orders.in/transport")), Some(Pos { line: 5, column: 3 }));
        assert_eq!(ix.find(&p("entities")).map(|p| p.line), Some(4));
        let ix = PathIndex::build("service: {}\n?sources:\n  a: 1\n:transports:\n  b: 2\n");
        assert_eq!(ix.find(&p("?sources")).map(|p| p.line), Some(2));
        assert_eq!(ix.find(&p(":transports")).map(|p| p.line), Some(4));
    }

    #[test]
    fn an_unusual_top_level_key_is_found_by_its_line() {
        assert_eq!(unusual_top_key("# c\nservice:\n  a: 1\n&x: {a: 1}\n").map(|p| p.line), Some(4));
        assert_eq!(unusual_top_key("a: 1\n? [x]\n").map(|p| p.line), Some(2));
        assert_eq!(unusual_top_key("a: 1\nb.c-d: 2\n"), None);
    }

    #[test]
    fn finds_the_start_of_a_second_document() {
        let idx = PathIndex::build("a: 1\nb:\n  c: 2\n---\na: 3\n");
        assert_eq!(idx.second_document().map(|p| p.line), Some(4));
        assert_eq!(idx.find(&p("a")), Some(Pos { line: 1, column: 1 }), "the first document's keys");
    }
}
