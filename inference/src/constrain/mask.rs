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
            t.bytes.push(b);
        }
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
        let mut mask = vec![false; self.bytes.len()];
        if m.is_complete() {
            for &e in &self.enders {
                mask[e as usize] = true;
            }
        }
        self.walk(0, m, &mut mask);
        mask
    }

    fn walk(&self, node: usize, m: &Matcher, mask: &mut [bool]) {
        self.walk_within(node, m, usize::MAX, mask);
    }

    /// Like [`TokenTrie::mask`], allowing only tokens after which the document can be closed
    /// in fewer than `tokens_left` bytes (the tokens left after this one, one byte each).
    pub fn mask_within(&self, m: &Matcher, tokens_left: usize) -> Vec<bool> {
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
