//! Seeded tiny llama models as GGUF images, so tests of every module and backend can run a
//! real forward pass without downloading anything. Same spec + seed => identical bytes.

use crate::backend::{Backend, BackendError, SeqChunk};
use crate::gguf::{GgmlType, GgufWriter, Value, ValueType, WriterTensor, quantize_row};
use crate::model::{LlamaModel, ModelError};
use crate::tokenizer::gpt2_byte_chars;

/// Shape and weight type of a generated model.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub seed: u64,
    /// Type of the matrices (embedding included); norms are always F32.
    pub weight_type: GgmlType,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub context_length: usize,
    /// Share the token embedding as output layer (no `output.weight`).
    pub tied: bool,
    /// BPE merges learned from a fixed corpus; vocab = 3 specials + 256 bytes + merges.
    pub n_merges: usize,
}

impl TinySpec {
    pub fn new(seed: u64, weight_type: GgmlType) -> TinySpec {
        TinySpec {
            seed,
            weight_type,
            n_layers: 2,
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 128,
            context_length: 256,
            tied: true,
            n_merges: 45,
        }
    }
}

/// SplitMix64: tiny, seeded, good enough for test weights.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub const TINY_CORPUS: &str = "the cat sat on the mat. the dog ate the bone. \
    in the morning the sun rises over the hills and the birds sing. \
    hello world! hello there, and hello again. what is the capital of france? \
    the capital of france is paris.";

/// Learns `n` merges over the GPT-2 byte alphabet from `corpus` (split at spaces, keeping the
/// space with the following word like the GPT-2 pre-tokenizer does).
pub fn learn_merges(corpus: &str, n: usize) -> Vec<(String, String)> {
    let chars = gpt2_byte_chars();
    let mut words: Vec<Vec<String>> = Vec::new();
    let mut cur = String::new();
    for ch in corpus.chars() {
        if ch == ' ' && !cur.is_empty() {
            words.push(cur.bytes().map(|b| chars[b as usize].to_string()).collect());
            cur.clear();
        }
        cur.push(ch);
    }
    words.push(cur.bytes().map(|b| chars[b as usize].to_string()).collect());
    let mut merges = Vec::new();
    for _ in 0..n {
        let mut counts: Vec<((String, String), usize)> = Vec::new();
        for w in &words {
            for p in w.windows(2) {
                let key = (p[0].clone(), p[1].clone());
                match counts.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((key, 1)),
                }
            }
        }
        // Most frequent pair; first seen wins ties, so the result is deterministic.
        let Some(best) = counts
            .iter()
            .enumerate()
            .max_by_key(|(i, (_, c))| (*c, std::cmp::Reverse(*i)))
            .map(|(_, (k, _))| k.clone())
        else {
            break;
        };
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == best.0 && w[i + 1] == best.1 {
                    let right = w.remove(i + 1);
                    w[i].push_str(&right);
                }
                i += 1;
            }
        }
        merges.push(best);
    }
    merges
}

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Tokenizer metadata of the tiny models: specials 0..3, then bytes, then merges.
pub fn tiny_tokenizer_metadata(w: &mut GgufWriter, n_merges: usize) {
    let chars = gpt2_byte_chars();
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    let mut types = vec![3i32, 3, 3];
    for c in chars {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = learn_merges(TINY_CORPUS, n_merges);
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    w.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.meta("tokenizer.ggml.pre", Value::String("smollm".into()));
    w.meta("tokenizer.ggml.tokens", strings(tokens));
    w.meta(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    w.meta(
        "tokenizer.ggml.merges",
        strings(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
    );
    w.meta("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.meta("tokenizer.ggml.eos_token_id", Value::U32(2));
    w.meta(
        "tokenizer.chat_template",
        Value::String(CHATML_TEMPLATE.into()),
    );
}

/// The vocabulary size of a tiny model with `n_merges` merges.
pub fn tiny_vocab_size(n_merges: usize) -> usize {
    3 + 256 + learn_merges(TINY_CORPUS, n_merges).len()
}

/// The GGUF image of a tiny model.
pub fn tiny_model_bytes(spec: &TinySpec) -> Vec<u8> {
    let mut rng = TestRng::new(spec.seed);
    let vocab = tiny_vocab_size(spec.n_merges);
    let head_dim = spec.dim / spec.n_heads;
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()));
    w.meta(
        "general.name",
        Value::String(format!("tiny-{}-{}", spec.weight_type, spec.seed)),
    );
    w.meta("llama.block_count", Value::U32(spec.n_layers as u32));
    w.meta("llama.embedding_length", Value::U32(spec.dim as u32));
    w.meta("llama.feed_forward_length", Value::U32(spec.ffn_dim as u32));
    w.meta(
        "llama.attention.head_count",
        Value::U32(spec.n_heads as u32),
    );
    w.meta(
        "llama.attention.head_count_kv",
        Value::U32(spec.n_kv_heads as u32),
    );
    w.meta(
        "llama.context_length",
        Value::U32(spec.context_length as u32),
    );
    w.meta("llama.rope.freq_base", Value::F32(10_000.0));
    w.meta("llama.rope.dimension_count", Value::U32(head_dim as u32));
    w.meta("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    tiny_tokenizer_metadata(&mut w, spec.n_merges);

    let ty = spec.weight_type;
    let mut matrix = |w: &mut GgufWriter, name: String, cols: usize, rows: usize, scale: f32| {
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32() * scale).collect();
        let data = quantize_row(ty, &vals).expect("tiny dims are block multiples");
        w.tensor(WriterTensor::new(
            name,
            vec![cols as u64, rows as u64],
            ty,
            data,
        ));
    };
    let (d, f, q, kv) = (spec.dim, spec.ffn_dim, spec.dim, spec.n_kv_heads * head_dim);
    let s = |n: usize| 1.7 / (n as f32).sqrt();
    matrix(&mut w, "token_embd.weight".into(), d, vocab, 1.0);
    for l in 0..spec.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        matrix(&mut w, n("attn_q"), d, q, s(d));
        matrix(&mut w, n("attn_k"), d, kv, s(d));
        matrix(&mut w, n("attn_v"), d, kv, s(d));
        matrix(&mut w, n("attn_output"), q, d, s(q));
        matrix(&mut w, n("ffn_gate"), d, f, s(d));
        matrix(&mut w, n("ffn_up"), d, f, s(d));
        matrix(&mut w, n("ffn_down"), f, d, s(f));
    }
    if !spec.tied {
        matrix(&mut w, "output.weight".into(), d, vocab, s(d));
    }
    let mut norm = |w: &mut GgufWriter, name: String| {
        let vals: Vec<f32> = (0..d).map(|_| 1.0 + 0.2 * rng.next_f32()).collect();
        let data = quantize_row(GgmlType::F32, &vals).expect("f32");
        w.tensor(WriterTensor::new(name, vec![d as u64], GgmlType::F32, data));
    };
    for l in 0..spec.n_layers {
        norm(&mut w, format!("blk.{l}.attn_norm.weight"));
        norm(&mut w, format!("blk.{l}.ffn_norm.weight"));
    }
    norm(&mut w, "output_norm.weight".into());
    w.to_bytes()
}

/// A tiny model loaded from memory.
pub fn tiny_model(spec: &TinySpec) -> Result<LlamaModel, ModelError> {
    LlamaModel::from_gguf(crate::gguf::GgufFile::from_bytes(tiny_model_bytes(spec))?)
}

/// Slot `dst` given slot `src`'s first positions by `copy_prefix` continues exactly as if it
/// had computed them itself; a copy that would open a gap is refused and changes nothing.
pub fn copied_prefix_continues_like_its_source(b: &mut dyn Backend) {
    let prompt = [10u32, 11, 12, 13, 14, 15];
    let tail = [40u32, 41];
    // What slot 0 yields computing everything itself.
    b.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &prompt,
    }])
    .unwrap();
    b.forward(&[SeqChunk {
        slot: 0,
        start_pos: prompt.len(),
        tokens: &tail,
    }])
    .unwrap();
    let want = b.logits().unwrap().remove(0);
    // Slot 1 holds other tokens; slot 2 already holds the first three of the prompt.
    b.forward(&[
        SeqChunk {
            slot: 1,
            start_pos: 0,
            tokens: &[90, 91, 92, 93],
        },
        SeqChunk {
            slot: 2,
            start_pos: 0,
            tokens: &prompt[..3],
        },
    ])
    .unwrap();
    b.copy_prefix(0, 1, 0, prompt.len()).unwrap();
    b.copy_prefix(0, 2, 3, prompt.len()).unwrap();
    let e = b.copy_prefix(0, 3, 2, 4).unwrap_err();
    assert!(matches!(e, BackendError::CopyRange { .. }), "{e}");
    let e = b.copy_prefix(1, 1, 0, 1).unwrap_err();
    assert!(matches!(e, BackendError::CopyToSelf { slot: 1 }), "{e}");
    // Both continue from the copied prefix, in one batch, to the very same logits.
    let batch: Vec<SeqChunk<'_>> = [1, 2]
        .into_iter()
        .map(|slot| SeqChunk {
            slot,
            start_pos: prompt.len(),
            tokens: &tail,
        })
        .collect();
    b.forward(&batch).unwrap();
    for (slot, row) in [1, 2].into_iter().zip(b.logits().unwrap()) {
        let d = row
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            d < 1e-4,
            "slot {slot}: max diff {d} from the source's own logits"
        );
    }
    // A slot may not continue past what the copy gave it.
    let e = b
        .forward(&[SeqChunk {
            slot: 3,
            start_pos: 1,
            tokens: &tail,
        }])
        .unwrap_err();
    assert!(matches!(e, BackendError::PositionGap { .. }), "{e}");
}
