use super::*;
use crate::gguf::{GgmlType, GgufWriter, ValueType};
use crate::testutil::{TestRng, TinySpec, tiny_model_bytes, tiny_tokenizer_metadata};

fn tiny_tokenizer() -> Tokenizer {
    let f = GgufFile::from_bytes(tiny_model_bytes(&TinySpec::new(1, GgmlType::F32))).unwrap();
    Tokenizer::from_gguf(&f).unwrap()
}

#[test]
fn pretokenizer_follows_gpt2_pattern() {
    assert_eq!(
        bpe::split_for_test("Hello world's  end\n\nok 12 !?"),
        [
            "Hello", " world", "'s", " ", " end", "\n", "\n", "ok", " 12", " !?"
        ]
    );
    assert_eq!(bpe::split_for_test("a   "), ["a", "   "]);
    assert_eq!(bpe::split_for_test("x\ny"), ["x", "\n", "y"]);
}

#[test]
fn bpe_applies_learned_merges_and_digits_split() {
    let t = tiny_tokenizer();
    let ids = t.encode("the cat", false);
    // " the"/"the" are frequent in the corpus, so they merge to fewer tokens than bytes.
    assert!(ids.len() < "the cat".len(), "{ids:?}");
    assert_eq!(t.decode(&ids), b"the cat");
    // With the smollm pre-tokenizer every digit is its own piece.
    let ids = t.encode("123", false);
    assert_eq!(ids.len(), 3);
}

#[test]
fn special_tokens_match_only_when_allowed() {
    let t = tiny_tokenizer();
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", true);
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    let plain = t.encode("<|im_start|>", false);
    assert!(plain.len() > 1 && !plain.contains(&1));
    assert_eq!(t.decode(&ids), b"<|im_start|>user\nhi<|im_end|>");
    assert!(t.is_control(2));
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
}

#[test]
fn bpe_round_trips_random_utf8_and_invalid_bytes() {
    let t = tiny_tokenizer();
    let mut rng = TestRng::new(42);
    let alphabet = [
        'a', 'é', ' ', '\n', '7', '\'', '中', '🦀', '!', '\t', 'Z', '\u{2581}',
    ];
    for case in 0..300 {
        let mut bytes = Vec::new();
        for _ in 0..rng.below(40) {
            match rng.below(4) {
                0 => bytes.push(rng.next_u64() as u8),
                1 => bytes.extend_from_slice(b"<|im_end|>"),
                _ => {
                    let c = alphabet[rng.below(alphabet.len())];
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for allow in [false, true] {
            let ids = t.encode_bytes(&bytes, allow);
            assert_eq!(t.decode(&ids), bytes, "case {case} allow_special={allow}");
        }
    }
}

fn spm_tokenizer() -> Tokenizer {
    let mut w = GgufWriter::new();
    let mut texts: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    for b in 0..256 {
        texts.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (i, p) in [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w",
        "▁wo", "▁wor", "▁worl", "▁world", "or",
    ]
    .iter()
    .enumerate()
    {
        texts.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32) + p.chars().count() as f32 * 10.0);
    }
    w.meta("tokenizer.ggml.model", Value::String("llama".into()));
    w.meta(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            texts.into_iter().map(Value::String).collect(),
        ),
    );
    w.meta(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    w.meta(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
    );
    w.meta("tokenizer.ggml.unknown_token_id", Value::U32(0));
    w.meta("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.meta("tokenizer.ggml.eos_token_id", Value::U32(2));
    Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap()
}

#[test]
fn spm_merges_by_score_and_falls_back_to_bytes() {
    let t = spm_tokenizer();
    let ids = t.encode("hello world", false);
    let texts: Vec<&str> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
    assert_eq!(texts, ["▁hello", "▁world"]);
    let ids = t.encode("hé", false);
    let texts: Vec<&str> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
    // 'é' is not in the vocabulary: two byte tokens for its UTF-8 encoding.
    assert_eq!(texts, ["▁h", "<0xC3>", "<0xA9>"]);
    assert_eq!(t.decode(&ids), "hé".as_bytes());
    let ids = t.encode("</s>x", true);
    assert_eq!(ids[0], 2);
}

#[test]
fn spm_round_trips_random_bytes() {
    let t = spm_tokenizer();
    let mut rng = TestRng::new(7);
    for case in 0..200 {
        let len = rng.below(30);
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(3) {
                0 => b' ',
                1 => b"helowrd"[rng.below(7)],
                _ => rng.next_u64() as u8,
            })
            .collect();
        // SentencePiece cannot tell a leading space it added from one in the text.
        if bytes.first() == Some(&b' ') {
            bytes[0] = b'x';
        }
        let ids = t.encode_bytes(&bytes, false);
        assert_eq!(t.decode(&ids), bytes, "case {case}");
    }
}

#[test]
fn bad_tokenizer_metadata_is_named() {
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", Value::String("wordpiece".into()));
    w.meta(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, vec![Value::String("a".into())]),
    );
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap_err();
    assert!(
        matches!(e, TokenizerError::UnsupportedModel(ref m) if m == "wordpiece"),
        "{e}"
    );

    let mut w = GgufWriter::new();
    tiny_tokenizer_metadata(&mut w, 3);
    for (k, v) in &mut w.metadata {
        if k == "tokenizer.ggml.merges" {
            *v = Value::Array(ValueType::String, vec![Value::String("nospace".into())]);
        }
    }
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap_err();
    assert!(
        matches!(e, TokenizerError::BadMerge { index: 0, .. }),
        "{e}"
    );
}

#[test]
fn chatml_uses_the_templates_default_system_prompt() {
    let tpl = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}";
    let t = ChatTemplate::detect(Some(tpl)).unwrap();
    assert_eq!(
        t,
        ChatTemplate::ChatMl {
            default_system: Some("You are SmolLM".into())
        }
    );
    let user = ChatMessage::new("user", "Hi");
    assert_eq!(
        t.render(std::slice::from_ref(&user)),
        "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let sys = ChatMessage::new("system", "Be brief.");
    assert_eq!(
        t.render(&[sys, user]),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let e = ChatTemplate::detect(Some("[INST] {{ message }} [/INST]")).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedChatTemplate));
}

#[test]
fn bytes_missing_from_a_byte_level_vocabulary_use_the_unknown_token_or_fail() {
    let build = |unk: Option<u32>| {
        let mut w = GgufWriter::new();
        tiny_tokenizer_metadata(&mut w, 0);
        for (k, v) in &mut w.metadata {
            if k == "tokenizer.ggml.tokens"
                && let Value::Array(_, items) = v
            {
                // Byte 0x04's character (U+0104) is renamed away.
                items[3 + 4] = Value::String("\u{0}missing".into());
            }
        }
        if let Some(u) = unk {
            w.meta("tokenizer.ggml.unknown_token_id", Value::U32(u));
        }
        Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
    };
    let e = build(None).unwrap_err();
    assert!(e.to_string().contains("no token for byte 0x04"), "{e}");
    let t = build(Some(0)).unwrap();
    assert_eq!(
        t.encode_bytes(b"a\x04b", false),
        vec![3 + b'a' as u32, 0, 3 + b'b' as u32]
    );
}
