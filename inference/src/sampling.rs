//! Choosing the next token from a backend's logits: temperature, top-k, top-p (nucleus),
//! OpenAI's `logit_bias`, `frequency_penalty` and `presence_penalty`, the `repetition_penalty`
//! of vLLM and llama.cpp, all seeded and reproducible.
//!
//! Every pick is linear in the vocabulary: top-k is a selection (not a sort) of the row, and the
//! nucleus of a full-vocabulary top-p is found by a weighted selection over the tokens that can
//! be in it, so only the nucleus itself is sorted. Penalties touch only the tokens already seen.

use std::collections::{HashMap, HashSet};

use crate::backend::{Backend, BackendError};

/// How the next token is chosen. `temperature <= 0` means greedy (argmax in the backend).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Candidates considered (0 = the whole vocabulary).
    pub top_k: usize,
    /// Nucleus: the smallest candidate set whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    pub seed: u64,
    /// OpenAI's `logit_bias`: (token id, bias in [-100, 100]) added to that token's logit
    /// before anything else looks at the row (-100 in effect bans it, 100 all but forces it).
    /// Empty leaves the fast argmax/top-k paths untouched.
    pub logit_bias: Vec<(u32, f32)>,
    /// Applied after the biases; [`Penalties::NONE`] leaves the fast paths untouched.
    pub penalties: Penalties,
}

/// Penalties on tokens already seen, applied to the logits in vLLM's order: repetition first
/// (prompt and output tokens), then frequency and presence (output tokens, OpenAI's formula
/// `logit -= count * frequency + (count > 0) * presence`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    /// OpenAI's `frequency_penalty`, -2 to 2: subtracted once per earlier occurrence.
    pub frequency: f32,
    /// OpenAI's `presence_penalty`, -2 to 2: subtracted once if the token occurred at all.
    pub presence: f32,
    /// `repetition_penalty` (1 = off): a seen token's positive logit is divided by it, a
    /// negative one multiplied, so values above 1 discourage repeats.
    pub repetition: f32,
}

impl Penalties {
    pub const NONE: Penalties = Penalties {
        frequency: 0.0,
        presence: 0.0,
        repetition: 1.0,
    };

    pub fn is_none(&self) -> bool {
        self.frequency == 0.0 && self.presence == 0.0 && self.repetition == 1.0
    }
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties::NONE
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 1,
            top_p: 1.0,
            seed: 0,
            logit_bias: Vec::new(),
            penalties: Penalties::NONE,
        }
    }

    /// Whether picking needs the whole logits row (biases or penalties change it).
    pub fn needs_row(&self) -> bool {
        !self.logit_bias.is_empty() || !self.penalties.is_none()
    }

    /// Biases then penalties, applied to `row` in place.
    pub fn adjust(&self, row: &mut [f32], seen: &SeenTokens) {
        for &(t, b) in &self.logit_bias {
            if let Some(l) = row.get_mut(t as usize) {
                *l += b;
            }
        }
        apply_penalties(row, &self.penalties, seen);
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
            logit_bias: Vec::new(),
            penalties: Penalties::NONE,
        }
    }
}

/// The tokens a sequence's penalties look at: how often each was generated, and which the
/// prompt holds (kept only when a repetition penalty needs them).
#[derive(Clone, Debug, Default)]
pub struct SeenTokens {
    generated: HashMap<u32, u32>,
    prompt: HashSet<u32>,
}

impl SeenTokens {
    /// Nothing seen yet; `prompt` is recorded when `p` has a repetition penalty.
    pub fn new(prompt: &[u32], p: &Penalties) -> SeenTokens {
        SeenTokens {
            generated: HashMap::new(),
            prompt: if p.repetition != 1.0 {
                prompt.iter().copied().collect()
            } else {
                HashSet::new()
            },
        }
    }

    /// Records one generated token.
    pub fn push(&mut self, t: u32) {
        *self.generated.entry(t).or_insert(0) += 1;
    }

    /// How often `t` was generated.
    pub fn count(&self, t: u32) -> u32 {
        self.generated.get(&t).copied().unwrap_or(0)
    }
}

/// Applies `p` to `row` for the tokens in `seen` (ids outside the row are ignored).
pub fn apply_penalties(row: &mut [f32], p: &Penalties, seen: &SeenTokens) {
    if p.repetition != 1.0 {
        let r = p.repetition;
        let mut penalize = |t: u32| {
            if let Some(l) = row.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        };
        seen.prompt.iter().copied().for_each(&mut penalize);
        seen.generated
            .keys()
            .copied()
            .filter(|t| !seen.prompt.contains(t))
            .for_each(&mut penalize);
    }
    if p.frequency != 0.0 || p.presence != 0.0 {
        for (&t, &c) in &seen.generated {
            if let Some(l) = row.get_mut(t as usize) {
                *l -= c as f32 * p.frequency + p.presence;
            }
        }
    }
}

/// xoshiro256** seeded through SplitMix64: small and reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples from candidates sorted by descending logit, applying temperature and top-p.
pub fn sample(cands: &[(u32, f32)], s: &Sampling, rng: &mut Rng) -> u32 {
    if cands.is_empty() {
        return 0;
    }
    if s.temperature <= 0.0 {
        return cands[0].0;
    }
    let mx = cands[0].1;
    let mut probs: Vec<f64> = cands
        .iter()
        .map(|&(_, l)| (((l - mx) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let mut r = rng.next_f64() * mass;
    for (i, p) in probs[..keep].iter().enumerate() {
        if r < *p {
            return cands[i].0;
        }
        r -= p;
    }
    cands[keep - 1].0
}

/// A logit for ordering: NaN ranks below everything, so it never wins.
fn rank(l: f32) -> f32 {
    if l.is_nan() { f32::NEG_INFINITY } else { l }
}

/// Descending logit, ties broken by the lower id: the order of every candidate list here.
fn by_logit(row: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    |a, b| {
        rank(row[*b as usize])
            .total_cmp(&rank(row[*a as usize]))
            .then(a.cmp(b))
    }
}

/// The `n` best of `ids` by logit, sorted descending (ties: lower id first): a selection in
/// O(len) plus a sort of the `n` kept.
pub fn best_n(row: &[f32], mut ids: Vec<u32>, n: usize) -> Vec<(u32, f32)> {
    let order = by_logit(row);
    if n == 0 {
        return Vec::new();
    }
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, &order);
        ids.truncate(n);
    }
    ids.sort_unstable_by(&order);
    ids.into_iter().map(|t| (t, row[t as usize])).collect()
}

/// Relative weights below e^-CUTOFF (1e-13 of the best token's) count as zero: at any real
/// vocabulary size they hold less mass together than a float32 softmax can represent.
const CUTOFF: f32 = 30.0;

/// Picks a token from a whole logits row under `s` (biases and penalties already applied), in
/// time linear in the row: greedy is an argmax, top-k a selection, top-p a weighted selection.
/// For the same row and seed it picks what [`sample`] would from the row fully sorted, except
/// that without top-k and top-p the draw walks the row in id order rather than sorted.
pub fn sample_row(row: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if row.is_empty() {
        return 0;
    }
    if s.temperature <= 0.0 {
        return crate::backend::argmax_of(row);
    }
    let v = row.len();
    if s.top_k > 0 && s.top_k < v {
        return sample(&best_n(row, (0..v as u32).collect(), s.top_k), s, rng);
    }
    let mx = row
        .iter()
        .copied()
        .map(rank)
        .fold(f32::NEG_INFINITY, f32::max);
    if !mx.is_finite() {
        // All -inf (or NaN), or some +inf: the argmax is the only meaningful pick.
        return crate::backend::argmax_of(row);
    }
    let inv_t = 1.0 / s.temperature;
    let mut w: Vec<f32> = Vec::with_capacity(v);
    let mut total = 0.0f64;
    for &l in row {
        let x = (l - mx) * inv_t;
        // NaN compares false and gets weight zero.
        let e = if x > -CUTOFF { x.exp() } else { 0.0 };
        w.push(e);
        total += e as f64;
    }
    if s.top_p >= 1.0 {
        let mut r = rng.next_f64() * total;
        let mut last = 0;
        for (i, &e) in w.iter().enumerate() {
            if e > 0.0 {
                let e = e as f64;
                if r < e {
                    return i as u32;
                }
                r -= e;
                last = i;
            }
        }
        return last as u32;
    }
    // A token whose weight is under (1 - top_p) * total / v cannot be in the nucleus: every
    // token ranked at or after it weighs less, so together they hold under (1 - top_p) of
    // the mass, and the tokens ranked before it already reach top_p.
    let need = s.top_p.max(0.0) as f64 * total;
    let floor = (1.0 - s.top_p.max(0.0) as f64) * total / v as f64;
    let mut ids: Vec<u32> = (0..v as u32)
        .filter(|&i| {
            let e = w[i as usize];
            e > 0.0 && e as f64 >= floor
        })
        .collect();
    let n = nucleus_len(&mut ids, row, &w, need);
    ids.truncate(n);
    ids.sort_unstable_by(by_logit(row));
    let mass: f64 = ids.iter().map(|&i| w[i as usize] as f64).sum();
    let mut r = rng.next_f64() * mass;
    for &i in &ids {
        let e = w[i as usize] as f64;
        if r < e {
            return i;
        }
        r -= e;
    }
    ids[n - 1]
}

/// Reorders `ids` so that `ids[..n]` holds the smallest top set (by logit) whose weight
/// reaches `need`, and returns `n` (at least 1 when `ids` is not empty). A weighted
/// quickselect: each round selects the median, keeps the half the boundary lies in.
fn nucleus_len(ids: &mut [u32], row: &[f32], w: &[f32], mut need: f64) -> usize {
    let order = by_logit(row);
    let (mut lo, mut hi) = (0, ids.len());
    while hi - lo > 32 {
        let mid = (hi - lo) / 2;
        ids[lo..hi].select_nth_unstable_by(mid, &order);
        let m = lo + mid;
        let left: f64 = ids[lo..m].iter().map(|&i| w[i as usize] as f64).sum();
        if left >= need {
            hi = m;
        } else {
            need -= left;
            lo = m;
        }
    }
    ids[lo..hi].sort_unstable_by(&order);
    for (k, &i) in ids[lo..hi].iter().enumerate() {
        need -= w[i as usize] as f64;
        if need <= 0.0 {
            return lo + k + 1;
        }
    }
    hi.max(1).min(ids.len())
}

/// The log-probability a response reports for a token whose logit is -inf (JSON has no
/// infinity; OpenAI reports -9999.0 for such tokens too).
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// Log-probabilities from one logits row (after biases and penalties): the softmax at
/// temperature 1 over the whole vocabulary, before temperature, top-k, top-p and any grammar
/// mask shape the draw. Returns `chosen`'s and the `top` most likely tokens' (sorted, ties by
/// id), each at least [`LOGPROB_FLOOR`].
pub fn logprobs(row: &[f32], chosen: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let mx = row
        .iter()
        .copied()
        .map(rank)
        .fold(f32::NEG_INFINITY, f32::max);
    let lp = |l: f32, lse: f64| -> f32 {
        let v = (l as f64 - lse) as f32;
        if v.is_nan() {
            LOGPROB_FLOOR
        } else {
            v.max(LOGPROB_FLOOR)
        }
    };
    let lse = if mx.is_finite() {
        let sum: f64 = row
            .iter()
            .map(|&l| ((l - mx) as f64).exp())
            .filter(|e| !e.is_nan())
            .sum();
        mx as f64 + sum.ln()
    } else {
        f64::INFINITY
    };
    let at = |t: u32| row.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY);
    let best = if top == 0 {
        Vec::new()
    } else {
        best_n(row, (0..row.len() as u32).collect(), top)
    };
    (
        lp(at(chosen), lse),
        best.into_iter().map(|(t, l)| (t, lp(l, lse))).collect(),
    )
}

/// What the backend hands over for one chunk, fetched as cheaply as the samplings allow.
#[derive(Clone, Debug)]
pub enum Candidates {
    /// Every sampling in the batch is greedy with an unchanged row: the backend's argmax.
    Chosen(u32),
    /// The backend's top-k, sorted descending.
    Sorted(Vec<(u32, f32)>),
    /// The whole logits row.
    Row(Vec<f32>),
}

/// Fetches, for every chunk of the backend's last forward (chunk c picked under
/// `samplings[c]`), what choosing its token needs: an argmax when all are greedy, the device's
/// top-k when every sampling has a small k, else the whole rows.
pub fn fetch_candidates(
    backend: &mut dyn Backend,
    samplings: &[&Sampling],
) -> Result<Vec<Candidates>, BackendError> {
    let greedy = |s: &Sampling| s.temperature <= 0.0;
    if samplings.iter().all(|s| greedy(s) && !s.needs_row()) {
        return Ok(backend
            .argmax()?
            .into_iter()
            .map(Candidates::Chosen)
            .collect());
    }
    if samplings
        .iter()
        .any(|s| s.needs_row() || (!greedy(s) && s.top_k == 0))
    {
        return Ok(backend.logits()?.into_iter().map(Candidates::Row).collect());
    }
    let k = samplings
        .iter()
        .map(|s| if greedy(s) { 1 } else { s.top_k })
        .max()
        .unwrap_or(1);
    Ok(backend
        .top_k(k)?
        .into_iter()
        .map(Candidates::Sorted)
        .collect())
}

/// Chooses the token of one chunk from what [`fetch_candidates`] returned for it.
pub fn choose(c: Candidates, s: &Sampling, rng: &mut Rng, seen: &SeenTokens) -> u32 {
    match c {
        Candidates::Chosen(t) => t,
        Candidates::Sorted(list) => {
            let k = if s.temperature <= 0.0 {
                1
            } else {
                s.top_k.min(list.len())
            };
            sample(&list[..k.min(list.len())], s, rng)
        }
        Candidates::Row(mut row) => {
            s.adjust(&mut row, seen);
            sample_row(&row, s, rng)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `v` logits from `rng`: a few strong tokens over a long tail, like a model's.
    fn row(rng: &mut Rng, v: usize) -> Vec<f32> {
        (0..v)
            .map(|i| {
                let u = rng.next_f64() as f32;
                let base = if i % 97 == 0 { 8.0 } else { 0.0 };
                // Some exact ties, to exercise the id tie-break.
                ((base + u * 12.0) * 4.0).round() / 4.0
            })
            .collect()
    }

    /// The obvious version: sort the whole vocabulary, cut at top-k and top-p, draw.
    fn reference(row: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
        let k = if s.top_k == 0 { row.len() } else { s.top_k };
        let mut all: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        sample(&all, s, rng)
    }

    #[test]
    fn top_p_and_top_k_pick_what_sorting_the_whole_row_picks() {
        let mut source = Rng::new(7);
        let mut same = 0;
        let cases = 600;
        for case in 0..cases {
            let r = row(&mut source, 5000);
            let s = Sampling {
                temperature: [0.3, 0.7, 1.0, 1.6][case % 4],
                top_k: [0, 0, 40, 0, 1000][case % 5],
                top_p: [0.5, 0.9, 0.95, 0.99, 0.999, 0.0][case % 6],
                seed: case as u64,
                ..Sampling::greedy()
            };
            let a = sample_row(&r, &s, &mut Rng::new(case as u64));
            let b = reference(&r, &s, &mut Rng::new(case as u64));
            same += usize::from(a == b);
        }
        // The reference normalizes before cutting; a draw landing within rounding of a
        // boundary may differ. Anything more than that is a bug.
        assert!(same >= cases - 2, "{same} of {cases} picks agree");
    }

    #[test]
    fn without_cuts_the_draw_follows_the_softmax() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, 3.0];
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..Sampling::greedy()
        };
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mut counts = [0usize; 5];
        let mut rng = Rng::new(3);
        let n = 200_000;
        for _ in 0..n {
            counts[sample_row(&logits, &s, &mut rng) as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let p = (logits[i] as f64).exp() / z;
            let got = c as f64 / n as f64;
            // Five standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!((got - p).abs() < tol, "token {i}: {got} against {p}");
        }
    }

    #[test]
    fn the_nucleus_is_the_smallest_top_set_reaching_top_p() {
        // Probabilities 0.5, 0.25, 0.125, ... : top_p 0.7 keeps the first two tokens.
        let logits: Vec<f32> = (0..40)
            .map(|i| -(i as f32) * std::f32::consts::LN_2)
            .collect();
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
            ..Sampling::greedy()
        };
        let mut rng = Rng::new(1);
        let picks: HashSet<u32> = (0..2000)
            .map(|_| sample_row(&logits, &s, &mut rng))
            .collect();
        assert_eq!(picks, HashSet::from([0, 1]));
        let tiny = Sampling { top_p: 0.0, ..s };
        assert_eq!(sample_row(&logits, &tiny, &mut rng), 0);
    }

    #[test]
    fn nan_and_infinite_logits_do_not_derail_the_pick() {
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            ..Sampling::greedy()
        };
        let mut rng = Rng::new(1);
        assert_eq!(sample_row(&[f32::NAN, 1.0, f32::NAN], &s, &mut rng), 1);
        assert_eq!(sample_row(&[0.0, f32::INFINITY, 5.0], &s, &mut rng), 1);
        let none = [f32::NEG_INFINITY; 3];
        assert!(sample_row(&none, &s, &mut rng) < 3);
    }

    /// Penalties as OpenAI and vLLM document them, computed from the raw token lists.
    fn reference_penalties(row: &[f32], p: &Penalties, prompt: &[u32], out: &[u32]) -> Vec<f32> {
        let mut r = row.to_vec();
        for (t, l) in r.iter_mut().enumerate() {
            let t = t as u32;
            let in_prompt = prompt.contains(&t);
            let count = out.iter().filter(|&&o| o == t).count() as f32;
            if in_prompt || count > 0.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition
                } else {
                    *l * p.repetition
                };
            }
            *l -= count * p.frequency + if count > 0.0 { p.presence } else { 0.0 };
        }
        r
    }

    #[test]
    fn penalties_match_the_documented_formulas() {
        let mut source = Rng::new(11);
        for case in 0..50u64 {
            let v = 300;
            let r: Vec<f32> = (0..v)
                .map(|_| source.next_f64() as f32 * 10.0 - 5.0)
                .collect();
            let prompt: Vec<u32> = (0..20)
                .map(|_| (source.next_u64() % v as u64) as u32)
                .collect();
            let out: Vec<u32> = (0..60).map(|_| (source.next_u64() % 40) as u32).collect();
            let p = Penalties {
                frequency: [0.0, 0.5, -0.3, 2.0][case as usize % 4],
                presence: [0.0, 1.0, 0.25, -2.0][case as usize % 4],
                repetition: [1.0, 1.3, 0.8, 1.1][(case as usize / 4) % 4],
            };
            let mut seen = SeenTokens::new(&prompt, &p);
            out.iter().for_each(|&t| seen.push(t));
            let mut got = r.clone();
            apply_penalties(&mut got, &p, &seen);
            let want = reference_penalties(&r, &p, &prompt, &out);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-5,
                    "case {case} token {i}: {g} against {w}"
                );
            }
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_and_the_top_list_is_sorted() {
        let row = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        let (c, top) = logprobs(&row, 2, 3);
        assert!((c as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        assert!(top.iter().map(|t| (t.1 as f64).exp()).sum::<f64>() <= 1.0 + 1e-6);
        assert_eq!(logprobs(&row, 3, 0), (LOGPROB_FLOOR, vec![]));
        assert!(logprobs(&row, 99, 1).0 == LOGPROB_FLOOR);
    }

    #[test]
    fn best_n_is_sorted_with_ties_by_id_and_never_prefers_nan() {
        let row = [1.0, 3.0, f32::NAN, 3.0, 2.0];
        assert_eq!(
            best_n(&row, (0..5).collect(), 3),
            vec![(1, 3.0), (3, 3.0), (4, 2.0)]
        );
        assert!(best_n(&row, (0..5).collect(), 0).is_empty());
        assert_eq!(best_n(&row, (0..5).collect(), 9).len(), 5);
    }
}
