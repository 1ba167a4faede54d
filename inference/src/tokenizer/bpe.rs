//! GPT-2 style byte-level BPE: bytes map to printable characters, a regex-like pre-tokenizer
//! splits words, and ranked merges join symbols inside each word.

use std::collections::HashMap;

use super::{TOKEN_BYTE, TOKEN_CONTROL, TOKEN_USER_DEFINED, TokenizerError};

/// GPT-2's byte -> character table (printable bytes map to themselves, others to U+0100..).
pub fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            let c = char::from_u32(next).expect("below surrogates");
            next += 1;
            c
        };
    }
    table
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pre {
    /// GPT-2's pattern.
    Gpt2,
    /// GPT-2's pattern after splitting every digit off on its own (SmolLM, and similar).
    DigitsSplit,
}

#[derive(Debug)]
pub(super) struct Bpe {
    /// Token id of each byte's single-character token.
    byte_token: [Option<u32>; 256],
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    pre: Pre,
}

impl Bpe {
    pub fn new(
        texts: &[String],
        _types: &[i32],
        merges: &[&str],
        pre: &str,
        unk: Option<u32>,
    ) -> Result<Bpe, TokenizerError> {
        let mut by_text: HashMap<&str, u32> = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            by_text.entry(t.as_str()).or_insert(i as u32);
        }
        let chars = gpt2_byte_chars();
        let mut byte_token = [None; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_token[b] = by_text.get(c.to_string().as_str()).copied();
        }
        // Some vocabularies (SmolLM2's among them) lack a few bytes, mostly ones that never
        // occur in UTF-8; those encode to the unknown token, the only lossy case.
        if let Some(b) = (0..256).find(|&b| byte_token[b].is_none()) {
            let Some(unk) = unk else {
                return Err(TokenizerError::Metadata {
                    key: "tokenizer.ggml.tokens".into(),
                    problem: format!(
                        "byte-level vocabulary has no token for byte {b:#04x} and no unknown_token_id to stand in"
                    ),
                });
            };
            byte_token
                .iter_mut()
                .filter(|t| t.is_none())
                .for_each(|t| *t = Some(unk));
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, rule) in merges.iter().enumerate() {
            let bad = |problem: &str| TokenizerError::BadMerge {
                index: rank,
                rule: rule.to_string(),
                problem: problem.into(),
            };
            let (a, b) = rule
                .split_once(' ')
                .ok_or_else(|| bad("is not two tokens separated by a space"))?;
            let (Some(&ia), Some(&ib)) = (by_text.get(a), by_text.get(b)) else {
                return Err(bad("names a token that is not in the vocabulary"));
            };
            let joined = format!("{a}{b}");
            let Some(&im) = by_text.get(joined.as_str()) else {
                return Err(bad("produces a token that is not in the vocabulary"));
            };
            table.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let pre = match pre {
            "smollm" | "qwen2" | "llama3" | "llama-bpe" | "deepseek-llm" => Pre::DigitsSplit,
            _ => Pre::Gpt2,
        };
        Ok(Bpe {
            byte_token,
            merges: table,
            pre,
        })
    }

    /// Bytes of each token: byte-level characters mapped back; specials keep their text.
    pub fn token_bytes(&self, texts: &[String], types: &[i32]) -> Vec<Vec<u8>> {
        let chars = gpt2_byte_chars();
        let mut rev: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in chars.iter().enumerate() {
            rev.insert(*c, b as u8);
        }
        texts
            .iter()
            .zip(types)
            .map(|(t, &ty)| {
                if matches!(ty, TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_BYTE) {
                    return t.as_bytes().to_vec();
                }
                let mut out = Vec::with_capacity(t.len());
                for ch in t.chars() {
                    match rev.get(&ch) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                out
            })
            .collect()
    }

    pub fn encode(&self, input: &[u8], out: &mut Vec<u32>) {
        let units = units(input);
        let mut frag_start = 0;
        for i in 0..=units.len() {
            let boundary = i == units.len()
                || (self.pre == Pre::DigitsSplit && units[i].class == Class::Number);
            if boundary {
                for piece in gpt2_split(&units[frag_start..i]) {
                    let (s, e) = (
                        units[frag_start + piece.0].start,
                        units[frag_start + piece.1 - 1].end,
                    );
                    self.encode_word(&input[s..e], out);
                }
                if i < units.len() {
                    self.encode_word(&input[units[i].start..units[i].end], out);
                }
                frag_start = i + 1;
            }
        }
    }

    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = Vec::with_capacity(word.len());
        // Every byte has a token (or the unknown token): `new` guarantees it.
        syms.extend(word.iter().filter_map(|&b| self.byte_token[b as usize]));
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, id)) = self.merges.get(&(syms[i], syms[i + 1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    {
                        best = Some((rank, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            syms[i] = id;
            syms.remove(i + 1);
        }
        out.extend_from_slice(&syms);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Unit {
    start: usize,
    end: usize,
    ch: Option<char>,
    class: Class,
}

/// Splits bytes into characters; each invalid byte becomes its own unit of class Other.
fn units(input: &[u8]) -> Vec<Unit> {
    let mut out = Vec::with_capacity(input.len());
    let mut pos = 0;
    for chunk in input.utf8_chunks() {
        for ch in chunk.valid().chars() {
            let class = if ch.is_alphabetic() {
                Class::Letter
            } else if ch.is_numeric() {
                Class::Number
            } else if ch.is_whitespace() {
                Class::Space
            } else {
                Class::Other
            };
            let len = ch.len_utf8();
            out.push(Unit {
                start: pos,
                end: pos + len,
                ch: Some(ch),
                class,
            });
            pos += len;
        }
        for _ in chunk.invalid() {
            out.push(Unit {
                start: pos,
                end: pos + 1,
                ch: None,
                class: Class::Other,
            });
            pos += 1;
        }
    }
    out
}

/// GPT-2's pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// over units; returns unit index ranges.
fn gpt2_split(u: &[Unit]) -> Vec<(usize, usize)> {
    let n = u.len();
    let mut out = Vec::new();
    let mut i = 0;
    let run = |from: usize, class: Class| {
        let mut j = from;
        while j < n && u[j].class == class {
            j += 1;
        }
        j
    };
    while i < n {
        let c = u[i].ch;
        // Contractions.
        if c == Some('\'') && i + 1 < n {
            let c1 = u[i + 1].ch;
            let c2 = u.get(i + 2).and_then(|x| x.ch);
            if matches!(c1, Some('s' | 't' | 'm' | 'd')) {
                out.push((i, i + 2));
                i += 2;
                continue;
            }
            if matches!(
                (c1, c2),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                out.push((i, i + 3));
                i += 3;
                continue;
            }
        }
        let space_then = |cls: Class| c == Some(' ') && i + 1 < n && u[i + 1].class == cls;
        let mut matched = false;
        for cls in [Class::Letter, Class::Number, Class::Other] {
            if u[i].class == cls {
                let j = run(i, cls);
                out.push((i, j));
                i = j;
                matched = true;
                break;
            }
            if space_then(cls) {
                let j = run(i + 1, cls);
                out.push((i, j));
                i = j;
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        // Whitespace run.
        let j = run(i, Class::Space);
        let end = if j == n || j - i == 1 { j } else { j - 1 };
        out.push((i, end));
        i = end;
    }
    out
}

#[cfg(test)]
pub(super) fn split_for_test(s: &str) -> Vec<String> {
    let u = units(s.as_bytes());
    gpt2_split(&u)
        .into_iter()
        .map(|(a, b)| s[u[a].start..u[b - 1].end].to_owned())
        .collect()
}
