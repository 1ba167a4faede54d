//! Which vocabulary tokens a constraint allows next. The token byte strings are put in a trie
//! once per tokenizer so one automaton walk is shared by every token with the same prefix;
//! control tokens are never allowed, except end-of-sequence once the document is complete.

use crate::tokenizer::Tokenizer;

use super::matcher::Matcher;

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    /// Tokens whose bytes end exactly here.
    tokens: Vec<u32>,
}

/// The vocabulary as a byte trie, plus what the mask needs to know about special tokens.
#[derive(Debug)]
pub struct TokenTrie {
    nodes: Vec<TrieNode>,
    bytes: Vec<Vec<u8>>,
    /// Tokens that end generation (EOS, or every control token when the model names no EOS).
    enders: Vec<u32>,
    /// Tokens that are neither text nor enders (other control tokens, empty tokens).
    excluded: Vec<bool>,
    /// The longest token's length in bytes.
    max_len: usize,
    /// Tokens that are plain string content (no quote, backslash or control byte; whole
    /// UTF-8 characters), as (characters, id), sorted by characters: inside a plain string
    /// such a token fits exactly when its characters fit.
    plain: Vec<(u32, u32)>,
    /// Text tokens that inside a plain string need the automaton itself (a quote or a
    /// backslash, or a character cut at the token's end); the other text tokens never fit there.
    string_special: Vec<u32>,
}

/// How a token's bytes read inside a JSON string from a clean character boundary.
enum InString {
    /// Whole characters of plain content: this many.
    Plain(u32),
    /// A quote, a backslash or an unfinished character: only the automaton can tell.
    Special,
    /// A control byte or malformed UTF-8 first: never inside a string.
    Never,
}

/// Classifies `b` by the string rules of the matcher (UTF-8 ranges included).
fn in_string(b: &[u8]) -> InString {
    let (mut i, mut chars) = (0, 0u32);
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\\' {
            return InString::Special;
        }
        if c < 0x20 {
            return InString::Never;
        }
        chars += 1;
        if c < 0x80 {
            i += 1;
            continue;
        }
        let Some((n, lo, hi)) = super::matcher::utf8_lead(c) else {
            return InString::Never;
        };
        let n = n as usize;
        for k in 1..=n {
            let Some(&cb) = b.get(i + k) else {
                return InString::Special;
            };
            let (l, h) = if k == 1 { (lo, hi) } else { (0x80, 0xbf) };
            if !(l..=h).contains(&cb) {
                return InString::Never;
            }
        }
        i += n + 1;
    }
    InString::Plain(chars)
}

impl TokenTrie {
    pub fn new(tok: &Tokenizer) -> TokenTrie {
        let n = tok.vocab_size();
        let mut t = TokenTrie {
            nodes: vec![TrieNode::default()],
            bytes: Vec::with_capacity(n),
            enders: Vec::new(),
            excluded: vec![false; n],
            max_len: 0,
            plain: Vec::new(),
            string_special: Vec::new(),
        };
        for id in 0..n as u32 {
            let b = tok.token_bytes(id).to_vec();
            let control = tok.is_control(id);
            if control || b.is_empty() {
                t.excluded[id as usize] = true;
                if Some(id) == tok.eos || (tok.eos.is_none() && control) {
                    t.enders.push(id);
                }
            } else {
                t.insert(&b, id);
            }
            t.max_len = t.max_len.max(b.len());
            if !t.excluded[id as usize] {
                match in_string(&b) {
                    InString::Plain(chars) => t.plain.push((chars, id)),
                    InString::Special => t.string_special.push(id),
                    InString::Never => {}
                }
            }
            t.bytes.push(b);
        }
        t.plain.sort_unstable();
        t
    }

    fn insert(&mut self, bytes: &[u8], id: u32) {
        let mut at = 0usize;
        for &b in bytes {
            at = match self.nodes[at].children.iter().find(|(c, _)| *c == b) {
                Some(&(_, n)) => n as usize,
                None => {
                    self.nodes.push(TrieNode::default());
                    let n = self.nodes.len() - 1;
                    self.nodes[at].children.push((b, n as u32));
                    n
                }
            };
        }
        self.nodes[at].tokens.push(id);
    }

    /// The longest token's length in bytes.
    pub fn max_token_len(&self) -> usize {
        self.max_len
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Control or empty tokens that are not enders: never text.
    pub fn is_excluded(&self, id: u32) -> bool {
        self.excluded.get(id as usize).copied().unwrap_or(true)
    }

    pub fn is_ender(&self, id: u32) -> bool {
        self.enders.contains(&id)
    }

    /// Whether token `id` may come next in state `m` (one token: no trie needed).
    pub fn allows(&self, m: &Matcher, id: u32) -> bool {
        let Some(b) = self.bytes.get(id as usize) else {
            return false;
        };
        if self.is_ender(id) {
            return m.is_complete();
        }
        !self.excluded[id as usize] && m.accepts(b)
    }

    /// The full mask for state `m`: `mask[id]` is whether token `id` may come next.
    pub fn mask(&self, m: &Matcher) -> Vec<bool> {
        match m.plain_string_room() {
            Some(room) => self.string_mask(m, room),
            None => self.walk_mask(m),
        }
    }

    /// [`TokenTrie::mask`] by walking the whole trie with the automaton (what the string
    /// shortcut must agree with).
    pub fn walk_mask(&self, m: &Matcher) -> Vec<bool> {
        let mut mask = vec![false; self.bytes.len()];
        if m.is_complete() {
            for &e in &self.enders {
                mask[e as usize] = true;
            }
        }
        self.walk(0, m, &mut mask);
        mask
    }

    /// The mask inside a plain string with `room` characters left: plain tokens by their
    /// length, the few special ones through the automaton; no trie walk.
    fn string_mask(&self, m: &Matcher, room: u32) -> Vec<bool> {
        let mut mask = vec![false; self.bytes.len()];
        let fit = self.plain.partition_point(|&(chars, _)| chars <= room);
        for &(_, id) in &self.plain[..fit] {
            mask[id as usize] = true;
        }
        for &id in &self.string_special {
            mask[id as usize] = m.accepts(&self.bytes[id as usize]);
        }
        mask
    }

    fn walk(&self, node: usize, m: &Matcher, mask: &mut [bool]) {
        self.walk_within(node, m, usize::MAX, mask);
    }

    /// Like [`TokenTrie::mask`], allowing only tokens after which the document can be closed
    /// in fewer than `tokens_left` bytes (the tokens left after this one, one byte each).
    pub fn mask_within(&self, m: &Matcher, tokens_left: usize) -> Vec<bool> {
        if let Some(p) = m.plain_string() {
            // After n plain characters closing costs short - n (if positive) + 1 + below.
            let mut mask = vec![false; self.bytes.len()];
            let fit = self.plain.partition_point(|&(chars, _)| chars <= p.room);
            for &(chars, id) in &self.plain[..fit] {
                let close = p.short.saturating_sub(chars) as usize + 1 + p.below as usize;
                mask[id as usize] = close < tokens_left;
            }
            for &id in &self.string_special {
                let mut next = m.clone();
                mask[id as usize] = next.advance_all(&self.bytes[id as usize])
                    && next.min_close_bytes() < tokens_left;
            }
            return mask;
        }
        self.walk_mask_within(m, tokens_left)
    }

    /// [`TokenTrie::mask_within`] by walking the whole trie.
    pub fn walk_mask_within(&self, m: &Matcher, tokens_left: usize) -> Vec<bool> {
        let mut mask = vec![false; self.bytes.len()];
        if m.is_complete() {
            for &e in &self.enders {
                mask[e as usize] = true;
            }
        }
        self.walk_within(0, m, tokens_left, &mut mask);
        mask
    }

    fn walk_within(&self, node: usize, m: &Matcher, tokens_left: usize, mask: &mut [bool]) {
        for &(b, child) in &self.nodes[node].children {
            let mut next = m.clone();
            if next.advance(b) {
                let tokens = &self.nodes[child as usize].tokens;
                if !tokens.is_empty()
                    && (tokens_left == usize::MAX || next.min_close_bytes() < tokens_left)
                {
                    for &t in tokens {
                        mask[t as usize] = true;
                    }
                }
                self.walk_within(child as usize, &next, tokens_left, mask);
            }
        }
    }
}
