//! Text <-> token ids from the vocabulary stored in GGUF metadata: GPT-2 byte-level BPE and
//! SentencePiece-style (llama) models, special tokens, and chat templates. Every byte string
//! encodes and decodes losslessly, invalid UTF-8 included.

mod bpe;
mod chat;
mod spm;

pub use bpe::gpt2_byte_chars;
pub use chat::{ChatMessage, ChatTemplate};

use std::collections::HashMap;

use crate::gguf::{GgufFile, Value};

/// Token types from GGUF (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_BYTE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata '{key}': {problem}")]
    Metadata { key: String, problem: String },
    #[error(
        "tokenizer model '{0}' is not supported; use a 'gpt2' (byte-level BPE) or 'llama' (SentencePiece) vocabulary"
    )]
    UnsupportedModel(String),
    #[error("merge rule {index} ('{rule}') {problem}")]
    BadMerge {
        index: usize,
        rule: String,
        problem: String,
    },
    #[error(
        "chat template is not ChatML-shaped (no <|im_start|>/<|im_end|>); only ChatML chat templates are supported"
    )]
    UnsupportedChatTemplate,
}

#[derive(Debug)]
enum Kind {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
}

/// A tokenizer built from a model's metadata.
#[derive(Debug)]
pub struct Tokenizer {
    kind: Kind,
    /// Token texts as stored in the vocabulary.
    texts: Vec<String>,
    /// Bytes each token stands for when decoded.
    bytes: Vec<Vec<u8>>,
    types: Vec<i32>,
    by_text: HashMap<String, u32>,
    /// Control/user-defined tokens matched whole in text, longest first.
    specials: Vec<(String, u32)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    chat_template: Option<String>,
}

fn meta_err(key: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata {
        key: key.into(),
        problem: problem.into(),
    }
}

fn string_array<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    let v = f.get(key).ok_or_else(|| meta_err(key, "missing"))?;
    let items = v
        .as_array()
        .ok_or_else(|| meta_err(key, "expected an array of strings"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .ok_or_else(|| meta_err(key, format!("element {i} is not a string")))
        })
        .collect()
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model = match f.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(meta_err("tokenizer.ggml.model", "expected a string")),
            None => {
                return Err(meta_err(
                    "tokenizer.ggml.model",
                    "missing; the model has no tokenizer",
                ));
            }
        };
        let texts: Vec<String> = string_array(f, "tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if texts.is_empty() || texts.len() > u32::MAX as usize / 2 {
            return Err(meta_err(
                "tokenizer.ggml.tokens",
                "vocabulary is empty or too large",
            ));
        }
        let types: Vec<i32> = match f.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_NORMAL; texts.len()],
            Some(v) => {
                let items = v.as_array().ok_or_else(|| {
                    meta_err("tokenizer.ggml.token_type", "expected an array of integers")
                })?;
                if items.len() != texts.len() {
                    return Err(meta_err(
                        "tokenizer.ggml.token_type",
                        format!("{} entries for {} tokens", items.len(), texts.len()),
                    ));
                }
                items
                    .iter()
                    .map(|x| match x {
                        Value::I32(v) => Ok(*v),
                        other => other.as_u64().map(|v| v as i32).ok_or_else(|| {
                            meta_err("tokenizer.ggml.token_type", "expected integers")
                        }),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if (id as usize) < texts.len() => Ok(Some(id as u32)),
                    _ => Err(meta_err(
                        key,
                        format!("{v:?} is not a token id below {}", texts.len()),
                    )),
                },
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let chat_template = f
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_owned);

        let (kind, bytes) = match model {
            "gpt2" => {
                let merges = string_array(f, "tokenizer.ggml.merges")?;
                let pre = f
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let unk = token_id("tokenizer.ggml.unknown_token_id")?;
                let b = bpe::Bpe::new(&texts, &types, &merges, pre, unk)?;
                let bytes = b.token_bytes(&texts, &types);
                (Kind::Bpe(b), bytes)
            }
            "llama" => {
                let scores: Vec<f32> = match f.get("tokenizer.ggml.scores") {
                    None => vec![0.0; texts.len()],
                    Some(v) => {
                        let items =
                            v.as_array()
                                .filter(|a| a.len() == texts.len())
                                .ok_or_else(|| {
                                    meta_err(
                                        "tokenizer.ggml.scores",
                                        "expected one number per token",
                                    )
                                })?;
                        items
                            .iter()
                            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                            .collect()
                    }
                };
                let add_space = match f.get("tokenizer.ggml.add_space_prefix") {
                    Some(Value::Bool(b)) => *b,
                    _ => true,
                };
                let unk = token_id("tokenizer.ggml.unknown_token_id")?;
                let s = spm::Spm::new(&texts, &types, scores, add_space, unk);
                let bytes = s.token_bytes(&texts, &types);
                (Kind::Spm(s), bytes)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let mut by_text = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            by_text.entry(t.clone()).or_insert(i as u32);
        }
        let mut specials: Vec<(String, u32)> = texts
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty() && matches!(types[*i], TOKEN_CONTROL | TOKEN_USER_DEFINED)
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer {
            kind,
            texts,
            bytes,
            types,
            by_text,
            specials,
            bos,
            eos,
            chat_template,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The id of a token given its vocabulary text (e.g. `<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// The bytes a token decodes to (control tokens decode to their text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Control tokens (`<|im_end|>`, `</s>`, ...) that end or structure a conversation.
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&TOKEN_CONTROL)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Encodes text. With `allow_special`, control/user-defined token texts in the input
    /// become those single tokens; otherwise they are encoded as plain text.
    pub fn encode(&self, text: &str, allow_special: bool) -> Vec<u32> {
        self.encode_bytes(text.as_bytes(), allow_special)
    }

    /// Encodes arbitrary bytes (invalid UTF-8 included).
    pub fn encode_bytes(&self, input: &[u8], allow_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut first = true;
        let mut rest = input;
        while !rest.is_empty() {
            let (plain, special) = if allow_special {
                self.split_special(rest)
            } else {
                (rest.len(), None)
            };
            if plain > 0 {
                match &self.kind {
                    Kind::Bpe(b) => b.encode(&rest[..plain], &mut out),
                    Kind::Spm(s) => s.encode(&rest[..plain], first, &mut out),
                }
                first = false;
            }
            rest = &rest[plain..];
            if let Some((len, id)) = special {
                out.push(id);
                rest = &rest[len..];
                first = false;
            }
        }
        out
    }

    /// Length of plain text before the first special token, and that token (len, id).
    fn split_special(&self, s: &[u8]) -> (usize, Option<(usize, u32)>) {
        for start in 0..s.len() {
            for (text, id) in &self.specials {
                if s[start..].starts_with(text.as_bytes()) {
                    return (start, Some((text.len(), *id)));
                }
            }
        }
        (s.len(), None)
    }

    /// Decodes ids to bytes (the exact bytes that were encoded, for any input).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id));
        }
        if let Kind::Spm(s) = &self.kind
            && s.add_space_prefix
            && out.first() == Some(&b' ')
            && ids.first().is_some_and(|&i| !self.is_control(i))
        {
            out.remove(0);
        }
        out
    }

    /// Decodes ids to text, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }
}

#[cfg(test)]
mod tests;
