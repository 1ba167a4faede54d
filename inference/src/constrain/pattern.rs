//! String `pattern`s and `format`s of constrained strings: the regular expression compiled to a
//! DFA (regex-automata) that the matcher walks one byte at a time alongside the JSON string.
//!
//! A JSON Schema `pattern` matches anywhere in the string (it is not anchored), so the DFA is
//! built for `(?s:.*)(?:pattern)(?s:.*)` matched against the whole string. Formats are fixed
//! expressions for the subset OpenAI's strict mode lists; each accepts only valid values (for
//! `date`, February stops at the 28th, so no leap-year rule is needed). Characters that JSON
//! must escape (`"`, `\`, control characters) are never generated inside such a string, so
//! the string's bytes are the value's bytes.

use std::collections::HashMap;

use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

/// Shortest distances stop here ("cannot reach a match").
pub const FAR: u32 = u32::MAX / 4;

macro_rules! date_re {
    () => {
        r"[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    };
}

macro_rules! time_re {
    () => {
        r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
    };
}

/// The supported `format`s and the expressions that accept exactly (a subset of) their values.
pub fn format_regex(format: &str) -> Option<&'static str> {
    Some(match format {
        "date" => date_re!(),
        "time" => time_re!(),
        "date-time" => concat!(date_re!(), "T", time_re!()),
        "email" => {
            r"[A-Za-z0-9_%+-]{1,32}(?:\.[A-Za-z0-9_%+-]{1,32}){0,3}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?){1,3}"
        }
        "uuid" => r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        "ipv4" => {
            r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
        }
        // RFC 3339 appendix A: P then date parts (optionally a time), a time, or weeks.
        "duration" => {
            r"P(?:(?:[0-9]{1,6}Y(?:[0-9]{1,6}M(?:[0-9]{1,6}D)?)?|[0-9]{1,6}M(?:[0-9]{1,6}D)?|[0-9]{1,6}D)(?:T(?:[0-9]{1,6}H(?:[0-9]{1,6}M(?:[0-9]{1,6}S)?)?|[0-9]{1,6}M(?:[0-9]{1,6}S)?|[0-9]{1,6}S))?|T(?:[0-9]{1,6}H(?:[0-9]{1,6}M(?:[0-9]{1,6}S)?)?|[0-9]{1,6}M(?:[0-9]{1,6}S)?|[0-9]{1,6}S)|[0-9]{1,6}W)"
        }
        // The full eight-group form (a valid subset: no `::` compression).
        "ipv6" => r"[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}",
        "hostname" => {
            r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?){0,3}"
        }
        _ => return None,
    })
}

/// The formats `format_regex` knows, for error messages.
pub const FORMATS: &str = "date, time, date-time, duration, email, uuid, ipv4, ipv6, hostname";

/// Whether byte `b` may appear raw (unescaped) inside a pattern-constrained JSON string.
pub fn raw_byte(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f
}

/// A compiled string expression and, for each of its reachable states, the fewest bytes to a
/// full match.
pub struct Pattern {
    /// What the schema wrote (`pattern` text, or `format:NAME`).
    pub source: String,
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    dist: HashMap<StateID, u32>,
    /// For a string that also has a `minLength`: per state, bit L set when an ASCII path of
    /// exactly L bytes (so L characters) reaches a full match, L < [`MAX_LENGTHS`]. Built on
    /// first use.
    lengths: std::sync::OnceLock<Result<HashMap<StateID, [u64; 4]>, String>>,
}

/// Exact completion lengths are tracked up to this many characters.
pub const MAX_LENGTHS: u32 = 256;

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pattern")
            .field("source", &self.source)
            .field("states", &self.dist.len())
            .finish()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// DFAs beyond this many states are refused (a schema could otherwise ask for an exponential
/// one).
const MAX_STATES: usize = 20_000;

impl Pattern {
    /// Compiles `regex` to be matched against a whole string; `anywhere` wraps it so it may
    /// match any part (JSON Schema's `pattern`), else it must match all (a `format`).
    pub fn compile(source: String, regex: &str, anywhere: bool) -> Result<Pattern, String> {
        let full = if anywhere {
            format!("(?s:.*)(?:{regex})(?s:.*)")
        } else {
            format!("(?:{regex})")
        };
        let dfa = dense::Builder::new()
            .configure(
                dense::DFA::config()
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(16 << 20))
                    .determinize_size_limit(Some(16 << 20)),
            )
            .build(&full)
            .map_err(|e| format!("pattern {regex:?} cannot be compiled: {e}"))?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| format!("pattern {regex:?}: {e}"))?;
        let mut p = Pattern {
            source,
            dfa,
            start,
            dist: HashMap::new(),
            lengths: std::sync::OnceLock::new(),
        };
        p.dist = p.distances()?;
        if p.dist.get(&start).copied().unwrap_or(FAR) >= FAR {
            return Err(format!(
                "pattern {regex:?} matches no string of unescaped characters, so no value can be generated"
            ));
        }
        Ok(p)
    }

    /// Shortest number of raw bytes from every reachable state to a full match, by a
    /// Bellman-Ford relaxation over the reachable states.
    fn distances(&self) -> Result<HashMap<StateID, u32>, String> {
        let mut states = vec![self.start];
        let mut index: HashMap<StateID, usize> = HashMap::from([(self.start, 0)]);
        let mut edges: Vec<Vec<usize>> = Vec::new();
        let mut i = 0;
        while i < states.len() {
            let s = states[i];
            let mut out = Vec::new();
            for b in (0u8..=255).filter(|&b| raw_byte(b)) {
                let t = self.dfa.next_state(s, b);
                if self.dfa.is_dead_state(t) || self.dfa.is_quit_state(t) {
                    continue;
                }
                let j = *index.entry(t).or_insert_with(|| {
                    states.push(t);
                    states.len() - 1
                });
                if !out.contains(&j) {
                    out.push(j);
                }
            }
            edges.push(out);
            if states.len() > MAX_STATES {
                return Err(format!(
                    "the expression needs more than {MAX_STATES} automaton states; simplify it"
                ));
            }
            i += 1;
        }
        let mut dist: Vec<u32> = states
            .iter()
            .map(|&s| if self.ends(s) { 0 } else { FAR })
            .collect();
        loop {
            let mut changed = false;
            for k in 0..states.len() {
                let best = edges[k].iter().map(|&j| dist[j]).min().unwrap_or(FAR);
                if best < FAR && best + 1 < dist[k] {
                    dist[k] = best + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Ok(states.into_iter().zip(dist).collect())
    }

    pub fn start(&self) -> StateID {
        self.start
    }

    /// The state after `b`, or `None` when no full match can follow.
    pub fn next(&self, s: StateID, b: u8) -> Option<StateID> {
        if !raw_byte(b) {
            return None;
        }
        let t = self.dfa.next_state(s, b);
        (self.close(t) < FAR).then_some(t)
    }

    /// Whether the string may end in state `s`.
    pub fn ends(&self, s: StateID) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(s))
    }

    /// The fewest bytes that complete a full match from `s` (0 when it may end now).
    pub fn close(&self, s: StateID) -> u32 {
        self.dist.get(&s).copied().unwrap_or(FAR)
    }

    /// The per-state sets of ASCII completion lengths (see `lengths`), computed once: a
    /// dynamic program over lengths 0..MAX_LENGTHS, refused for automata too large for it.
    pub fn lengths(&self) -> Result<&HashMap<StateID, [u64; 4]>, String> {
        self.lengths
            .get_or_init(|| {
                let states: Vec<StateID> = self.dist.keys().copied().collect();
                let ascii: Vec<u8> = (0x20u8..0x7f).filter(|&b| raw_byte(b)).collect();
                if states.len() * ascii.len() * MAX_LENGTHS as usize > 50_000_000 {
                    return Err(format!(
                        "the expression has {} automaton states, too many to combine with minLength",
                        states.len()
                    ));
                }
                let index: HashMap<StateID, usize> =
                    states.iter().enumerate().map(|(i, &s)| (s, i)).collect();
                let edges: Vec<Vec<usize>> = states
                    .iter()
                    .map(|&s| {
                        let mut out: Vec<usize> = ascii
                            .iter()
                            .filter_map(|&b| index.get(&self.dfa.next_state(s, b)).copied())
                            .collect();
                        out.sort_unstable();
                        out.dedup();
                        out
                    })
                    .collect();
                let mut bits = vec![[0u64; 4]; states.len()];
                let mut now: Vec<bool> = states.iter().map(|&s| self.ends(s)).collect();
                for l in 0..MAX_LENGTHS as usize {
                    for (i, &yes) in now.iter().enumerate() {
                        if yes {
                            bits[i][l / 64] |= 1 << (l % 64);
                        }
                    }
                    now = edges.iter().map(|e| e.iter().any(|&j| now[j])).collect();
                }
                Ok(states.into_iter().zip(bits).collect())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The fewest characters, at least `at_least` and at most `at_most`, of an ASCII
    /// completion to a full match from `s`; `None` when there is none.
    pub fn fit(&self, s: StateID, at_least: u32, at_most: u32) -> Option<u32> {
        let bits = self.lengths().ok()?.get(&s)?;
        (at_least..=at_most.min(MAX_LENGTHS - 1))
            .find(|&l| bits[l as usize / 64] >> (l % 64) & 1 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &Pattern, text: &str) -> Option<StateID> {
        text.bytes().try_fold(p.start(), |s, b| p.next(s, b))
    }

    #[test]
    fn a_pattern_matches_anywhere_and_a_format_must_match_whole() {
        let p = Pattern::compile("ab+".into(), "ab+", true).unwrap();
        assert!(p.ends(run(&p, "xxabbby").unwrap()));
        assert!(!p.ends(run(&p, "xxa").unwrap()));
        assert_eq!(p.close(run(&p, "xxa").unwrap()), 1);
        let anchored = Pattern::compile("^a+$".into(), "^a+$", true).unwrap();
        assert!(run(&anchored, "ab").is_none());
        let d =
            Pattern::compile("format:date".into(), format_regex("date").unwrap(), false).unwrap();
        assert!(d.ends(run(&d, "2024-02-28").unwrap()));
        assert!(run(&d, "2024-02-30").is_none());
        assert!(run(&d, "2024-13").is_none());
        assert_eq!(d.close(d.start()), 10);
        // Quotes and backslashes are never generated raw.
        let any = Pattern::compile(".".into(), ".", true).unwrap();
        assert!(any.next(any.start(), b'"').is_none());
        assert!(Pattern::compile("x".into(), "[", true).is_err());
        // Exact lengths: ^(ab)+$ completes in even lengths only.
        let even = Pattern::compile("e".into(), "^(ab)+$", true).unwrap();
        assert_eq!(even.fit(even.start(), 3, 10), Some(4));
        assert_eq!(even.fit(even.start(), 3, 3), None);
        let after_a = run(&even, "a").unwrap();
        assert_eq!(even.fit(after_a, 0, 10), Some(1));
        assert!(Pattern::compile("q".into(), "\"", true).is_err());
    }
}
