//! JSON Schemas shaped for constrained decoding: the subset the engine enforces while
//! generating (type, properties, required, enum, const, anyOf, items, lengths, `$ref`).
//!
//! schemars writes keywords the decoder cannot enforce (`format: uint32`, `minimum`, map
//! values as `additionalProperties`); sent as they are, the engine refuses the request.
//! [`for_decoding`] drops them (the answer is still checked against the full schema after
//! decoding), [`inline_refs`] makes a schema embeddable inside another one, and
//! [`limit_strings`] bounds free text so a small model cannot ramble until `max_tokens`.

use serde_json::{Map, Value};

/// Keywords constrained decoding enforces or accepts as annotations.
const DECODABLE: &[&str] = &[
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
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
    "description",
    "title",
    "$schema",
];

/// Most `$ref`s followed along one path while inlining; deeper means a recursive type.
const MAX_REF_DEPTH: usize = 32;

/// `schema` without the keywords constrained decoding does not support. An
/// `additionalProperties` other than `false` is dropped too: the object then allows its
/// declared properties only (or any object when it declares none).
pub fn for_decoding(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        if !DECODABLE.contains(&key.as_str()) {
            continue;
        }
        let value = match key.as_str() {
            "additionalProperties" if value != &Value::Bool(false) => continue,
            "properties" | "$defs" | "definitions" => match value {
                Value::Object(entries) => Value::Object(
                    entries
                        .iter()
                        .map(|(k, v)| (k.clone(), for_decoding(v)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "items" => for_decoding(value),
            "anyOf" | "oneOf" => match value {
                Value::Array(options) => Value::Array(options.iter().map(for_decoding).collect()),
                other => other.clone(),
            },
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

/// `schema` with every `#/$defs/...` (or `#/definitions/...`) reference replaced by its
/// target and the definitions removed, so it can sit inside another schema.
pub fn inline_refs(schema: &Value) -> Result<Value, String> {
    let defs = |key: &str| schema.get(key).and_then(Value::as_object);
    let mut out = inline(schema, schema, 0)?;
    if let Value::Object(map) = &mut out
        && (defs("$defs").is_some() || defs("definitions").is_some())
    {
        map.remove("$defs");
        map.remove("definitions");
    }
    Ok(out)
}

fn inline(node: &Value, root: &Value, depth: usize) -> Result<Value, String> {
    match node {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref") {
                let reference = reference
                    .as_str()
                    .ok_or_else(|| format!("`$ref` must be a string, got {reference}"))?;
                if depth >= MAX_REF_DEPTH {
                    return Err(format!(
                        "`$ref` {reference} nests more than {MAX_REF_DEPTH} deep; a recursive \
                         schema cannot be inlined"
                    ));
                }
                let target = ["#/$defs/", "#/definitions/"]
                    .iter()
                    .find_map(|prefix| {
                        let name = reference.strip_prefix(prefix)?;
                        root.get(&prefix[2..prefix.len() - 1])?.get(name)
                    })
                    .ok_or_else(|| format!("`$ref` {reference} names no entry of `$defs`"))?;
                let mut resolved = inline(target, root, depth + 1)?;
                // Siblings of `$ref` (a description) stay beside the inlined target.
                if let Value::Object(resolved_map) = &mut resolved {
                    for (k, v) in map {
                        if k != "$ref" {
                            resolved_map.insert(k.clone(), inline(v, root, depth)?);
                        }
                    }
                }
                return Ok(resolved);
            }
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), inline(v, root, depth)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|v| inline(v, root, depth))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// `schema` with every string limited to at most `max` characters (a tighter
/// `maxLength` already there is kept).
pub fn limit_strings(schema: &Value, max: u64) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> = map
                .iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // Literal values, not schemas.
                        "enum" | "const" | "default" | "examples" | "required" => v.clone(),
                        _ => limit_strings(v, max),
                    };
                    (k.clone(), v)
                })
                .collect();
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string && !map.contains_key("enum") && !map.contains_key("const") {
                let current = map.get("maxLength").and_then(Value::as_u64);
                let limit = current.map_or(max, |c| c.min(max));
                out.insert("maxLength".into(), limit.into());
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| limit_strings(v, max)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_what_the_decoder_cannot_enforce_at_every_depth() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "top": {"type": "integer", "format": "uint32", "minimum": 0, "default": 10},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"type": "number", "maximum": 3}, "uniqueItems": true},
                "either": {"anyOf": [{"type": "string", "pattern": "^a"}, {"type": "null"}]}
            },
            "additionalProperties": false,
            "required": ["top"]
        });
        assert_eq!(
            for_decoding(&schema),
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "top": {"type": "integer"},
                    "headers": {"type": "object"},
                    "list": {"type": "array", "items": {"type": "number"}},
                    "either": {"anyOf": [{"type": "string"}, {"type": "null"}]}
                },
                "additionalProperties": false,
                "required": ["top"]
            })
        );
    }

    #[test]
    fn inlines_references_and_keeps_their_siblings() {
        let schema = json!({
            "type": "object",
            "properties": {"method": {"$ref": "#/$defs/Method", "description": "verb"}},
            "$defs": {"Method": {"type": "string", "enum": ["GET", "HEAD"]}}
        });
        assert_eq!(
            inline_refs(&schema).unwrap(),
            json!({
                "type": "object",
                "properties": {"method": {"type": "string", "enum": ["GET", "HEAD"], "description": "verb"}}
            })
        );
    }

    #[test]
    fn recursive_or_dangling_references_are_errors() {
        let recursive = json!({
            "$ref": "#/$defs/Node",
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}
        });
        assert_eq!(
            inline_refs(&recursive).unwrap_err(),
            "`$ref` #/$defs/Node nests more than 32 deep; a recursive schema cannot be inlined"
        );
        assert_eq!(
            inline_refs(&json!({"$ref": "#/$defs/Gone"})).unwrap_err(),
            "`$ref` #/$defs/Gone names no entry of `$defs`"
        );
    }

    #[test]
    fn strings_get_a_length_limit_but_literals_do_not() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "string"},
                "b": {"type": "string", "maxLength": 5},
                "c": {"type": ["string", "null"]},
                "d": {"type": "string", "enum": ["x"]}
            }
        });
        assert_eq!(
            limit_strings(&schema, 40)["properties"],
            json!({
                "a": {"type": "string", "maxLength": 40},
                "b": {"type": "string", "maxLength": 5},
                "c": {"type": ["string", "null"], "maxLength": 40},
                "d": {"type": "string", "enum": ["x"]}
            })
        );
    }
}
