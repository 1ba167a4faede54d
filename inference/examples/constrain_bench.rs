//! What constrained decoding costs on the real model (CPU backend): ms per generated token
//! unconstrained vs under a JSON constraint with greedy, top-k and whole-vocabulary sampling,
//! plus the time of one full-vocabulary mask at two automaton states, by trie walk and by
//! `mask()` (which inside a plain string uses the tokens' lengths instead of the walk).
//!
//! Usage: constrain_bench [MODEL.gguf]   (default: models/SmolLM2-135M-Instruct.Q4_1.gguf or
//! $SANDGRAPH_MODEL)

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::constrain::{Constraint, Grammar, TokenTrie};
use sandgraph_inference::generate::{CancelToken, Request, Sampling, generate_constrained};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SANDGRAPH_MODEL").ok())
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = LlamaModel::load(&path).with_context(|| format!("loading {path}"))?;
    let tok = Tokenizer::from_gguf(&model.file)?;
    let t = Instant::now();
    let trie = Arc::new(TokenTrie::new(&tok));
    println!("trie build: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let tpl = ChatTemplate::detect(tok.chat_template())?;
    let prompt = tok.encode(
        &tpl.render(&[
            ChatMessage::new("system", "Answer only with JSON."),
            ChatMessage::new("user", "Describe a person: name, city and a short bio."),
        ]),
        true,
    );
    let schema = serde_json::json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
        "bio": {"type": "string", "maxLength": 400}}, "required": ["name", "city", "bio"]});
    let g = Arc::new(Grammar::compile(&schema)?);
    let topk = Sampling {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 1,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let full = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let cases: [(&str, Sampling, bool); 6] = [
        ("greedy, unconstrained", Sampling::greedy(), false),
        ("greedy, schema", Sampling::greedy(), true),
        ("top-k 40, unconstrained", topk.clone(), false),
        ("top-k 40, schema", topk, true),
        ("whole vocab, unconstrained", full.clone(), false),
        ("whole vocab, schema (full mask/step)", full, true),
    ];
    println!("\n| case | tokens | ms/token | vs unconstrained |\n|---|---:|---:|---:|");
    let mut base = 0.0;
    for (name, s, constrained) in cases {
        let mut cpu = CpuBackend::new(&model, 1, 1024)?;
        let req = Request {
            prompt: prompt.clone(),
            max_tokens: 96,
            sampling: s,
            stop: vec![],
        };
        let mut cons = vec![constrained.then(|| Constraint::new(g.clone(), trie.clone()))];
        let (out, tm) = generate_constrained(
            &mut cpu,
            &tok,
            std::slice::from_ref(&req),
            &mut cons,
            &CancelToken::new(),
            &mut |_, _| {},
        )?;
        let per = tm.decode.as_secs_f64() * 1e3 / tm.generated_tokens.max(1) as f64;
        if !constrained {
            base = per;
        }
        println!(
            "| {name} | {} | {per:.2} | {:.2}x |",
            out[0].tokens.len(),
            per / base
        );
    }
    let c = Constraint::new(g.clone(), trie.clone());
    for (label, bytes) in [
        ("document start", &b""[..]),
        ("inside a string", &br#"{"bio":"He "#[..]),
    ] {
        let mut c2 = c.clone();
        for &b in bytes {
            let id = (0..tok.vocab_size() as u32)
                .find(|&t| tok.token_bytes(t) == [b] && c2.allows(t))
                .context("a single-byte token")?;
            c2.accept(id);
        }
        let n = 20;
        let t = Instant::now();
        let mut allowed = 0;
        for _ in 0..n {
            allowed = trie.walk_mask(c2.matcher()).iter().filter(|&&a| a).count();
        }
        let walk = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            assert_eq!(trie.mask(c2.matcher()).len(), tok.vocab_size());
        }
        println!(
            "full mask at {label}: trie walk {walk:.2} ms, mask() {:.2} ms ({allowed} of {} tokens allowed)",
            t.elapsed().as_secs_f64() * 1e3 / n as f64,
            tok.vocab_size()
        );
    }
    // Inside a long string the state key repeats from one character to the next, so the
    // constraint's mask after one more character is the cached one.
    let mut c2 = c.clone();
    for &b in br#"{"bio":"He "# {
        let id = (0..tok.vocab_size() as u32)
            .find(|&t| tok.token_bytes(t) == [b] && c2.allows(t))
            .context("a single-byte token")?;
        c2.accept(id);
    }
    c2.mask();
    let a = (0..tok.vocab_size() as u32)
        .find(|&t| tok.token_bytes(t) == b"a")
        .context("the token 'a'")?;
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let mut c3 = c2.clone();
        c3.accept(a);
        assert_eq!(c3.mask().len(), tok.vocab_size());
    }
    println!(
        "mask one character later in the same string (cached, clone + accept included): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    Ok(())
}
