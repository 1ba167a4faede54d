//! `json-query`: selects values from a JSON document with a JSONPath subset.
//!
//! Agents get large JSON from APIs and need a few fields of it; this tool returns
//! exactly those, with the normalized path of each match so results are traceable.

mod path;

use sandgraph_guest::{JsonSchema, ToolError, tool};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use path::{Path, PathError, Segment, Selector};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The JSON document to query (any JSON value).
    pub document: Value,
    /// A JSONPath such as `$.items[*].name`, `$..id`, `$.a['b c'][0]`, `$.list[-1]`,
    /// `$.list[1:3]`. Filters (`?()`) are not supported.
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

/// Parses `path` and runs it on `document`.
pub fn query(document: &Value, path: &str) -> Result<Vec<Match>, PathError> {
    let path = Path::parse(path)?;
    Ok(path
        .select(document)
        .into_iter()
        .map(|(location, value)| Match {
            path: location,
            value: value.clone(),
        })
        .collect())
}

#[tool(
    name = "json-query",
    description = "Selects values from a JSON document with a JSONPath ($.a.b[0], [*], .., slices) and returns each match with its path."
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
    fn bad_path_is_invalid_input_with_position() {
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"document":{},"path":"$.a[?(@.x)]"}"#).unwrap_err(),
            ToolError::invalid_input(
                "at `path`: filter expressions `?(...)` are not supported (column 5)"
            )
        );
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
