//! A YAML tree that keeps the position of every node and every mapping entry as written,
//! duplicates included, built from `saphyr-parser`'s events.
//!
//! The tree is built iteratively (no recursion), nesting deeper than [`MAX_DEPTH`] is
//! refused, aliases are refused (no billion laughs), and only one document is accepted.

use std::borrow::Cow;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

/// Deepest nesting of mappings and lists accepted.
pub const MAX_DEPTH: usize = 64;

/// A position in the text: line and column, both 1-based, column in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub(crate) fn of(m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }

    /// The position `chars` characters to the right (same line).
    pub(crate) fn right(self, chars: usize) -> Pos {
        Pos {
            line: self.line,
            col: self.col + chars,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar as written; `plain` is false when it was quoted or a block scalar.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order, duplicates kept.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// `~`, `null`, or nothing at all (`key:`), unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text (any style), `None` for null, lists and mappings.
    pub fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// Whether the scalar was written unquoted.
    pub fn plain(&self) -> bool {
        matches!(&self.value, Value::Scalar { plain: true, .. })
    }

    /// "a mapping", "a list", "a string", "nothing": for "found ..." in messages.
    pub fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing (null)".to_owned(),
            Value::Scalar { text, .. } => format!("the scalar {:?}", clip(text)),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// At most 40 characters of `s`, for messages.
pub(crate) fn clip(s: &str) -> Cow<'_, str> {
    if s.chars().count() <= 40 {
        Cow::Borrowed(s)
    } else {
        let mut t: String = s.chars().take(37).collect();
        t.push_str("...");
        Cow::Owned(t)
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// Parses `text` into one tree; `Ok(None)` for a stream without a document (an empty file,
/// only comments). Errors carry the position and a message.
pub fn load(text: &str) -> Result<Option<Node>, (Pos, String)> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    loop {
        let (event, span) = match parser.next_event() {
            None => break,
            Some(Err(e)) => {
                return Err((
                    Pos::of(e.marker()),
                    format!(
                        "not valid YAML: {}; check the indentation (spaces, not tabs), quotes and brackets around here",
                        e.info()
                    ),
                ));
            }
            Some(Ok(ev)) => ev,
        };
        let pos = Pos::of(&span.start);
        let done = match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err((
                        pos,
                        "a TDL file holds one YAML document; remove this `---` and what follows, or put it in a file of its own".to_owned(),
                    ));
                }
                None
            }
            Event::Alias(_) => {
                return Err((
                    pos,
                    "YAML aliases (*name) are not supported in TDL; write the value out, or share node fields with defaults: or kinds:".to_owned(),
                ));
            }
            Event::Scalar(text, style, _, _) => Some(Node {
                pos,
                value: Value::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                },
            }),
            Event::SequenceStart(_, _) | Event::MappingStart(_, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err((
                        pos,
                        format!(
                            "nesting deeper than {MAX_DEPTH} levels; a TDL file needs a few levels only, flatten it"
                        ),
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq(pos, Vec::new())
                } else {
                    Frame::Map(pos, Vec::new(), None)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(p, items)) => Some(Node {
                    pos: p,
                    value: Value::Seq(items),
                }),
                Some(Frame::Map(p, entries, _)) => Some(Node {
                    pos: p,
                    value: Value::Map(entries),
                }),
                None => return Err((pos, "unbalanced YAML structure".to_owned())),
            },
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_duplicates_are_kept() {
        let n = load("a: 1\nb:\n  c: [x, y]\na: 2\n").unwrap().unwrap();
        let Value::Map(entries) = &n.value else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].0.str(), Some("a"));
        assert_eq!(entries[2].0.pos, Pos { line: 4, col: 1 });
        assert_eq!(entries[2].1.pos, Pos { line: 4, col: 4 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.pos, Pos { line: 3, col: 6 });
    }

    #[test]
    fn empty_null_and_quoted() {
        assert_eq!(load("").unwrap(), None);
        assert_eq!(load("# only a comment\n").unwrap(), None);
        let n = load("a:\nb: ''\nc: ~\n").unwrap().unwrap();
        let Value::Map(e) = &n.value else { panic!() };
        assert!(e[0].1.is_null());
        assert!(!e[1].1.is_null());
        assert_eq!(e[1].1.str(), Some(""));
        assert!(e[2].1.is_null());
    }

    #[test]
    fn refuses_deep_nesting_aliases_and_two_documents() {
        let deep = "[".repeat(200);
        let (_, msg) = load(&deep).unwrap_err();
        assert!(msg.contains("nesting deeper than 64"), "{msg}");
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(load(&ok).is_ok());
        let (p, msg) = load("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!(p, Pos { line: 2, col: 4 });
        assert!(msg.contains("aliases"), "{msg}");
        let (p, _) = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(p.line, 2);
        let (_, msg) = load("a: [1, 2\n").unwrap_err();
        assert!(msg.starts_with("not valid YAML"), "{msg}");
    }
}
