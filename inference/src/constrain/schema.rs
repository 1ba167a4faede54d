//! JSON Schema subset → a small grammar (an arena of nodes) that the byte-level matcher walks.
//! Compiling up front means bad schemas fail once, with the keyword named, before any decoding.
//!
//! Rules for constrained output (documented for API users):
//! - Objects with `properties` emit only declared properties, in the order the schema's JSON
//!   text lists them when compiled with a [`PropertyOrder`] (the server reads it from the
//!   request text: `reasoning` before `answer` stays so), else in `serde_json::Value`'s
//!   order (alphabetical: the workspace leaves serde_json's `preserve_order` off, since it
//!   would change every `Value` in the host and wasmtime); optional ones may be skipped; `additionalProperties` may only be
//!   absent or `false`. `{"type": "object"}` without `properties` means any JSON object.
//! - No whitespace between tokens: the output is compact JSON, so generation cannot loop on
//!   spaces.
//! - `oneOf` is treated as `anyOf` (alternatives are not checked for exclusivity).
//! - Numbers have at most 15 integer digits, 15 fraction digits and a 2-digit exponent, so they
//!   parse as finite f64 and cannot grow forever. `minimum`, `maximum`, `exclusiveMinimum`,
//!   `exclusiveMaximum` and `multipleOf` are enforced digit by digit (see
//!   [`super::numeric`]); a number with bounds is written without an exponent.
//! - Strings may carry a `pattern` (matched anywhere, as JSON Schema says) or one of the
//!   `format`s date, time, date-time, duration, email, uuid, ipv4, ipv6, hostname (see [`super::pattern`]);
//!   such strings never contain characters JSON must escape. `maxLength` counts characters
//!   alongside; with a `minLength` too, the string is written in ASCII so lengths are exact.

use std::sync::Arc;

use serde_json::Value;

use super::numeric::{NumBounds, NumPrefix};
use super::order::PropertyOrder;
use super::pattern::{FORMATS, MAX_LENGTHS, Pattern, format_regex};

/// Index of a node in [`Grammar::nodes`].
pub type NodeId = u32;

/// The node every grammar holds at index 0: any JSON value.
pub const ANY: NodeId = 0;

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Any JSON value.
    Any,
    /// Any JSON object.
    AnyObject,
    /// An object with only these properties, in this order.
    Object {
        props: Vec<Prop>,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
        /// Index into [`Grammar::patterns`] of the `pattern`/`format` the string must match.
        pattern: Option<u32>,
    },
    Integer(Option<NumBounds>),
    Number(Option<NumBounds>),
    Boolean,
    Null,
    /// One of these exact compact JSON texts (`enum`/`const`), sorted.
    Literals(Vec<Vec<u8>>),
    AnyOf(Vec<NodeId>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Prop {
    pub name: String,
    /// The key as JSON text after its opening quote, closing quote included.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

/// A compiled schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Grammar {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// The string expressions `Node::String` refers to.
    pub patterns: Vec<Arc<Pattern>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error(
        "schema at {path}: keyword '{keyword}' is not supported by constrained decoding; remove it from the schema"
    )]
    Unsupported { path: String, keyword: String },
    #[error("schema at {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// Keywords that only annotate and never constrain: accepted and ignored.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
];

const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "pattern",
    "format",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
];

/// Largest `maxLength`/`maxItems` honoured; larger values mean "unbounded".
const UNBOUNDED: u32 = u32::MAX;

impl Grammar {
    /// Any JSON object (`response_format: {type: json_object}`).
    pub fn json_object() -> Grammar {
        Grammar {
            nodes: vec![Node::Any, Node::AnyObject],
            root: 1,
            patterns: Vec::new(),
        }
    }

    /// Compiles a JSON Schema (the subset described in the module docs).
    pub fn compile(schema: &Value) -> Result<Grammar, SchemaError> {
        Self::compile_ordered(schema, &PropertyOrder::default())
    }

    /// [`Grammar::compile`], emitting each object's properties in `order` (the order the
    /// schema's text wrote them) where it knows them.
    pub fn compile_ordered(schema: &Value, order: &PropertyOrder) -> Result<Grammar, SchemaError> {
        let mut c = Compiler {
            nodes: vec![Node::Any],
            patterns: Vec::new(),
            root: schema,
            refs: Vec::new(),
            order,
        };
        let root = c.node(schema, "#")?;
        Ok(Grammar {
            nodes: c.nodes,
            root,
            patterns: c.patterns,
        })
    }

    /// A call of one of `tools` (name, parameters schema) as the JSON object
    /// `{"name":<tool name>,"arguments":<its parameters>}`, name first so the model commits
    /// to a tool before writing arguments.
    pub fn tool_call(tools: &[(String, Value)]) -> Result<Grammar, SchemaError> {
        Self::tool_call_ordered(tools, &PropertyOrder::default())
    }

    /// [`Grammar::tool_call`], each tool's arguments in the property order `order` holds for
    /// the root `tool 'NAME' parameters`.
    pub fn tool_call_ordered(
        tools: &[(String, Value)],
        order: &PropertyOrder,
    ) -> Result<Grammar, SchemaError> {
        if tools.is_empty() {
            return Err(invalid("#", "no tools to call"));
        }
        let mut nodes = vec![Node::Any];
        let mut patterns = Vec::new();
        let mut alts = Vec::new();
        for (name, params) in tools {
            let mut c = Compiler {
                nodes,
                patterns,
                root: params,
                refs: Vec::new(),
                order,
            };
            let args = c.node(params, &format!("tool '{name}' parameters"))?;
            let lit = c.push(Node::Literals(vec![compact(&Value::String(name.clone()))]));
            let prop = |n: &str, node| Prop {
                name: n.into(),
                key: format!("{n}\"").into_bytes(),
                node,
                required: true,
            };
            alts.push(c.push(Node::Object {
                props: vec![prop("name", lit), prop("arguments", args)],
            }));
            nodes = c.nodes;
            patterns = c.patterns;
        }
        let root = if alts.len() == 1 {
            alts[0]
        } else {
            nodes.push(Node::AnyOf(alts));
            (nodes.len() - 1) as NodeId
        };
        Ok(Grammar {
            nodes,
            root,
            patterns,
        })
    }

    /// A document of either grammar (the root an `anyOf` of both roots): `b`'s nodes and
    /// patterns are appended to `a`'s, their references moved along.
    pub fn either(a: &Grammar, b: &Grammar) -> Grammar {
        let off = a.nodes.len() as NodeId - 1; // b's ANY (node 0) maps to a's
        let poff = a.patterns.len() as u32;
        let map = |n: NodeId| if n == ANY { ANY } else { n + off };
        let mut nodes = a.nodes.clone();
        for n in &b.nodes[1..] {
            nodes.push(match n {
                Node::Object { props } => Node::Object {
                    props: props
                        .iter()
                        .map(|p| Prop {
                            node: map(p.node),
                            ..p.clone()
                        })
                        .collect(),
                },
                Node::Array { items, min, max } => Node::Array {
                    items: map(*items),
                    min: *min,
                    max: *max,
                },
                Node::String { min, max, pattern } => Node::String {
                    min: *min,
                    max: *max,
                    pattern: pattern.map(|p| p + poff),
                },
                Node::AnyOf(alts) => Node::AnyOf(alts.iter().map(|&x| map(x)).collect()),
                other => other.clone(),
            });
        }
        nodes.push(Node::AnyOf(vec![a.root, map(b.root)]));
        let mut patterns = a.patterns.clone();
        patterns.extend(b.patterns.iter().cloned());
        Grammar {
            root: (nodes.len() - 1) as NodeId,
            nodes,
            patterns,
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

struct Compiler<'a> {
    nodes: Vec<Node>,
    patterns: Vec<Arc<Pattern>>,
    root: &'a Value,
    /// `$ref` targets being compiled (recursion check).
    refs: Vec<String>,
    /// The written order of `properties` keys, by path.
    order: &'a PropertyOrder,
}

fn invalid(path: &str, problem: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        path: path.into(),
        problem: problem.into(),
    }
}

fn count(v: &Value, key: &str, path: &str) -> Result<Option<u32>, SchemaError> {
    match v.get(key) {
        None => Ok(None),
        Some(n) => match n.as_u64() {
            Some(n) => Ok(Some(n.min(UNBOUNDED as u64 - 1) as u32)),
            None => Err(invalid(
                path,
                format!("'{key}' must be a non-negative integer, got {n}"),
            )),
        },
    }
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    fn node(&mut self, v: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let obj = match v {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => {
                return Err(invalid(path, "the schema 'false' matches nothing"));
            }
            Value::Object(o) => o,
            other => {
                return Err(invalid(
                    path,
                    format!("a schema must be an object or a boolean, got {other}"),
                ));
            }
        };
        for k in obj.keys() {
            if !SUPPORTED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                return Err(SchemaError::Unsupported {
                    path: path.into(),
                    keyword: k.clone(),
                });
            }
        }
        if let Some(r) = obj.get("$ref") {
            return self.reference(r, path);
        }
        if let Some(c) = obj.get("const") {
            return Ok(self.push(Node::Literals(vec![compact(c)])));
        }
        if let Some(e) = obj.get("enum") {
            let Some(list) = e.as_array() else {
                return Err(invalid(path, "'enum' must be an array"));
            };
            if list.is_empty() {
                return Err(invalid(path, "'enum' is empty, so no value can match"));
            }
            let mut lits: Vec<Vec<u8>> = list.iter().map(compact).collect();
            lits.sort();
            lits.dedup();
            return Ok(self.push(Node::Literals(lits)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = obj.get(key) {
                let Some(list) = alts.as_array().filter(|l| !l.is_empty()) else {
                    return Err(invalid(path, format!("'{key}' must be a non-empty array")));
                };
                let mut ids = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    ids.push(self.node(s, &format!("{path}/{key}/{i}"))?);
                }
                return Ok(self.push(Node::AnyOf(ids)));
            }
        }
        match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    self.typed("object", v, path)
                } else if obj.contains_key("items") {
                    self.typed("array", v, path)
                } else {
                    Ok(ANY)
                }
            }
            Some(Value::String(t)) => self.typed(t, v, path),
            Some(Value::Array(ts)) if !ts.is_empty() => {
                let mut ids = Vec::new();
                for t in ts {
                    let Some(t) = t.as_str() else {
                        return Err(invalid(
                            path,
                            format!("'type' entries must be strings, got {t}"),
                        ));
                    };
                    ids.push(self.typed(t, v, path)?);
                }
                Ok(self.push(Node::AnyOf(ids)))
            }
            Some(other) => Err(invalid(
                path,
                format!("'type' must be a string or a non-empty array, got {other}"),
            )),
        }
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let Some(r) = r.as_str() else {
            return Err(invalid(path, "'$ref' must be a string"));
        };
        let target = ["#/$defs/", "#/definitions/"].iter().find_map(|p| {
            let name = r.strip_prefix(p)?;
            self.root.get(&p[2..p.len() - 1])?.get(name)
        });
        let Some(target) = target else {
            return Err(invalid(
                path,
                format!("'$ref' {r} does not name an entry of the root's $defs"),
            ));
        };
        if self.refs.iter().any(|x| x == r) {
            return Err(invalid(
                path,
                format!("'$ref' {r} is recursive; recursive schemas are not supported"),
            ));
        }
        self.refs.push(r.to_string());
        let id = self.node(target, r.trim_start_matches('#'));
        self.refs.pop();
        id
    }

    fn typed(&mut self, t: &str, v: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let node = match t {
            "string" => {
                let min = count(v, "minLength", path)?.unwrap_or(0);
                let max = count(v, "maxLength", path)?.unwrap_or(UNBOUNDED);
                if min > max {
                    return Err(invalid(path, format!("minLength {min} > maxLength {max}")));
                }
                let pattern = self.string_pattern(v, path)?;
                if let Some(p) = pattern {
                    let p = &self.patterns[p as usize];
                    if max != UNBOUNDED && p.close(p.start()) > max {
                        return Err(invalid(
                            path,
                            format!("no string of at most {max} characters matches {}", p.source),
                        ));
                    }
                    if min > 0 {
                        // A minimum is met on exact ASCII lengths (see Pattern::fit).
                        if min >= MAX_LENGTHS {
                            return Err(invalid(
                                path,
                                format!(
                                    "'minLength' {min} with 'pattern' or 'format' is above the {} characters constrained decoding tracks",
                                    MAX_LENGTHS - 1
                                ),
                            ));
                        }
                        p.lengths().map_err(|e| invalid(path, e))?;
                        if p.fit(p.start(), min, max).is_none() {
                            return Err(invalid(
                                path,
                                format!(
                                    "no ASCII string of {min} to {max} characters matches {}",
                                    p.source
                                ),
                            ));
                        }
                    }
                }
                Node::String { min, max, pattern }
            }
            "integer" | "number" => {
                let integer = t == "integer";
                let bounds = NumBounds::of(v).map_err(|e| invalid(path, e))?;
                if let Some(b) = bounds
                    && b.close_bytes(NumPrefix::Start, integer).is_none()
                {
                    return Err(invalid(
                        path,
                        format!(
                            "no {t} of at most 15 digits satisfies its minimum, maximum and multipleOf"
                        ),
                    ));
                }
                if integer {
                    Node::Integer(bounds)
                } else {
                    Node::Number(bounds)
                }
            }
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            "array" => {
                let items = match v.get("items") {
                    None => ANY,
                    Some(s) => self.node(s, &format!("{path}/items"))?,
                };
                let min = count(v, "minItems", path)?.unwrap_or(0);
                let max = count(v, "maxItems", path)?.unwrap_or(UNBOUNDED);
                if min > max {
                    return Err(invalid(path, format!("minItems {min} > maxItems {max}")));
                }
                Node::Array { items, min, max }
            }
            "object" => return self.object(v, path),
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown type '{other}'; use string, integer, number, boolean, null, array or object"
                    ),
                ));
            }
        };
        Ok(self.push(node))
    }

    /// The expression a string schema's `pattern` or `format` asks for, compiled once per
    /// grammar.
    fn string_pattern(&mut self, v: &Value, path: &str) -> Result<Option<u32>, SchemaError> {
        let (source, regex, anywhere) = match (v.get("pattern"), v.get("format")) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    path,
                    "'pattern' and 'format' together are not supported; use one",
                ));
            }
            (Some(p), None) => {
                let Some(p) = p.as_str() else {
                    return Err(invalid(path, "'pattern' must be a string"));
                };
                (format!("pattern:{p}"), p.to_owned(), true)
            }
            (None, Some(f)) => {
                let Some(f) = f.as_str() else {
                    return Err(invalid(path, "'format' must be a string"));
                };
                let Some(re) = format_regex(f) else {
                    return Err(invalid(
                        path,
                        format!(
                            "format '{f}' is not supported by constrained decoding; supported: {FORMATS}"
                        ),
                    ));
                };
                (format!("format:{f}"), re.to_owned(), false)
            }
        };
        if let Some(i) = self.patterns.iter().position(|p| p.source == source) {
            return Ok(Some(i as u32));
        }
        let p = Pattern::compile(source, &regex, anywhere).map_err(|e| invalid(path, e))?;
        self.patterns.push(Arc::new(p));
        Ok(Some((self.patterns.len() - 1) as u32))
    }

    fn object(&mut self, v: &Value, path: &str) -> Result<NodeId, SchemaError> {
        match v.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(SchemaError::Unsupported {
                    path: path.into(),
                    keyword: "additionalProperties".into(),
                });
            }
        }
        let Some(props) = v.get("properties") else {
            if v.get("required")
                .and_then(Value::as_array)
                .is_some_and(|r| !r.is_empty())
            {
                return Err(invalid(
                    path,
                    "'required' names properties but 'properties' is missing",
                ));
            }
            return Ok(self.push(Node::AnyObject));
        };
        let Some(props) = props.as_object() else {
            return Err(invalid(path, "'properties' must be an object"));
        };
        let mut required: Vec<&str> = Vec::new();
        if let Some(r) = v.get("required") {
            let Some(list) = r.as_array() else {
                return Err(invalid(
                    path,
                    "'required' must be an array of property names",
                ));
            };
            for n in list {
                let Some(n) = n.as_str() else {
                    return Err(invalid(
                        path,
                        format!("'required' entries must be strings, got {n}"),
                    ));
                };
                if !props.contains_key(n) {
                    return Err(invalid(
                        path,
                        format!("'required' names '{n}', which is not in 'properties'"),
                    ));
                }
                required.push(n);
            }
        }
        let mut out = Vec::new();
        for (name, s) in props {
            let node = self.node(s, &format!("{path}/properties/{name}"))?;
            let mut key = serde_json::to_vec(&Value::String(name.clone())).expect("string");
            key.remove(0);
            out.push(Prop {
                name: name.clone(),
                key,
                node,
                required: required.contains(&name.as_str()),
            });
        }
        if let Some(written) = self.order.get(&format!("{path}/properties")) {
            let at = |n: &str| written.iter().position(|w| w == n).unwrap_or(usize::MAX);
            out.sort_by_key(|p| at(&p.name));
        }
        Ok(self.push(Node::Object { props: out }))
    }
}

fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a serde_json Value always serializes")
}
