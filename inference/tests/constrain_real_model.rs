//! Constrained decoding on the real SmolLM2-135M-Instruct vocabulary and weights (CPU backend):
//! 20 schemas × 3 samplings produce JSON that parses and validates. A missing model fails (run
//! `scripts/setup.sh`), it never skips.

use std::path::PathBuf;
use std::sync::Arc;

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::constrain::{Grammar, TokenTrie};
use sandgraph_inference::generate::{FinishReason, Sampling};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde_json::{Value, json};

mod constrain_support;
use constrain_support::{generate_per_sampling, validates};

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

fn schemas() -> Vec<(&'static str, Value)> {
    let s = |n: u64| json!({"type": "string", "maxLength": n});
    vec![
        (
            "Give the capital of France.",
            json!({"type": "object", "properties": {"capital": s(20)}, "required": ["capital"]}),
        ),
        (
            "Is the sky blue?",
            json!({"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}),
        ),
        (
            "How many legs does a dog have?",
            json!({"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}),
        ),
        (
            "What is pi?",
            json!({"type": "object", "properties": {"pi": {"type": "number"}}, "required": ["pi"]}),
        ),
        (
            "Pick a colour.",
            json!({"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]}),
        ),
        (
            "Name a person and their age.",
            json!({"type": "object", "properties": {"name": s(16), "age": {"type": "integer"}}, "required": ["name", "age"]}),
        ),
        (
            "List three fruits.",
            json!({"type": "object", "properties": {"fruits": {"type": "array", "items": s(12), "minItems": 3, "maxItems": 3}}, "required": ["fruits"]}),
        ),
        (
            "Give two numbers.",
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}),
        ),
        ("Say hello.", json!({"type": "string", "maxLength": 24})),
        ("Nothing to say.", json!({"type": "null"})),
        ("Rate this from 1 to 3.", json!({"enum": [1, 2, 3]})),
        (
            "Describe a book.",
            json!({"type": "object", "properties": {"title": s(20), "author": s(16), "year": {"type": "integer"}}, "required": ["title", "author"]}),
        ),
        (
            "Give a point.",
            json!({"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}}, "required": ["point"]}),
        ),
        (
            "Tag this text.",
            json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["news", "sport", "tech"]}, "minItems": 1, "maxItems": 2}}, "required": ["tags"]}),
        ),
        (
            "Maybe a number.",
            json!({"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        ),
        (
            "Status?",
            json!({"type": "object", "properties": {"status": {"const": "ok"}, "code": {"type": "integer"}}, "required": ["status", "code"]}),
        ),
        (
            "Weather in Paris.",
            json!({"$defs": {"t": {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}}, "type": "object", "properties": {"city": s(12), "temp": {"$ref": "#/$defs/t"}}, "required": ["city", "temp"]}),
        ),
        (
            "A short word.",
            json!({"type": "object", "properties": {"word": {"type": "string", "minLength": 2, "maxLength": 8}}, "required": ["word"]}),
        ),
        (
            "Yes or no, and why.",
            json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "why": s(24)}, "required": ["ok", "why"]}),
        ),
        (
            "Two people.",
            json!({"type": "array", "items": {"type": "object", "properties": {"name": s(10)}, "required": ["name"]}, "minItems": 1, "maxItems": 2}),
        ),
    ]
}

#[test]
fn twenty_schemas_times_three_samplings_give_valid_json_on_the_real_model() {
    let model = LlamaModel::load(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let trie = Arc::new(TokenTrie::new(&tok));
    let tpl = ChatTemplate::detect(tok.chat_template()).unwrap();
    let mut cpu = CpuBackend::new(&model, 3, 512).unwrap();
    let list = schemas();
    assert!(list.len() >= 20);
    for (i, (question, schema)) in list.iter().enumerate() {
        let g = Arc::new(Grammar::compile(schema).unwrap_or_else(|e| panic!("{schema}: {e}")));
        let prompt = tpl.render(&[
            ChatMessage::new("system", "Answer only with JSON."),
            ChatMessage::new("user", question),
        ]);
        let samplings = [
            Sampling::greedy(),
            Sampling {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                seed: i as u64,
                logit_bias: Vec::new(),
                penalties: Default::default(),
            },
            Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed: 100 + i as u64,
                logit_bias: Vec::new(),
                penalties: Default::default(),
            },
        ];
        let gens = generate_per_sampling(
            &mut cpu,
            &tok,
            &trie,
            &g,
            &tok.encode(&prompt, true),
            schema,
            &samplings,
        );
        for (k, out) in gens.iter().enumerate() {
            assert_eq!(
                out.finish,
                FinishReason::EndOfSequence,
                "{schema} sampling {k}: {:?}",
                out.text
            );
            let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| {
                panic!("{schema} sampling {k}: {:?} does not parse: {e}", out.text)
            });
            assert!(
                validates(&v, schema, schema),
                "{schema} sampling {k}: {v} does not validate"
            );
        }
    }
}

/// Inside a plain string the mask comes from the tokens' lengths (plus the automaton for the
/// few tokens holding a quote, a backslash or a cut character) instead of a trie walk; on the
/// real vocabulary it equals the walk at every kind of string position.
#[test]
fn the_string_mask_shortcut_equals_the_trie_walk_on_the_real_vocabulary() {
    use sandgraph_inference::constrain::Matcher;
    let model = LlamaModel::load(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let trie = TokenTrie::new(&tok);
    let schema = json!({"type": "object", "properties": {
        "short": {"type": "string", "minLength": 2, "maxLength": 6},
        "free": {"type": "string"},
        "tail": {"type": "array", "items": {"type": "string", "maxLength": 40}},
    }, "required": ["short", "free", "tail"]});
    let g = Arc::new(Grammar::compile(&schema).unwrap());
    // Properties come in alphabetical order here (no written order is given).
    let prefixes = [
        r#"{"free":""#,
        r#"{"free":"long text with \" an escape and ünïcode "#,
        r#"{"free":"x","short":""#,
        r#"{"free":"x","short":"a"#,
        r#"{"free":"x","short":"abcde"#,
        r#"{"free":"x","short":"abcdef"#,
        r#"{"free":"x","short":"é"#,
        r#"{"free":"x","short":"ab","tail":[""#,
        r#"{"free":"x","short":"ab","tail":["0123456789012345678901234567890123456"#,
    ];
    for p in prefixes {
        let mut m = Matcher::new(g.clone());
        assert!(m.advance_all(p.as_bytes()), "{p}");
        assert!(
            m.plain_string_room().is_some(),
            "{p} is inside a plain string: {:?}",
            m.state_key(0)
        );
        let fast = trie.mask(&m);
        let walk = trie.walk_mask(&m);
        let differ: Vec<u32> = (0..fast.len() as u32)
            .filter(|&i| fast[i as usize] != walk[i as usize])
            .collect();
        assert!(
            differ.is_empty(),
            "{p}: {} tokens differ, e.g. {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
        assert!(fast.iter().any(|&a| a), "{p}: something is allowed");
        // Near the token budget too: only tokens after which the rest still fits.
        let close = m.min_close_bytes();
        for left in [close + 1, close + 2, close + 5, close + 40] {
            let fast = trie.mask_within(&m, left);
            let walk = trie.walk_mask_within(&m, left);
            assert!(fast == walk, "{p}: budget {left}: the masks differ");
        }
    }
}
