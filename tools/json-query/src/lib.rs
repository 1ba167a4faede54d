//! `json-query`: selects values from a JSON document with a JSONPath (RFC 9535).
//!
//! Agents get large JSON from APIs and need a few fields of it; this tool returns
//! exactly those, with the normalized path of each match so results are traceable.

use sandgraph_guest::{ToolError, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::{JsonPath, NormalizedPath, PathElement};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The JSON document to query (any JSON value).
    pub document: Value,
    /// An RFC 9535 JSONPath such as `$.items[*].name`, `$..id`, `$.a['b c'][0]`,
    /// `$.list[-1]`, `$.list[1:3]` or `$.items[?@.price < 10 && length(@.tags) > 0]`.
    /// Functions: length, count, value (not the regex functions match/search).
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Fail when nothing matches instead of returning an empty list (default false).
    #[serde(default)]
    pub require_match: bool,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// Matches in document order.
    pub matches: Vec<Match>,
    pub count: usize,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Match {
    /// Normalized path of the match, e.g. `$['items'][0]['name']`.
    pub path: String,
    pub value: Value,
}

/// Why a path could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PathError {}

/// Parses `path` and runs it on `document`.
pub fn query(document: &Value, path: &str) -> Result<Vec<Match>, PathError> {
    let path = JsonPath::parse(path).map_err(|e| {
        PathError(format!(
            "`{path}` is not a valid JSONPath: {e} (positions count from 0)"
        ))
    })?;
    Ok(path
        .query_located(document)
        .into_iter()
        .map(|node| Match {
            path: normalized(node.location()),
            value: node.node().clone(),
        })
        .collect())
}

/// RFC 9535 §2.7 normalized path text: `$['a'][0]`, with `'`, backslash and control
/// characters escaped in names (the crate's own `Display` leaves them raw).
pub fn normalized(path: &NormalizedPath<'_>) -> String {
    let mut out = String::from("$");
    for element in path.iter() {
        match element {
            PathElement::Index(i) => out.push_str(&format!("[{i}]")),
            PathElement::Name(name) => {
                out.push_str("['");
                for c in name.chars() {
                    match c {
                        '\u{8}' => out.push_str("\\b"),
                        '\u{c}' => out.push_str("\\f"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        '\'' => out.push_str("\\'"),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push_str("']");
            }
        }
    }
    out
}

#[tool(
    name = "json-query",
    description = "Selects values from a JSON document with an RFC 9535 JSONPath ($.a.b[0], [*], .., slices, [?filters]) and returns each match with its normalized path."
)]
fn invoke(input: Input) -> Result<Output, ToolError> {
    let matches = query(&input.document, &input.path)
        .map_err(|e| ToolError::invalid_input(format!("at `path`: {e}")))?;
    if input.require_match && matches.is_empty() {
        return Err(ToolError::failed(format!(
            "`{}` matched nothing in the document",
            input.path
        )));
    }
    Ok(Output {
        count: matches.len(),
        matches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandgraph_guest::runtime;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "store": {
                "book": [
                    {"title": "A", "price": 8, "id": 1, "tags": ["x"]},
                    {"title": "B", "price": 12, "id": 2, "tags": []},
                    {"title": "C", "price": 9, "id": 3, "tags": ["y", "z"]}
                ],
                "bike": {"color": "red", "id": 4}
            },
            "odd key": {"it's": true}
        })
    }

    fn values(path: &str) -> Vec<Value> {
        query(&doc(), path)
            .unwrap()
            .into_iter()
            .map(|m| m.value)
            .collect()
    }

    fn paths(path: &str) -> Vec<String> {
        query(&doc(), path)
            .unwrap()
            .into_iter()
            .map(|m| m.path)
            .collect()
    }

    #[test]
    fn names_indices_wildcards_slices() {
        assert_eq!(values("$.store.bike.color"), [json!("red")]);
        assert_eq!(values("$['store']['book'][1].title"), [json!("B")]);
        assert_eq!(values("$.store.book[-1].title"), [json!("C")]);
        assert_eq!(values("$.store.book[7]"), Vec::<Value>::new());
        assert_eq!(
            values("$.store.book[*].price"),
            [json!(8), json!(12), json!(9)]
        );
        assert_eq!(values("$.store.book[0, 2].title"), [json!("A"), json!("C")]);
        assert_eq!(values("$.store.book[1:].id"), [json!(2), json!(3)]);
        assert_eq!(
            values("$.store.book[::-1].id"),
            [json!(3), json!(2), json!(1)]
        );
        assert_eq!(values("$[\"odd key\"]['it\\'s']"), [json!(true)]);
    }

    #[test]
    fn filters_and_functions() {
        assert_eq!(
            values("$.store.book[?@.price < 10].title"),
            [json!("A"), json!("C")]
        );
        assert_eq!(
            values("$.store.book[?length(@.tags) > 1].title"),
            [json!("C")]
        );
        assert_eq!(
            values("$.store.book[?@.price > 8 && @.id != 2].id"),
            [json!(3)]
        );
    }

    #[test]
    fn descendants_and_normalized_paths() {
        let mut ids = values("$..id");
        ids.sort_by_key(|v| v.as_i64());
        assert_eq!(ids, [json!(1), json!(2), json!(3), json!(4)]);
        assert_eq!(paths("$..color"), ["$['store']['bike']['color']"]);
        assert_eq!(paths("$['odd key'].*"), ["$['odd key']['it\\'s']"]);
        let tricky = json!({"a\\b\n\u{1}": 1});
        let got: Vec<String> = query(&tricky, "$.*")
            .unwrap()
            .into_iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(got, ["$['a\\\\b\\n\\u0001']"]);
    }

    #[test]
    fn request_path_returns_matches_with_paths() {
        let out = runtime::call::<SandgraphTool>(
            r#"{"document":{"items":[{"name":"a"},{"name":"b"}]},"path":"$.items[*].name"}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"matches":[{"path":"$['items'][0]['name']","value":"a"},{"path":"$['items'][1]['name']","value":"b"}],"count":2}"#
        );
    }

    #[test]
    fn bad_paths_are_invalid_input_with_position() {
        let err = |path: &str| match runtime::call::<SandgraphTool>(
            &json!({"document": {}, "path": path}).to_string(),
        ) {
            Err(ToolError::InvalidInput(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = err("$.a[?(@.x]");
        assert!(
            m.starts_with("at `path`: `$.a[?(@.x]` is not a valid JSONPath: at position "),
            "{m}"
        );
        let m = err("store");
        assert!(
            m.starts_with("at `path`: `store` is not a valid JSONPath: at position 0"),
            "{m}"
        );
        let m = err("$.a[?match(@.x, 'a.*')]");
        assert!(m.contains("function name 'match' is not defined"), "{m}");
    }

    #[test]
    fn require_match() {
        assert_eq!(
            runtime::call::<SandgraphTool>(
                r#"{"document":{"a":1},"path":"$.b","require_match":true}"#
            )
            .unwrap_err(),
            ToolError::failed("`$.b` matched nothing in the document")
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"document":{"a":1},"path":"$.b"}"#).unwrap(),
            r#"{"matches":[],"count":0}"#
        );
    }

    #[test]
    fn missing_document_is_named() {
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"path":"$"}"#).unwrap_err(),
            ToolError::invalid_input("missing field `document`")
        );
    }
}
