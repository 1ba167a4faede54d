//! Constrained decoding: a JSON Schema (or "any JSON object") becomes a byte-level automaton,
//! and each step only tokens that keep the output completable are allowed, so structured
//! output (`response_format`, tool calls) parses and validates by construction.
//!
//! Length: the decoder tells the constraint how many tokens are left ([`Constraint::set_budget`]).
//! Once that is within reach of the shortest way to close the document, only tokens after
//! which the document can still be closed in the tokens left are allowed (counting one byte
//! per token, which every byte-level vocabulary can spell), so when the budget is just enough
//! the output follows the shortest closing path. A document is cut only when `max_tokens` is
//! below its shortest complete form, or a vocabulary lacks single-byte tokens.

pub mod mask;
pub mod matcher;
pub mod numeric;
pub mod order;
pub mod pattern;
pub mod schema;
pub mod tools;

use std::sync::Arc;

pub use mask::TokenTrie;
pub use matcher::{Matcher, PlainString, StateKey};
pub use schema::{Grammar, SchemaError};

/// How a constraint applies: always, or only once the output's first byte chose the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Every byte follows the grammar.
    Grammar,
    /// `tool_choice: "auto"`: nothing generated yet. A first byte `{` starts the document
    /// (mode becomes `Grammar`); any other first byte starts free text (mode becomes `Text`).
    Undecided,
    /// Free text: no constraint.
    Text,
}

/// The constraint of one sequence: where its document stands plus the vocabulary trie.
#[derive(Clone, Debug)]
pub struct Constraint {
    matcher: Matcher,
    trie: Arc<TokenTrie>,
    mode: Mode,
    /// Tokens left, including the next one, when closing is within reach (see `set_budget`).
    tight: Option<usize>,
    /// The last full mask and the state it was computed for: inside a long string the state
    /// key stays the same from token to token, so the trie walk runs once per string.
    mask_cache: std::cell::RefCell<Option<(StateKey, Vec<bool>)>>,
}

impl Constraint {
    /// `trie` is built once per tokenizer (`TokenTrie::new`) and shared by all requests.
    pub fn new(grammar: Arc<Grammar>, trie: Arc<TokenTrie>) -> Constraint {
        Constraint {
            matcher: Matcher::new(grammar),
            trie,
            mode: Mode::Grammar,
            tight: None,
            mask_cache: Default::default(),
        }
    }

    /// Either free text or a document of `grammar`, and the first byte decides: output whose
    /// first byte is `{` must be a complete document of `grammar` (a JSON object grammar, such
    /// as a tool call); output starting with any other byte is unconstrained text. This is how
    /// `tool_choice: "auto"` lets the model choose between answering and calling a tool.
    pub fn text_or(grammar: Arc<Grammar>, trie: Arc<TokenTrie>) -> Constraint {
        Constraint {
            mode: Mode::Undecided,
            ..Constraint::new(grammar, trie)
        }
    }

    /// Tells the constraint that `tokens_left` tokens (the next one included) may still be
    /// generated. Far from the limit this costs one closing-length computation; within reach
    /// of it, `allows`/`mask` also require that the document can still be closed in time.
    pub fn set_budget(&mut self, tokens_left: usize) {
        self.tight = None;
        if self.mode != Mode::Grammar {
            return;
        }
        // One token opens at most a few values; beyond this margin it cannot matter yet.
        let margin = 64 + 2 * self.matcher.max_node_min_len();
        let close = self.matcher.min_close_bytes();
        if tokens_left <= close + margin {
            // Too few tokens to close at all: still follow the shortest closing path.
            self.tight = Some(tokens_left.max(close));
        }
    }

    /// Whether the document can still be closed after token `id` within the budget.
    fn in_budget(&self, id: u32) -> bool {
        let Some(left) = self.tight else {
            return true;
        };
        if self.trie.is_ender(id) {
            return true;
        }
        let mut m = self.matcher.clone();
        m.advance_all(self.trie.token_bytes(id)) && m.min_close_bytes() < left
    }

    pub fn allows(&self, id: u32) -> bool {
        match self.mode {
            Mode::Grammar => self.trie.allows(&self.matcher, id) && self.in_budget(id),
            Mode::Text => true,
            Mode::Undecided => match self.trie.token_bytes(id).first() {
                _ if self.trie.is_ender(id) => true,
                Some(b'{') => self.trie.allows(&self.matcher, id),
                Some(_) => !self.trie.is_excluded(id),
                None => false,
            },
        }
    }

    /// `mask[id]`: whether token `id` may come next.
    pub fn mask(&self) -> Vec<bool> {
        match self.mode {
            Mode::Grammar => match self.tight {
                None => {
                    let key = self.matcher.state_key(self.trie.max_token_len());
                    let mut cache = self.mask_cache.borrow_mut();
                    match cache.as_ref() {
                        Some((k, m)) if *k == key => m.clone(),
                        _ => {
                            let m = self.trie.mask(&self.matcher);
                            *cache = Some((key, m.clone()));
                            m
                        }
                    }
                }
                Some(left) => self.trie.mask_within(&self.matcher, left),
            },
            Mode::Text => vec![true; self.trie.vocab_size()],
            Mode::Undecided => {
                let mut m = self.trie.mask(&self.matcher);
                for (id, allowed) in m.iter_mut().enumerate() {
                    *allowed = *allowed || self.allows(id as u32);
                }
                m
            }
        }
    }

    /// Records that token `id` was emitted; false if the constraint did not allow it.
    pub fn accept(&mut self, id: u32) -> bool {
        match self.mode {
            Mode::Text => return true,
            Mode::Undecided => {
                if self.trie.is_ender(id) {
                    return true;
                }
                match self.trie.token_bytes(id).first() {
                    Some(b'{') => self.mode = Mode::Grammar,
                    Some(_) if !self.trie.is_excluded(id) => {
                        self.mode = Mode::Text;
                        return true;
                    }
                    _ => return false,
                }
            }
            Mode::Grammar => {}
        }
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

    /// Whether the output may end here: the document is complete, or the output is free text.
    pub fn is_complete(&self) -> bool {
        match self.mode {
            Mode::Grammar => self.matcher.is_complete(),
            Mode::Undecided | Mode::Text => true,
        }
    }

    /// Whether the document is complete and no further byte fits (nothing left but to end).
    pub fn is_closed(&self) -> bool {
        self.mode == Mode::Grammar && self.matcher.is_complete() && !self.matcher.can_continue()
    }

    /// Whether the output is (becoming) a document of the grammar rather than free text.
    pub fn is_document(&self) -> bool {
        self.mode == Mode::Grammar
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}
