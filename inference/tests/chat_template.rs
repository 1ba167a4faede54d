//! The prompt our ChatML renderer builds for a tool round trip (user → assistant tool call →
//! tool result → next assistant turn) is byte for byte what the model's own Jinja chat
//! template (`tokenizer.chat_template` in the GGUF) renders for the same messages, rendered
//! here by minijinja. A missing model fails (run `scripts/setup.sh`), it never skips.

use std::path::PathBuf;

use minijinja::{Environment, context};
use sandgraph_inference::gguf::GgufFile;
use sandgraph_inference::server::openai::{ChatRequest, parse_body};
use sandgraph_inference::tokenizer::{ChatTemplate, Tokenizer};
use serde_json::{Value, json};

fn model_path() -> PathBuf {
    let p = match std::env::var_os("SANDGRAPH_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.is_file(),
        "model file {} is missing: run scripts/setup.sh, or point SANDGRAPH_MODEL at the GGUF",
        p.display()
    );
    p
}

/// The call exactly as the model generates it under the tool grammar.
const CALL: &str = r#"{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}"#;

fn round_trip(system: bool) -> Value {
    let mut messages = vec![];
    if system {
        messages.push(json!({"role": "system", "content": "You call tools."}));
    }
    messages.extend([
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"},
        }]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"}),
    ]);
    json!({ "messages": messages })
}

/// Renders `request` with the GGUF's template. The template reads `message['content']` only
/// (it has no tool-call syntax), so an assistant turn's content is the calls as the model
/// wrote them — what every server does for such templates (llama.cpp's polyfill); the OpenAI
/// `tool_calls` field is passed too, for a template that would use it.
fn jinja_render(template: &str, request: &Value) -> String {
    let messages: Vec<Value> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.get("tool_calls").is_some() {
                m["content"] = json!(CALL);
            }
            m
        })
        .collect();
    let mut env = Environment::new();
    env.add_template("chat", template).unwrap();
    env.get_template("chat")
        .unwrap()
        .render(context! { messages => minijinja::value::Serde(messages), add_generation_prompt => true })
        .unwrap()
}

#[test]
fn tool_round_trip_renders_as_the_gguf_template_does() {
    let f = GgufFile::open(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let template_src = tok
        .chat_template()
        .expect("the GGUF carries a chat template");
    let ours = ChatTemplate::detect(Some(template_src)).unwrap();
    for system in [false, true] {
        let request = round_trip(system);
        let cr: ChatRequest = parse_body(request.to_string().as_bytes()).unwrap();
        let rendered = ours.render(&cr.chat_messages().unwrap());
        let expected = jinja_render(template_src, &request);
        assert_eq!(rendered, expected, "system prompt given: {system}");
        // The call the model made is in the prompt, inside the assistant's turn.
        assert!(
            rendered.contains(&format!("<|im_start|>assistant\n{CALL}<|im_end|>\n")),
            "{rendered}"
        );
        assert!(rendered.contains("<|im_start|>tool\n{\"temp\":21}<|im_end|>\n"));
        assert!(rendered.ends_with("<|im_start|>assistant\n"));
    }
}
