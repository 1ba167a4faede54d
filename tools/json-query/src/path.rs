//! Parser and evaluator for the JSONPath subset `json-query` accepts (RFC 9535 syntax):
//! `$`, `.name`, `['name']`, `[index]` (negative from the end), `[*]`/`.*`,
//! `..` (descendants), `[start:end:step]` slices and `[a, 'b']` unions.

use std::fmt;

use serde_json::Value;

/// Why a path did not parse; `column` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub message: String,
    pub column: usize,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (column {})", self.message, self.column)
    }
}

impl std::error::Error for PathError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Index(i64),
    Wildcard,
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        step: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `.x`, `[...]`: applies to the current nodes.
    Child(Vec<Selector>),
    /// `..x`, `..[...]`: applies to the current nodes and all their descendants.
    Descendant(Vec<Selector>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub segments: Vec<Segment>,
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    _src: &'a str,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> PathError {
        PathError {
            message: message.into(),
            column: self.pos + 1,
        }
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while self
            .peek()
            .is_some_and(|c| c == ' ' || c == '\t' || c == '\n' || c == '\r')
        {
            self.pos += 1;
        }
    }

    fn name(&mut self) -> Result<String, PathError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c as u32 >= 0x80)
        {
            self.pos += 1;
        }
        if start == self.pos || self.chars[start].is_ascii_digit() {
            self.pos = start;
            return Err(self.err("expected a member name, `*` or `[` after `.`"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn quoted(&mut self, quote: char) -> Result<String, PathError> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(format!("unterminated string; expected a closing {quote}")));
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        '/' | '\\' | '\'' | '"' => e,
                        'u' => {
                            let hex: String = self
                                .chars
                                .get(self.pos..self.pos + 4)
                                .unwrap_or_default()
                                .iter()
                                .collect();
                            let code = u32::from_str_radix(&hex, 16)
                                .ok()
                                .filter(|_| hex.len() == 4);
                            let ch = code.and_then(char::from_u32).ok_or_else(|| {
                                self.err("`\\u` needs four hex digits of a valid character")
                            })?;
                            self.pos += 4;
                            ch
                        }
                        other => {
                            self.pos -= 1;
                            return Err(self.err(format!("unknown escape `\\{other}`")));
                        }
                    });
                }
                c => out.push(c),
            }
        }
    }

    fn int(&mut self) -> Result<Option<i64>, PathError> {
        let start = self.pos;
        self.eat('-');
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<i64>().map(Some).map_err(|_| {
            self.pos = start;
            self.err(format!("`{text}` is not an integer in range"))
        })
    }

    fn selector(&mut self) -> Result<Selector, PathError> {
        self.skip_ws();
        match self.peek() {
            Some('*') => {
                self.pos += 1;
                Ok(Selector::Wildcard)
            }
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                Ok(Selector::Name(self.quoted(q)?))
            }
            Some('?') => Err(self.err("filter expressions `?(...)` are not supported")),
            Some(c) if c == '-' || c == ':' || c.is_ascii_digit() => {
                let start = self.int()?;
                self.skip_ws();
                if !self.eat(':') {
                    return start
                        .map(Selector::Index)
                        .ok_or_else(|| self.err("expected an index"));
                }
                self.skip_ws();
                let end = self.int()?;
                self.skip_ws();
                let step = if self.eat(':') {
                    self.skip_ws();
                    self.int()?.unwrap_or(1)
                } else {
                    1
                };
                Ok(Selector::Slice { start, end, step })
            }
            Some(c) => Err(self.err(format!(
                "unexpected `{c}` in brackets; expected a quoted name, an index, a slice or `*`"
            ))),
            None => Err(self.err("unterminated `[`")),
        }
    }

    fn bracket(&mut self) -> Result<Vec<Selector>, PathError> {
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_ws();
            if self.eat(']') {
                return Ok(selectors);
            }
            if !self.eat(',') {
                return Err(match self.peek() {
                    Some(c) => self.err(format!("unexpected `{c}`; expected `,` or `]`")),
                    None => self.err("unterminated `[`; expected `]`"),
                });
            }
            selectors.push(self.selector()?);
        }
    }

    fn dotted(&mut self) -> Result<Vec<Selector>, PathError> {
        if self.eat('*') {
            Ok(vec![Selector::Wildcard])
        } else if self.eat('[') {
            self.bracket()
        } else {
            Ok(vec![Selector::Name(self.name()?)])
        }
    }
}

impl Path {
    pub fn parse(src: &str) -> Result<Path, PathError> {
        let mut p = Parser {
            chars: src.chars().collect(),
            pos: 0,
            _src: src,
        };
        p.skip_ws();
        if !p.eat('$') {
            return Err(p.err("a path starts with `$`"));
        }
        let mut segments = Vec::new();
        loop {
            p.skip_ws();
            match p.peek() {
                None => break,
                Some('.') => {
                    p.pos += 1;
                    if p.eat('.') {
                        segments.push(Segment::Descendant(p.dotted()?));
                    } else if p.peek() == Some('[') {
                        return Err(p.err("use `[...]` or `..[...]`, not `.[...]`"));
                    } else {
                        segments.push(Segment::Child(p.dotted()?));
                    }
                }
                Some('[') => {
                    p.pos += 1;
                    segments.push(Segment::Child(p.bracket()?));
                }
                Some(c) => {
                    return Err(p.err(format!("unexpected `{c}`; expected `.`, `..` or `[`")));
                }
            }
        }
        Ok(Path { segments })
    }

    /// Every node the path selects, with its normalized path, in document order.
    pub fn select<'v>(&self, root: &'v Value) -> Vec<(String, &'v Value)> {
        let mut nodes = vec![("$".to_owned(), root)];
        for segment in &self.segments {
            let mut next = Vec::new();
            match segment {
                Segment::Child(selectors) => {
                    for (loc, node) in &nodes {
                        apply(selectors, loc, node, &mut next);
                    }
                }
                Segment::Descendant(selectors) => {
                    for (loc, node) in &nodes {
                        descend(selectors, loc.clone(), node, &mut next);
                    }
                }
            }
            nodes = next;
        }
        nodes
    }
}

fn descend<'v>(
    selectors: &[Selector],
    loc: String,
    node: &'v Value,
    out: &mut Vec<(String, &'v Value)>,
) {
    // Iterative pre-order walk: hostile documents may nest deeply.
    let mut stack = vec![(loc, node)];
    while let Some((loc, node)) = stack.pop() {
        apply(selectors, &loc, node, out);
        let children: Vec<(String, &Value)> = match node {
            Value::Object(map) => map.iter().map(|(k, v)| (child_name(&loc, k), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{loc}[{i}]"), v))
                .collect(),
            _ => Vec::new(),
        };
        stack.extend(children.into_iter().rev());
    }
}

fn child_name(loc: &str, key: &str) -> String {
    let escaped = key.replace('\\', "\\\\").replace('\'', "\\'");
    format!("{loc}['{escaped}']")
}

fn apply<'v>(
    selectors: &[Selector],
    loc: &str,
    node: &'v Value,
    out: &mut Vec<(String, &'v Value)>,
) {
    for selector in selectors {
        match (selector, node) {
            (Selector::Name(name), Value::Object(map)) => {
                if let Some(v) = map.get(name) {
                    out.push((child_name(loc, name), v));
                }
            }
            (Selector::Wildcard, Value::Object(map)) => {
                out.extend(map.iter().map(|(k, v)| (child_name(loc, k), v)));
            }
            (Selector::Wildcard, Value::Array(items)) => {
                out.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{loc}[{i}]"), v)),
                );
            }
            (Selector::Index(i), Value::Array(items)) => {
                let len = items.len() as i64;
                let idx = if *i < 0 { len + i } else { *i };
                if (0..len).contains(&idx) {
                    out.push((format!("{loc}[{idx}]"), &items[idx as usize]));
                }
            }
            (Selector::Slice { start, end, step }, Value::Array(items)) => {
                for idx in slice_indices(items.len() as i64, *start, *end, *step) {
                    out.push((format!("{loc}[{idx}]"), &items[idx as usize]));
                }
            }
            _ => {}
        }
    }
}

/// RFC 9535 §2.3.4.2 slice semantics.
fn slice_indices(len: i64, start: Option<i64>, end: Option<i64>, step: i64) -> Vec<i64> {
    let norm = |i: i64| if i >= 0 { i } else { len + i };
    let mut out = Vec::new();
    if step > 0 {
        let lower = norm(start.unwrap_or(0)).clamp(0, len);
        let upper = norm(end.unwrap_or(len)).clamp(0, len);
        let mut i = lower;
        while i < upper {
            out.push(i);
            i += step;
        }
    } else if step < 0 {
        let upper = norm(start.unwrap_or(len - 1)).clamp(-1, len - 1);
        let lower = norm(end.unwrap_or(-len - 1)).clamp(-1, len - 1);
        let mut i = upper;
        while lower < i {
            out.push(i);
            i += step;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "store": {
                "book": [
                    {"title": "A", "price": 8, "id": 1},
                    {"title": "B", "price": 12, "id": 2},
                    {"title": "C", "price": 9, "id": 3}
                ],
                "bike": {"color": "red", "id": 4}
            },
            "odd key": {"it's": true}
        })
    }

    fn values(path: &str) -> Vec<Value> {
        Path::parse(path)
            .unwrap()
            .select(&doc())
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn paths(path: &str) -> Vec<String> {
        Path::parse(path)
            .unwrap()
            .select(&doc())
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    fn err(path: &str) -> String {
        Path::parse(path).unwrap_err().to_string()
    }

    #[test]
    fn child_names_and_indices() {
        assert_eq!(values("$.store.bike.color"), [json!("red")]);
        assert_eq!(values("$['store']['book'][1].title"), [json!("B")]);
        assert_eq!(values("$.store.book[-1].title"), [json!("C")]);
        assert_eq!(values("$.store.book[7]"), Vec::<Value>::new());
        assert_eq!(values("$[\"odd key\"]['it\\'s']"), [json!(true)]);
        assert_eq!(values("$"), [doc()]);
    }

    #[test]
    fn wildcards_unions_and_slices() {
        assert_eq!(
            values("$.store.book[*].price"),
            [json!(8), json!(12), json!(9)]
        );
        assert_eq!(values("$.store.book.*.id"), [json!(1), json!(2), json!(3)]);
        assert_eq!(values("$.store.book[0, 2].title"), [json!("A"), json!("C")]);
        assert_eq!(values("$.store.book[1:].id"), [json!(2), json!(3)]);
        assert_eq!(values("$.store.book[:2].id"), [json!(1), json!(2)]);
        assert_eq!(
            values("$.store.book[::-1].id"),
            [json!(3), json!(2), json!(1)]
        );
        assert_eq!(values("$.store.book[::0].id"), Vec::<Value>::new());
    }

    #[test]
    fn descendants_in_document_order() {
        assert_eq!(values("$..id"), [json!(4), json!(1), json!(2), json!(3)]);
        assert_eq!(paths("$..color"), ["$['store']['bike']['color']"]);
        assert_eq!(values("$..book[0].title"), [json!("A")]);
    }

    #[test]
    fn normalized_paths_escape_quotes() {
        assert_eq!(paths("$['odd key'].*"), ["$['odd key']['it\\'s']"]);
    }

    #[test]
    fn deep_documents_do_not_overflow_the_stack() {
        let mut v = json!(1);
        for _ in 0..100 {
            v = json!({ "a": v });
        }
        assert_eq!(Path::parse("$..a").unwrap().select(&v).len(), 100);
    }

    #[test]
    fn parse_errors_name_the_column() {
        assert_eq!(err("store"), "a path starts with `$` (column 1)");
        assert_eq!(err("$.store["), "unterminated `[` (column 9)");
        assert_eq!(
            err("$.a[?(@.x)]"),
            "filter expressions `?(...)` are not supported (column 5)"
        );
        assert_eq!(
            err("$.a['x"),
            "unterminated string; expected a closing ' (column 7)"
        );
        assert_eq!(
            err("$.1"),
            "expected a member name, `*` or `[` after `.` (column 3)"
        );
        assert_eq!(
            err("$.a[1 2]"),
            "unexpected `2`; expected `,` or `]` (column 7)"
        );
        assert_eq!(
            err("$.a b"),
            "unexpected `b`; expected `.`, `..` or `[` (column 5)"
        );
        assert_eq!(
            err("$.[0]"),
            "use `[...]` or `..[...]`, not `.[...]` (column 3)"
        );
        assert_eq!(
            err("$[99999999999999999999]"),
            "`99999999999999999999` is not an integer in range (column 3)"
        );
    }
}
