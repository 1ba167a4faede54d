//! Generation on seeded tiny models: batching, sampling, stop sequences, limits, cancellation.

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::generate::{
    CancelToken, FinishReason, GenerateError, Generation, Request, Sampling, generate,
};
use sandgraph_inference::gguf::{GgmlType, GgufFile};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};
use sandgraph_inference::tokenizer::Tokenizer;

fn setup() -> (LlamaModel, Tokenizer) {
    let bytes = tiny_model_bytes(&TinySpec::new(21, GgmlType::Q8_0));
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes.clone()).unwrap()).unwrap();
    let model = LlamaModel::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    (model, tok)
}

fn req(tok: &Tokenizer, prompt: &str, max_tokens: usize, sampling: Sampling) -> Request {
    Request {
        prompt: tok.encode(prompt, true),
        max_tokens,
        sampling,
        stop: vec![],
    }
}

fn run(model: &LlamaModel, tok: &Tokenizer, reqs: &[Request]) -> Vec<Generation> {
    let mut cpu = CpuBackend::with_threads(model, 4, 128, 2).unwrap();
    generate(&mut cpu, tok, reqs, &CancelToken::new(), &mut |_, _| {})
        .unwrap()
        .0
}

#[test]
fn a_batch_decodes_each_sequence_as_it_would_alone() {
    let (model, tok) = setup();
    let prompts = ["the cat sat", "hello world! hello", "what is the capital"];
    let reqs: Vec<Request> = prompts
        .iter()
        .map(|p| req(&tok, p, 12, Sampling::greedy()))
        .collect();
    let together = run(&model, &tok, &reqs);
    for (i, r) in reqs.iter().enumerate() {
        let alone = run(&model, &tok, std::slice::from_ref(r));
        assert_eq!(together[i].tokens, alone[0].tokens, "sequence {i}");
        assert_eq!(together[i].finish, alone[0].finish);
    }
    assert!(
        together.iter().any(|g| g.tokens.len() > 1),
        "tiny model should generate something"
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let (model, tok) = setup();
    let s = |seed| Sampling {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        seed,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let a = run(
        &model,
        &tok,
        &[req(&tok, "the", 16, s(1)), req(&tok, "the", 16, s(2))],
    );
    let b = run(&model, &tok, &[req(&tok, "the", 16, s(1))]);
    assert_eq!(a[0].tokens, b[0].tokens);
    assert_ne!(
        a[0].tokens, a[1].tokens,
        "different seeds should differ at temperature 1.5"
    );
}

#[test]
fn max_tokens_and_stop_sequences_end_generation() {
    let (model, tok) = setup();
    let hot = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 5,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let long = run(&model, &tok, &[req(&tok, "the", 20, hot.clone())]);
    assert_eq!(long[0].finish, FinishReason::MaxTokens, "{:?}", long[0]);
    assert_eq!(long[0].tokens.len(), 20);
    // Stop at a piece of the text generated without a stop sequence.
    let text = long[0].text.clone();
    let mid = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[mid..].chars().take(2).collect();
    let want = &text[..text.find(&stop).unwrap()];
    let mut r = req(&tok, "the", 20, hot);
    r.stop = vec![stop.clone()];
    let mut cpu = CpuBackend::with_threads(&model, 1, 128, 2).unwrap();
    let mut streamed = String::new();
    let (out, _) = generate(&mut cpu, &tok, &[r], &CancelToken::new(), &mut |_, s| {
        streamed.push_str(s)
    })
    .unwrap();
    assert_eq!(out[0].finish, FinishReason::StopSequence);
    assert_eq!(out[0].text, want, "stop {stop:?} in {text:?}");
    assert_eq!(
        streamed, want,
        "streamed text must not include the stop sequence"
    );
}

#[test]
fn cancellation_stops_every_sequence() {
    let (model, tok) = setup();
    let hot = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 5,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let reqs = vec![req(&tok, "the", 50, hot.clone()), req(&tok, "a", 50, hot)];
    let cancel = CancelToken::new();
    let mut cpu = CpuBackend::with_threads(&model, 2, 128, 2).unwrap();
    let mut pieces = 0;
    let c = cancel.clone();
    let (out, _) = generate(&mut cpu, &tok, &reqs, &cancel, &mut |_, _| {
        pieces += 1;
        if pieces == 3 {
            c.cancel();
        }
    })
    .unwrap();
    for g in &out {
        assert!(g.tokens.len() < 50);
        assert!(
            matches!(
                g.finish,
                FinishReason::Cancelled | FinishReason::EndOfSequence
            ),
            "{g:?}"
        );
    }
    assert!(out.iter().any(|g| g.finish == FinishReason::Cancelled));
}

#[test]
fn bad_requests_are_named() {
    let (model, tok) = setup();
    let mut cpu = CpuBackend::with_threads(&model, 1, 16, 1).unwrap();
    let r = req(&tok, "the", 4, Sampling::greedy());
    let e = generate(
        &mut cpu,
        &tok,
        &[r.clone(), r.clone()],
        &CancelToken::new(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            GenerateError::TooManySequences {
                requests: 2,
                slots: 1
            }
        ),
        "{e}"
    );
    let empty = Request {
        prompt: vec![],
        ..r.clone()
    };
    let e = generate(
        &mut cpu,
        &tok,
        &[empty],
        &CancelToken::new(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, GenerateError::EmptyPrompt { index: 0 }), "{e}");
    let long = Request {
        prompt: vec![5; 16],
        ..r
    };
    let e = generate(&mut cpu, &tok, &[long], &CancelToken::new(), &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(
            e,
            GenerateError::PromptTooLong {
                len: 16,
                max_context: 16,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_full_context_ends_generation() {
    let (model, tok) = setup();
    let mut cpu = CpuBackend::with_threads(&model, 1, 8, 1).unwrap();
    let hot = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 5,
        logit_bias: Vec::new(),
        penalties: Default::default(),
    };
    let r = Request {
        prompt: vec![10, 11, 12, 13, 14, 15],
        max_tokens: 100,
        sampling: hot,
        stop: vec![],
    };
    let (out, _) = generate(&mut cpu, &tok, &[r], &CancelToken::new(), &mut |_, _| {}).unwrap();
    assert!(
        matches!(
            out[0].finish,
            FinishReason::ContextFull | FinishReason::EndOfSequence
        ),
        "{:?}",
        out[0]
    );
    assert!(out[0].tokens.len() <= 3);
}
