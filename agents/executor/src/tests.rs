use std::cell::RefCell;
use std::rc::Rc;

use sandgraph_guest::{
    agent as run,
    host::{self, AgentHost},
    model::{ChatRequest, ChatResponse, ModelError},
    tools::{ToolCallError, ToolDescriptor},
};
use serde_json::json;

use super::*;

/// Scripted tools: `http-get` returns a page, `text-stats` counts the words of its
/// `text`, `calc` refuses an empty expression, anything else is not granted.
struct Scripted {
    calls: Rc<RefCell<Vec<(String, Value)>>>,
}

impl AgentHost for Scripted {
    fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, ModelError> {
        panic!("the executor must not call the model")
    }
    fn list_tools(&self) -> Result<Vec<ToolDescriptor>, AgentError> {
        Ok(vec![])
    }
    fn call_tool(&self, name: &str, input: &str) -> Result<String, ToolCallError> {
        let input: Value = serde_json::from_str(input).expect("the executor sends JSON");
        self.calls
            .borrow_mut()
            .push((name.to_owned(), input.clone()));
        match name {
            "http-get" => Ok(json!({"status": 200, "body": "one two three"}).to_string()),
            "text-stats" => {
                let words = input["text"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .count();
                Ok(json!({"words": words}).to_string())
            }
            "calc" if input["expr"] == "" => Err(ToolCallError::InvalidInput(
                "at `expr`: expected at least 1 character, got 0".into(),
            )),
            "calc" => Ok(r#"{"value":391.0}"#.into()),
            "broken" => Ok("not json".into()),
            other => Err(ToolCallError::Denied(format!(
                "tool `{other}` is not granted to node `execute`"
            ))),
        }
    }
}

fn execute(input: Value) -> (Value, Vec<(String, Value)>) {
    let calls = Rc::new(RefCell::new(Vec::new()));
    let _guard = host::install(Scripted {
        calls: calls.clone(),
    });
    let out = run::step::<SandgraphAgent>(&input.to_string()).unwrap();
    let seen = calls.borrow().clone();
    (serde_json::from_str(&out).unwrap(), seen)
}

#[test]
fn runs_steps_in_order_and_pipes_references() {
    let (out, calls) = execute(json!({"goal": "g", "steps": [
        {"tool": "calc", "input": {"expr": "17*23"}},
        {"tool": "http-get", "input": {"url": "http://127.0.0.1:8000/page.txt"}},
        {"tool": "text-stats", "input": {"text": "$http-get.body"}},
    ]}));
    assert_eq!(
        calls,
        [
            ("calc".to_owned(), json!({"expr": "17*23"})),
            (
                "http-get".to_owned(),
                json!({"url": "http://127.0.0.1:8000/page.txt"})
            ),
            ("text-stats".to_owned(), json!({"text": "one two three"})),
        ]
    );
    assert_eq!(
        out,
        json!({"goal": "g", "results": [
            {"tool": "calc", "input": {"expr": "17*23"}, "ok": true, "output": {"value": 391.0}},
            {"tool": "http-get", "input": {"url": "http://127.0.0.1:8000/page.txt"}, "ok": true,
             "output": {"status": 200, "body": "one two three"}},
            {"tool": "text-stats", "input": {"text": "one two three"}, "ok": true, "output": {"words": 3}},
        ]})
    );
}

#[test]
fn denials_errors_and_bad_references_are_recorded_and_the_rest_still_runs() {
    let (out, calls) = execute(json!({"goal": "g", "steps": [
        {"tool": "shell", "input": {"cmd": "id"}},
        {"tool": "text-stats", "input": {"text": "$http-get.body"}},
        {"tool": "calc", "input": {"expr": ""}},
        {"tool": "http-get", "input": {"url": "http://127.0.0.1:8000/"}},
        {"tool": "text-stats", "input": {"text": "$http-get.headers"}},
        {"tool": "text-stats", "input": {"text": "$shell.stdout"}},
        {"tool": "broken", "input": {}},
    ]}));
    let errors: Vec<(bool, Value)> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ok"].as_bool().unwrap(), r["error"].clone()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                false,
                json!({"kind": "denied", "message": "tool `shell` is not granted to node `execute`"})
            ),
            (
                false,
                json!({"kind": "unresolved_reference",
                "message": "`$http-get.body` refers to `http-get`, but no earlier step called it"})
            ),
            (
                false,
                json!({"kind": "invalid_input",
                "message": "at `expr`: expected at least 1 character, got 0"})
            ),
            (true, Value::Null),
            (
                false,
                json!({"kind": "unresolved_reference",
                "message": "`$http-get.headers`: the output of `http-get` has no `headers`; it has: body, status"})
            ),
            (
                false,
                json!({"kind": "unresolved_reference",
                "message": "`$shell.stdout` refers to `shell`, whose step failed, so it has no output"})
            ),
            (
                false,
                json!({"kind": "bad_output",
                "message": "tool `broken` answered with text that is not JSON: expected ident at line 1 column 2"})
            ),
        ]
    );
    // Unresolvable steps never reach the host; the others do, denied one included.
    let called: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(called, ["shell", "calc", "http-get", "broken"]);
    // A failed step keeps the input as planned.
    assert_eq!(
        out["results"][1]["input"],
        json!({"text": "$http-get.body"})
    );
}

#[test]
fn references_reach_into_lists_and_whole_outputs() {
    let earlier = vec![StepResult {
        tool: "json-query".into(),
        input: json!({}),
        ok: true,
        output: Some(json!({"matches": [{"value": 7}]})),
        error: None,
    }];
    assert_eq!(
        resolve(
            &json!({"n": "$json-query.matches.0.value", "all": "$json-query", "lit": "$"}),
            &earlier
        )
        .unwrap(),
        json!({"n": 7, "all": {"matches": [{"value": 7}]}, "lit": "$"})
    );
    assert_eq!(
        resolve(&json!("$json-query.matches.5"), &earlier).unwrap_err(),
        "`$json-query.matches.5`: the output of `json-query.matches` has no `5`; it is a list of 1"
    );
}

#[test]
fn malformed_plans_are_invalid_input() {
    let _guard = host::install(Scripted {
        calls: Rc::default(),
    });
    assert_eq!(
        run::step::<SandgraphAgent>(r#"{"goal":"g","steps":[{"input":{}}]}"#).unwrap_err(),
        AgentError::InvalidInput("at `steps[0]`: missing field `tool`".into())
    );
    let nine = json!({"goal": "g", "steps": vec![json!({"tool": "calc", "input": {}}); 9]});
    assert_eq!(
        run::step::<SandgraphAgent>(&nine.to_string()).unwrap_err(),
        AgentError::InvalidInput("at `steps`: expected at most 8 items, got 9".into())
    );
}
