//! SentencePiece-style tokenization (llama vocabularies): spaces become U+2581, adjacent
//! pieces merge by highest score, and text outside the vocabulary falls back to `<0xXX>`
//! byte tokens.

use std::collections::HashMap;

use super::{TOKEN_BYTE, TOKEN_CONTROL, TOKEN_USER_DEFINED};

const SPACE: char = '\u{2581}';

#[derive(Debug)]
pub(super) struct Spm {
    by_text: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    pub add_space_prefix: bool,
    unk: Option<u32>,
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Spm {
    pub fn new(
        texts: &[String],
        types: &[i32],
        scores: Vec<f32>,
        add_space_prefix: bool,
        unk: Option<u32>,
    ) -> Spm {
        let mut by_text = HashMap::with_capacity(texts.len());
        let mut byte_tokens = [None; 256];
        for (i, t) in texts.iter().enumerate() {
            if types[i] == TOKEN_BYTE {
                if let Some(b) = parse_byte_token(t) {
                    byte_tokens[b as usize] = Some(i as u32);
                }
                continue;
            }
            if matches!(types[i], TOKEN_CONTROL) {
                continue;
            }
            by_text.entry(t.clone()).or_insert(i as u32);
        }
        Spm {
            by_text,
            scores,
            byte_tokens,
            add_space_prefix,
            unk,
        }
    }

    pub fn token_bytes(&self, texts: &[String], types: &[i32]) -> Vec<Vec<u8>> {
        texts
            .iter()
            .zip(types)
            .map(|(t, &ty)| match ty {
                TOKEN_BYTE => parse_byte_token(t).map(|b| vec![b]).unwrap_or_default(),
                TOKEN_CONTROL | TOKEN_USER_DEFINED => t.as_bytes().to_vec(),
                _ => t.replace(SPACE, " ").into_bytes(),
            })
            .collect()
    }

    /// Encodes a plain-text run; `at_start` adds the leading-space prefix of SentencePiece.
    pub fn encode(&self, input: &[u8], at_start: bool, out: &mut Vec<u32>) {
        // Symbols: UTF-8 characters (spaces as U+2581) or single invalid bytes.
        enum Sym {
            Text(String),
            Byte(u8),
        }
        let mut syms: Vec<Sym> = Vec::new();
        if at_start && self.add_space_prefix {
            syms.push(Sym::Text(SPACE.to_string()));
        }
        for chunk in input.utf8_chunks() {
            for ch in chunk.valid().chars() {
                syms.push(Sym::Text(if ch == ' ' {
                    SPACE.to_string()
                } else {
                    ch.to_string()
                }));
            }
            syms.extend(chunk.invalid().iter().map(|&b| Sym::Byte(b)));
        }
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let (Sym::Text(a), Sym::Text(b)) = (&syms[i], &syms[i + 1]) else {
                    continue;
                };
                let joined = format!("{a}{b}");
                if let Some(&id) = self.by_text.get(&joined) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            let Some((_, i, _)) = best else { break };
            if let Sym::Text(right) = syms.remove(i + 1)
                && let Sym::Text(left) = &mut syms[i]
            {
                {
                    left.push_str(&right);
                }
            }
        }
        for s in syms {
            match s {
                Sym::Text(t) => match self.by_text.get(&t) {
                    Some(&id) => out.push(id),
                    None => {
                        let bytes = t.replace(SPACE, " ").into_bytes();
                        for b in bytes {
                            self.push_byte(b, out);
                        }
                    }
                },
                Sym::Byte(b) => self.push_byte(b, out),
            }
        }
    }

    fn push_byte(&self, b: u8, out: &mut Vec<u32>) {
        if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
            out.push(id);
        }
    }
}
