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
}

impl PathIndex {
    /// Builds the index; a text that does not parse yields an empty index
    /// (the YAML parser reports that error itself).
    pub fn build(text: &str) -> Self {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut rx, true);
        PathIndex { positions: rx.positions, documents: rx.documents }
    }

    /// Where the second YAML document starts, if the text holds more than one.
    pub fn second_document(&self) -> Option<Pos> {
        self.documents.get(1).copied()
    }

    /// The position of `path`, or of its nearest ancestor that is known.
    pub fn find(&self, path: &[String]) -> Option<Pos> {
        (0..=path.len()).rev().find_map(|n| self.positions.get(&path[..n]).copied())
    }
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
    fn finds_the_start_of_a_second_document() {
        let idx = PathIndex::build("a: 1\nb:\n  c: 2\n---\na: 3\n");
        assert_eq!(idx.second_document().map(|p| p.line), Some(4));
        assert_eq!(idx.find(&p("a")), Some(Pos { line: 1, column: 1 }), "the first document's keys");
    }
}
