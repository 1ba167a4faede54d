//! Continuous batching: one engine thread owns the backend and runs every admitted request in
//! one shared batch, so requests join (prefill chunks) and leave (finish, disconnect) at token
//! boundaries while the others keep decoding; a bounded waiting queue gives back-pressure.
//!
//! Each engine step feeds at most `step_tokens` tokens: every decoding request's one token
//! first, then prompt chunks of the requests still prefilling, oldest first, from what is
//! left (at least [`MIN_PREFILL_TOKENS`], so newcomers always progress). A long prompt is
//! therefore spread over several steps and running streams keep getting a token every step.
//!
//! Prefix reuse: a slot's KV cache still holds the tokens of its last request. A newcomer gets
//! the free slot whose tokens share the longest prefix with its prompt and is prefilled from
//! there (chat requests share the system prompt and template), as llama.cpp's server does.
//!
//! Prefix sharing across slots: before each step, a request still prefilling takes the longest
//! run of its prompt that any other slot (running or free) already holds, copied KV entry by
//! KV entry (`Backend::copy_prefix`) instead of computed again. A request whose next prompt
//! tokens an older prefilling request is about to compute waits for them rather than computing
//! them too, so requests arriving together with one system prompt prefill it once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{Backend, SeqChunk};
use crate::constrain::Constraint;
use crate::generate::{FinishReason, NO_TOKEN, PREFILL_CHUNK, StopScanner, pick_constrained};
use crate::sampling::{Rng, Sampling, SeenTokens, choose, fetch_candidates, logprobs, sample_row};
use crate::server::metrics::{Finished, Metrics};
use crate::tokenizer::Tokenizer;

/// One request for the engine.
pub struct Job {
    pub id: String,
    /// When the request arrived at the server: TTFT and end-to-end latency count from here
    /// (queue time included), as vLLM measures them.
    pub arrived: Instant,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Structured output (`response_format`, forced tool calls): only tokens this allows are
    /// picked, and the sequence may only end (EOS) once the document is complete.
    pub constraint: Option<Constraint>,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (`Event::Logprobs`); `None`: no log-probabilities (and the cheap argmax/top-k paths).
    pub logprobs: Option<usize>,
    /// Where the engine streams the output; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// What the engine reports back for one job, in order: texts, then exactly one `Done`/`Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The request left the queue and got a slot (its prefill starts now).
    Started,
    /// The log-probabilities of the tokens generated since the previous `Logprobs`, sent just
    /// before the `Text` that carries (at least the start of) their text. Tokens whose text a
    /// stop sequence swallowed get none.
    Logprobs(Vec<TokenLogprob>),
    Text(String),
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// One generated token's log-probability, with the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely first; as many as the job asked for.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the waiting queue is full ({0} requests); retry later")]
    QueueFull(usize),
    #[error("the engine has stopped: {0}")]
    EngineStopped(String),
}

struct Queue {
    waiting: VecDeque<(Job, Instant)>,
    stopped: Option<String>,
}

/// Default token budget of one engine step (decodes plus prompt chunks).
pub const DEFAULT_STEP_TOKENS: usize = 256;
/// Prompt tokens a step feeds even when the decodes alone fill the budget.
pub const MIN_PREFILL_TOKENS: usize = 16;

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    max_waiting: usize,
    running: AtomicUsize,
    cancelled: AtomicU64,
    /// Backend forwards run since start, and the most sequences one of them carried: how
    /// callers see that concurrent requests shared forwards.
    forwards: AtomicU64,
    peak_sequences: AtomicUsize,
    /// Prompt tokens copied from another slot's KV cache instead of computed.
    shared_tokens: AtomicU64,
    metrics: Arc<Metrics>,
    step_tokens: usize,
}

/// Handle to the engine thread; dropping it lets the thread finish its work and exit.
pub struct Batcher {
    shared: Arc<Shared>,
    slots: usize,
    max_context: usize,
}

impl Batcher {
    /// Starts the engine thread over `backend` (one KV slot per concurrent request) with the
    /// default step budget.
    pub fn start(
        backend: Box<dyn Backend>,
        tok: Arc<Tokenizer>,
        max_waiting: usize,
        metrics: Arc<Metrics>,
    ) -> Batcher {
        Self::with_step_tokens(backend, tok, max_waiting, metrics, DEFAULT_STEP_TOKENS)
    }

    /// Like [`Batcher::start`], feeding at most `step_tokens` tokens per engine step (raised
    /// to `MIN_PREFILL_TOKENS` plus one token per slot if lower).
    pub fn with_step_tokens(
        backend: Box<dyn Backend>,
        tok: Arc<Tokenizer>,
        max_waiting: usize,
        metrics: Arc<Metrics>,
        step_tokens: usize,
    ) -> Batcher {
        let slots = backend.max_slots();
        let max_context = backend.max_context();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                stopped: None,
            }),
            wake: Condvar::new(),
            max_waiting,
            running: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            forwards: AtomicU64::new(0),
            peak_sequences: AtomicUsize::new(0),
            shared_tokens: AtomicU64::new(0),
            metrics,
            step_tokens: step_tokens.max(MIN_PREFILL_TOKENS + slots),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sandgraph-engine".into())
            .spawn(move || {
                let shared = s.clone();
                let run = std::panic::AssertUnwindSafe(|| Engine::new(backend, tok, s).run());
                if std::panic::catch_unwind(run).is_err() {
                    // Running requests saw their channels close (a 500 each); refuse new ones
                    // with a 503 instead of letting them wait forever.
                    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                    q.stopped = Some("the engine thread panicked; restart the server".into());
                    q.waiting.clear();
                    tracing::error!("engine thread panicked; the server refuses new requests");
                }
            })
            .expect("spawning the engine thread");
        Batcher {
            shared,
            slots,
            max_context,
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Queues a job; fails at once when the queue is full or the engine has stopped.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &q.stopped {
            return Err(SubmitError::EngineStopped(why.clone()));
        }
        if q.waiting.len() >= self.shared.max_waiting {
            return Err(SubmitError::QueueFull(self.shared.max_waiting));
        }
        q.waiting.push_back((job, Instant::now()));
        self.shared.metrics.set_waiting(q.waiting.len());
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Requests holding a slot now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").waiting.len()
    }

    /// Whether the engine refuses new work (shut down or its thread panicked).
    pub fn is_stopped(&self) -> bool {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped
            .is_some()
    }

    /// Requests stopped because their client went away, since start.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Backend forwards run since start (one per engine step).
    pub fn forwards(&self) -> u64 {
        self.shared.forwards.load(Ordering::SeqCst)
    }

    /// Prompt tokens copied from another slot's KV cache instead of prefilled, since start.
    pub fn shared_prefix_tokens(&self) -> u64 {
        self.shared.shared_tokens.load(Ordering::SeqCst)
    }

    /// The most sequences (decodes and prompt chunks) one forward has carried since start.
    pub fn peak_sequences_per_forward(&self) -> usize {
        self.shared.peak_sequences.load(Ordering::SeqCst)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock().expect("queue lock");
        q.stopped
            .get_or_insert_with(|| "the server is shutting down".into());
        drop(q);
        self.shared.wake.notify_all();
    }
}

/// A request holding a slot.
struct Seq {
    job: Job,
    slot: usize,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Tokens in the KV cache.
    pos: usize,
    /// The token to feed next (picked, consumed, not yet in the cache).
    pending: Option<u32>,
    generated: usize,
    scanner: StopScanner,
    rng: Rng,
    /// What the penalties look at (the prompt and the tokens generated so far).
    seen: SeenTokens,
    /// The picked token's log-probability and the top alternatives (when the job asked).
    picked_logprobs: Option<(f32, Vec<(u32, f32)>)>,
    /// Log-probabilities of consumed tokens whose text has not been sent yet.
    unsent_logprobs: Vec<TokenLogprob>,
    /// Admission order: prompt chunks go to the oldest prefilling requests first.
    admitted: u64,
    /// The tokens in this slot's KV cache, in order (reused prefix, prompt, fed outputs).
    cached: Vec<u32>,
    last_token: Option<Instant>,
}

struct Engine {
    backend: Box<dyn Backend>,
    tok: Arc<Tokenizer>,
    shared: Arc<Shared>,
    seqs: Vec<Seq>,
    free: Vec<usize>,
    admissions: u64,
    /// Per slot, the tokens its KV cache holds from the request that last used it.
    slot_cache: Vec<Vec<u32>>,
}

impl Engine {
    fn new(backend: Box<dyn Backend>, tok: Arc<Tokenizer>, shared: Arc<Shared>) -> Engine {
        let free: Vec<usize> = (0..backend.max_slots()).rev().collect();
        Engine {
            slot_cache: vec![Vec::new(); free.len()],
            backend,
            tok,
            shared,
            seqs: Vec::new(),
            free,
            admissions: 0,
        }
    }

    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.drop_disconnected();
            if self.seqs.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                let msg = format!("engine step failed: {e}");
                tracing::error!(error = %msg, "engine step failed; failing the running requests");
                for s in self.seqs.drain(..) {
                    self.shared
                        .metrics
                        .request_finished(Finished::Error, s.job.arrived.elapsed());
                    let _ = s.job.events.send(Event::Failed(msg.clone()));
                    self.free.push(s.slot);
                }
                self.publish_running();
            }
        }
    }

    /// Moves waiting jobs into free slots; blocks while there is nothing to do.
    /// Returns false when the engine should exit.
    fn admit(&mut self) -> bool {
        let mut q = self.shared.queue.lock().expect("queue lock");
        loop {
            while !self.free.is_empty() {
                let Some((job, queued_at)) = q.waiting.pop_front() else {
                    break;
                };
                if job.events.is_closed() {
                    self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
                    self.shared
                        .metrics
                        .request_finished(Finished::Abort, job.arrived.elapsed());
                    continue;
                }
                // The free slot whose cache serves this prompt best: the prefix it shares
                // with the prompt (at least one prompt token is always fed, for the logits of
                // the first pick) less the cached tokens the prompt would overwrite, so a
                // slot holding a long prefix other requests reuse (a planner's system prompt)
                // is not given away to save a few tokens of the chat template.
                let (k, reuse) = self
                    .free
                    .iter()
                    .enumerate()
                    .map(|(k, &slot)| {
                        let c = &self.slot_cache[slot];
                        let n = c
                            .iter()
                            .zip(&job.prompt)
                            .take_while(|(a, b)| a == b)
                            .count()
                            .min(job.prompt.len().saturating_sub(1));
                        (k, n, n as i64 - (c.len() - n) as i64)
                    })
                    .max_by_key(|&(_, n, score)| (score, n))
                    .map(|(k, n, _)| (k, n))
                    .expect("checked non-empty");
                let slot = self.free.swap_remove(k);
                let mut cached = std::mem::take(&mut self.slot_cache[slot]);
                cached.truncate(reuse);
                self.shared
                    .metrics
                    .add_prompt_tokens(job.prompt.len() as u64, reuse as u64);
                let now = Instant::now();
                self.shared
                    .metrics
                    .observe_queue_time(now.duration_since(queued_at));
                let _ = job.events.send(Event::Started);
                let scanner = StopScanner::new(&job.stop);
                let rng = Rng::new(job.sampling.seed);
                let seen = SeenTokens::new(&job.prompt, &job.sampling.penalties);
                self.admissions += 1;
                self.seqs.push(Seq {
                    job,
                    slot,
                    prefilled: reuse,
                    pos: reuse,
                    pending: None,
                    generated: 0,
                    scanner,
                    rng,
                    seen,
                    picked_logprobs: None,
                    unsent_logprobs: Vec::new(),
                    admitted: self.admissions,
                    cached,
                    last_token: None,
                });
            }
            self.shared.metrics.set_waiting(q.waiting.len());
            self.publish_running();
            if !self.seqs.is_empty() {
                return true;
            }
            if q.stopped.is_some() && q.waiting.is_empty() {
                return false;
            }
            q = self.shared.wake.wait(q).expect("queue lock");
        }
    }

    fn publish_running(&self) {
        self.shared.running.store(self.seqs.len(), Ordering::SeqCst);
        let used: usize = self.seqs.iter().map(|s| s.pos).sum();
        let total = self.backend.max_slots() * self.backend.max_context();
        self.shared
            .metrics
            .set_running(self.seqs.len(), used as f64 / total.max(1) as f64);
    }

    /// Frees the slots of requests whose client stopped listening.
    fn drop_disconnected(&mut self) {
        let before = self.seqs.len();
        let mut i = 0;
        while i < self.seqs.len() {
            if self.seqs[i].job.events.is_closed() {
                let s = self.seqs.swap_remove(i);
                tracing::info!(request_id = %s.job.id, generated = s.generated, "client disconnected; request cancelled");
                self.free.push(s.slot);
                self.slot_cache[s.slot] = s.cached;
                self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
                self.shared
                    .metrics
                    .request_finished(Finished::Abort, s.job.arrived.elapsed());
            } else {
                i += 1;
            }
        }
        if self.seqs.len() != before {
            self.publish_running();
        }
    }

    /// One forward within the step budget: one token for every decoding sequence, then prompt
    /// chunks for those still prefilling, oldest first. Then picks and hands out next tokens.
    fn step(&mut self) -> Result<(), crate::backend::BackendError> {
        let waiting = self.share_prefixes()?;
        let decoding = self
            .seqs
            .iter()
            .filter(|s| s.prefilled >= s.job.prompt.len())
            .count();
        let mut budget = self
            .shared
            .step_tokens
            .saturating_sub(decoding)
            .max(MIN_PREFILL_TOKENS);
        let mut prefilling: Vec<usize> = (0..self.seqs.len())
            .filter(|&i| self.seqs[i].prefilled < self.seqs[i].job.prompt.len())
            .filter(|i| !waiting.contains(i))
            .collect();
        prefilling.sort_unstable_by_key(|&i| self.seqs[i].admitted);
        // (sequence index, chunk end in the prompt; None for a decode)
        let mut feed: Vec<(usize, Option<usize>)> = (0..self.seqs.len())
            .filter(|&i| self.seqs[i].prefilled >= self.seqs[i].job.prompt.len())
            .map(|i| (i, None))
            .collect();
        for i in prefilling {
            if budget == 0 {
                break;
            }
            let s = &self.seqs[i];
            let n = (s.job.prompt.len() - s.prefilled)
                .min(PREFILL_CHUNK)
                .min(budget);
            budget -= n;
            feed.push((i, Some(s.prefilled + n)));
        }
        // (sequence index, whether a token is picked after this chunk)
        let mut plan: Vec<(usize, bool)> = Vec::with_capacity(feed.len());
        let mut chunks: Vec<SeqChunk<'_>> = Vec::with_capacity(feed.len());
        for &(i, end) in &feed {
            let s = &self.seqs[i];
            match end {
                Some(end) => {
                    chunks.push(SeqChunk {
                        slot: s.slot,
                        start_pos: s.prefilled,
                        tokens: &s.job.prompt[s.prefilled..end],
                    });
                    plan.push((i, end == s.job.prompt.len()));
                }
                None => {
                    let t = s
                        .pending
                        .as_ref()
                        .expect("a decoding sequence has a pending token");
                    chunks.push(SeqChunk {
                        slot: s.slot,
                        start_pos: s.pos,
                        tokens: std::slice::from_ref(t),
                    });
                    plan.push((i, true));
                }
            }
        }
        let fed: Vec<Vec<u32>> = chunks.iter().map(|c| c.tokens.to_vec()).collect();
        let forward = self.backend.forward(&chunks);
        self.shared.forwards.fetch_add(1, Ordering::SeqCst);
        self.shared
            .peak_sequences
            .fetch_max(chunks.len(), Ordering::SeqCst);
        drop(chunks);
        if let Err(e) = forward {
            // What the failed forward left in the KV caches is unknown: reuse nothing.
            self.slot_cache.iter_mut().for_each(Vec::clear);
            return Err(e);
        }
        for ((i, _), toks) in plan.iter().zip(fed) {
            let s = &mut self.seqs[*i];
            let n = toks.len();
            s.cached.extend(toks);
            s.pos += n;
            if s.prefilled < s.job.prompt.len() {
                s.prefilled += n;
            }
        }
        let picks = self.pick(&plan)?;
        let mut finished = Vec::new();
        for ((i, picks_now), t) in plan.iter().zip(picks) {
            if *picks_now && self.consume(*i, t) {
                finished.push(*i);
            }
        }
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for i in finished {
            let s = self.seqs.swap_remove(i);
            self.free.push(s.slot);
            self.slot_cache[s.slot] = s.cached;
        }
        self.publish_running();
        Ok(())
    }

    /// Gives every prefilling request the longest run of its prompt another slot holds (copied
    /// from that slot's KV cache), and returns the requests that should feed nothing this step
    /// because an older prefilling request is about to compute their next prompt tokens.
    fn share_prefixes(&mut self) -> Result<Vec<usize>, crate::backend::BackendError> {
        fn common(a: &[u32], b: &[u32]) -> usize {
            a.iter().zip(b).take_while(|(x, y)| x == y).count()
        }
        let mut order: Vec<usize> = (0..self.seqs.len())
            .filter(|&i| self.seqs[i].prefilled < self.seqs[i].job.prompt.len())
            .collect();
        order.sort_unstable_by_key(|&i| self.seqs[i].admitted);
        let mut waiting = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let s = &self.seqs[i];
            // At least one prompt token is always fed, for the logits of the first pick.
            let want = s.job.prompt.len() - 1;
            let mut best: Option<(usize, usize)> = None;
            let held = self
                .seqs
                .iter()
                .filter(|o| o.slot != s.slot)
                .map(|o| (o.slot, &o.cached))
                .chain(self.free.iter().map(|&f| (f, &self.slot_cache[f])));
            for (slot, cached) in held {
                let n = common(cached, &s.job.prompt).min(want);
                if n > s.prefilled && best.is_none_or(|(_, b)| n > b) {
                    best = Some((slot, n));
                }
            }
            if let Some((src, n)) = best {
                let (dst, from) = (s.slot, s.prefilled);
                if let Err(e) = self.backend.copy_prefix(src, dst, from, n) {
                    // What the slot holds past `from` is unknown now: the caller fails the
                    // running requests, and no slot's cache is trusted again.
                    self.slot_cache.iter_mut().for_each(Vec::clear);
                    return Err(e);
                }
                let s = &mut self.seqs[i];
                s.cached.extend_from_slice(&s.job.prompt[from..n]);
                s.prefilled = n;
                s.pos = n;
                let copied = (n - from) as u64;
                self.shared
                    .shared_tokens
                    .fetch_add(copied, Ordering::SeqCst);
                self.shared.metrics.add_prefix_cache_hits(copied);
            }
            let s = &self.seqs[i];
            let older_computes_next = order[..k].iter().any(|&j| {
                let o = &self.seqs[j];
                let n = common(&o.job.prompt, &s.job.prompt).min(s.job.prompt.len() - 1);
                n > s.prefilled && o.prefilled < n
            });
            if older_computes_next {
                waiting.push(i);
            }
        }
        Ok(waiting)
    }

    /// Picks a token for every chunk of the last forward (ignored where the prompt is not done).
    fn pick(&mut self, plan: &[(usize, bool)]) -> Result<Vec<u32>, crate::backend::BackendError> {
        // Constraints and log-probabilities need the whole logits row.
        let constrained = plan.iter().any(|(i, p)| {
            *p && (self.seqs[*i].job.constraint.is_some() || self.seqs[*i].job.logprobs.is_some())
        });
        if constrained {
            let max_ctx = self.backend.max_context();
            for (i, picks_now) in plan {
                let s = &mut self.seqs[*i];
                if let Some(c) = s.job.constraint.as_mut().filter(|_| *picks_now) {
                    let left = s.job.max_tokens.saturating_sub(s.generated);
                    c.set_budget(left.min(max_ctx.saturating_sub(s.pos)));
                }
            }
            let rows = self.backend.logits()?;
            let mut out = Vec::with_capacity(plan.len());
            for ((i, picks_now), mut row) in plan.iter().zip(rows) {
                let s = &mut self.seqs[*i];
                if !*picks_now {
                    out.push(0);
                    continue;
                }
                s.job.sampling.adjust(&mut row, &s.seen);
                let t = match &s.job.constraint {
                    Some(c) => pick_constrained(&row, &s.job.sampling, &mut s.rng, c),
                    None => sample_row(&row, &s.job.sampling, &mut s.rng),
                };
                if let Some(top) = s.job.logprobs {
                    s.picked_logprobs = Some(logprobs(&row, t, top));
                }
                out.push(t);
            }
            return Ok(out);
        }
        // Rows whose prompt is not done yet pick nothing: counting them as greedy keeps the
        // backend's cheap argmax/top-k paths for the rest.
        let greedy = Sampling::greedy();
        let samplings: Vec<&Sampling> = plan
            .iter()
            .map(|(i, p)| {
                if *p {
                    &self.seqs[*i].job.sampling
                } else {
                    &greedy
                }
            })
            .collect();
        let cands = fetch_candidates(self.backend.as_mut(), &samplings)?;
        Ok(plan
            .iter()
            .zip(cands)
            .map(|((i, p), c)| {
                if !*p {
                    return 0;
                }
                let s = &mut self.seqs[*i];
                choose(c, &s.job.sampling, &mut s.rng, &s.seen)
            })
            .collect())
    }

    /// Hands token `t` to sequence `i`; returns true when the sequence is finished.
    fn consume(&mut self, i: usize, t: u32) -> bool {
        let max_ctx = self.backend.max_context();
        let metrics = self.shared.metrics.clone();
        let s = &mut self.seqs[i];
        let now = Instant::now();
        match s.last_token {
            None => metrics.observe_ttft(now.duration_since(s.job.arrived)),
            Some(prev) => metrics.observe_itl(now.duration_since(prev)),
        }
        s.last_token = Some(now);
        let mut closed = false;
        if let Some(c) = s.job.constraint.as_mut()
            && t != NO_TOKEN
        {
            // `pick_constrained` only returns allowed tokens, so this always succeeds.
            let ok = c.accept(t);
            debug_assert!(ok, "constrained pick {t} was not allowed");
            closed = c.is_closed();
        }
        let finish = if t == NO_TOKEN {
            // The constraint allows no token (a vocabulary that cannot spell some byte).
            Some(FinishReason::MaxTokens)
        } else if Some(t) == self.tok.eos || self.tok.is_control(t) {
            Some(FinishReason::EndOfSequence)
        } else {
            s.generated += 1;
            s.seen.push(t);
            metrics.add_generation_tokens(1);
            if let Some((logprob, top)) = s.picked_logprobs.take() {
                let named = |t: u32| {
                    let b = self.tok.token_bytes(t).to_vec();
                    (String::from_utf8_lossy(&b).into_owned(), b)
                };
                let (token, bytes) = named(t);
                s.unsent_logprobs.push(TokenLogprob {
                    token,
                    bytes,
                    logprob,
                    top: top
                        .into_iter()
                        .map(|(t, lp)| {
                            let (tok, b) = named(t);
                            (tok, b, lp)
                        })
                        .collect(),
                });
            }
            // Stop sequences end free text only: a document the constraint governs (a
            // `response_format` document, a tool call) ends where its grammar says, so a stop
            // sequence occurring inside it (a `}`, a newline) never cuts it invalid. The mode
            // is settled by the first token, before the scanner has held anything back.
            if s.job
                .constraint
                .as_ref()
                .is_some_and(Constraint::is_document)
            {
                s.scanner.ignore_stops();
            }
            let (text, stopped) = s.scanner.push(self.tok.token_bytes(t));
            if !text.is_empty() {
                if !s.unsent_logprobs.is_empty() {
                    let lps = std::mem::take(&mut s.unsent_logprobs);
                    let _ = s.job.events.send(Event::Logprobs(lps));
                }
                let _ = s.job.events.send(Event::Text(text));
            }
            if stopped {
                Some(FinishReason::StopSequence)
            } else if closed {
                // The document is complete and nothing more fits: it ends here.
                Some(FinishReason::EndOfSequence)
            } else if s.generated >= s.job.max_tokens {
                Some(FinishReason::MaxTokens)
            } else if s.pos >= max_ctx {
                Some(FinishReason::ContextFull)
            } else {
                s.pending = Some(t);
                None
            }
        };
        let Some(finish) = finish else {
            return false;
        };
        let rest = s.scanner.finish();
        if finish != FinishReason::StopSequence {
            // Tokens whose text is still held (or that have no text) get their
            // log-probabilities now; a stop sequence's tokens are cut with their text.
            if !s.unsent_logprobs.is_empty() {
                let lps = std::mem::take(&mut s.unsent_logprobs);
                let _ = s.job.events.send(Event::Logprobs(lps));
            }
            if !rest.is_empty() {
                let _ = s.job.events.send(Event::Text(rest));
            }
        }
        let why = match finish {
            FinishReason::EndOfSequence | FinishReason::StopSequence => Finished::Stop,
            FinishReason::MaxTokens | FinishReason::ContextFull => Finished::Length,
            FinishReason::Cancelled => Finished::Abort,
        };
        metrics.request_finished(why, now.duration_since(s.job.arrived));
        let _ = s.job.events.send(Event::Done {
            finish,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.generated,
        });
        true
    }
}
