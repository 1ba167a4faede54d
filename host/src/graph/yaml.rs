//! Reads a graph document into a tree that remembers the line:col of every node, refusing
//! hostile input first: oversize documents, any anchor or alias (so no expansion bomb can
//! exist), and nesting past a fixed depth. The tree then deserializes into the spec types
//! with errors that carry the location of the value that caused them.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// Documents above this size are refused before parsing: room for a 20,000-node graph (the
/// API's `max_graph_bytes` caps what a POST may send separately, 1 MiB by default).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// Mappings and sequences nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;

/// 1-based position in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Yaml {
    pub pos: Pos,
    pub value: YamlValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum YamlValue {
    /// `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Yaml>),
    Map(Vec<(Yaml, Yaml)>),
}

impl Yaml {
    /// The value under key `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match &self.value {
            YamlValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node (not the value) for `key`, for errors about the key itself.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        match &self.value {
            YamlValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k.pos),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            YamlValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Yaml] {
        match &self.value {
            YamlValue::Seq(items) => items,
            _ => &[],
        }
    }
}

/// Where byte `offset` of `bytes` is, counting characters of the valid UTF-8 before it.
pub fn pos_of_byte(bytes: &[u8], offset: usize) -> Pos {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Pos {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        col,
    }
}

/// `bytes` as UTF-8, or an error at the line:col of the first byte that is not.
pub fn utf8(bytes: Vec<u8>) -> Result<String, Located> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[at];
        Located {
            pos: pos_of_byte(e.as_bytes(), at),
            message: format!(
                "byte 0x{byte:02x} is not UTF-8; a graph file must be UTF-8 text, save it as UTF-8"
            ),
        }
    })
}

/// An error with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a located tree, with the duplicate mapping keys found at any
/// depth (each reported where it is; the first value is kept). Other errors stop parsing.
pub fn parse(source: &str) -> Result<(Yaml, Vec<Located>), Located> {
    if source.len() > MAX_DOCUMENT_BYTES {
        return Err(Located {
            pos: Pos { line: 1, col: 1 },
            message: format!(
                "document is {} bytes, over the {} byte limit; split the graph or shorten it",
                source.len(),
                MAX_DOCUMENT_BYTES
            ),
        });
    }
    // A UTF-8 byte order mark (editors on Windows write one) is not part of the document.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut builder = Builder::default();
    let mut documents = 0usize;
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| Located {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: scan_message(e.info()),
        })?;
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Located {
                        pos,
                        message: "more than one YAML document; a graph file holds exactly one"
                            .into(),
                    });
                }
            }
            Event::Alias(_) => {
                return Err(Located {
                    pos,
                    message: "YAML aliases are not allowed in graph files; write the value out"
                        .into(),
                });
            }
            Event::Scalar(text, style, anchor, _) => {
                refuse_anchor(anchor, pos)?;
                builder.push(Yaml {
                    pos,
                    value: YamlValue::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                })?;
            }
            Event::SequenceStart(anchor, _) => {
                refuse_anchor(anchor, pos)?;
                builder.open(Yaml {
                    pos,
                    value: YamlValue::Seq(Vec::new()),
                })?;
            }
            Event::MappingStart(anchor, _) => {
                refuse_anchor(anchor, pos)?;
                builder.open(Yaml {
                    pos,
                    value: YamlValue::Map(Vec::new()),
                })?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            _ => {}
        }
    }
    let duplicates = builder.duplicates;
    builder.root.map(|root| (root, duplicates)).ok_or(Located {
        pos: Pos { line: 1, col: 1 },
        message: "empty document; a graph starts with `apiVersion: sandgraph.dev/v1`".into(),
    })
}

/// The parser's own refusals, said in the terms of the graph format.
fn scan_message(info: &str) -> String {
    if info.contains("unknown anchor") {
        // Anchors are refused where they are defined, so every alias names an unknown one.
        "YAML aliases are not allowed in graph files; write the value out".into()
    } else if info.contains("recursion limit") {
        format!("nesting deeper than {MAX_DEPTH} levels; flatten the document")
    } else {
        format!("invalid YAML: {info}")
    }
}

fn refuse_anchor(anchor: usize, pos: Pos) -> Result<(), Located> {
    if anchor != 0 {
        return Err(Located {
            pos,
            message: "YAML anchors are not allowed in graph files; write the value out".into(),
        });
    }
    Ok(())
}

/// Builds the tree from events with an explicit stack (no recursion on input depth).
#[derive(Default)]
struct Builder {
    /// Open collections, each with the key waiting for its value and whether that key is a
    /// duplicate (its value is dropped).
    stack: Vec<(Yaml, Option<Yaml>, bool)>,
    root: Option<Yaml>,
    duplicates: Vec<Located>,
    /// For each open mapping with many keys (by stack depth): where each key first appears,
    /// so finding duplicates stays linear in the mapping's size.
    indexes: std::collections::HashMap<usize, std::collections::HashMap<String, Pos>>,
}

/// Mappings with more keys than this are indexed for the duplicate check.
const INDEX_FROM: usize = 16;

impl Builder {
    fn open(&mut self, node: Yaml) -> Result<(), Located> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Located {
                pos: node.pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels; flatten the document"),
            });
        }
        self.stack.push((node, None, false));
        Ok(())
    }

    fn close(&mut self) -> Result<(), Located> {
        self.indexes.remove(&self.stack.len());
        if let Some((node, pending, _)) = self.stack.pop() {
            if let Some(key) = pending {
                return Err(Located {
                    pos: key.pos,
                    message: "mapping key without a value".into(),
                });
            }
            self.push(node)?;
        }
        Ok(())
    }

    fn push(&mut self, node: Yaml) -> Result<(), Located> {
        let depth = self.stack.len();
        let Some((parent, pending, duplicate)) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut parent.value {
            YamlValue::Seq(items) => items.push(node),
            YamlValue::Map(entries) => match pending.take() {
                None => {
                    if let Some(k) = node.as_str() {
                        let first = if entries.len() < INDEX_FROM {
                            entries
                                .iter()
                                .find(|(e, _)| e.as_str() == Some(k))
                                .map(|(e, _)| e.pos)
                        } else {
                            let index = self.indexes.entry(depth).or_insert_with(|| {
                                entries
                                    .iter()
                                    .filter_map(|(e, _)| Some((e.as_str()?.to_owned(), e.pos)))
                                    .collect()
                            });
                            let first = index.get(k).copied();
                            index.entry(k.to_owned()).or_insert(node.pos);
                            first
                        };
                        if let Some(first) = first {
                            self.duplicates.push(Located {
                                pos: node.pos,
                                message: format!(
                                    "duplicate key '{k}' (first at {first}); remove one"
                                ),
                            });
                            *duplicate = true;
                        }
                    }
                    *pending = Some(node);
                }
                Some(_) if std::mem::take(duplicate) => {}
                Some(key) => entries.push((key, node)),
            },
            YamlValue::Scalar { .. } => {}
        }
        Ok(())
    }
}

/// Deserializes `T` from a located node; the error names the innermost place it arose.
pub fn from_yaml<T: de::DeserializeOwned>(node: &Yaml) -> Result<T, Located> {
    T::deserialize(node).map_err(|e| Located {
        pos: e.pos.unwrap_or(node.pos),
        message: e.message,
    })
}

#[derive(Debug)]
pub struct DeError {
    pos: Option<Pos>,
    message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for DeError {}
impl de::Error for DeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DeError {
            pos: None,
            message: msg.to_string(),
        }
    }
}

fn at(pos: Pos) -> impl FnOnce(DeError) -> DeError {
    move |mut e| {
        e.pos.get_or_insert(pos);
        e
    }
}

/// Plain scalars resolve like YAML 1.2's core schema; quoted ones are strings.
enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Resolved::Int(i);
    }
    if text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
        && let Ok(f) = text.parse::<f64>()
    {
        return Resolved::Float(f);
    }
    Resolved::Str(text)
}

impl<'de> de::Deserializer<'de> for &'de Yaml {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let pos = self.pos;
        match &self.value {
            YamlValue::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_borrowed_str(s),
            },
            YamlValue::Seq(items) => visitor.visit_seq(Items { iter: items.iter() }),
            YamlValue::Map(entries) => visitor.visit_map(Entries {
                iter: entries.iter(),
                value: None,
            }),
        }
        .map_err(at(pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            YamlValue::Scalar { text, plain: true }
                if matches!(resolve(text, true), Resolved::Null) =>
            {
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            YamlValue::Scalar { text, .. } => {
                visitor.visit_borrowed_str(text).map_err(at(self.pos))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.value {
            YamlValue::Scalar { text, .. } => visitor
                .visit_enum(text.as_str().into_deserializer())
                .map_err(at(self.pos)),
            _ => Err(DeError {
                pos: Some(self.pos),
                message: "expected a single word (an enum variant)".into(),
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map struct ignored_any
    }
}

struct Items<'de> {
    iter: std::slice::Iter<'de, Yaml>,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(item) => seed.deserialize(item).map(Some).map_err(at(item.pos)),
            None => Ok(None),
        }
    }
}

struct Entries<'de> {
    iter: std::slice::Iter<'de, (Yaml, Yaml)>,
    value: Option<&'de Yaml>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k).map(Some).map_err(at(k.pos))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value without a key"))?;
        seed.deserialize(v).map_err(at(v.pos))
    }
}
