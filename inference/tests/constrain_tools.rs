//! Tool calls through constrained decoding: reading `tools`/`tool_choice` (each bad input a
//! specific error), forced calls on the tiny model always parse back into a valid call, and
//! the `auto` rule tells a call from plain text.

use std::sync::Arc;

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::constrain::TokenTrie;
use sandgraph_inference::constrain::tools::{
    ToolCall, ToolChoice, ToolError, parse_tool_call, parse_tool_choice, parse_tools,
    tool_constraint, tools_prompt,
};
use sandgraph_inference::generate::FinishReason;
use sandgraph_inference::gguf::{GgmlType, GgufFile};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};
use sandgraph_inference::tokenizer::Tokenizer;
use serde_json::{Value, json};

mod constrain_support;
use constrain_support::{generate_under, seeds};

fn tools_json() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "add", "description": "Adds two integers.",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
        {"type": "function", "function": {"name": "now"}}
    ])
}

#[test]
fn bad_tools_and_choices_get_specific_errors() {
    assert_eq!(parse_tools(&json!({"a": 1})), Err(ToolError::NotAnArray));
    let e = parse_tools(&json!([{"type": "retrieval"}])).unwrap_err();
    assert!(
        e.to_string()
            .contains("tools[0]: 'type' must be \"function\""),
        "{e}"
    );
    let e = parse_tools(&json!([{"type": "function", "function": {"name": ""}}])).unwrap_err();
    assert!(
        e.to_string()
            .contains("'function.name' must be a non-empty string"),
        "{e}"
    );
    let e = parse_tools(&json!([{"type": "function"}])).unwrap_err();
    assert!(
        e.to_string().contains("'function' object is missing"),
        "{e}"
    );
    let dup = json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]);
    assert_eq!(
        parse_tools(&dup),
        Err(ToolError::DuplicateName {
            index: 1,
            name: "f".into()
        })
    );
    let bad_schema = json!([{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "format": "uri"}}}}}]);
    let e = parse_tools(&bad_schema).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("tool 'f': schema at #/properties/x: format 'uri' is not supported"),
        "{e}"
    );

    let tools = parse_tools(&tools_json()).unwrap();
    assert_eq!(parse_tool_choice(None, &tools), Ok(ToolChoice::Auto));
    assert_eq!(parse_tool_choice(None, &[]), Ok(ToolChoice::None));
    assert_eq!(
        parse_tool_choice(Some(&json!("required")), &tools),
        Ok(ToolChoice::Required)
    );
    assert_eq!(
        parse_tool_choice(
            Some(&json!({"type": "function", "function": {"name": "add"}})),
            &tools
        ),
        Ok(ToolChoice::Named("add".into()))
    );
    assert_eq!(
        parse_tool_choice(
            Some(&json!({"type": "function", "function": {"name": "sub"}})),
            &tools
        ),
        Err(ToolError::UnknownChoice("sub".into()))
    );
    assert_eq!(
        parse_tool_choice(Some(&json!("always")), &tools),
        Err(ToolError::BadChoice("\"always\"".into()))
    );
    assert_eq!(
        parse_tool_choice(Some(&json!("required")), &[]),
        Err(ToolError::NoTools("required".into()))
    );
}

#[test]
fn auto_tells_a_call_from_text() {
    let tools = parse_tools(&tools_json()).unwrap();
    assert_eq!(
        parse_tool_call(r#" {"name":"add","arguments":{"a":1,"b":2}} "#, &tools),
        Some(ToolCall {
            name: "add".into(),
            arguments: r#"{"a":1,"b":2}"#.into()
        })
    );
    assert_eq!(parse_tool_call("The answer is 3.", &tools), None);
    assert_eq!(
        parse_tool_call(r#"{"name":"sub","arguments":{}}"#, &tools),
        None
    );
    assert_eq!(
        parse_tool_call(r#"{"name":"add","arguments":{"a":1}}"#, &tools),
        None
    );
    assert!(tools_prompt(&tools).contains("- get_weather: Weather for a city."));
    assert_eq!(tool_constraint(&tools, &ToolChoice::Auto), Ok(None));
}

#[test]
fn forced_calls_on_the_tiny_model_always_parse_back() {
    let bytes = tiny_model_bytes(&TinySpec::new(5, GgmlType::Q8_0));
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes.clone()).unwrap()).unwrap();
    let model = LlamaModel::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let trie = Arc::new(TokenTrie::new(&tok));
    let tools = parse_tools(&tools_json()).unwrap();
    let mut cpu = CpuBackend::with_threads(&model, 4, 512, 2).unwrap();
    let choices = [
        ToolChoice::Required,
        ToolChoice::Named("add".into()),
        ToolChoice::Named("now".into()),
        ToolChoice::Named("get_weather".into()),
    ];
    for choice in &choices {
        let g = tool_constraint(&tools, choice).unwrap().unwrap();
        let prompt = tok.encode("call a tool", true);
        let gens = generate_under(&mut cpu, &tok, &trie, &g, &prompt, 200, &seeds(4));
        for out in gens {
            assert_eq!(
                out.finish,
                FinishReason::EndOfSequence,
                "{choice:?}: {:?}",
                out.text
            );
            let call = parse_tool_call(&out.text, &tools)
                .unwrap_or_else(|| panic!("{choice:?}: {:?} is not a valid call", out.text));
            if let ToolChoice::Named(n) = choice {
                assert_eq!(&call.name, n);
            }
        }
    }
}
