//! The one interface every compute backend implements, so model code, generation and the CLI
//! never know whether kernels run on the CPU or on a GPU through wgpu.
//!
//! Contract notes (agreed between the core and wgpu implementations; change only by agreement):
//! - A backend is created from `&LlamaModel` plus `max_slots` and `max_context`; it owns one KV
//!   cache per slot. `forward` writes the chunk's tokens at `start_pos..`; positions past the
//!   new ones are ignored from then on. To reuse a slot for a new sequence, start at any
//!   `start_pos` up to what the slot holds: 0 for a fresh start, or the length of the prefix the
//!   new sequence shares with the old one (the server's prefix reuse), whose KV entries stay.
//! - A batch holds at most one chunk per slot; each chunk's `start_pos + tokens.len()` must be
//!   `<= max_context` and `start_pos` must not be beyond what the slot already holds.
//! - `logits`/`argmax`/`top_k` refer to the last successful `forward`, one entry per chunk, in
//!   batch order. `validate_batch` is the shared check both backends run first.
//! - `copy_prefix` gives a slot the KV entries another slot computed for the same leading
//!   tokens (the server's cross-slot prefix sharing): positions depend only on the tokens before
//!   them, so the copy is exactly what a prefill of those tokens would have written.
//!   `validate_copy` is its shared check.

pub mod cpu;
pub mod wgpu;

/// A run of tokens for one sequence slot, starting at position `start_pos`.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub slot: usize,
    pub start_pos: usize,
    pub tokens: &'a [u32],
}

/// A compute backend holding a model's weights and per-slot KV caches.
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// Slots (sequences) and context length this session was created with.
    fn max_slots(&self) -> usize;
    fn max_context(&self) -> usize;
    /// Appends each chunk's tokens to its slot's KV cache (positions start_pos..) and computes
    /// the logits of the LAST token of each chunk, kept inside the backend.
    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<(), BackendError>;
    /// Copies the last forward's logits to the host: one Vec<f32> (len = vocab) per chunk.
    fn logits(&mut self) -> Result<Vec<Vec<f32>>, BackendError>;
    /// Greedy pick per chunk, computed inside the backend (on the device for wgpu).
    fn argmax(&mut self) -> Result<Vec<u32>, BackendError>;
    /// Top-k candidates (id, logit) per chunk, sorted descending, computed in the backend;
    /// sampling with temperature/top-p happens on the host over these few candidates.
    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(u32, f32)>>, BackendError>;
    /// Copies KV positions `from..to` of slot `src` into slot `dst`, which then holds `to`
    /// tokens. The caller vouches that both slots hold the same tokens before `from` and that
    /// `dst`'s sequence continues with `src`'s tokens `from..to`. Does not touch the logits of
    /// the last forward.
    fn copy_prefix(
        &mut self,
        src: usize,
        dst: usize,
        from: usize,
        to: usize,
    ) -> Result<(), BackendError>;
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("empty batch: forward needs at least one chunk")]
    EmptyBatch,
    #[error("chunk for slot {slot} has no tokens")]
    EmptyChunk { slot: usize },
    #[error("slot {slot} does not exist; this session has {max_slots} slots")]
    SlotOutOfRange { slot: usize, max_slots: usize },
    #[error("slot {slot} appears twice in one batch; send one chunk per slot")]
    DuplicateSlot { slot: usize },
    #[error(
        "slot {slot}: positions up to {needed} exceed the session context of {max_context} tokens; create the backend with a larger context"
    )]
    ContextOverflow {
        slot: usize,
        needed: usize,
        max_context: usize,
    },
    #[error(
        "slot {slot}: chunk starts at position {start_pos} but the slot only holds {filled} tokens"
    )]
    PositionGap {
        slot: usize,
        start_pos: usize,
        filled: usize,
    },
    #[error("a prefix copy needs two different slots; got slot {slot} twice")]
    CopyToSelf { slot: usize },
    #[error(
        "prefix copy of positions {from}..{to}: source slot {src} holds {src_filled} tokens, destination slot {dst} holds {dst_filled}"
    )]
    CopyRange {
        src: usize,
        dst: usize,
        from: usize,
        to: usize,
        src_filled: usize,
        dst_filled: usize,
    },
    #[error("token id {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("no logits yet: call forward first")]
    NoLogits,
    #[error("{0}")]
    Unavailable(String),
    #[error("device error: {0}")]
    Device(String),
}

/// Checks a batch against the session limits and the slots' fill levels (shared by backends).
pub fn validate_batch(
    batch: &[SeqChunk<'_>],
    filled: &[usize],
    max_context: usize,
    vocab: usize,
) -> Result<(), BackendError> {
    if batch.is_empty() {
        return Err(BackendError::EmptyBatch);
    }
    let mut seen = vec![false; filled.len()];
    for c in batch {
        if c.slot >= filled.len() {
            return Err(BackendError::SlotOutOfRange {
                slot: c.slot,
                max_slots: filled.len(),
            });
        }
        if std::mem::replace(&mut seen[c.slot], true) {
            return Err(BackendError::DuplicateSlot { slot: c.slot });
        }
        if c.tokens.is_empty() {
            return Err(BackendError::EmptyChunk { slot: c.slot });
        }
        let end = c.start_pos.saturating_add(c.tokens.len());
        if end > max_context {
            return Err(BackendError::ContextOverflow {
                slot: c.slot,
                needed: end,
                max_context,
            });
        }
        if c.start_pos > filled[c.slot] {
            return Err(BackendError::PositionGap {
                slot: c.slot,
                start_pos: c.start_pos,
                filled: filled[c.slot],
            });
        }
        if let Some(&t) = c.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::TokenOutOfRange { token: t, vocab });
        }
    }
    Ok(())
}

/// Checks a prefix copy against the slots' fill levels (shared by backends): `from..to` must be
/// held by `src`, and `dst` must hold at least `from` tokens so no gap opens.
pub fn validate_copy(
    src: usize,
    dst: usize,
    from: usize,
    to: usize,
    filled: &[usize],
) -> Result<(), BackendError> {
    for slot in [src, dst] {
        if slot >= filled.len() {
            return Err(BackendError::SlotOutOfRange {
                slot,
                max_slots: filled.len(),
            });
        }
    }
    if src == dst {
        return Err(BackendError::CopyToSelf { slot: src });
    }
    if from > to || to > filled[src] || from > filled[dst] {
        return Err(BackendError::CopyRange {
            src,
            dst,
            from,
            to,
            src_filled: filled[src],
            dst_filled: filled[dst],
        });
    }
    Ok(())
}

/// Top-k over one logits row, sorted descending (ties: lower id first; a NaN never ranks above
/// a number, and small k leave NaN out). Small k
/// keep a sorted list while scanning (most logits fail the first comparison); larger k select
/// in linear time and sort only the k kept.
pub fn top_k_of(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k > 64 {
        return crate::sampling::best_n(logits, (0..logits.len() as u32).collect(), k);
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.len() == k && v.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// Index of the largest logit (first one on ties; NaN never wins).
pub fn argmax_of(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// A hardware GPU through wgpu when one exists, else the CPU.
    Auto,
    Cpu,
    Wgpu,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "cpu" => Ok(BackendKind::Cpu),
            "wgpu" => Ok(BackendKind::Wgpu),
            _ => Err(format!("unknown backend '{s}'; use auto, cpu or wgpu")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k_of(&l, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k_of(&l, 0), vec![]);
        assert_eq!(top_k_of(&l, 10).len(), 5);
        assert_eq!(argmax_of(&l), 1);
        assert_eq!(top_k_of(&[f32::NAN, 1.0], 1), vec![(1, 1.0)]);
    }

    #[test]
    fn large_k_selects_the_same_list_the_insertion_scan_builds() {
        let row: Vec<f32> = (0..5000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 997) as f32 / 8.0)
            .collect();
        let big = top_k_of(&row, 500);
        assert_eq!(big.len(), 500);
        assert_eq!(&big[..64], &top_k_of(&row, 64)[..]);
        assert!(
            big.windows(2)
                .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0))
        );
        let cut = big[499].1;
        let above = row.iter().filter(|&&v| v > cut).count();
        assert!(above < 500 && row.iter().filter(|&&v| v >= cut).count() >= 500);
    }

    #[test]
    fn validate_batch_names_each_problem() {
        let t = [1u32, 2];
        let ok = SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &t,
        };
        assert!(validate_batch(&[ok], &[0, 0], 8, 10).is_ok());
        let e = validate_batch(&[], &[0], 8, 10).unwrap_err();
        assert!(matches!(e, BackendError::EmptyBatch));
        let e = validate_batch(&[SeqChunk { slot: 2, ..ok }], &[0, 0], 8, 10).unwrap_err();
        assert!(matches!(
            e,
            BackendError::SlotOutOfRange {
                slot: 2,
                max_slots: 2
            }
        ));
        let e = validate_batch(&[ok, ok], &[0, 0], 8, 10).unwrap_err();
        assert!(matches!(e, BackendError::DuplicateSlot { slot: 0 }));
        let e = validate_batch(&[SeqChunk { start_pos: 7, ..ok }], &[7, 0], 8, 10).unwrap_err();
        assert!(matches!(e, BackendError::ContextOverflow { needed: 9, .. }));
        let e = validate_batch(&[SeqChunk { start_pos: 3, ..ok }], &[1, 0], 8, 10).unwrap_err();
        assert!(matches!(e, BackendError::PositionGap { filled: 1, .. }));
        let e = validate_batch(
            &[SeqChunk {
                tokens: &[10],
                ..ok
            }],
            &[0, 0],
            8,
            10,
        )
        .unwrap_err();
        assert!(matches!(e, BackendError::TokenOutOfRange { token: 10, .. }));
        let e = validate_batch(&[SeqChunk { tokens: &[], ..ok }], &[0, 0], 8, 10).unwrap_err();
        assert!(matches!(e, BackendError::EmptyChunk { slot: 0 }));
    }

    #[test]
    fn validate_copy_names_each_problem() {
        let filled = [6, 2, 0];
        assert!(validate_copy(0, 1, 2, 6, &filled).is_ok());
        assert!(validate_copy(0, 2, 0, 6, &filled).is_ok());
        assert!(validate_copy(0, 1, 0, 0, &filled).is_ok());
        let e = validate_copy(0, 3, 0, 1, &filled).unwrap_err();
        assert!(matches!(e, BackendError::SlotOutOfRange { slot: 3, .. }));
        let e = validate_copy(1, 1, 0, 1, &filled).unwrap_err();
        assert!(matches!(e, BackendError::CopyToSelf { slot: 1 }));
        // Past what the source holds, a gap in the destination, a reversed range.
        for (src, dst, from, to) in [(0, 1, 2, 7), (0, 2, 1, 4), (0, 1, 3, 2)] {
            let e = validate_copy(src, dst, from, to, &filled).unwrap_err();
            assert!(matches!(e, BackendError::CopyRange { .. }), "{e}");
        }
        assert!(
            validate_copy(0, 2, 1, 4, &filled)
                .unwrap_err()
                .to_string()
                .contains("destination slot 2 holds 0")
        );
    }
}
