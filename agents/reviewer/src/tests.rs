use std::cell::RefCell;
use std::rc::Rc;

use sandgraph_guest::{
    agent as run,
    host::{self, AgentHost},
    model::{ChatResponse, ModelError},
    tools::{ToolCallError, ToolDescriptor},
};

use super::*;

struct Scripted {
    answer: Result<ChatResponse, ModelError>,
    requests: Rc<RefCell<Vec<ChatRequest>>>,
}

impl AgentHost for Scripted {
    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        self.requests.borrow_mut().push(request.clone());
        self.answer.clone()
    }
    fn list_tools(&self) -> Result<Vec<ToolDescriptor>, AgentError> {
        Ok(vec![])
    }
    fn call_tool(&self, name: &str, _: &str) -> Result<String, ToolCallError> {
        panic!("the reviewer must not call tools (called {name})")
    }
}

fn review(
    input: Value,
    answer: Result<ChatResponse, ModelError>,
) -> (Result<Value, AgentError>, Vec<ChatRequest>) {
    let requests = Rc::new(RefCell::new(Vec::new()));
    let _guard = host::install(Scripted {
        answer,
        requests: requests.clone(),
    });
    let out =
        run::step::<SandgraphAgent>(&input.to_string()).map(|s| serde_json::from_str(&s).unwrap());
    let seen = requests.borrow().clone();
    (out, seen)
}

const GOAL: &str =
    "Compute 17*23 and count the words of the page at http://127.0.0.1:8000/page.txt";

fn demo_results() -> Value {
    json!([
        {"tool": "calc", "input": {"expr": "17*23"}, "ok": true, "output": {"value": 391.0}},
        {"tool": "http-get", "input": {"url": "http://127.0.0.1:8000/page.txt"}, "ok": true,
         "output": {"status": 200, "headers": {"content-type": "text/plain"}, "body": "word ".repeat(20), "truncated": false}},
        {"tool": "text-stats", "input": {"text": "word ".repeat(20)}, "ok": true,
         "output": {"words": 20, "lines": 1, "top_terms": [{"term": "word", "count": 20}]}},
    ])
}

#[test]
fn approval_carries_the_answer_written_from_the_results() {
    let (out, requests) = review(
        json!({"goal": GOAL, "results": demo_results()}),
        Ok(ChatResponse::text(r#"{"verdict":"approve"}"#)),
    );
    assert_eq!(
        out.unwrap(),
        json!({
            "verdict": "approve",
            "feedback": "",
            "answer": "calc 17*23: value 391; http-get http://127.0.0.1:8000/page.txt: \
                       body (100 characters), status 200, truncated false; text-stats: lines 1, words 20"
        })
    );
    let r = &requests[0];
    assert_eq!(r.response_format.as_ref().unwrap(), &judgement_schema());
    assert_eq!(r.temperature, Some(0.0));
    assert_eq!(
        r.messages.last().unwrap().content,
        format!(
            "Goal: {GOAL}\nResults:\n1. calc 17*23: value 391\n2. http-get \
             http://127.0.0.1:8000/page.txt: body (100 characters), status 200, truncated false\n\
             3. text-stats: lines 1, words 20"
        )
    );
}

#[test]
fn the_model_may_ask_for_a_revision() {
    let (out, _) = review(
        json!({"goal": GOAL, "results": demo_results()}),
        Ok(ChatResponse::text(
            r#"{"feedback":"Also count the lines.","verdict":"revise"}"#,
        )),
    );
    let out = out.unwrap();
    assert_eq!(out["verdict"], "revise");
    assert_eq!(out["feedback"], "Also count the lines.");
}

#[test]
fn failures_and_empty_rounds_are_revised_without_asking_the_model() {
    let results = json!([
        {"tool": "calc", "input": {"expr": "17*23"}, "ok": true, "output": {"value": 391.0}},
        {"tool": "http-get", "input": {"url": "http://127.0.0.1:9/"}, "ok": false,
         "error": {"kind": "denied", "message": "egress: 127.0.0.1:9: no rule allows it"}},
        {"tool": "text-stats", "input": {"text": "$http-get.body"}, "ok": false,
         "error": {"kind": "unresolved_reference", "message": "`$http-get.body` refers to `http-get`, whose step failed, so it has no output"}},
    ]);
    let (out, requests) = review(
        json!({"goal": GOAL, "results": results}),
        Err(ModelError::Unavailable("must not be asked".into())),
    );
    assert!(requests.is_empty());
    assert_eq!(
        out.unwrap(),
        json!({
            "verdict": "revise",
            "feedback": "step 2 (http-get) denied: egress: 127.0.0.1:9: no rule allows it; \
                         step 3 (text-stats) unresolved_reference: `$http-get.body` refers to \
                         `http-get`, whose step failed, so it has no output",
            "answer": "calc 17*23: value 391"
        })
    );

    let (out, requests) = review(
        json!({"goal": GOAL, "results": []}),
        Ok(ChatResponse::text("{}")),
    );
    assert!(requests.is_empty());
    assert_eq!(
        out.unwrap()["feedback"],
        "the plan called no tool; choose the tools the goal needs"
    );
}

#[test]
fn model_errors_and_answers_outside_the_schema_are_agent_errors() {
    let input = json!({"goal": GOAL, "results": demo_results()});
    let (out, _) = review(
        input.clone(),
        Err(ModelError::Timeout("no answer in 30s".into())),
    );
    assert_eq!(
        out.unwrap_err(),
        AgentError::Failed("model timed out: no answer in 30s".into())
    );
    let (out, _) = review(input, Ok(ChatResponse::text(r#"{"verdict":"maybe"}"#)));
    let err = out.unwrap_err();
    assert!(
        matches!(&err, AgentError::Failed(m) if m.starts_with("the model's answer is not a valid Judgement: ")),
        "{err}"
    );
}

#[test]
fn bad_input_is_invalid_input() {
    let (out, _) = review(
        json!({"goal": GOAL, "results": [{"tool": "calc"}]}),
        Ok(ChatResponse::text("{}")),
    );
    assert_eq!(
        out.unwrap_err(),
        AgentError::InvalidInput("at `results[0]`: missing field `ok`".into())
    );
}
