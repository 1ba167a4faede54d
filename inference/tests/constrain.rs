//! Constrained decoding: schema compilation errors, the byte automaton against known
//! documents, and random schemas × seeds on the tiny models: every reached state allows a
//! token, and every finished document parses and validates against its schema.

use std::sync::Arc;

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::constrain::{Constraint, Grammar, Matcher, SchemaError, TokenTrie};
use sandgraph_inference::generate::{
    CancelToken, FinishReason, Request, Rng, Sampling, generate_constrained,
};
use sandgraph_inference::gguf::{GgmlType, GgufFile};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};
use sandgraph_inference::tokenizer::Tokenizer;
use serde_json::{Value, json};

mod constrain_support;
use constrain_support::{generate_per_sampling, generate_under, max_bytes, seeds, validates};

fn matcher(schema: &Value) -> Matcher {
    Matcher::new(Arc::new(Grammar::compile(schema).unwrap()))
}

fn accepts_doc(schema: &Value, doc: &str) -> bool {
    let mut m = matcher(schema);
    m.advance_all(doc.as_bytes()) && m.is_complete()
}

#[test]
fn unsupported_keywords_are_named() {
    let e = Grammar::compile(&json!({"type": "array", "uniqueItems": true})).unwrap_err();
    assert_eq!(
        e,
        SchemaError::Unsupported {
            path: "#".into(),
            keyword: "uniqueItems".into()
        }
    );
    assert!(e.to_string().contains("'uniqueItems'"), "{e}");
    let e = Grammar::compile(
        &json!({"type": "object", "properties": {"a": {"type": "integer", "not": {"const": 3}}}}),
    )
    .unwrap_err();
    assert_eq!(
        e,
        SchemaError::Unsupported {
            path: "#/properties/a".into(),
            keyword: "not".into()
        }
    );
    let e = Grammar::compile(
        &json!({"type": "object", "properties": {}, "additionalProperties": true}),
    )
    .unwrap_err();
    assert!(
        matches!(e, SchemaError::Unsupported { keyword, .. } if keyword == "additionalProperties")
    );
}

#[test]
fn invalid_schemas_say_what_is_wrong() {
    let cases = [
        (json!({"enum": []}), "'enum' is empty"),
        (
            json!({"type": "string", "minLength": 5, "maxLength": 2}),
            "minLength 5 > maxLength 2",
        ),
        (
            json!({"type": "array", "minItems": 3, "maxItems": 1}),
            "minItems 3 > maxItems 1",
        ),
        (
            json!({"type": "object", "properties": {"a": true}, "required": ["b"]}),
            "'required' names 'b'",
        ),
        (json!({"type": "date"}), "unknown type 'date'"),
        (json!({"$ref": "#/$defs/missing"}), "does not name an entry"),
        (
            json!({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}),
            "is recursive",
        ),
        (json!({"anyOf": []}), "'anyOf' must be a non-empty array"),
        (json!(false), "matches nothing"),
        (json!(3), "must be an object or a boolean"),
    ];
    for (schema, want) in cases {
        let e = Grammar::compile(&schema).unwrap_err().to_string();
        assert!(e.contains(want), "{schema}: got '{e}', want '{want}'");
    }
}

#[test]
fn the_automaton_accepts_valid_and_rejects_invalid_documents() {
    let s = json!({
        "type": "object",
        "properties": {
            "age": {"type": "integer"},
            "name": {"type": "string", "maxLength": 3},
            "tags": {"type": "array", "items": {"enum": ["a", "bc", 1, 12]}, "minItems": 1, "maxItems": 2}
        },
        "required": ["name", "tags"]
    });
    for ok in [
        r#"{"age":-12,"name":"Bob","tags":["a"]}"#,
        r#"{"name":"\u00e9\n","tags":[1,12]}"#,
        r#"{"name":"","tags":[12]}"#,
        r#"{"name":"é€","tags":["bc"]}"#,
    ] {
        assert!(accepts_doc(&s, ok), "{ok}");
    }
    for bad in [
        r#"{"name":"Bobby","tags":["a"]}"#,     // too long
        r#"{"tags":["a"],"name":"B"}"#,         // order
        r#"{"age":1.5,"name":"B","tags":[1]}"#, // not an integer
        r#"{"name":"B","tags":[]}"#,            // minItems
        r#"{"name":"B","tags":[1,1,1]}"#,       // maxItems
        r#"{"name":"B","tags":[3]}"#,           // enum
        r#"{"name":"B"}"#,                      // required
        r#"{"name":"B","tags":[1],"x":1}"#,     // additional
        r#"{ "name":"B","tags":[1]}"#,          // whitespace
        r#"{"name":"\ud800","tags":[1]}"#,      // lone surrogate
        "{\"name\":\"\u{1}\",\"tags\":[1]}",    // control char
    ] {
        assert!(!accepts_doc(&s, bad), "{bad}");
    }
    // Invalid UTF-8 never gets in.
    let mut m = matcher(&json!({"type": "string"}));
    assert!(m.advance(b'"'));
    assert!(!m.advance(0xc0));
    assert!(!m.accepts(&[0xe0, 0x80]));
    assert!(!m.accepts(&[0xed, 0xa0]));
    // Top-level numbers and enums that may end or go on.
    assert!(accepts_doc(&json!({"type": "number"}), "-0.5e+10"));
    assert!(!accepts_doc(&json!({"type": "number"}), "01"));
    assert!(accepts_doc(&json!({"enum": [1, 12]}), "1"));
    assert!(accepts_doc(&json!({"enum": [1, 12]}), "12"));
    assert!(accepts_doc(
        &json!({"anyOf": [{"type": "null"}, {"type": "boolean"}]}),
        "false"
    ));
    assert!(accepts_doc(
        &json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}]}),
        r#"{"a":"x"}"#
    ));
    let defs = json!({"$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "type": "array", "items": {"$ref": "#/$defs/p"}});
    assert!(accepts_doc(&defs, r#"[{"x":1},{"x":2.5}]"#));
    let any = Grammar::json_object();
    let mut m = Matcher::new(Arc::new(any));
    assert!(m.advance_all(br#"{"a":[1,{"b":null}],"c":"d","e":true}"#) && m.is_complete());
    assert!(!Matcher::new(Arc::new(Grammar::json_object())).accepts(b"[1]"));
}

// ---- random bounded schemas ----

fn random_schema(rng: &mut Rng, depth: u32) -> Value {
    let pick = rng.next_u64() % if depth == 0 { 7 } else { 10 };
    let small = |rng: &mut Rng, n: u64| rng.next_u64() % n;
    match pick {
        0 => {
            let min = small(rng, 3);
            json!({"type": "string", "minLength": min, "maxLength": min + small(rng, 6)})
        }
        1 => json!({"type": "integer"}),
        2 => json!({"type": "number"}),
        3 => json!({"type": "boolean"}),
        4 => json!({"type": "null"}),
        5 => json!({"enum": ["red", "green", "gr", 1, 12, null, {"a": [true]}]}),
        6 => json!({"const": "fixed"}),
        7 => {
            let min = small(rng, 2);
            json!({"type": "array", "items": random_schema(rng, depth - 1),
                   "minItems": min, "maxItems": min + small(rng, 3)})
        }
        8 => {
            let mut props = serde_json::Map::new();
            let mut req = Vec::new();
            for i in 0..1 + small(rng, 4) {
                let name = ["id", "i", "name", "na\"me", "x_1", "é"]
                    [(i as usize + small(rng, 6) as usize) % 6];
                props.insert(name.into(), random_schema(rng, depth - 1));
                if small(rng, 2).is_multiple_of(2) {
                    req.push(name);
                }
            }
            req.dedup();
            let req: Vec<&str> = req.into_iter().filter(|r| props.contains_key(*r)).collect();
            json!({"type": "object", "properties": props, "required": req, "additionalProperties": false})
        }
        _ => json!({"anyOf": [random_schema(rng, depth - 1), random_schema(rng, depth - 1)]}),
    }
}

fn tiny() -> (LlamaModel, Tokenizer) {
    let bytes = tiny_model_bytes(&TinySpec::new(5, GgmlType::Q8_0));
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes.clone()).unwrap()).unwrap();
    let model = LlamaModel::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    (model, tok)
}

#[test]
fn random_walks_over_the_mask_never_dead_end_and_always_validate() {
    let (_, tok) = tiny();
    let trie = Arc::new(TokenTrie::new(&tok));
    let eos = tok.eos.unwrap();
    let mut rng = Rng::new(99);
    for case in 0..150 {
        let schema = random_schema(&mut rng, 3);
        let g = Arc::new(Grammar::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}")));
        for seed in 0..3u64 {
            let mut walk = Rng::new(case * 10 + seed);
            let mut c = Constraint::new(g.clone(), trie.clone());
            let mut out = Vec::new();
            loop {
                let mask = c.mask();
                let allowed: Vec<u32> = (0..mask.len() as u32)
                    .filter(|&t| mask[t as usize])
                    .collect();
                assert!(
                    !allowed.is_empty(),
                    "{schema}: dead end after {:?}",
                    String::from_utf8_lossy(&out)
                );
                for &t in allowed.iter().take(50) {
                    assert!(c.allows(t), "mask and allows disagree on {t}");
                }
                // Prefer ending half the time once complete, so documents stay short.
                let t = if mask[eos as usize] && walk.next_u64().is_multiple_of(2) {
                    eos
                } else {
                    allowed[(walk.next_u64() % allowed.len() as u64) as usize]
                };
                assert!(c.accept(t));
                if t == eos {
                    break;
                }
                out.extend_from_slice(tok.token_bytes(t));
                assert!(
                    out.len() <= max_bytes(&schema, &schema),
                    "{schema}: overran {}",
                    String::from_utf8_lossy(&out)
                );
            }
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "{schema}: {} does not parse: {e}",
                    String::from_utf8_lossy(&out)
                )
            });
            assert!(
                validates(&v, &schema, &schema),
                "{schema}: {v} does not validate"
            );
        }
    }
}

#[test]
fn tiny_model_generation_under_random_schemas_parses_and_validates() {
    let (model, tok) = tiny();
    let trie = Arc::new(TokenTrie::new(&tok));
    let mut cpu = CpuBackend::with_threads(&model, 4, 512, 2).unwrap();
    let mut rng = Rng::new(7);
    for case in 0..24u64 {
        let schema = random_schema(&mut rng, 2);
        let g = Arc::new(Grammar::compile(&schema).unwrap());
        let samplings = [
            Sampling::greedy(),
            Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed: case,
                logit_bias: Vec::new(),
                penalties: Default::default(),
            },
            Sampling {
                temperature: 0.8,
                top_k: 5,
                top_p: 0.9,
                seed: case + 100,
                logit_bias: Vec::new(),
                penalties: Default::default(),
            },
            Sampling {
                temperature: 1.5,
                top_k: 40,
                top_p: 1.0,
                seed: case + 200,
                logit_bias: Vec::new(),
                penalties: Default::default(),
            },
        ];
        let gens = generate_per_sampling(
            &mut cpu,
            &tok,
            &trie,
            &g,
            &tok.encode("the answer in json:", true),
            &schema,
            &samplings,
        );
        for (k, gen_) in gens.iter().enumerate() {
            assert_eq!(
                gen_.finish,
                FinishReason::EndOfSequence,
                "{schema} sampling {k}: {:?}",
                gen_.text
            );
            let v: Value = serde_json::from_str(&gen_.text)
                .unwrap_or_else(|e| panic!("{schema}: {:?} does not parse: {e}", gen_.text));
            assert!(
                validates(&v, &schema, &schema),
                "{schema}: {v} does not validate"
            );
        }
    }
}

#[test]
fn a_mismatched_constraint_list_is_refused() {
    let (model, tok) = tiny();
    let mut cpu = CpuBackend::with_threads(&model, 1, 64, 2).unwrap();
    let r = Request {
        prompt: tok.encode("hi", true),
        max_tokens: 2,
        sampling: Sampling::greedy(),
        stop: vec![],
    };
    let e = generate_constrained(
        &mut cpu,
        &tok,
        &[r],
        &mut [],
        &CancelToken::new(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("0 constraints given for 1 requests"),
        "{e}"
    );
}

#[test]
fn any_json_object_walks_never_dead_end() {
    let (_, tok) = tiny();
    let trie = Arc::new(TokenTrie::new(&tok));
    let eos = tok.eos.unwrap();
    let g = Arc::new(Grammar::json_object());
    let mut finished = 0;
    for seed in 0..60u64 {
        let mut walk = Rng::new(seed);
        let mut c = Constraint::new(g.clone(), trie.clone());
        let mut out = Vec::new();
        for _ in 0..300 {
            let mask = c.mask();
            let allowed: Vec<u32> = (0..mask.len() as u32)
                .filter(|&t| mask[t as usize])
                .collect();
            assert!(
                !allowed.is_empty(),
                "dead end after {:?}",
                String::from_utf8_lossy(&out)
            );
            let t = if mask[eos as usize] {
                eos
            } else {
                allowed[(walk.next_u64() % allowed.len() as u64) as usize]
            };
            assert!(c.accept(t));
            if t == eos {
                let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                    panic!("{} does not parse: {e}", String::from_utf8_lossy(&out))
                });
                assert!(v.is_object(), "{v}");
                finished += 1;
                break;
            }
            out.extend_from_slice(tok.token_bytes(t));
        }
    }
    assert!(finished > 0, "no walk closed its object within 300 tokens");
}

/// Follows, from `m`, bytes that each lower the closing cost by one; returns the bytes.
fn shortest_close(m: &Matcher, what: &dyn Fn() -> String) -> Vec<u8> {
    let mut m = m.clone();
    let mut out = Vec::new();
    while m.min_close_bytes() > 0 {
        let cost = m.min_close_bytes();
        let b = (0..=255u8)
            .find(|&b| {
                let mut n = m.clone();
                n.advance(b) && n.min_close_bytes() == cost - 1
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: no byte lowers the closing cost {cost} after closing with {:?}",
                    what(),
                    String::from_utf8_lossy(&out)
                )
            });
        assert!(m.advance(b));
        out.push(b);
    }
    out
}

#[test]
fn the_closing_cost_is_a_real_shortest_path_from_every_state() {
    let mut rng = Rng::new(2024);
    for case in 0..150 {
        let schema = random_schema(&mut rng, 3);
        let start = matcher(&schema);
        for seed in 0..4u64 {
            let mut walk = Rng::new(case * 10 + seed);
            let mut m = start.clone();
            let mut text = Vec::new();
            let steps = walk.next_u64() % 30;
            for _ in 0..steps {
                let ok: Vec<u8> = (0..=255u8).filter(|&b| m.accepts(&[b])).collect();
                if ok.is_empty() {
                    break;
                }
                let b = ok[(walk.next_u64() % ok.len() as u64) as usize];
                assert!(m.advance(b));
                text.push(b);
            }
            let cost = m.min_close_bytes();
            assert_eq!(
                cost == 0,
                m.is_complete(),
                "{schema} after {:?}",
                String::from_utf8_lossy(&text)
            );
            let close = shortest_close(&m, &|| {
                format!("{schema} after {:?}", String::from_utf8_lossy(&text))
            });
            assert_eq!(close.len(), cost);
            text.extend_from_slice(&close);
            let v: Value = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{schema}: {:?}: {e}", String::from_utf8_lossy(&text)));
            assert!(validates(&v, &schema, &schema), "{schema}: {v}");
        }
    }
}

#[test]
fn a_small_token_budget_still_closes_documents_with_long_strings() {
    let (model, tok) = tiny();
    let trie = Arc::new(TokenTrie::new(&tok));
    let mut cpu = CpuBackend::with_threads(&model, 4, 512, 2).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "body": {"type": "string", "minLength": 3, "maxLength": 2000},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "ok": {"type": "boolean"},
        },
        "required": ["title", "body", "tags", "ok"],
        "additionalProperties": false,
    });
    let g = Arc::new(Grammar::compile(&schema).unwrap());
    let shortest = Matcher::new(g.clone()).min_close_bytes();
    // {"body":"...","ok":true,"tags":[""],"title":""}
    assert_eq!(
        shortest,
        r#"{"body":"aaa","ok":true,"tags":[""],"title":""}"#.len()
    );
    let prompt = tok.encode("the answer in json:", true);
    for max_tokens in [shortest, shortest + 1, shortest + 7, shortest + 30] {
        let gens = generate_under(&mut cpu, &tok, &trie, &g, &prompt, max_tokens, &seeds(4));
        for g in &gens {
            let v: Value = serde_json::from_str(&g.text)
                .unwrap_or_else(|e| panic!("max_tokens {max_tokens}: {:?} was cut: {e}", g.text));
            assert!(validates(&v, &schema, &schema), "{v}");
            assert!(g.tokens.len() <= max_tokens);
        }
        // The budget matters: with room to spare the strings are not all empty.
        if max_tokens == shortest + 30 {
            assert!(gens.iter().any(|g| g.text.len() > shortest), "{gens:?}");
        }
    }
}

#[test]
fn cached_masks_inside_long_strings_equal_fresh_trie_walks() {
    let (_, tok) = tiny();
    let trie = Arc::new(TokenTrie::new(&tok));
    let schema = json!({
        "type": "object",
        "properties": {
            "a": {"type": "string", "minLength": 2, "maxLength": 40},
            "b": {"type": "string"},
            "c": {"type": "array", "items": {"type": "string", "maxLength": 3}},
        },
        "required": ["a", "b", "c"],
        "additionalProperties": false,
    });
    let g = Arc::new(Grammar::compile(&schema).unwrap());
    let eos = tok.eos.unwrap();
    for seed in 0..6u64 {
        let mut walk = Rng::new(seed);
        let mut c = Constraint::new(g.clone(), trie.clone());
        let mut out = Vec::new();
        for _ in 0..400 {
            let mask = c.mask();
            assert_eq!(
                mask,
                trie.mask(c.matcher()),
                "after {:?}",
                String::from_utf8_lossy(&out)
            );
            let allowed: Vec<u32> = (0..mask.len() as u32)
                .filter(|&t| mask[t as usize] && t != eos)
                .collect();
            if allowed.is_empty() {
                break;
            }
            // Mostly one-byte tokens, so the walk spends its time inside the strings.
            let short: Vec<u32> = allowed
                .iter()
                .copied()
                .filter(|&t| tok.token_bytes(t).len() == 1)
                .collect();
            let from = if short.is_empty() || walk.next_u64().is_multiple_of(8) {
                &allowed
            } else {
                &short
            };
            let t = from[(walk.next_u64() % from.len() as u64) as usize];
            assert!(c.accept(t));
            out.extend_from_slice(tok.token_bytes(t));
        }
    }
}
