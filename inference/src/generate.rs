//! Turning a backend's logits into text: prefill, batched decode of several sequences at once,
//! sampling (see [`crate::sampling`]), stop sequences with streaming hold-back, token
//! limits and cancellation. Backends only see batches of token chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, SeqChunk};
use crate::constrain::Constraint;
use crate::tokenizer::Tokenizer;

pub use crate::sampling::{Penalties, Rng, Sampling, SeenTokens, sample};
use crate::sampling::{best_n, choose, fetch_candidates, sample_row};

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation stops before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence (or another control) token.
    EndOfSequence,
    /// A stop sequence appeared in the text.
    StopSequence,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The session's context is full.
    ContextFull,
    /// The cancel token was triggered.
    Cancelled,
}

/// What one sequence produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated text (stop sequence excluded; invalid UTF-8 replaced).
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Timing of a `generate` call, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub generated_tokens: usize,
    pub decode: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{requests} sequences requested but the backend session has {slots} slots")]
    TooManySequences { requests: usize, slots: usize },
    #[error(
        "{constraints} constraints given for {requests} requests; pass one (or None) per request"
    )]
    ConstraintCount { constraints: usize, requests: usize },
    #[error("sequence {index} has an empty prompt; a prompt needs at least one token")]
    EmptyPrompt { index: usize },
    #[error("sequence {index}: prompt of {len} tokens does not fit the context of {max_context}")]
    PromptTooLong {
        index: usize,
        len: usize,
        max_context: usize,
    },
}

/// A flag that stops generation at the next token boundary.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Incremental text of one sequence: holds back bytes that may start a stop sequence or an
/// unfinished UTF-8 character, so streamed text never has to be retracted.
#[derive(Debug, Default)]
pub struct StopScanner {
    bytes: Vec<u8>,
    emitted: usize,
    stops: Vec<Vec<u8>>,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        StopScanner {
            bytes: Vec::new(),
            emitted: 0,
            stops: stops
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Adds bytes; returns (text safe to stream now, whether a stop sequence was hit).
    pub fn push(&mut self, new: &[u8]) -> (String, bool) {
        let search_from = self.emitted;
        self.bytes.extend_from_slice(new);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| find(&self.bytes[search_from..], s).map(|i| search_from + i))
            .min();
        if let Some(at) = hit {
            self.bytes.truncate(at);
            return (self.flush_to(at), true);
        }
        // Longest suffix that is a proper prefix of some stop sequence.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.bytes.len() - self.emitted && self.bytes.ends_with(&s[..k]) {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let mut end = self.bytes.len() - hold;
        end = utf8_safe_end(&self.bytes[..end], self.emitted);
        (self.flush_to(end), false)
    }

    /// From now on no stop sequence ends the text (structured output governed by a grammar).
    pub fn ignore_stops(&mut self) {
        self.stops.clear();
    }

    /// Emits everything still held back (at the end of generation).
    pub fn finish(&mut self) -> String {
        let end = self.bytes.len();
        self.flush_to(end)
    }

    fn flush_to(&mut self, end: usize) -> String {
        if end <= self.emitted {
            return String::new();
        }
        let s = String::from_utf8_lossy(&self.bytes[self.emitted..end]).into_owned();
        self.emitted = end;
        s
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Backs `end` off an incomplete trailing UTF-8 sequence (never below `floor`).
fn utf8_safe_end(b: &[u8], floor: usize) -> usize {
    let end = b.len();
    for back in 1..=3.min(end - floor) {
        let c = b[end - back];
        if c & 0xc0 == 0x80 {
            continue; // continuation byte, look further back
        }
        let need = if c >= 0xf0 {
            4
        } else if c >= 0xe0 {
            3
        } else if c >= 0xc0 {
            2
        } else {
            1
        };
        return if need > back { end - back } else { end };
    }
    end
}

/// Prompt tokens per sequence sent to the backend in one forward call.
pub const PREFILL_CHUNK: usize = 256;

/// Runs the requests as one batch (request i uses slot i), streaming text through
/// `on_text(sequence, text)` as it becomes final.
pub fn generate(
    backend: &mut dyn Backend,
    tok: &Tokenizer,
    requests: &[Request],
    cancel: &CancelToken,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<(Vec<Generation>, Timings), GenerateError> {
    let mut none: Vec<Option<Constraint>> = vec![None; requests.len()];
    generate_constrained(backend, tok, requests, &mut none, cancel, on_text)
}

/// Like [`generate`], with an optional constraint per request (`constraints[i]` for request
/// i): a constrained sequence only ever emits tokens its constraint allows, and may only end
/// (EOS) once the document is complete. If no token is allowed (a vocabulary that cannot
/// spell some byte), the sequence ends with `FinishReason::MaxTokens`.
pub fn generate_constrained(
    backend: &mut dyn Backend,
    tok: &Tokenizer,
    requests: &[Request],
    constraints: &mut [Option<Constraint>],
    cancel: &CancelToken,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<(Vec<Generation>, Timings), GenerateError> {
    if constraints.len() != requests.len() {
        return Err(GenerateError::ConstraintCount {
            constraints: constraints.len(),
            requests: requests.len(),
        });
    }
    if requests.len() > backend.max_slots() {
        return Err(GenerateError::TooManySequences {
            requests: requests.len(),
            slots: backend.max_slots(),
        });
    }
    let max_ctx = backend.max_context();
    for (index, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if r.prompt.len() >= max_ctx {
            return Err(GenerateError::PromptTooLong {
                index,
                len: r.prompt.len(),
                max_context: max_ctx,
            });
        }
    }
    let mut timings = Timings {
        prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
        ..Default::default()
    };
    let t0 = Instant::now();
    // Prefill all prompts together, PREFILL_CHUNK tokens per sequence per call.
    let mut done = vec![0usize; requests.len()];
    let mut last_pick: Vec<Option<u32>> = vec![None; requests.len()];
    let mut rngs: Vec<Rng> = requests.iter().map(|r| Rng::new(r.sampling.seed)).collect();
    let mut seen: Vec<SeenTokens> = requests
        .iter()
        .map(|r| SeenTokens::new(&r.prompt, &r.sampling.penalties))
        .collect();
    let mut out: Vec<Generation> = requests
        .iter()
        .map(|_| Generation {
            text: String::new(),
            tokens: Vec::new(),
            finish: FinishReason::MaxTokens,
        })
        .collect();
    let mut active: Vec<bool> = requests.iter().map(|r| r.max_tokens > 0).collect();
    while done.iter().zip(requests).any(|(d, r)| *d < r.prompt.len()) {
        if cancel.is_cancelled() {
            for (i, g) in out.iter_mut().enumerate() {
                g.finish = FinishReason::Cancelled;
                active[i] = false;
            }
            return Ok((out, timings));
        }
        let mut chunks = Vec::new();
        let mut ids = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            if done[i] < r.prompt.len() {
                let end = (done[i] + PREFILL_CHUNK).min(r.prompt.len());
                chunks.push(SeqChunk {
                    slot: i,
                    start_pos: done[i],
                    tokens: &r.prompt[done[i]..end],
                });
                ids.push((i, end == r.prompt.len()));
                done[i] = end;
            }
        }
        backend.forward(&chunks)?;
        let finished: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, (_, f))| *f)
            .map(|(k, _)| k)
            .collect();
        if !finished.is_empty() {
            for &k in &finished {
                let i = ids[k].0;
                if let Some(c) = constraints[i].as_mut() {
                    let r = &requests[i];
                    c.set_budget(r.max_tokens.min(max_ctx - r.prompt.len()));
                }
            }
            let picks = pick(
                backend,
                &ids.iter()
                    .map(|(i, _)| &requests[*i].sampling)
                    .collect::<Vec<_>>(),
                &mut rngs,
                &seen,
                &ids.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                constraints,
            )?;
            for k in finished {
                last_pick[ids[k].0] = Some(picks[k]);
            }
        }
    }
    timings.prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut scanners: Vec<StopScanner> =
        requests.iter().map(|r| StopScanner::new(&r.stop)).collect();
    let mut pos: Vec<usize> = requests.iter().map(|r| r.prompt.len()).collect();
    let eos = tok.eos;
    loop {
        // Consume the pending pick of every active sequence.
        for i in 0..requests.len() {
            if !active[i] {
                continue;
            }
            let t = last_pick[i]
                .take()
                .expect("active sequence has a pending token");
            if t == NO_TOKEN {
                out[i].finish = FinishReason::MaxTokens;
                active[i] = false;
                continue;
            }
            let mut closed = false;
            if let Some(c) = constraints[i].as_mut() {
                // `pick` only returns allowed tokens, so this always succeeds.
                let ok = c.accept(t);
                debug_assert!(ok, "constrained pick {t} was not allowed");
                closed = c.is_closed();
            }
            if Some(t) == eos || tok.is_control(t) {
                out[i].finish = FinishReason::EndOfSequence;
                active[i] = false;
                continue;
            }
            out[i].tokens.push(t);
            seen[i].push(t);
            timings.generated_tokens += 1;
            let (text, stopped) = scanners[i].push(tok.token_bytes(t));
            if !text.is_empty() {
                on_text(i, &text);
            }
            if stopped {
                out[i].finish = FinishReason::StopSequence;
                active[i] = false;
            } else if closed {
                // The document is complete and nothing more fits: it ends here.
                out[i].finish = FinishReason::EndOfSequence;
                active[i] = false;
            } else if out[i].tokens.len() >= requests[i].max_tokens {
                out[i].finish = FinishReason::MaxTokens;
                active[i] = false;
            } else if pos[i] >= max_ctx {
                out[i].finish = FinishReason::ContextFull;
                active[i] = false;
            } else {
                last_pick[i] = Some(t);
            }
        }
        if cancel.is_cancelled() {
            for i in 0..requests.len() {
                if active[i] {
                    out[i].finish = FinishReason::Cancelled;
                    active[i] = false;
                }
            }
        }
        let live: Vec<usize> = (0..requests.len()).filter(|&i| active[i]).collect();
        if live.is_empty() {
            break;
        }
        let toks: Vec<[u32; 1]> = live
            .iter()
            .map(|&i| [last_pick[i].expect("pending")])
            .collect();
        let chunks: Vec<SeqChunk> = live
            .iter()
            .zip(&toks)
            .map(|(&i, t)| SeqChunk {
                slot: i,
                start_pos: pos[i],
                tokens: t,
            })
            .collect();
        backend.forward(&chunks)?;
        for &i in &live {
            pos[i] += 1;
            if let Some(c) = constraints[i].as_mut() {
                let left = requests[i].max_tokens - out[i].tokens.len();
                c.set_budget(left.min(max_ctx - pos[i]));
            }
        }
        let picks = pick(
            backend,
            &live
                .iter()
                .map(|&i| &requests[i].sampling)
                .collect::<Vec<_>>(),
            &mut rngs,
            &seen,
            &live,
            constraints,
        )?;
        for (k, &i) in live.iter().enumerate() {
            last_pick[i] = Some(picks[k]);
        }
    }
    for (i, g) in out.iter_mut().enumerate() {
        let rest = scanners[i].finish();
        if !rest.is_empty() {
            on_text(i, &rest);
        }
        g.text = scanners[i].text();
    }
    timings.decode = t1.elapsed();
    Ok((out, timings))
}

/// What `pick` returns for a constrained sequence whose constraint allows no token.
pub const NO_TOKEN: u32 = u32::MAX;

/// Picks a token per chunk of the last forward; `seqs[k]` is the sequence of chunk k.
fn pick(
    backend: &mut dyn Backend,
    samplings: &[&Sampling],
    rngs: &mut [Rng],
    seen: &[SeenTokens],
    seqs: &[usize],
    constraints: &[Option<Constraint>],
) -> Result<Vec<u32>, BackendError> {
    if seqs.iter().any(|&i| constraints[i].is_some()) {
        let rows = backend.logits()?;
        return Ok(rows
            .into_iter()
            .enumerate()
            .map(|(c, mut row)| {
                let (s, i) = (samplings[c], seqs[c]);
                s.adjust(&mut row, &seen[i]);
                match &constraints[i] {
                    Some(con) => pick_constrained(&row, s, &mut rngs[i], con),
                    None => sample_row(&row, s, &mut rngs[i]),
                }
            })
            .collect());
    }
    Ok(fetch_candidates(backend, samplings)?
        .into_iter()
        .enumerate()
        .map(|(c, cands)| {
            let i = seqs[c];
            choose(cands, samplings[c], &mut rngs[i], &seen[i])
        })
        .collect())
}

/// Windows of the row's best tokens checked one at a time (cheap per-token automaton walks)
/// before falling back to the full-vocabulary mask (a trie walk).
const LAZY_WINDOWS: [usize; 3] = [64, 512, 4096];

/// Samples from one logits row (biases and penalties applied) restricted to the tokens `con` allows. Exact: the candidates
/// are the best *allowed* tokens (top-k over the masked row), found first by checking the
/// row's best tokens one at a time, and only when that is not enough through the full mask.
pub fn pick_constrained(row: &[f32], s: &Sampling, rng: &mut Rng, con: &Constraint) -> u32 {
    let want = if s.temperature <= 0.0 {
        1
    } else if s.top_k == 0 {
        row.len()
    } else {
        s.top_k
    };
    let mut checked = 0;
    let mut allowed: Vec<(u32, f32)> = Vec::new();
    for w in LAZY_WINDOWS {
        // Skip windows too small, and stop when the allowed share seen so far says this
        // window will not hold `want` allowed tokens (few allowed: the full mask is cheap).
        if want > w / 2 || w >= row.len() || (checked > 0 && allowed.len() * w < want * checked) {
            break;
        }
        let best = best_n(row, (0..row.len() as u32).collect(), w);
        allowed.extend(
            best[checked..]
                .iter()
                .copied()
                .filter(|&(t, _)| con.allows(t)),
        );
        checked = best.len();
        if allowed.len() >= want {
            allowed.truncate(want);
            return sample(&allowed, s, rng);
        }
    }
    let mask = con.mask();
    let ids: Vec<u32> = (0..row.len() as u32)
        .filter(|&t| mask[t as usize])
        .collect();
    if ids.is_empty() {
        return NO_TOKEN;
    }
    let cands = best_n(row, ids, want);
    sample(&cands, s, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_scanner_holds_back_partial_matches() {
        let mut s = StopScanner::new(&["\nUser:".to_string()]);
        assert_eq!(s.push(b"Hello"), ("Hello".into(), false));
        assert_eq!(s.push(b" there\nUs"), (" there".into(), false));
        // The held "\nUs" was not a stop after all.
        assert_eq!(s.push(b"ually"), ("\nUsually".into(), false));
        assert_eq!(s.push(b"\nUser: hi"), (String::new(), true));
        assert_eq!(s.text(), "Hello there\nUsually");
    }

    #[test]
    fn stop_scanner_never_splits_a_utf8_character() {
        let mut s = StopScanner::new(&[]);
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]), (String::new(), false));
        assert_eq!(s.push(&e[1..]), ("é".into(), false));
        let crab = "🦀".as_bytes();
        assert_eq!(s.push(&crab[..3]), (String::new(), false));
        assert_eq!(s.push(&crab[3..]), ("🦀".into(), false));
        // Invalid bytes are not held forever.
        assert_eq!(s.push(&[0xff, b'a']), ("\u{fffd}a".into(), false));
        assert_eq!(s.push(&[0xe2]), (String::new(), false));
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn sampling_is_reproducible_and_respects_top_p() {
        let cands = [(7u32, 5.0f32), (3, 4.0), (9, 1.0), (1, 0.5)];
        let s = Sampling {
            temperature: 1.0,
            top_k: 4,
            top_p: 1.0,
            seed: 3,
            logit_bias: Vec::new(),
            penalties: Default::default(),
        };
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..200)
                .map(|_| sample(&cands, &s, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        let all = draw(3);
        assert!(all.contains(&7) && all.contains(&3));
        // top_p 0.5: the first candidate alone has p ~0.71, so only it survives.
        let s = Sampling { top_p: 0.5, ..s };
        let mut r = Rng::new(1);
        assert!((0..100).all(|_| sample(&cands, &s, &mut r) == 7));
        // Temperature 0 is greedy.
        let g = Sampling::greedy();
        assert_eq!(sample(&cands, &g, &mut r), 7);
    }
}
