use std::cell::RefCell;
use std::rc::Rc;

use sandgraph_guest::{
    Tool, agent as run,
    host::{self, AgentHost},
    model::{ChatRequest, ChatResponse, FinishReason, ModelError, Role},
    runtime,
    tools::{ToolCallError, ToolDescriptor},
};

use super::*;

fn descriptor<T: Tool>() -> ToolDescriptor {
    let info = runtime::info::<T>();
    ToolDescriptor {
        name: info.name,
        description: info.description,
        input_schema: serde_json::from_str(&info.input_schema).unwrap(),
        output_schema: serde_json::from_str(&info.output_schema).unwrap(),
    }
}

fn demo_tools() -> Vec<ToolDescriptor> {
    vec![
        descriptor::<tool_calc::SandgraphTool>(),
        descriptor::<tool_http_get::SandgraphTool>(),
        descriptor::<tool_text_stats::SandgraphTool>(),
    ]
}

/// Scripted host: fixed tools, one scripted model answer, and every request kept.
struct Scripted {
    tools: Vec<ToolDescriptor>,
    answer: Result<ChatResponse, ModelError>,
    requests: Rc<RefCell<Vec<ChatRequest>>>,
}

impl AgentHost for Scripted {
    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        self.requests.borrow_mut().push(request.clone());
        self.answer.clone()
    }
    fn list_tools(&self) -> Result<Vec<ToolDescriptor>, AgentError> {
        Ok(self.tools.clone())
    }
    fn call_tool(&self, name: &str, _: &str) -> Result<String, ToolCallError> {
        panic!("the planner must not call tools (called {name})")
    }
}

fn with_host<R>(
    tools: Vec<ToolDescriptor>,
    answer: Result<ChatResponse, ModelError>,
    f: impl FnOnce() -> R,
) -> (R, Vec<ChatRequest>) {
    let requests = Rc::new(RefCell::new(Vec::new()));
    let _guard = host::install(Scripted {
        tools,
        answer,
        requests: requests.clone(),
    });
    let out = f();
    let seen = requests.borrow().clone();
    (out, seen)
}

const DEMO_GOAL: &str =
    "Compute 17*23 and count the words of the page at http://127.0.0.1:8000/page.txt";

#[test]
fn plan_schema_offers_each_granted_tool_as_null_or_its_required_input() {
    let schema = plan_schema(&demo_tools());
    assert_eq!(
        schema["required"],
        json!(["calc", "http-get", "text-stats"])
    );
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(
        schema["properties"]["calc"],
        json!({"anyOf": [{"type": "null"}, {
            "type": "object",
            "description": "An expression such as `2 * (3 + 4) ^ 2 - sqrt(16) / max(1, 2, 4)`.",
            "properties": {"expr": {
                "type": "string",
                "description": schema["properties"]["calc"]["anyOf"][1]["properties"]["expr"]["description"],
                "minLength": 1,
                "maxLength": 200
            }},
            "required": ["expr"],
            "additionalProperties": false
        }]})
    );
    // http-get's optional headers map, method enum ($ref) and numeric limits are gone:
    // only `url`, which the model must write, remains.
    let http = &schema["properties"]["http-get"]["anyOf"][1];
    assert_eq!(
        http["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["url"]
    );
    assert!(!schema.to_string().contains("$ref"), "{schema}");
    assert!(!schema.to_string().contains("format"), "{schema}");
    assert!(!schema.to_string().contains("minimum"), "{schema}");
}

#[test]
fn prompt_lists_the_tools_and_shows_only_examples_the_grant_allows() {
    let input = Input {
        goal: DEMO_GOAL.into(),
        feedback: String::new(),
        previous_results: vec![],
    };
    let r = request(&input, &demo_tools());
    assert_eq!(r.temperature, Some(0.0));
    assert_eq!(r.max_tokens, Some(MAX_TOKENS));
    assert!(
        r.messages[0]
            .content
            .contains("- calc: Evaluates an arithmetic expression")
    );
    assert!(r.messages[0].content.contains("- http-get: "));
    // Three examples (user + assistant each) between the system prompt and the goal.
    assert_eq!(r.messages.len(), 1 + 3 * 2 + 1);
    assert_eq!(
        r.messages[6].content,
        r#"{"calc":{"expr":"2+3"},"http-get":{"url":"http://127.0.0.1:9000/a.txt"},"text-stats":{"text":"$http-get.body"}}"#
    );
    assert_eq!(r.messages[7].content, format!("Goal: {DEMO_GOAL}"));

    // Only calc granted: only the calc example, written with calc alone.
    let calc_only = request(&input, &demo_tools()[..1]);
    assert_eq!(calc_only.messages.len(), 4);
    assert_eq!(calc_only.messages[2].role, Role::Assistant);
    assert_eq!(calc_only.messages[2].content, r#"{"calc":{"expr":"6*7"}}"#);
}

#[test]
fn feedback_from_the_last_round_reaches_the_prompt() {
    let input = Input {
        goal: "Compute 6*7".into(),
        feedback: "step 1 (http-get) failed: denied".into(),
        previous_results: vec![json!({"tool": "http-get", "ok": false})],
    };
    let r = request(&input, &demo_tools());
    assert_eq!(
        r.messages.last().unwrap().content,
        "Goal: Compute 6*7\nThe last plan did not work. Reviewer: step 1 (http-get) failed: denied"
    );
}

#[test]
fn a_filled_form_becomes_ordered_steps_through_the_whole_step() {
    // The model listed text-stats before its producer would run in grant order if the
    // grant put it first: the reference moves http-get ahead.
    let tools = vec![
        descriptor::<tool_text_stats::SandgraphTool>(),
        descriptor::<tool_calc::SandgraphTool>(),
        descriptor::<tool_http_get::SandgraphTool>(),
    ];
    let answer = r#"{"calc":{"expr":"17*23"},"http-get":{"url":"http://127.0.0.1:8000/page.txt"},"text-stats":{"text":"$http-get.body"}}"#;
    let (out, requests) = with_host(tools, Ok(ChatResponse::text(answer)), || {
        run::step::<SandgraphAgent>(&json!({"goal": DEMO_GOAL}).to_string())
    });
    let out: Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(
        out,
        json!({"goal": DEMO_GOAL, "steps": [
            {"tool": "calc", "input": {"expr": "17*23"}},
            {"tool": "http-get", "input": {"url": "http://127.0.0.1:8000/page.txt"}},
            {"tool": "text-stats", "input": {"text": "$http-get.body"}},
        ]})
    );
    // The response format sent is the plan schema over the granted tools.
    let sent = requests[0].response_format.as_ref().unwrap();
    assert_eq!(sent["required"], json!(["text-stats", "calc", "http-get"]));
}

#[test]
fn tools_the_model_left_null_are_not_planned() {
    let (out, _) = with_host(
        demo_tools(),
        Ok(ChatResponse::text(
            r#"{"calc":{"expr":"6*7"},"http-get":null,"text-stats":null}"#,
        )),
        || run::step::<SandgraphAgent>(r#"{"goal":"Compute 6*7"}"#),
    );
    assert_eq!(
        out.unwrap(),
        r#"{"goal":"Compute 6*7","steps":[{"tool":"calc","input":{"expr":"6*7"}}]}"#
    );
}

#[test]
fn model_errors_and_unusable_answers_are_agent_errors() {
    let (out, _) = with_host(
        demo_tools(),
        Err(ModelError::BudgetExhausted(
            "run: 12 of 4000 tokens left".into(),
        )),
        || run::step::<SandgraphAgent>(r#"{"goal":"Compute 6*7"}"#),
    );
    assert_eq!(
        out.unwrap_err(),
        AgentError::BudgetExhausted("run: 12 of 4000 tokens left".into())
    );

    let (out, _) = with_host(
        demo_tools(),
        Err(ModelError::Denied(
            "model `big` is not granted to node `plan`".into(),
        )),
        || run::step::<SandgraphAgent>(r#"{"goal":"Compute 6*7"}"#),
    );
    assert_eq!(
        out.unwrap_err(),
        AgentError::Denied("model `big` is not granted to node `plan`".into())
    );

    let mut cut = ChatResponse::text(r#"{"calc":{"expr":"6*"#);
    cut.finish_reason = FinishReason::Length;
    let (out, _) = with_host(demo_tools(), Ok(cut), || {
        run::step::<SandgraphAgent>(r#"{"goal":"Compute 6*7"}"#)
    });
    let err = out.unwrap_err();
    assert!(
        matches!(&err, AgentError::Failed(m) if m.starts_with("the model's answer is not a valid Map<String, Value>: not JSON")
            && m.ends_with("(cut off by max_tokens: raise it or ask for less)")),
        "{err}"
    );

    // An answer naming a tool outside the grant breaks the schema and is refused.
    let (out, _) = with_host(
        demo_tools()[..1].to_vec(),
        Ok(ChatResponse::text(r#"{"calc":null,"shell":{"cmd":"rm"}}"#)),
        || run::step::<SandgraphAgent>(r#"{"goal":"x"}"#),
    );
    assert_eq!(
        out.unwrap_err(),
        AgentError::Failed(
            "the model's answer is not a valid Map<String, Value>: unknown field `shell`, expected one of: calc; \
             answer: \"{\\\"calc\\\":null,\\\"shell\\\":{\\\"cmd\\\":\\\"rm\\\"}}\""
                .into()
        )
    );
}

#[test]
fn no_granted_tools_and_bad_input_are_clear_errors() {
    let (out, requests) = with_host(vec![], Ok(ChatResponse::text("{}")), || {
        run::step::<SandgraphAgent>(r#"{"goal":"x"}"#)
    });
    assert_eq!(
        out.unwrap_err(),
        AgentError::Failed(
            "the planner's node grants no tools; list them under `tools:` on the node".into()
        )
    );
    assert!(requests.is_empty(), "no model call without tools");
    let (out, _) = with_host(demo_tools(), Ok(ChatResponse::text("{}")), || {
        run::step::<SandgraphAgent>(r#"{"goal":""}"#)
    });
    assert_eq!(
        out.unwrap_err(),
        AgentError::InvalidInput("at `goal`: expected at least 1 character, got 0".into())
    );
}

#[test]
fn plans_are_cut_at_three_steps_and_cycles_keep_their_order() {
    let tools: Vec<ToolDescriptor> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| ToolDescriptor {
            name: (*n).into(),
            description: String::new(),
            input_schema: json!({"type": "object"}),
            output_schema: json!({}),
        })
        .collect();
    let form: Map<String, Value> = serde_json::from_value(json!({
        "a": {"x": "$b.y"}, "b": {"x": "$a.y"}, "c": {}, "d": {}
    }))
    .unwrap();
    let steps = steps_from_form(&tools, &form);
    let names: Vec<&str> = steps.iter().map(|s| s.tool.as_str()).collect();
    // c and d need nothing and go first; a and b wait on each other and keep their order.
    assert_eq!(names, ["c", "d", "a"]);
}
