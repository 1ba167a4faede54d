//! Constrained decoding: a JSON Schema (or "any JSON object") becomes a byte-level automaton,
//! and each step only tokens that keep the output completable are allowed, so structured
//! output (`response_format`, tool calls) parses and validates by construction.
//!
//! Length: the mask does not steer towards closing as `max_tokens` nears; a document cut by
//! the limit ends with `FinishReason::MaxTokens` ("length") and is not guaranteed complete.

pub mod mask;
pub mod matcher;
pub mod schema;
pub mod tools;

use std::sync::Arc;

pub use mask::TokenTrie;
pub use matcher::Matcher;
pub use schema::{Grammar, SchemaError};

/// The constraint of one sequence: where its document stands plus the vocabulary trie.
#[derive(Clone, Debug)]
pub struct Constraint {
    matcher: Matcher,
    trie: Arc<TokenTrie>,
}

impl Constraint {
    /// `trie` is built once per tokenizer (`TokenTrie::new`) and shared by all requests.
    pub fn new(grammar: Arc<Grammar>, trie: Arc<TokenTrie>) -> Constraint {
        Constraint {
            matcher: Matcher::new(grammar),
            trie,
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        self.trie.allows(&self.matcher, id)
    }

    /// `mask[id]`: whether token `id` may come next.
    pub fn mask(&self) -> Vec<bool> {
        self.trie.mask(&self.matcher)
    }

    /// Records that token `id` was emitted; false if the constraint did not allow it.
    pub fn accept(&mut self, id: u32) -> bool {
        if self.trie.is_ender(id) {
            return self.matcher.is_complete();
        }
        match self.trie_bytes(id) {
            Some(b) => self.matcher.advance_all(&b),
            None => false,
        }
    }

    fn trie_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if !self.trie.allows(&self.matcher, id) {
            return None;
        }
        Some(self.trie.token_bytes(id).to_vec())
    }

    pub fn is_complete(&self) -> bool {
        self.matcher.is_complete()
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}
