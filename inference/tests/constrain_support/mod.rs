//! Shared by the constrained-decoding tests: an independent validator for the schema subset
//! (reads the schema text, not the compiled grammar), a byte bound for bounded schemas, and
//! constrained generation per sampling. Each test binary uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use sandgraph_inference::backend::Backend;
use sandgraph_inference::constrain::{Constraint, Grammar, TokenTrie};
use sandgraph_inference::generate::{
    CancelToken, Generation, Request, Sampling, generate_constrained,
};
use sandgraph_inference::tokenizer::Tokenizer;
use serde_json::{Value, json};

/// Generates once per sampling under `grammar`, with a token budget above the longest document
/// `schema` allows, so every run has to end by itself.
pub fn generate_per_sampling(
    backend: &mut dyn Backend,
    tok: &Tokenizer,
    trie: &Arc<TokenTrie>,
    grammar: &Arc<Grammar>,
    prompt: &[u32],
    schema: &Value,
    samplings: &[Sampling],
) -> Vec<Generation> {
    let max_tokens = max_bytes(schema, schema) + 1;
    generate_under(backend, tok, trie, grammar, prompt, max_tokens, samplings)
}

/// Generates once per sampling under `grammar`, at most `max_tokens` each, in one batch.
pub fn generate_under(
    backend: &mut dyn Backend,
    tok: &Tokenizer,
    trie: &Arc<TokenTrie>,
    grammar: &Arc<Grammar>,
    prompt: &[u32],
    max_tokens: usize,
    samplings: &[Sampling],
) -> Vec<Generation> {
    let reqs: Vec<Request> = samplings
        .iter()
        .map(|s| Request {
            prompt: prompt.to_vec(),
            max_tokens,
            sampling: s.clone(),
            stop: vec![],
        })
        .collect();
    let mut cons: Vec<Option<Constraint>> = reqs
        .iter()
        .map(|_| Some(Constraint::new(grammar.clone(), trie.clone())))
        .collect();
    let (gens, _) = generate_constrained(
        backend,
        tok,
        &reqs,
        &mut cons,
        &CancelToken::new(),
        &mut |_, _| {},
    )
    .unwrap();
    gens
}

/// Plain sampling at temperature 1 (no top-k/top-p cut) with seeds `0..n`.
pub fn seeds(n: u64) -> Vec<Sampling> {
    (0..n)
        .map(|seed| Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
            logit_bias: Vec::new(),
            penalties: Default::default(),
        })
        .collect()
}

fn resolve<'a>(s: &'a Value, root: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(&root["$defs"][r.trim_start_matches("#/$defs/")], root),
        None => s,
    }
}

pub fn validates(v: &Value, s: &Value, root: &Value) -> bool {
    let s = resolve(s, root);
    if s == &json!(true) {
        return true;
    }
    if let Some(c) = s.get("const") {
        return v == c;
    }
    if let Some(e) = s.get("enum") {
        return e.as_array().unwrap().contains(v);
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(alts) = s.get(k) {
            return alts
                .as_array()
                .unwrap()
                .iter()
                .any(|a| validates(v, a, root));
        }
    }
    let n = |k: &str| s.get(k).and_then(Value::as_u64);
    match s.get("type").and_then(Value::as_str) {
        Some("string") => v.as_str().is_some_and(|t| {
            let c = t.chars().count() as u64;
            n("minLength").is_none_or(|m| c >= m) && n("maxLength").is_none_or(|m| c <= m)
        }),
        Some("integer") => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("null") => v.is_null(),
        Some("array") => v.as_array().is_some_and(|a| {
            let c = a.len() as u64;
            n("minItems").is_none_or(|m| c >= m)
                && n("maxItems").is_none_or(|m| c <= m)
                && a.iter()
                    .all(|x| validates(x, s.get("items").unwrap_or(&json!(true)), root))
        }),
        Some("object") => v.as_object().is_some_and(|o| {
            let Some(props) = s.get("properties").and_then(Value::as_object) else {
                return true;
            };
            let req: Vec<&str> = s
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            req.iter().all(|r| o.contains_key(*r))
                && o.iter()
                    .all(|(k, x)| props.get(k).is_some_and(|p| validates(x, p, root)))
        }),
        _ => true,
    }
}

/// Most bytes a document of this (bounded) schema can take.
pub fn max_bytes(s: &Value, root: &Value) -> usize {
    let s = resolve(s, root);
    if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
        return alts.iter().map(|a| max_bytes(a, root)).max().unwrap();
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e.iter().map(|v| v.to_string().len()).max().unwrap();
    }
    if let Some(c) = s.get("const") {
        return c.to_string().len();
    }
    match s["type"].as_str().unwrap() {
        "string" => 2 + 6 * s["maxLength"].as_u64().unwrap() as usize,
        "integer" | "number" => 40,
        "boolean" | "null" => 5,
        "array" => {
            2 + s["maxItems"].as_u64().unwrap() as usize * (1 + max_bytes(&s["items"], root))
        }
        "object" => {
            2 + s["properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| k.len() + 5 + max_bytes(v, root))
                .sum::<usize>()
        }
        t => panic!("{t}"),
    }
}
