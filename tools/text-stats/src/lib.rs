//! `text-stats`: counts words, lines and characters and lists the most frequent terms.
//!
//! A pure tool for summarising documents an agent has fetched; terms are lower-cased
//! words, optionally without common English stop words.

use std::collections::BTreeMap;

use sandgraph_guest::{JsonSchema, ToolError, tool};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The text to analyse.
    pub text: String,
    /// How many of the most frequent terms to return (default 10).
    #[serde(default = "default_top")]
    #[schemars(range(max = 1000))]
    pub top: u32,
    /// Leave out common English words such as "the" and "and" (default true).
    #[serde(default = "default_true")]
    pub skip_stop_words: bool,
    /// Ignore terms shorter than this many characters (default 1).
    #[serde(default = "default_min_len")]
    #[schemars(range(min = 1, max = 100))]
    pub min_term_length: u32,
}

fn default_top() -> u32 {
    10
}
fn default_true() -> bool {
    true
}
fn default_min_len() -> u32 {
    1
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// Unicode scalar values.
    pub chars: usize,
    pub bytes: usize,
    /// Lines as an editor counts them: a final line without a newline counts.
    pub lines: usize,
    /// Runs of letters, digits, `'` and `-`.
    pub words: usize,
    /// Distinct terms (after lower-casing and filtering).
    pub unique_terms: usize,
    /// Most frequent first; ties in alphabetical order.
    pub top_terms: Vec<Term>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Term {
    pub term: String,
    pub count: usize,
}

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "her", "his", "i", "if", "in", "into", "is", "it", "its", "not", "of", "on", "or", "our",
    "she", "so", "that", "the", "their", "them", "then", "there", "they", "this", "to", "was",
    "we", "were", "which", "will", "with", "you", "your",
];

/// Splits `text` into words: maximal runs of alphanumerics with inner `'` or `-`.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-' || c == '’'))
        .map(|w| w.trim_matches(|c: char| c == '\'' || c == '-' || c == '’'))
        .filter(|w| !w.is_empty())
}

pub fn analyse(input: &Input) -> Output {
    let text = &input.text;
    let lines = if text.is_empty() {
        0
    } else {
        text.lines().count()
    };
    // BTreeMap rather than HashMap: no random seed needed, so the component imports no
    // `wasi:random` at all.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut word_count = 0;
    for word in words(text) {
        word_count += 1;
        let term = word.to_lowercase();
        if term.chars().count() < input.min_term_length as usize {
            continue;
        }
        if input.skip_stop_words && STOP_WORDS.binary_search(&term.as_str()).is_ok() {
            continue;
        }
        *counts.entry(term).or_default() += 1;
    }
    let unique_terms = counts.len();
    let mut terms: Vec<Term> = counts
        .into_iter()
        .map(|(term, count)| Term { term, count })
        .collect();
    terms.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.term.cmp(&b.term)));
    terms.truncate(input.top as usize);
    Output {
        chars: text.chars().count(),
        bytes: text.len(),
        lines,
        words: word_count,
        unique_terms,
        top_terms: terms,
    }
}

#[tool(
    name = "text-stats",
    description = "Counts characters, words and lines of a text and lists its most frequent terms."
)]
fn invoke(input: Input) -> Result<Output, ToolError> {
    Ok(analyse(&input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandgraph_guest::runtime;

    fn input(text: &str) -> Input {
        Input {
            text: text.into(),
            top: 10,
            skip_stop_words: true,
            min_term_length: 1,
        }
    }

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        let mut sorted = STOP_WORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STOP_WORDS);
    }

    #[test]
    fn counts() {
        let out = analyse(&input("The cat sat.\nThe cat ran!\n"));
        assert_eq!((out.chars, out.bytes, out.lines, out.words), (26, 26, 2, 6));
        assert_eq!(out.unique_terms, 3);
        assert_eq!(
            out.top_terms,
            vec![
                Term {
                    term: "cat".into(),
                    count: 2
                },
                Term {
                    term: "ran".into(),
                    count: 1
                },
                Term {
                    term: "sat".into(),
                    count: 1
                }
            ]
        );
    }

    #[test]
    fn lines_without_trailing_newline_and_empty_text() {
        assert_eq!(analyse(&input("a\nb")).lines, 2);
        let empty = analyse(&input(""));
        assert_eq!((empty.lines, empty.words, empty.unique_terms), (0, 0, 0));
        assert!(empty.top_terms.is_empty());
    }

    #[test]
    fn unicode_words_and_apostrophes() {
        let out = analyse(&input("Ça va? Don't -- well-known café’s"));
        assert_eq!(out.words, 5);
        let terms: Vec<&str> = out.top_terms.iter().map(|t| t.term.as_str()).collect();
        assert_eq!(terms, ["café’s", "don't", "va", "well-known", "ça"]);
        assert_eq!(out.chars, 33);
        assert!(out.bytes > out.chars);
    }

    #[test]
    fn options_filter_terms() {
        let mut i = input("the the the a big big dog");
        i.skip_stop_words = false;
        i.top = 2;
        assert_eq!(
            analyse(&i).top_terms,
            vec![
                Term {
                    term: "the".into(),
                    count: 3
                },
                Term {
                    term: "big".into(),
                    count: 2
                }
            ]
        );
        i.min_term_length = 4;
        assert!(analyse(&i).top_terms.is_empty());
    }

    #[test]
    fn defaults_and_schema_limits_through_the_request_path() {
        let out = runtime::call::<SandgraphTool>(r#"{"text":"x y x"}"#).unwrap();
        assert!(
            out.contains(r#""top_terms":[{"term":"x","count":2},{"term":"y","count":1}]"#),
            "{out}"
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"text":"x","top":5000}"#).unwrap_err(),
            ToolError::invalid_input("at `top`: 5000 is greater than the maximum 1000")
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"txt":"x"}"#).unwrap_err(),
            ToolError::invalid_input("missing field `text`")
        );
    }
}
