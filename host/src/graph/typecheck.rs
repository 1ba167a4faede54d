//! Static types for graph expressions, so `"a" + 1` or a `when` that can never be a boolean is
//! a validation error at its line:col instead of a failed run. Types come from what the run
//! state can hold: `input` from the graph's input JSON Schema, `nodes.<id>` from the node's
//! component output schema where one is known, `state` from the reducers. Anything not known is
//! `dyn` and passes.
//!
//! The check is sound for the evaluator this crate runs (the `cel` crate): an operation is
//! refused only when no combination of the types its operands can have succeeds there (int,
//! uint and double never mix in arithmetic but compare with each other; `==` between a string,
//! a number and a bool is refused as always false). Like any type checker it judges every
//! sub-expression, also one a short-circuit or an empty list would skip at run time.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use serde_json::Value;

use super::spec::{Graph, Reducer};

/// Unions wider than this become `dyn`.
const MAX_UNION: usize = 16;
/// Schemas nested deeper than this are `dyn` below that depth.
const MAX_SCHEMA_DEPTH: usize = 32;

/// What a value can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// Unknown: every operation may succeed.
    Dyn,
    Null,
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    List(Box<Ty>),
    /// A map with string keys: the fields known, and what other keys hold (`None`: there are
    /// no other keys).
    Object(Arc<Object>),
    /// One of these (never nested, never containing `Dyn`).
    Union(Vec<Ty>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub fields: BTreeMap<String, Ty>,
    pub rest: Option<Ty>,
    /// Names the object in messages about fields it cannot have.
    pub what: Whose,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Whose {
    /// `input`, or a part of it: closed by `additionalProperties: false` in the input schema.
    InputSchema,
    /// A node's output: closed by its component's output schema.
    OutputSchema(String),
    /// `nodes`: one key per node id.
    Nodes,
    /// `state`: one key per field a reducer writes.
    State,
    Other,
}

impl Ty {
    fn members(&self) -> &[Ty] {
        match self {
            Ty::Union(m) => m,
            one => std::slice::from_ref(one),
        }
    }

    /// The union of `types` (`dyn` if any is).
    pub fn union(types: impl IntoIterator<Item = Ty>) -> Ty {
        let mut out: Vec<Ty> = Vec::new();
        for t in types {
            for m in t.members() {
                if *m == Ty::Dyn {
                    return Ty::Dyn;
                }
                if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        }
        match out.len() {
            0 => Ty::Dyn,
            1 => out.pop().expect("one member"),
            n if n > MAX_UNION => Ty::Dyn,
            _ => Ty::Union(out),
        }
    }

    fn number() -> Ty {
        Ty::Union(vec![Ty::Int, Ty::UInt, Ty::Double])
    }

    fn can_be_bool(&self) -> bool {
        self.members()
            .iter()
            .any(|m| matches!(m, Ty::Dyn | Ty::Bool))
    }

    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            Ty::Dyn => "dyn".into(),
            Ty::Null => "null".into(),
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::UInt => "uint".into(),
            Ty::Double => "double".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::List(_) => "list".into(),
            Ty::Object(_) => "map".into(),
            Ty::Union(m) if *self == Ty::number() || m.iter().all(is_number) => "number".into(),
            Ty::Union(m) => {
                let mut names: Vec<String> = Vec::new();
                for t in m {
                    let d = t.describe();
                    if !names.contains(&d) {
                        names.push(d);
                    }
                }
                names.join(" or ")
            }
        }
    }
}

/// "a string", "an int".
fn a(t: &Ty) -> String {
    let d = t.describe();
    let article = if d.starts_with(['a', 'e', 'i', 'o']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {d}")
}

fn is_number(t: &Ty) -> bool {
    matches!(t, Ty::Int | Ty::UInt | Ty::Double)
}

/// The type of values valid under a JSON Schema, as [`super::expr::to_cel`] converts them: an
/// integer may arrive as int, uint or (written `5.0`) double. Keywords that combine or refer
/// to other schemas make it `dyn`.
pub fn from_schema(schema: &Value, what: &Whose) -> Ty {
    from_schema_at(schema, what, 0)
}

fn from_schema_at(schema: &Value, what: &Whose, depth: usize) -> Ty {
    let Value::Object(s) = schema else {
        return Ty::Dyn;
    };
    if depth > MAX_SCHEMA_DEPTH {
        return Ty::Dyn;
    }
    const OPAQUE: [&str; 11] = [
        "$ref",
        "$dynamicRef",
        "$recursiveRef",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
    ];
    if OPAQUE.iter().any(|k| s.contains_key(*k)) {
        return Ty::Dyn;
    }
    let names: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ty::Dyn,
    };
    let one = |name: &str| -> Ty {
        match name {
            "null" => Ty::Null,
            "boolean" => Ty::Bool,
            "integer" | "number" => Ty::number(),
            "string" => Ty::String,
            "array" => match s.get("items") {
                Some(items) if !s.contains_key("prefixItems") => {
                    Ty::List(Box::new(from_schema_at(items, what, depth + 1)))
                }
                _ => Ty::List(Box::new(Ty::Dyn)),
            },
            "object" => {
                let fields = s
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), from_schema_at(v, what, depth + 1)))
                            .collect()
                    })
                    .unwrap_or_default();
                let open_by_other_keywords = ["patternProperties", "unevaluatedProperties"]
                    .iter()
                    .any(|k| s.contains_key(*k));
                let rest = match s.get("additionalProperties") {
                    _ if open_by_other_keywords => Some(Ty::Dyn),
                    Some(Value::Bool(false)) => None,
                    Some(v @ Value::Object(_)) => Some(from_schema_at(v, what, depth + 1)),
                    _ => Some(Ty::Dyn),
                };
                Ty::Object(Arc::new(Object {
                    fields,
                    rest,
                    what: what.clone(),
                }))
            }
            _ => Ty::Dyn,
        }
    };
    Ty::union(names.into_iter().map(one))
}

/// The types of `input`, `nodes` and `state` for one graph.
#[derive(Debug, Clone)]
pub struct TypeEnv {
    pub input: Ty,
    pub nodes: Ty,
    pub state: Ty,
}

impl TypeEnv {
    /// From the graph's input schema, `outputs` (component name -> output JSON Schema, where
    /// known) and the reducers.
    pub fn new(graph: &Graph, outputs: &BTreeMap<String, Value>) -> TypeEnv {
        let input = graph
            .spec
            .input
            .as_ref()
            .map_or(Ty::Dyn, |s| from_schema(s, &Whose::InputSchema));
        let mut nodes = BTreeMap::new();
        let mut state: BTreeMap<String, Vec<Ty>> = BTreeMap::new();
        for n in &graph.spec.nodes {
            let out = outputs.get(&n.component).map_or(Ty::Dyn, |s| {
                from_schema(s, &Whose::OutputSchema(n.id.clone()))
            });
            for (field, reducer) in &n.reducers {
                let value = field_of(&out, field);
                let t = match reducer {
                    Reducer::Replace => value,
                    // A list is concatenated, anything else appended as one item.
                    Reducer::Append => Ty::List(Box::new(Ty::union(value.members().iter().map(
                        |m| match m {
                            Ty::List(e) => (**e).clone(),
                            other => other.clone(),
                        },
                    )))),
                };
                state.entry(field.clone()).or_default().push(t);
            }
            nodes.insert(n.id.clone(), out);
        }
        let object = |fields: BTreeMap<String, Ty>, what: Whose| {
            Ty::Object(Arc::new(Object {
                fields,
                rest: None,
                what,
            }))
        };
        TypeEnv {
            input,
            nodes: object(nodes, Whose::Nodes),
            state: object(
                state
                    .into_iter()
                    .map(|(k, ts)| (k, Ty::union(ts)))
                    .collect(),
                Whose::State,
            ),
        }
    }

    /// Everything `dyn` except the roots themselves: what is known without a graph.
    pub fn unknown() -> TypeEnv {
        TypeEnv {
            input: Ty::Dyn,
            nodes: Ty::Dyn,
            state: Ty::Dyn,
        }
    }
}

/// The type of field `name` of a value of type `t`, without judging absence.
fn field_of(t: &Ty, name: &str) -> Ty {
    Ty::union(t.members().iter().map(|m| {
        match m {
            Ty::Object(o) => o
                .fields
                .get(name)
                .cloned()
                .or_else(|| o.rest.clone())
                .unwrap_or(Ty::Dyn),
            _ => Ty::Dyn,
        }
    }))
}

/// A type error: where in the expression (a character offset) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    pub offset: Option<usize>,
    pub message: String,
}

/// Checks a parsed expression; `condition` asks that it can be a boolean.
pub fn check(
    root: &IdedExpr,
    info: &SourceInfo,
    source: &str,
    env: &TypeEnv,
    condition: bool,
) -> Vec<TypeError> {
    let mut c = Checker {
        info,
        source,
        env,
        scopes: Vec::new(),
        errors: Vec::new(),
    };
    let t = c.ty(root);
    if condition && !t.can_be_bool() {
        c.errors.push(TypeError {
            offset: Some(0),
            message: format!(
                "is {}, never true or false; a condition must be a boolean, e.g. compare it: `… == …`",
                a(&t)
            ),
        });
    }
    c.errors
}

struct Checker<'a> {
    info: &'a SourceInfo,
    source: &'a str,
    env: &'a TypeEnv,
    scopes: Vec<(String, Ty)>,
    errors: Vec<TypeError>,
}

impl Checker<'_> {
    fn error(&mut self, at: &IdedExpr, message: String) {
        let offset = self.info.offset_for(at.id).map(|(start, _)| {
            // The parser counts characters; keep it inside the source either way.
            (start as usize).min(self.source.chars().count())
        });
        self.errors.push(TypeError { offset, message });
    }

    fn ty(&mut self, e: &IdedExpr) -> Ty {
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::UInt,
            },
            Expr::Ident(name) => {
                if let Some((_, t)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
                    return t.clone();
                }
                match name.as_str() {
                    "input" => self.env.input.clone(),
                    "nodes" => self.env.nodes.clone(),
                    "state" => self.env.state.clone(),
                    _ => Ty::Dyn,
                }
            }
            Expr::Select(s) => {
                let operand = self.ty(&s.operand);
                if s.test {
                    return Ty::Bool;
                }
                self.select(e, &operand, &s.field)
            }
            Expr::List(l) => {
                let elems: Vec<Ty> = l.elements.iter().map(|x| self.ty(x)).collect();
                Ty::List(Box::new(Ty::union(elems)))
            }
            Expr::Map(m) => {
                let mut values = Vec::new();
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.ty(&me.key);
                        values.push(self.ty(&me.value));
                    }
                }
                Ty::Object(Arc::new(Object {
                    fields: BTreeMap::new(),
                    rest: Some(Ty::union(values)),
                    what: Whose::Other,
                }))
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => {
                            self.ty(&f.value);
                        }
                        EntryExpr::MapEntry(me) => {
                            self.ty(&me.key);
                            self.ty(&me.value);
                        }
                    }
                }
                Ty::Dyn
            }
            Expr::Comprehension(c) => {
                let range = self.ty(&c.iter_range);
                let elem = if c.iter_var2.is_some() {
                    Ty::Dyn
                } else {
                    let mut elems = Vec::new();
                    for m in range.members() {
                        match m {
                            Ty::Dyn => elems.push(Ty::Dyn),
                            Ty::List(x) => elems.push((**x).clone()),
                            Ty::Object(_) => elems.push(Ty::String),
                            _ => {}
                        }
                    }
                    if elems.is_empty() {
                        self.error(
                            &c.iter_range,
                            format!(
                                "iterates over {}; the macros iterate over a list or a map",
                                a(&range)
                            ),
                        );
                        Ty::Dyn
                    } else {
                        Ty::union(elems)
                    }
                };
                let accu = self.ty(&c.accu_init);
                let depth = self.scopes.len();
                self.scopes.push((c.iter_var.clone(), elem));
                if let Some(v2) = &c.iter_var2 {
                    self.scopes.push((v2.clone(), Ty::Dyn));
                }
                // The accumulator's type may grow with each step (a list of mapped values):
                // type the step with it as `dyn`, then the result with what the step builds.
                self.scopes.push((c.accu_var.clone(), Ty::Dyn));
                self.ty(&c.loop_cond);
                let step = self.ty(&c.loop_step);
                let accu = match (&accu, &step) {
                    (Ty::List(_), Ty::List(_)) => Ty::List(Box::new(Ty::Dyn)),
                    _ => Ty::union([accu, step]),
                };
                self.scopes.pop();
                self.scopes.push((c.accu_var.clone(), accu));
                let result = self.ty(&c.result);
                self.scopes.truncate(depth);
                result
            }
            Expr::Call(call) => self.call(e, call),
            Expr::Unspecified => Ty::Dyn,
        }
    }

    fn select(&mut self, at: &IdedExpr, operand: &Ty, field: &str) -> Ty {
        let mut out = Vec::new();
        let mut absent: Option<&Object> = None;
        for m in operand.members() {
            match m {
                Ty::Dyn => out.push(Ty::Dyn),
                Ty::Object(o) => match o.fields.get(field).or(o.rest.as_ref()) {
                    Some(t) => out.push(t.clone()),
                    None => absent = Some(o),
                },
                _ => {}
            }
        }
        if !out.is_empty() {
            return Ty::union(out);
        }
        let message = match absent {
            Some(o) => {
                let known: Vec<&str> = o.fields.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                match &o.what {
                    Whose::Nodes => format!(
                        "reads nodes.{field}, but the graph has no node '{field}' (nodes: {known})"
                    ),
                    Whose::State => format!(
                        "reads state.{field}, but no node's reducers write '{field}' (state fields: {known}); add `reducers: {{ {field}: replace }}` to the node that outputs it"
                    ),
                    Whose::InputSchema => format!(
                        "reads field '{field}', which the input schema does not allow (additionalProperties: false; fields: {known})"
                    ),
                    Whose::OutputSchema(node) => format!(
                        "reads field '{field}', which node '{node}''s output schema does not allow (additionalProperties: false; fields: {known})"
                    ),
                    Whose::Other => format!("reads field '{field}', which is not there"),
                }
            }
            None => format!(
                "selects field '{field}' of {}; only a map has fields",
                a(operand)
            ),
        };
        self.error(at, message);
        Ty::Dyn
    }

    fn call(&mut self, at: &IdedExpr, call: &cel::common::ast::CallExpr) -> Ty {
        let target = call.target.as_deref().map(|t| self.ty(t));
        let args: Vec<Ty> = call.args.iter().map(|a| self.ty(a)).collect();
        let f = call.func_name.as_str();
        match (f, target.as_ref(), args.as_slice()) {
            (operators::CONDITIONAL, None, [c, x, y]) => {
                if !c.can_be_bool() {
                    self.error(
                        &call.args[0],
                        format!(
                            "uses {} as the condition of `?:`; it must be a boolean",
                            a(c)
                        ),
                    );
                }
                Ty::union([x.clone(), y.clone()])
            }
            (operators::LOGICAL_AND | operators::LOGICAL_OR, None, [x, y]) => {
                // `x && false` is false and `x || true` true even when x is not a boolean.
                if !x.can_be_bool() && !y.can_be_bool() {
                    self.error(
                        at,
                        format!(
                            "combines {} and {} with `{}`; both must be booleans",
                            a(x),
                            a(y),
                            if f == operators::LOGICAL_AND {
                                "&&"
                            } else {
                                "||"
                            }
                        ),
                    );
                }
                Ty::Bool
            }
            (operators::LOGICAL_NOT, None, [x]) => {
                if !x.can_be_bool() {
                    self.error(
                        at,
                        format!("negates {} with `!`; it must be a boolean", a(x)),
                    );
                }
                Ty::Bool
            }
            (operators::NEGATE, None, [x]) => {
                let ok: Vec<Ty> = x
                    .members()
                    .iter()
                    .filter(|m| matches!(m, Ty::Dyn | Ty::Int | Ty::Double))
                    .cloned()
                    .collect();
                if ok.is_empty() {
                    self.error(
                        at,
                        format!(
                            "negates {} with `-`; only an int or a double can be negated",
                            a(x)
                        ),
                    );
                    return Ty::Dyn;
                }
                Ty::union(ok)
            }
            (
                operators::ADD
                | operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO,
                None,
                [x, y],
            ) => self.arithmetic(at, f, x, y),
            (operators::EQUALS | operators::NOT_EQUALS, None, [x, y]) => {
                if let (Some(ca), Some(cb)) = (class(x), class(y))
                    && ca & cb == 0
                {
                    self.error(
                        at,
                        format!(
                            "compares {} with {} with `{}`, which is always {}; convert one side, e.g. with string(…) or int(…)",
                            a(x),
                            a(y),
                            if f == operators::EQUALS { "==" } else { "!=" },
                            f != operators::EQUALS
                        ),
                    );
                }
                Ty::Bool
            }
            (
                operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                None,
                [x, y],
            ) => {
                let comparable = x.members().iter().any(|p| {
                    y.members().iter().any(|q| match (p, q) {
                        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
                        (p, q) if is_number(p) && is_number(q) => true,
                        (Ty::String, Ty::String)
                        | (Ty::Bool, Ty::Bool)
                        | (Ty::Bytes, Ty::Bytes) => true,
                        _ => false,
                    })
                });
                if !comparable {
                    let op = match f {
                        operators::LESS => "<",
                        operators::LESS_EQUALS => "<=",
                        operators::GREATER => ">",
                        _ => ">=",
                    };
                    self.error(
                        at,
                        format!(
                            "orders {} against {} with `{op}`, which always fails; numbers, strings, bools and bytes compare only with their own kind",
                            a(x),
                            a(y)
                        ),
                    );
                }
                Ty::Bool
            }
            (operators::IN, None, [_, y]) => {
                if !y
                    .members()
                    .iter()
                    .any(|m| matches!(m, Ty::Dyn | Ty::List(_) | Ty::Object(_)))
                {
                    self.error(
                        at,
                        format!(
                            "looks for a value `in` {}; `in` needs a list or a map",
                            a(y)
                        ),
                    );
                }
                Ty::Bool
            }
            (operators::INDEX, None, [x, _]) => Ty::union(x.members().iter().map(|m| match m {
                Ty::List(x) => (**x).clone(),
                Ty::Object(o) => Ty::union(o.fields.values().cloned().chain(o.rest.clone())),
                _ => Ty::Dyn,
            })),
            (operators::NOT_STRICTLY_FALSE, None, _) => Ty::Bool,
            ("size", _, _) => Ty::Int,
            ("string", None, [_]) => Ty::String,
            ("int", None, [_]) => Ty::Int,
            ("uint", None, [_]) => Ty::UInt,
            ("double", None, [_]) => Ty::Double,
            ("bool", None, [_]) => Ty::Bool,
            ("bytes", None, [_]) => Ty::Bytes,
            ("contains" | "startsWith" | "endsWith" | "matches", _, _) => Ty::Bool,
            _ => Ty::Dyn,
        }
    }

    fn arithmetic(&mut self, at: &IdedExpr, f: &str, x: &Ty, y: &Ty) -> Ty {
        let mut out = Vec::new();
        for p in x.members() {
            for q in y.members() {
                let r = match (p, q) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => Some(Ty::Dyn),
                    (Ty::Int, Ty::Int) => Some(Ty::Int),
                    (Ty::UInt, Ty::UInt) => Some(Ty::UInt),
                    (Ty::Double, Ty::Double) if f != operators::MODULO => Some(Ty::Double),
                    (Ty::String, Ty::String) | (Ty::Bytes, Ty::Bytes) if f == operators::ADD => {
                        Some(p.clone())
                    }
                    (Ty::List(l), Ty::List(r)) if f == operators::ADD => {
                        Some(Ty::List(Box::new(Ty::union([
                            (**l).clone(),
                            (**r).clone(),
                        ]))))
                    }
                    _ => None,
                };
                out.extend(r);
            }
        }
        if !out.is_empty() {
            return Ty::union(out);
        }
        let (verb, op) = match f {
            operators::ADD => ("adds", "+"),
            operators::SUBSTRACT => ("subtracts", "-"),
            operators::MULTIPLY => ("multiplies", "*"),
            operators::DIVIDE => ("divides", "/"),
            _ => ("takes the remainder of", "%"),
        };
        let hint = if x.members().iter().all(is_number) && y.members().iter().all(is_number) {
            "; CEL does not mix int, uint and double in arithmetic: convert with int(…), uint(…) or double(…)"
        } else if f == operators::ADD
            && (x.members().contains(&Ty::String) || y.members().contains(&Ty::String))
        {
            "; `+` joins two strings only: convert with string(…)"
        } else if x.members().contains(&Ty::String) || y.members().contains(&Ty::String) {
            "; only numbers of one kind do arithmetic: convert with int(…) or double(…)"
        } else {
            ""
        };
        self.error(
            at,
            format!(
                "{verb} {} and {} with `{op}`, which always fails{hint}",
                a(x),
                a(y)
            ),
        );
        Ty::Dyn
    }
}

/// For `==`: the kinds of scalar a type may be (bit set), or `None` when it may be anything
/// else (dyn, null, a list or a map), which any value may be compared with.
fn class(t: &Ty) -> Option<u8> {
    let mut bits = 0;
    for m in t.members() {
        bits |= match m {
            Ty::Bool => 1,
            Ty::Int | Ty::UInt | Ty::Double => 2,
            Ty::String => 4,
            Ty::Bytes => 8,
            _ => return None,
        };
    }
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::expr::Expression;
    use crate::graph::state::RunState;
    use serde_json::json;

    fn env() -> TypeEnv {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string"},
                "n": {"type": "integer"},
                "f": {"type": "number"},
                "flag": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "m": {"type": "object", "properties": {"k": {"type": "string"}}},
                "maybe": {"type": ["string", "null"]},
            }
        });
        TypeEnv {
            input: from_schema(&schema, &Whose::InputSchema),
            nodes: Ty::Dyn,
            state: Ty::Dyn,
        }
    }

    fn errors(src: &str) -> Vec<TypeError> {
        Expression::compile(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .type_errors(&env(), false)
    }

    /// Inputs valid under the schema of `env`, with numbers of every CEL kind and non-empty
    /// lists (a macro body over an empty list never runs).
    fn samples() -> Vec<serde_json::Value> {
        vec![
            json!({"name": "x", "n": 5, "f": 2.5, "flag": true, "tags": ["a"], "m": {"k": "v"}, "maybe": null}),
            json!({"name": "", "n": 5.0, "f": 3, "flag": false, "tags": ["b", "c"], "m": {"k": "w", "z": 1}, "maybe": "s"}),
            json!({"name": "y", "n": u64::MAX, "f": u64::MAX, "flag": true, "tags": ["d"], "m": {"k": ""}, "maybe": "t"}),
        ]
    }

    /// Sound: an expression that evaluates on any sample is never refused; and each refused
    /// one fails on every sample (so the refusals below are real run-time failures).
    #[test]
    fn refused_exactly_when_no_valid_input_can_evaluate_it() {
        let cases: &[(&str, bool)] = &[
            ("'a' + 1", false),
            ("input.name + 1", false),
            ("input.name < 3", false),
            ("input.n > input.name", false),
            ("input.name * 2", false),
            ("input.name - 'a'", false),
            ("-input.name", false),
            ("!input.n", false),
            ("1 + 2.0", false),
            ("1 + 2u", false),
            ("2.5 % 2.0", false),
            ("input.nmae", false),
            ("input.tags.filter(t, t + 1)", false),
            ("input.tags.map(t, t * 2)", false),
            ("input.name.k", false),
            ("'a' in 3", false),
            ("input.tags.all(t, t > 1)", false),
            ("input.name.size() + 'a'", false),
            ("input.n ? 1 : 2", false),
            ("input.name && input.n", false),
            ("input.maybe + 1", false),
            ("input.n * 2", true),
            ("input.n * 2u", true),
            ("input.n * 2.5", true),
            ("input.f + 1", true),
            ("input.n < 2.5 && input.f > 1", true),
            ("input.name + '!' + string(input.n)", true),
            ("input.name < 'm' || input.flag", true),
            ("has(input.nmae) ? 1 : 2", true),
            ("input.m.k + input.m.anything", true),
            ("input.tags.filter(t, t > 'a').map(t, t + '!')", true),
            (
                "input.tags.map(t, input.tags.filter(u, u < t).size())",
                true,
            ),
            ("size(input.tags) + 1 > 0 && 'a' in input.tags", true),
            ("input.tags[0] + 'x'", true),
            ("input.maybe == null || input.maybe + 'x' == 'sx'", true),
            ("[1, 'a'][0] + 1", true),
            ("{'a': 1}.a + 1", true),
            ("input.name == 'x' ? input.n : input.name", true),
            ("input.m.exists(k, k == 'k')", true),
        ];
        let mut wrong = Vec::new();
        for &(src, accepted) in cases {
            let e = Expression::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            let refused = !e.type_errors(&env(), false).is_empty();
            let ran: Vec<bool> = samples()
                .into_iter()
                .map(|input| RunState::new(input).eval(&e).is_ok())
                .collect();
            if refused == accepted {
                wrong.push(format!(
                    "{src}: refused {refused}, expected accepted {accepted}"
                ));
            }
            if refused && ran.iter().any(|&ok| ok) {
                wrong.push(format!(
                    "{src}: refused, but evaluates on a valid input ({ran:?})"
                ));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn errors_point_at_the_offending_operator_or_selection() {
        let at = |src: &str| {
            errors(src)
                .into_iter()
                .map(|e| (e.offset, e.message))
                .collect::<Vec<_>>()
        };
        let e = at("'a' + 1");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, Some(4));
        assert!(
            e[0].1
                .starts_with("adds a string and an int with `+`, which always fails"),
            "{}",
            e[0].1
        );
        let e = at("input.n + input.nmae");
        assert_eq!(e[0].0, Some(15), "{e:?}");
        assert!(
            e[0].1
                .contains("field 'nmae', which the input schema does not allow"),
            "{e:?}"
        );
        let e = at("input.name < 3");
        assert_eq!(e[0].0, Some(11));
        assert!(
            e[0].1
                .starts_with("orders a string against an int with `<`"),
            "{e:?}"
        );
        let e = at("1 + 2.0");
        assert!(
            e[0].1.contains("CEL does not mix int, uint and double"),
            "{e:?}"
        );
        // A condition must be able to be a boolean.
        let cond = Expression::compile("input.n + 1").unwrap();
        let e = cond.type_errors(&env(), true);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].offset, Some(0));
        assert!(
            e[0].message.starts_with("is an int, never true or false"),
            "{e:?}"
        );
        assert!(
            Expression::compile("input.flag || input.n > 1")
                .unwrap()
                .type_errors(&env(), true)
                .is_empty()
        );
        // `==` across kinds is always false.
        let e = at("input.name == 3");
        assert!(e[0].1.contains("which is always false"), "{e:?}");
    }

    #[test]
    fn schemas_map_to_the_values_json_can_bring() {
        let t = |s: serde_json::Value| from_schema(&s, &Whose::InputSchema);
        assert_eq!(t(json!({"type": "integer"})), Ty::number());
        assert_eq!(t(json!({"type": "string"})), Ty::String);
        assert_eq!(
            t(json!({"type": ["string", "null"]})),
            Ty::Union(vec![Ty::String, Ty::Null])
        );
        assert_eq!(t(json!({"anyOf": [{"type": "string"}]})), Ty::Dyn);
        assert_eq!(t(json!({"type": "string", "$ref": "#/x"})), Ty::Dyn);
        assert_eq!(t(json!({})), Ty::Dyn);
        assert_eq!(t(json!(true)), Ty::Dyn);
        assert_eq!(t(json!({"type": "array"})), Ty::List(Box::new(Ty::Dyn)));
        let Ty::Object(o) = t(
            json!({"type": "object", "additionalProperties": false, "patternProperties": {"^x": {}}}),
        ) else {
            panic!()
        };
        assert_eq!(o.rest, Some(Ty::Dyn), "patternProperties keep it open");
        let mut deep = json!({"type": "string"});
        for _ in 0..100 {
            deep = json!({"type": "array", "items": deep});
        }
        let mut ty = t(deep);
        let mut levels = 0;
        while let Ty::List(e) = ty {
            ty = *e;
            levels += 1;
        }
        assert_eq!((levels, ty), (MAX_SCHEMA_DEPTH + 1, Ty::Dyn));
    }

    #[test]
    fn nodes_and_state_are_closed_over_node_ids_and_reducer_fields() {
        let graph: Graph = serde_norway::from_str(
            r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: g }
spec:
  nodes:
    - { id: a, kind: tool, component: calc, reducers: { value: replace, log: append } }
    - { id: b, kind: tool, component: other }
"#,
        )
        .unwrap();
        let outputs: BTreeMap<String, Value> = [(
            "calc".to_string(),
            json!({"type": "object", "additionalProperties": false, "properties": {"value": {"type": "number"}, "log": {"type": "string"}}}),
        )]
        .into();
        let env = TypeEnv::new(&graph, &outputs);
        let check = |src: &str| {
            Expression::compile(src)
                .unwrap()
                .type_errors(&env, false)
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
        };
        assert!(check("nodes.a.value * 2.0 + double(size(state.log))").is_empty());
        assert!(
            check("nodes.b.anything.at.all").is_empty(),
            "no schema: dyn"
        );
        assert!(check("state.log + ['x']").is_empty(), "append makes a list");
        assert!(check("state.value + 1.5").is_empty());
        let e = check("nodes.c.value");
        assert!(
            e[0].contains("the graph has no node 'c' (nodes: a, b)"),
            "{e:?}"
        );
        let e = check("state.count");
        assert!(
            e[0].contains("no node's reducers write 'count' (state fields: log, value)"),
            "{e:?}"
        );
        let e = check("nodes.a.valeu");
        assert!(
            e[0].contains("node 'a''s output schema does not allow"),
            "{e:?}"
        );
        let e = check("state.log + 1");
        assert!(e[0].starts_with("adds a list and an int"), "{e:?}");
    }
}
