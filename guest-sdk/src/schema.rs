//! JSON Schemas for tool inputs/outputs, and validation of an input against its schema.
//!
//! serde alone ignores schema-level constraints (`#[schemars(range(...))]`, lengths,
//! `deny_unknown_fields` is the exception), so inputs are checked against the generated
//! schema first and then deserialized; both report the JSON path of the offending field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ToolError;

/// The draft 2020-12 root schema of `T`, as a JSON value.
pub fn schema_for<T: JsonSchema + ?Sized>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Root schemas built so far, by schemars' id of their type. Each call of a tool runs in a
/// fresh instance, so within one call this saves nothing; it pays when the host snapshots the
/// component after its start-up hook ([`crate::runtime::preinit`]) built the input schema.
static SCHEMAS: Mutex<BTreeMap<Cow<'static, str>, &'static Value>> = Mutex::new(BTreeMap::new());

/// [`schema_for`], built once per type.
pub fn cached_schema<T: JsonSchema + ?Sized>() -> &'static Value {
    let id = T::schema_id();
    let lock = || SCHEMAS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(schema) = lock().get(&id) {
        return schema;
    }
    // Built outside the lock: a schema's generation never reads this cache, but the lock is
    // not held across foreign code all the same. Leaked once per type.
    let built: &'static Value = Box::leak(Box::new(schema_for::<T>()));
    lock().entry(id).or_insert(built)
}

/// The draft 2020-12 root schema of `T`, as compact JSON text.
pub fn schema_json<T: JsonSchema + ?Sized>() -> String {
    schema_for::<T>().to_string()
}

/// Parses `input` as JSON, checks it against `T`'s schema, and deserializes it.
/// Every failure is [`ToolError::InvalidInput`] naming the field path.
pub fn parse_input<T: DeserializeOwned + JsonSchema>(input: &str) -> Result<T, ToolError> {
    let value: Value = serde_json::from_str(input)
        .map_err(|e| ToolError::invalid_input(format!("input is not valid JSON: {e}")))?;
    validate(cached_schema::<T>(), &value)?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        at(&path, &inner.to_string())
    })
}

/// Checks `value` against `schema` (a root schema whose `$ref`s point into `$defs`).
pub fn validate(schema: &Value, value: &Value) -> Result<(), ToolError> {
    let mut path = Vec::new();
    Validator { root: schema }
        .check(schema, value, &mut path, 0)
        .map_err(|failure| at(&render_path(&path), &failure.message))
}

fn at(path: &str, message: &str) -> ToolError {
    if path.is_empty() || path == "." {
        ToolError::invalid_input(message.to_owned())
    } else {
        ToolError::invalid_input(format!("at `{path}`: {message}"))
    }
}

/// A validation failure. `discriminator` marks failures that only show the value was
/// meant for a different alternative of an `anyOf`/`oneOf`.
#[derive(Debug)]
struct Failure {
    message: String,
    discriminator: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            discriminator: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Most schema indirections (`$ref`, `allOf`, `anyOf`, `oneOf`) followed at one value.
/// Descending into a property or item starts again at zero: value nesting is already
/// bounded by serde_json's recursion limit, and a self-referential `$ref` must not hang.
const MAX_DEPTH: usize = 64;

struct Validator<'a> {
    root: &'a Value,
}

impl<'a> Validator<'a> {
    /// On failure `path` is left pointing at the offending value.
    fn check(
        &self,
        schema: &'a Value,
        value: &Value,
        path: &mut Vec<Segment>,
        depth: usize,
    ) -> Result<(), Failure> {
        if depth > MAX_DEPTH {
            return Err("the input schema refers to itself without end; cannot validate".into());
        }
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err("no value is allowed here".into()),
            Value::Object(map) => map,
            _ => return Ok(()),
        };
        if let Some(Value::String(reference)) = schema.get("$ref") {
            let target = self.resolve(reference)?;
            self.check(target, value, path, depth + 1)?;
        }
        if let Some(ty) = schema.get("type") {
            check_type(ty, value).map_err(|f| Failure {
                discriminator: path.is_empty(),
                ..f
            })?;
        }
        if let Some(Value::Array(options)) = schema.get("enum")
            && !options.contains(value)
        {
            return Err(format!(
                "{} is not one of {}",
                brief(value),
                Value::Array(options.clone())
            )
            .into());
        }
        if let Some(expected) = schema.get("const")
            && expected != value
        {
            return Err(Failure {
                message: format!("expected {expected}, got {}", brief(value)),
                discriminator: true,
            });
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = schema.get(key) {
                self.check_alternatives(key, options, value, path, depth)?;
            }
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for option in all {
                self.check(option, value, path, depth + 1)?;
            }
        }
        match value {
            Value::Object(object) => self.check_object(schema, object, path)?,
            Value::Array(items) => self.check_array(schema, items, path)?,
            Value::String(s) => check_string(schema, s)?,
            Value::Number(n) => check_number(schema, n.as_f64().unwrap_or(f64::NAN))?,
            _ => {}
        }
        Ok(())
    }

    /// `anyOf`/`oneOf`. When the value fails every option, the error worth reporting is
    /// the one from the single option it was meant for: options rejected on their tag
    /// (`const`) or on their root `type` do not count. No such option: leave the message
    /// to the deserializer (e.g. serde's "unknown variant"); several: say so.
    fn check_alternatives(
        &self,
        key: &str,
        options: &'a [Value],
        value: &Value,
        path: &mut Vec<Segment>,
        depth: usize,
    ) -> Result<(), Failure> {
        let mut matched = 0;
        let mut relevant = Vec::new();
        for option in options {
            let mut sub = Vec::new();
            match self.check(option, value, &mut sub, depth + 1) {
                Ok(()) => matched += 1,
                Err(f) if f.discriminator => {}
                Err(f) => relevant.push((sub, f)),
            }
        }
        if matched > 0 {
            if key == "oneOf" && matched > 1 {
                return Err(format!("{} matches more than one allowed shape", brief(value)).into());
            }
            return Ok(());
        }
        match (relevant.pop(), relevant.is_empty()) {
            (None, _) => Ok(()),
            (Some((sub, failure)), true) => {
                path.extend(sub);
                Err(failure)
            }
            (Some(_), false) => {
                Err(format!("{} does not match any allowed shape", brief(value)).into())
            }
        }
    }

    fn check_object(
        &self,
        schema: &'a Map<String, Value>,
        object: &Map<String, Value>,
        path: &mut Vec<Segment>,
    ) -> Result<(), Failure> {
        let properties = schema.get("properties").and_then(Value::as_object);
        // Tags first (`"op": {"const": "read"}`), so a value meant for another variant
        // of a tagged enum is recognised as such before anything else is reported.
        for (key, property) in properties.into_iter().flatten() {
            if let (Some(item), Some(_)) = (object.get(key), property.get("const")) {
                path.push(Segment::Key(key.clone()));
                self.check(property, item, path, 0)?;
                path.pop();
            }
        }
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("missing field `{name}`").into());
                }
            }
        }
        for (key, item) in object {
            let property = properties.and_then(|p| p.get(key));
            let item_schema = match property {
                Some(s) => s,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        return Err(format!(
                            "unknown field `{key}`, expected one of: {}",
                            known.join(", ")
                        )
                        .into());
                    }
                    Some(s) => s,
                    None => continue,
                },
            };
            path.push(Segment::Key(key.clone()));
            self.check(item_schema, item, path, 0)?;
            path.pop();
        }
        Ok(())
    }

    fn check_array(
        &self,
        schema: &'a Map<String, Value>,
        items: &[Value],
        path: &mut Vec<Segment>,
    ) -> Result<(), Failure> {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            return Err(format!(
                "expected at least {}, got {}",
                count(min, "item"),
                items.len()
            )
            .into());
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            return Err(format!(
                "expected at most {}, got {}",
                count(max, "item"),
                items.len()
            )
            .into());
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                self.check(item_schema, item, path, 0)?;
                path.pop();
            }
        }
        Ok(())
    }

    fn resolve(&self, reference: &str) -> Result<&'a Value, String> {
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| format!("input schema has a non-local $ref `{reference}`"))?;
        self.root
            .pointer(pointer)
            .ok_or_else(|| format!("input schema has a dangling $ref `{reference}`"))
    }
}

fn check_type(ty: &Value, value: &Value) -> Result<(), Failure> {
    let allowed: Vec<&str> = match ty {
        Value::String(s) => vec![s.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    if allowed.iter().any(|t| type_matches(t, value)) {
        Ok(())
    } else {
        Err(format!("expected {}, got {}", allowed.join(" or "), brief(value)).into())
    }
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn check_string(schema: &Map<String, Value>, s: &str) -> Result<(), Failure> {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        return Err(format!("expected at least {}, got {len}", count(min, "character")).into());
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        return Err(format!("expected at most {}, got {len}", count(max, "character")).into());
    }
    Ok(())
}

fn check_number(schema: &Map<String, Value>, n: f64) -> Result<(), Failure> {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum")
        && n < min
    {
        return Err(format!("{n} is less than the minimum {min}").into());
    }
    if let Some(max) = bound("maximum")
        && n > max
    {
        return Err(format!("{n} is greater than the maximum {max}").into());
    }
    if let Some(min) = bound("exclusiveMinimum")
        && n <= min
    {
        return Err(format!("{n} must be greater than {min}").into());
    }
    if let Some(max) = bound("exclusiveMaximum")
        && n >= max
    {
        return Err(format!("{n} must be less than {max}").into());
    }
    Ok(())
}

/// `1 character`, `2 characters`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A short rendering of a value for error messages (long strings and containers elided).
fn brief(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("string \"{}…\"", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("string {s:?}"),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Input {
        expr: String,
        #[schemars(range(min = 1, max = 10))]
        top: Option<u32>,
        #[serde(default)]
        tags: Vec<Tag>,
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Tag {
        #[schemars(length(min = 1, max = 5))]
        name: String,
        kind: Kind,
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Bold,
    }

    fn err(input: &str) -> String {
        match parse_input::<Input>(input) {
            Err(ToolError::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn schema_is_draft_2020_12_with_properties_and_constraints() {
        let schema = schema_for::<Input>();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["expr"]["type"], "string");
        assert_eq!(schema["properties"]["top"]["minimum"], 1);
        assert_eq!(schema["properties"]["top"]["maximum"], 10);
        assert_eq!(schema["required"], serde_json::json!(["expr"]));
        assert_eq!(schema["additionalProperties"], false);
        assert!(
            schema["$defs"]["Tag"].is_object(),
            "nested types go to $defs: {schema}"
        );
    }

    #[test]
    fn valid_input_parses() {
        let got =
            parse_input::<Input>(r#"{"expr":"1+1","top":3,"tags":[{"name":"a","kind":"bold"}]}"#)
                .unwrap();
        assert_eq!(got.expr, "1+1");
        assert_eq!(got.top, Some(3));
        assert_eq!(
            got.tags,
            vec![Tag {
                name: "a".into(),
                kind: Kind::Bold
            }]
        );
    }

    #[test]
    fn malformed_json_says_where() {
        let m = err(r#"{"expr": "#);
        assert!(
            m.starts_with("input is not valid JSON: EOF while parsing"),
            "{m}"
        );
        assert!(m.contains("line 1 column 9"), "{m}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        assert_eq!(
            err(r#"{"expr": 3}"#),
            "at `expr`: expected string, got number 3"
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        assert_eq!(err(r#"{"top": 3}"#), "missing field `expr`");
    }

    #[test]
    fn unknown_field_lists_the_known_ones() {
        assert_eq!(
            err(r#"{"expr":"x","exp":1}"#),
            "unknown field `exp`, expected one of: expr, tags, top"
        );
    }

    #[test]
    fn range_violation_is_caught_before_serde() {
        assert_eq!(
            err(r#"{"expr":"x","top":11}"#),
            "at `top`: 11 is greater than the maximum 10"
        );
        assert_eq!(
            err(r#"{"expr":"x","top":0}"#),
            "at `top`: 0 is less than the minimum 1"
        );
    }

    #[test]
    fn nested_errors_carry_the_full_path() {
        assert_eq!(
            err(
                r#"{"expr":"x","tags":[{"name":"ok","kind":"plain"},{"name":"toolong","kind":"plain"}]}"#
            ),
            "at `tags[1].name`: expected at most 5 characters, got 7"
        );
        assert_eq!(
            err(r#"{"expr":"x","tags":[{"name":"a","kind":"italic"}]}"#),
            r#"at `tags[0].kind`: string "italic" is not one of ["plain","bold"]"#
        );
    }

    #[test]
    fn top_level_must_be_an_object() {
        assert_eq!(err("[1,2]"), "expected object, got an array of 2 items");
    }

    #[test]
    fn serde_errors_that_the_schema_does_not_cover_still_carry_the_path() {
        // The deserializer, not only the schema, reports paths (here the schema's u8 bound hits first).
        #[derive(Debug, Deserialize, JsonSchema)]
        struct Wide {
            #[allow(dead_code)]
            n: u8,
        }
        match parse_input::<Wide>(r#"{"n": 300}"#) {
            Err(ToolError::InvalidInput(m)) => assert!(m.starts_with("at `n`: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    enum Op {
        Read {
            path: String,
        },
        Write {
            path: String,
            #[schemars(length(max = 3))]
            content: String,
        },
    }

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Wrapper {
        inner: Option<Tag>,
    }

    fn op_err(input: &str) -> String {
        match parse_input::<Op>(input) {
            Err(ToolError::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn tagged_enums_report_the_error_of_the_variant_named_by_the_tag() {
        assert_eq!(
            parse_input::<Op>(r#"{"op":"read","path":"a"}"#).unwrap(),
            Op::Read { path: "a".into() }
        );
        assert_eq!(op_err(r#"{"op":"read"}"#), "missing field `path`");
        assert_eq!(
            op_err(r#"{"op":"write","path":"a","content":"toolong"}"#),
            "at `content`: expected at most 3 characters, got 7"
        );
        // No variant has this tag: serde's message lists the variants.
        assert_eq!(
            op_err(r#"{"op":"delete","path":"a"}"#),
            "at `op`: unknown variant `delete`, expected `read` or `write`"
        );
    }

    #[test]
    fn optional_structs_are_still_checked_inside() {
        assert_eq!(
            parse_input::<Wrapper>(r#"{"inner":null}"#).unwrap(),
            Wrapper { inner: None }
        );
        match parse_input::<Wrapper>(r#"{"inner":{"name":"abcdefg","kind":"plain"}}"#) {
            Err(ToolError::InvalidInput(m)) => {
                assert_eq!(m, "at `inner.name`: expected at most 5 characters, got 7")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn item_counts_and_singular_units() {
        let e = |schema: Value, value: Value| validate(&schema, &value).unwrap_err();
        assert_eq!(
            e(
                serde_json::json!({"type": "array", "minItems": 2}),
                serde_json::json!([1])
            ),
            ToolError::invalid_input("expected at least 2 items, got 1")
        );
        assert_eq!(
            e(
                serde_json::json!({"maxItems": 1}),
                serde_json::json!([1, 2])
            ),
            ToolError::invalid_input("expected at most 1 item, got 2")
        );
        assert_eq!(
            e(serde_json::json!({"minLength": 1}), serde_json::json!("")),
            ToolError::invalid_input("expected at least 1 character, got 0")
        );
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)] // only the schema and deserialization matter here
    struct Tree {
        #[schemars(length(max = 3))]
        name: String,
        children: Vec<Tree>,
    }

    #[test]
    fn recursive_types_validate_at_any_depth_serde_accepts() {
        let mut doc = r#"{"name":"x","children":[]}"#.to_owned();
        // 50 levels: 100 JSON nestings, within serde_json's limit of 128, and far more
        // schema steps than MAX_DEPTH.
        for _ in 0..50 {
            doc = format!(r#"{{"name":"n","children":[{doc}]}}"#);
        }
        assert!(parse_input::<Tree>(&doc).is_ok());
        let bad = doc.replacen(r#""name":"x""#, r#""name":"long""#, 1);
        match parse_input::<Tree>(&bad) {
            Err(ToolError::InvalidInput(m)) => {
                assert!(m.starts_with("at `children[0].children[0]."), "{m}");
                assert!(
                    m.ends_with(".name`: expected at most 3 characters, got 4"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn input_nested_past_serde_json_limit_is_invalid_json_not_a_crash() {
        let deep = format!(
            r#"{{"expr":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let m = err(&deep);
        assert!(
            m.starts_with("input is not valid JSON: recursion limit exceeded"),
            "{m}"
        );
    }

    #[test]
    fn cyclic_ref_does_not_hang() {
        let schema =
            serde_json::json!({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}});
        let e = validate(&schema, &serde_json::json!(1)).unwrap_err();
        assert_eq!(
            e,
            ToolError::invalid_input(
                "the input schema refers to itself without end; cannot validate"
            )
        );
    }
}
