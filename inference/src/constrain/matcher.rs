//! The byte-level pushdown automaton over a compiled [`Grammar`]: it accepts a byte only if the
//! text so far can still be completed into a valid document, so a decoder that only emits
//! accepted bytes can never paint itself into a corner.
//!
//! A state is a small set of stacks (more than one only where `anyOf` alternatives or a
//! number/enum that may end or go on leave the parse ambiguous).

use std::sync::Arc;

use regex_automata::util::primitives::StateID;

use super::numeric::{NumBounds, NumPrefix};
use super::schema::{ANY, Grammar, Node, NodeId};

/// Generic words of the `Any` grammar.
const WORDS: [&[u8]; 3] = [b"true", b"false", b"null"];
/// Digit limits that keep numbers finite f64 and bounded in length.
const MAX_INT_DIGITS: u8 = 15;
const MAX_FRAC_DIGITS: u8 = 15;
const MAX_EXP_DIGITS: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ObjPhase {
    /// After `{`.
    Open,
    /// Inside a key (a `Key` frame is above).
    InKey,
    /// Key `prop` read; expects `:`.
    Colon(u16),
    /// After a value: `,` or `}`.
    AfterValue,
    /// After `,`: a key.
    AfterComma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum NumSt {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Esc {
    None,
    Backslash,
    /// Hex digits still expected after `\u`.
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Frame {
    /// A value of this node starts with the next byte.
    Value(NodeId),
    Obj {
        node: NodeId,
        /// First property that may still come.
        next: u16,
        phase: ObjPhase,
    },
    /// Matching a key of object `node`: the bytes so far equal `props[prop].key[..len]`.
    Key {
        node: NodeId,
        prop: u16,
        len: u16,
    },
    AnyObj {
        phase: ObjPhase,
    },
    Arr {
        items: NodeId,
        min: u32,
        max: u32,
        count: u32,
        /// `Open` after `[`, `AfterValue`, `AfterComma`.
        phase: ObjPhase,
    },
    Str {
        min: u32,
        max: u32,
        count: u32,
        esc: Esc,
        /// UTF-8 continuation bytes still expected and the range of the next one.
        cont: u8,
        lo: u8,
        hi: u8,
        /// The string's `pattern`/`format` (index into the grammar's patterns) and where its
        /// automaton stands.
        pat: Option<(u32, StateID)>,
    },
    Num {
        integer: bool,
        st: NumSt,
        digits: u8,
        /// The node whose bounds apply ([`NO_BOUNDS`] when none do), and the value so far
        /// (tracked only under bounds, so unbounded numbers share states).
        node: NodeId,
        neg: bool,
        int: u64,
        frac: u64,
    },
    /// The bytes so far equal `lits[idx][..len]` of a `Literals` node.
    Lit {
        node: NodeId,
        idx: u16,
        len: u16,
    },
    Word {
        word: u8,
        len: u8,
    },
}

type Stack = Vec<Frame>;

/// A matcher state with string lengths forgotten where they cannot matter (see
/// [`Matcher::state_key`]): equal keys allow exactly the same next tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateKey(Vec<Stack>);

/// A parse inside a plain string (see [`Matcher::plain_string`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainString {
    /// Characters the string may still take.
    pub room: u32,
    /// Characters it still needs to reach its `minLength`.
    pub short: u32,
    /// Bytes that close everything around the string once it is closed.
    pub below: u32,
}

/// Where a document stands: every stack is a way the bytes so far parse.
#[derive(Clone, Debug)]
pub struct Matcher {
    g: Arc<Grammar>,
    stacks: Vec<Stack>,
    /// Per grammar node, the length in bytes of its shortest document.
    min_len: Arc<[u32]>,
}

/// "Cannot be completed" in shortest-length arithmetic (never reached by real documents).
const FAR: u32 = u32::MAX / 4;

/// `Frame::Num::node` of a number without bounds.
const NO_BOUNDS: NodeId = NodeId::MAX;

/// The prefix a number frame stands at, for its bounds (exponent states have none: bounded
/// numbers are written without one).
fn num_prefix(st: NumSt, neg: bool, int: u64, frac: u64, digits: u8) -> Option<NumPrefix> {
    Some(match st {
        NumSt::Start => NumPrefix::Start,
        NumSt::Minus => NumPrefix::Minus,
        NumSt::Zero => NumPrefix::Zero { neg },
        NumSt::Int => NumPrefix::Int {
            neg,
            int,
            digits: digits as u32,
        },
        NumSt::Dot => NumPrefix::Dot { neg, int },
        NumSt::Frac => NumPrefix::Frac {
            neg,
            int,
            frac,
            digits: digits as u32,
        },
        NumSt::Exp | NumSt::ExpSign | NumSt::ExpDig => return None,
    })
}

/// The shortest compact document of every node, by fixpoint (recursive `$ref`s converge).
fn node_min_lens(g: &Grammar) -> Vec<u32> {
    let mut m = vec![FAR; g.nodes.len()];
    let add = |a: u32, b: u32| a.saturating_add(b).min(FAR);
    loop {
        let mut changed = false;
        for (i, n) in g.nodes.iter().enumerate() {
            let v = match n {
                Node::Any => 1,
                Node::Integer(b) => {
                    b.map_or(1, |b| b.close_bytes(NumPrefix::Start, true).unwrap_or(FAR))
                }
                Node::Number(b) => {
                    b.map_or(1, |b| b.close_bytes(NumPrefix::Start, false).unwrap_or(FAR))
                }
                Node::AnyObject => 2,
                Node::Object { props } => {
                    let req: Vec<&super::schema::Prop> =
                        props.iter().filter(|p| p.required).collect();
                    let body = req.iter().fold(0u32, |acc, p| {
                        add(acc, add(p.key.len() as u32 + 2, m[p.node as usize]))
                    });
                    add(add(2, body), req.len().saturating_sub(1) as u32)
                }
                Node::Array { items, min, .. } => add(
                    add(2, m[*items as usize].saturating_mul(*min).min(FAR)),
                    min.saturating_sub(1),
                ),
                Node::String { min, max, pattern } => add(
                    2,
                    (*min).max(pattern.map_or(0, |p| {
                        let p = &g.patterns[p as usize];
                        if *min > 0 {
                            p.fit(p.start(), *min, *max).unwrap_or(FAR)
                        } else {
                            p.close(p.start())
                        }
                    })),
                ),
                Node::Boolean | Node::Null => 4,
                Node::Literals(l) => l.iter().map(|l| l.len() as u32).min().unwrap_or(FAR),
                Node::AnyOf(a) => a.iter().map(|&a| m[a as usize]).min().unwrap_or(FAR),
            };
            if v < m[i] {
                m[i] = v;
                changed = true;
            }
        }
        if !changed {
            return m;
        }
    }
}

impl Matcher {
    pub fn new(g: Arc<Grammar>) -> Matcher {
        let root = g.root;
        let min_len = node_min_lens(&g).into();
        Matcher {
            g,
            stacks: vec![vec![Frame::Value(root)]],
            min_len,
        }
    }

    /// A key equal for states that accept the same continuations of up to `horizon` bytes:
    /// inside a string whose `minLength` is met and whose `maxLength` is more than `horizon`
    /// characters away, the exact length so far cannot change what a token may hold, so it is
    /// left out. Consecutive states inside a long string then share one key (and one mask).
    pub fn state_key(&self, horizon: usize) -> StateKey {
        let horizon = horizon.min(u32::MAX as usize) as u32;
        StateKey(
            self.stacks
                .iter()
                .map(|s| {
                    s.iter()
                        .map(|f| match *f {
                            Frame::Str {
                                min,
                                max,
                                count,
                                esc,
                                cont,
                                lo,
                                hi,
                                pat,
                            } if count >= min && max - count > horizon => Frame::Str {
                                min,
                                max,
                                count: u32::MAX,
                                esc,
                                cont,
                                lo,
                                hi,
                                pat,
                            },
                            f => f,
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// When the only parse is inside a string without a pattern, at a character boundary
    /// outside any escape: how many more characters it may hold. Then a token of plain
    /// content (no quote, backslash or control byte) fits exactly when its characters do.
    pub fn plain_string_room(&self) -> Option<u32> {
        self.plain_string().map(|p| p.room)
    }

    /// [`Matcher::plain_string_room`] with what closing costs: after `n` more plain
    /// characters the fewest bytes to close the document are
    /// `short.saturating_sub(n) + 1 + below`.
    pub fn plain_string(&self) -> Option<PlainString> {
        match self.stacks.as_slice() {
            [s] => match s.last()? {
                Frame::Str {
                    min,
                    max,
                    count,
                    esc: Esc::None,
                    cont: 0,
                    pat: None,
                    ..
                } => {
                    let below = self.stack_close(&s[..s.len() - 1]);
                    Some(PlainString {
                        room: max.saturating_sub(*count),
                        short: min.saturating_sub(*count),
                        below,
                    })
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The fewest bytes that complete the document from here (0 when it may end now). The
    /// count follows a real path: some next byte always lowers it by exactly one, so a decoder
    /// with that many single-byte tokens left can always close the document.
    pub fn min_close_bytes(&self) -> usize {
        self.stacks
            .iter()
            .map(|s| self.stack_close(s))
            .min()
            .unwrap_or(0) as usize
    }

    /// The largest finite shortest-document length of any node: how much one opened value
    /// can add to the closing cost.
    pub fn max_node_min_len(&self) -> usize {
        self.min_len
            .iter()
            .copied()
            .filter(|&v| v < FAR)
            .max()
            .unwrap_or(0) as usize
    }

    fn stack_close(&self, s: &[Frame]) -> u32 {
        let mut total = 0u32;
        for (i, f) in s.iter().enumerate() {
            let above = s.get(i + 1);
            total = total.saturating_add(self.frame_close(f, above)).min(FAR);
        }
        total
    }

    /// Bytes that finish frame `f` once the frame above it (if any) is finished.
    fn frame_close(&self, f: &Frame, above: Option<&Frame>) -> u32 {
        let m = |n: NodeId| self.min_len[n as usize];
        // Required properties from `from` on, each `,"key":value` (no comma for the first
        // when `first`), plus the closing brace.
        let props_close = |node: NodeId, from: usize, first: bool| -> u32 {
            let mut c = 1u32; // `}`
            let mut first = first;
            for p in self.props(node).iter().skip(from).filter(|p| p.required) {
                let comma = if first { 0 } else { 1 };
                first = false;
                c = c
                    .saturating_add(comma + p.key.len() as u32 + 2)
                    .saturating_add(m(p.node))
                    .min(FAR);
            }
            c
        };
        match *f {
            Frame::Value(n) => m(n),
            Frame::Obj { node, next, phase } => match phase {
                ObjPhase::Open => props_close(node, next as usize, true),
                ObjPhase::AfterValue => props_close(node, next as usize, false),
                ObjPhase::AfterComma => {
                    let rest = &self.props(node)[next as usize..];
                    if rest.iter().any(|p| p.required) {
                        props_close(node, next as usize, true)
                    } else {
                        // A key must follow the comma: the cheapest optional property.
                        rest.iter()
                            .map(|p| p.key.len() as u32 + 2 + m(p.node))
                            .min()
                            .map_or(FAR, |c| c.saturating_add(1).min(FAR))
                    }
                }
                ObjPhase::InKey => match above {
                    // The key being typed may still become any property it is a prefix of
                    // (those the matcher would consider: up to the first required one).
                    Some(&Frame::Key { prop, len, .. }) => {
                        let props = self.props(node);
                        let typed = &props[prop as usize].key[..len as usize];
                        let mut best = FAR;
                        for (j, p) in props.iter().enumerate().skip(next as usize) {
                            if p.key.len() > len as usize && p.key.starts_with(typed) {
                                let c = (p.key.len() as u32 - len as u32 + 1)
                                    .saturating_add(m(p.node))
                                    .saturating_add(props_close(node, j + 1, false));
                                best = best.min(c);
                            }
                            if p.required {
                                break;
                            }
                        }
                        best.min(FAR)
                    }
                    _ => FAR,
                },
                ObjPhase::Colon(p) => {
                    let v = m(self.props(node)[p as usize].node);
                    (1 + v).saturating_add(props_close(node, p as usize + 1, false))
                }
            },
            // Counted by the object below it (the key may still change property).
            Frame::Key { .. } => 0,
            Frame::AnyObj { phase } => match phase {
                ObjPhase::Open | ObjPhase::AfterValue | ObjPhase::InKey => 1,
                ObjPhase::AfterComma => 5, // "":0}
                ObjPhase::Colon(_) => 3,   // :0}
            },
            Frame::Arr {
                items,
                min,
                count,
                phase,
                ..
            } => {
                let item = m(items).saturating_add(1);
                match phase {
                    ObjPhase::AfterComma => {
                        let need = min.saturating_sub(count + 1);
                        m(items)
                            .saturating_add(item.saturating_mul(need))
                            .saturating_add(1)
                    }
                    ObjPhase::Open if min > 0 => item.saturating_mul(min),
                    _ => item
                        .saturating_mul(min.saturating_sub(count))
                        .saturating_add(1),
                }
                .min(FAR)
            }
            Frame::Str {
                min,
                max,
                count,
                esc,
                cont,
                pat,
                ..
            } => {
                let (pending, counted) = match esc {
                    Esc::None => (cont as u32, 0),
                    Esc::Backslash => (1, 1),
                    Esc::Hex(n) => (n as u32, 1),
                };
                let chars = pending + min.saturating_sub(count + counted);
                let pattern = pat.map_or(0, |(p, st)| {
                    let p = &self.g.patterns[p as usize];
                    if min > 0 {
                        p.fit(st, min.saturating_sub(count), max.saturating_sub(count))
                            .unwrap_or(FAR)
                    } else {
                        p.close(st)
                    }
                });
                chars.max(pattern).saturating_add(1).min(FAR)
            }
            Frame::Num { st, .. } => match self.bounded_close(f) {
                Some(close) => close.unwrap_or(FAR),
                None => match st {
                    NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::ExpDig => 0,
                    _ => 1,
                },
            },
            Frame::Lit { node, idx, len } => {
                let lits = self.lits(node);
                let prefix = &lits[idx as usize][..len as usize];
                lits.iter()
                    .filter(|l| l.starts_with(prefix))
                    .map(|l| (l.len() - len as usize) as u32)
                    .min()
                    .unwrap_or(FAR)
            }
            Frame::Word { word, len } => (WORDS[word as usize].len() - len as usize) as u32,
        }
    }

    /// Consumes `b` if some parse accepts it; otherwise returns false and stays unchanged.
    pub fn advance(&mut self, b: u8) -> bool {
        let mut out: Vec<Stack> = Vec::new();
        for s in &self.stacks {
            self.step(s.clone(), b, &mut out);
        }
        if out.is_empty() {
            return false;
        }
        self.stacks = out;
        true
    }

    /// Consumes all of `bytes` or, if any is rejected, nothing.
    pub fn advance_all(&mut self, bytes: &[u8]) -> bool {
        let mut m = self.clone();
        for &b in bytes {
            if !m.advance(b) {
                return false;
            }
        }
        *self = m;
        true
    }

    /// Whether `bytes` would be accepted (without consuming them).
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        self.clone().advance_all(bytes)
    }

    /// The bytes so far form a complete document (end of sequence is allowed).
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|s| match s.as_slice() {
            [] => true,
            [top] => self.can_end(top),
            _ => false,
        })
    }

    /// Whether any further byte could be accepted.
    pub fn can_continue(&self) -> bool {
        (0..=255u8).any(|b| self.accepts(&[b]))
    }

    fn can_end(&self, f: &Frame) -> bool {
        match *f {
            Frame::Num { st, .. } => {
                matches!(st, NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::ExpDig)
                    && self.bounded_close(f).is_none_or(|close| close == Some(0))
            }
            Frame::Lit { node, idx, len } => {
                let lits = self.lits(node);
                lits.iter()
                    .any(|l| l.len() == len as usize && l[..] == lits[idx as usize][..len as usize])
            }
            _ => false,
        }
    }

    /// The bounds of number node `node` (none for [`NO_BOUNDS`] or an unbounded node).
    fn num_bounds(&self, node: NodeId) -> Option<NumBounds> {
        if node == NO_BOUNDS {
            return None;
        }
        match self.g.node(node) {
            Node::Integer(b) | Node::Number(b) => *b,
            _ => None,
        }
    }

    /// For a number frame under bounds: the fewest bytes to a value within them (`None`
    /// inside when none is reachable). `None` for other frames and unbounded numbers.
    fn bounded_close(&self, f: &Frame) -> Option<Option<u32>> {
        let Frame::Num {
            integer,
            st,
            digits,
            node,
            neg,
            int,
            frac,
        } = *f
        else {
            return None;
        };
        let b = self.num_bounds(node)?;
        Some(num_prefix(st, neg, int, frac, digits).and_then(|p| b.close_bytes(p, integer)))
    }

    fn lits(&self, node: NodeId) -> &[Vec<u8>] {
        match self.g.node(node) {
            Node::Literals(l) => l,
            _ => &[],
        }
    }

    fn props(&self, node: NodeId) -> &[super::schema::Prop] {
        match self.g.node(node) {
            Node::Object { props } => props,
            _ => &[],
        }
    }

    fn push_out(out: &mut Vec<Stack>, s: Stack) {
        if !out.contains(&s) {
            out.push(s);
        }
    }

    /// All stacks that result from feeding `b` to stack `s`.
    fn step(&self, mut s: Stack, b: u8, out: &mut Vec<Stack>) {
        let Some(&top) = s.last() else {
            return; // the document is complete: nothing more fits
        };
        if self.can_end(&top) {
            // The number/literal may end here and `b` belong to the container.
            let mut popped = s.clone();
            popped.pop();
            self.step(popped, b, out);
        }
        let last = s.len() - 1;
        match top {
            Frame::Value(n) => {
                s.pop();
                self.start(s, n, b, out);
            }
            Frame::Obj { node, next, phase } => {
                let props = self.props(node);
                let rest = &props[next as usize..];
                let may_close = !rest.iter().any(|p| p.required);
                match (phase, b) {
                    (ObjPhase::Open | ObjPhase::AfterValue, b'}') if may_close => {
                        s.pop();
                        Self::push_out(out, s);
                    }
                    (ObjPhase::AfterValue, b',') if !rest.is_empty() => {
                        s[last] = Frame::Obj {
                            node,
                            next,
                            phase: ObjPhase::AfterComma,
                        };
                        Self::push_out(out, s);
                    }
                    (ObjPhase::Open | ObjPhase::AfterComma, b'"') if !rest.is_empty() => {
                        s[last] = Frame::Obj {
                            node,
                            next,
                            phase: ObjPhase::InKey,
                        };
                        s.push(Frame::Key {
                            node,
                            prop: next,
                            len: 0,
                        });
                        Self::push_out(out, s);
                    }
                    (ObjPhase::Colon(p), b':') => {
                        s[last] = Frame::Obj {
                            node,
                            next: p + 1,
                            phase: ObjPhase::AfterValue,
                        };
                        s.push(Frame::Value(props[p as usize].node));
                        Self::push_out(out, s);
                    }
                    _ => {}
                }
            }
            Frame::Key { node, prop, len } => {
                let props = self.props(node);
                let Some(Frame::Obj { next, .. }) = s.get(last.wrapping_sub(1)).copied() else {
                    return;
                };
                let typed = &props[prop as usize].key[..len as usize];
                // Candidates: from `next` up to and including the first required property.
                let mut found = None;
                for (j, p) in props.iter().enumerate().skip(next as usize) {
                    if p.key.len() > len as usize
                        && &p.key[..len as usize] == typed
                        && p.key[len as usize] == b
                    {
                        found = Some(j);
                        break;
                    }
                    if p.required {
                        break;
                    }
                }
                let Some(j) = found else { return };
                if props[j].key.len() == len as usize + 1 {
                    s.pop();
                    s[last - 1] = Frame::Obj {
                        node,
                        next,
                        phase: ObjPhase::Colon(j as u16),
                    };
                } else {
                    s[last] = Frame::Key {
                        node,
                        prop: j as u16,
                        len: len + 1,
                    };
                }
                Self::push_out(out, s);
            }
            Frame::AnyObj { phase } => match (phase, b) {
                (ObjPhase::Open | ObjPhase::AfterValue, b'}') => {
                    s.pop();
                    Self::push_out(out, s);
                }
                (ObjPhase::AfterValue, b',') => {
                    s[last] = Frame::AnyObj {
                        phase: ObjPhase::AfterComma,
                    };
                    Self::push_out(out, s);
                }
                (ObjPhase::Open | ObjPhase::AfterComma, b'"') => {
                    s[last] = Frame::AnyObj {
                        phase: ObjPhase::Colon(0),
                    };
                    s.push(str_frame(0, u32::MAX, None));
                    Self::push_out(out, s);
                }
                (ObjPhase::Colon(_), b':') => {
                    s[last] = Frame::AnyObj {
                        phase: ObjPhase::AfterValue,
                    };
                    s.push(Frame::Value(ANY));
                    Self::push_out(out, s);
                }
                _ => {}
            },
            Frame::Arr {
                items,
                min,
                max,
                count,
                phase,
            } => {
                let close = count >= min && b == b']';
                match phase {
                    ObjPhase::Open | ObjPhase::AfterValue if close => {
                        s.pop();
                        Self::push_out(out, s);
                    }
                    ObjPhase::AfterValue if b == b',' && count < max => {
                        s[last] = Frame::Arr {
                            items,
                            min,
                            max,
                            count,
                            phase: ObjPhase::AfterComma,
                        };
                        Self::push_out(out, s);
                    }
                    ObjPhase::Open | ObjPhase::AfterComma if count < max => {
                        s[last] = Frame::Arr {
                            items,
                            min,
                            max,
                            count: count + 1,
                            phase: ObjPhase::AfterValue,
                        };
                        self.start(s, items, b, out);
                    }
                    _ => {}
                }
            }
            Frame::Str {
                min,
                max,
                count,
                esc,
                cont,
                lo,
                hi,
                pat,
            } => {
                let mut f = (min, max, count, esc, cont, lo, hi);
                let mut pat = pat;
                if let Some((p, st)) = pat {
                    let p_ref = &self.g.patterns[p as usize];
                    if b == b'"' {
                        if cont == 0 && count >= min && p_ref.ends(st) {
                            s.pop();
                            Self::push_out(out, s);
                        }
                        return;
                    }
                    // No escapes inside a pattern string: its bytes are the value's bytes.
                    let Some(next) = p_ref.next(st, b) else {
                        return;
                    };
                    pat = Some((p, next));
                }
                if cont > 0 {
                    if !(lo..=hi).contains(&b) {
                        return;
                    }
                    f.4 -= 1;
                    f.5 = 0x80;
                    f.6 = 0xbf;
                } else {
                    match esc {
                        Esc::Backslash => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                f.3 = Esc::None;
                                f.2 += 1;
                            }
                            b'u' => f.3 = Esc::Hex(4),
                            _ => return,
                        },
                        Esc::Hex(n) => {
                            // No surrogate escapes (\uD800-\uDFFF): a lone one does not parse.
                            let ok = b.is_ascii_hexdigit() && !(n == 4 && matches!(b, b'd' | b'D'));
                            if !ok {
                                return;
                            }
                            if n == 1 {
                                f.3 = Esc::None;
                                f.2 += 1;
                            } else {
                                f.3 = Esc::Hex(n - 1);
                            }
                        }
                        Esc::None => {
                            if b == b'"' {
                                if count >= min {
                                    s.pop();
                                    Self::push_out(out, s);
                                }
                                return;
                            }
                            if count >= max {
                                return;
                            }
                            let (n, l, h) = match b {
                                b'\\' => {
                                    f.3 = Esc::Backslash;
                                    (0, 0x80, 0xbf)
                                }
                                0x20..=0x7f => {
                                    f.2 += 1;
                                    (0, 0x80, 0xbf)
                                }
                                _ => match utf8_lead(b) {
                                    Some(lead) => lead,
                                    None => return,
                                },
                            };
                            if n > 0 {
                                f.2 += 1;
                            }
                            f.4 = n;
                            f.5 = l;
                            f.6 = h;
                        }
                    }
                }
                // Under a pattern and a maxLength, only go where a match still fits: the
                // shortest way to one (in bytes, so at least as many as in characters) must
                // be within the characters left.
                if let Some((p, st)) = pat {
                    let p = &self.g.patterns[p as usize];
                    if f.0 > 0 {
                        // With a minimum too: an ASCII completion of a length that meets both.
                        if f.4 > 0
                            || p.fit(st, f.0.saturating_sub(f.2), f.1.saturating_sub(f.2))
                                .is_none()
                        {
                            return;
                        }
                    } else if f.1 != u32::MAX && p.close(st) > f.1.saturating_sub(f.2) {
                        return;
                    }
                }
                s[last] = Frame::Str {
                    min: f.0,
                    max: f.1,
                    count: f.2,
                    esc: f.3,
                    cont: f.4,
                    lo: f.5,
                    hi: f.6,
                    pat,
                };
                Self::push_out(out, s);
            }
            Frame::Num {
                integer,
                st,
                digits,
                node,
                neg,
                int,
                frac,
            } => {
                let bounds = self.num_bounds(node);
                let d = b.is_ascii_digit();
                if bounds.is_some() && matches!(b, b'e' | b'E') {
                    return; // bounded numbers are written without an exponent
                }
                let prev = st;
                let (st, digits) = match (st, b) {
                    (NumSt::Start, b'-') => (NumSt::Minus, 0),
                    (NumSt::Start | NumSt::Minus, b'0') => (NumSt::Zero, 1),
                    (NumSt::Start | NumSt::Minus, _) if d => (NumSt::Int, 1),
                    (NumSt::Int, _) if d && digits < MAX_INT_DIGITS => (NumSt::Int, digits + 1),
                    (NumSt::Zero | NumSt::Int, b'.') if !integer => (NumSt::Dot, 0),
                    (NumSt::Dot, _) if d => (NumSt::Frac, 1),
                    (NumSt::Frac, _) if d && digits < MAX_FRAC_DIGITS => (NumSt::Frac, digits + 1),
                    (NumSt::Zero | NumSt::Int | NumSt::Frac, b'e' | b'E') if !integer => {
                        (NumSt::Exp, 0)
                    }
                    (NumSt::Exp, b'+' | b'-') => (NumSt::ExpSign, 0),
                    (NumSt::Exp | NumSt::ExpSign, _) if d => (NumSt::ExpDig, 1),
                    (NumSt::ExpDig, _) if d && digits < MAX_EXP_DIGITS => {
                        (NumSt::ExpDig, digits + 1)
                    }
                    _ => return,
                };
                let (mut neg, mut int, mut frac) = (neg, int, frac);
                if bounds.is_some() {
                    let v = (b - b'0') as u64;
                    match (prev, st) {
                        (_, NumSt::Minus) => neg = true,
                        (_, NumSt::Int) => int = if prev == NumSt::Int { int * 10 + v } else { v },
                        (_, NumSt::Frac) => {
                            frac = if prev == NumSt::Frac {
                                frac * 10 + v
                            } else {
                                v
                            }
                        }
                        _ => {}
                    }
                }
                let next = Frame::Num {
                    integer,
                    st,
                    digits,
                    node,
                    neg,
                    int,
                    frac,
                };
                // Under bounds, only where some value within them is still reachable.
                if self
                    .bounded_close(&next)
                    .is_some_and(|close| close.is_none())
                {
                    return;
                }
                s[last] = next;
                Self::push_out(out, s);
            }
            Frame::Lit { node, idx, len } => {
                let lits = self.lits(node);
                let prefix = &lits[idx as usize][..len as usize];
                let Some(j) = lits.iter().position(|l| {
                    l.len() > len as usize && &l[..len as usize] == prefix && l[len as usize] == b
                }) else {
                    return;
                };
                let len = len + 1;
                let now = &lits[j][..len as usize];
                let longer = lits
                    .iter()
                    .any(|l| l.len() > len as usize && &l[..len as usize] == now);
                if longer {
                    s[last] = Frame::Lit {
                        node,
                        idx: j as u16,
                        len,
                    };
                } else {
                    s.pop(); // exactly one literal, fully matched
                }
                Self::push_out(out, s);
            }
            Frame::Word { word, len } => {
                let w = WORDS[word as usize];
                if w[len as usize] != b {
                    return;
                }
                if len as usize + 1 == w.len() {
                    s.pop();
                } else {
                    s[last] = Frame::Word { word, len: len + 1 };
                }
                Self::push_out(out, s);
            }
        }
    }

    /// Starts a value of node `n` with byte `b` on top of `s`.
    fn start(&self, mut s: Stack, n: NodeId, b: u8, out: &mut Vec<Stack>) {
        let word = |w: u8| Frame::Word { word: w, len: 0 };
        let first: Option<Frame> = match self.g.node(n) {
            Node::AnyOf(alts) => {
                for &a in alts {
                    self.start(s.clone(), a, b, out);
                }
                return;
            }
            Node::Any => match b {
                b'{' => Some(Frame::AnyObj {
                    phase: ObjPhase::Open,
                }),
                b'[' => Some(Frame::Arr {
                    items: ANY,
                    min: 0,
                    max: u32::MAX,
                    count: 0,
                    phase: ObjPhase::Open,
                }),
                b'"' => Some(str_frame(0, u32::MAX, None)),
                b'-' | b'0'..=b'9' => Some(num_frame(false, NO_BOUNDS)),
                b't' => Some(word(0)),
                b'f' => Some(word(1)),
                b'n' => Some(word(2)),
                _ => None,
            },
            Node::AnyObject => (b == b'{').then_some(Frame::AnyObj {
                phase: ObjPhase::Open,
            }),
            Node::Object { .. } => (b == b'{').then_some(Frame::Obj {
                node: n,
                next: 0,
                phase: ObjPhase::Open,
            }),
            Node::Array { items, min, max } => (b == b'[').then_some(Frame::Arr {
                items: *items,
                min: *min,
                max: *max,
                count: 0,
                phase: ObjPhase::Open,
            }),
            Node::String { min, max, pattern } => (b == b'"').then(|| {
                let pat = pattern.map(|p| (p, self.g.patterns[p as usize].start()));
                str_frame(*min, *max, pat)
            }),
            Node::Integer(_) => Some(num_frame(true, n)),
            Node::Number(_) => Some(num_frame(false, n)),
            Node::Boolean => match b {
                b't' => Some(word(0)),
                b'f' => Some(word(1)),
                _ => None,
            },
            Node::Null => (b == b'n').then_some(word(2)),
            Node::Literals(_) => Some(Frame::Lit {
                node: n,
                idx: 0,
                len: 0,
            }),
        };
        let Some(f) = first else { return };
        match f {
            // These consume `b` themselves.
            Frame::Num { .. } | Frame::Lit { .. } | Frame::Word { .. } => {
                s.push(f);
                self.step(s, b, out);
            }
            _ => {
                s.push(f);
                Self::push_out(out, s);
            }
        }
    }
}

/// For a UTF-8 lead byte: the continuation bytes that follow and the range of the first of
/// them (the later ones are 0x80-0xbf); `None` for bytes no character starts with. Excludes
/// overlong forms and surrogates, as a JSON text must.
pub(crate) fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0xc2..=0xdf => (1, 0x80, 0xbf),
        0xe0 => (2, 0xa0, 0xbf),
        0xed => (2, 0x80, 0x9f),
        0xe1..=0xef => (2, 0x80, 0xbf),
        0xf0 => (3, 0x90, 0xbf),
        0xf1..=0xf3 => (3, 0x80, 0xbf),
        0xf4 => (3, 0x80, 0x8f),
        _ => return None,
    })
}

fn str_frame(min: u32, max: u32, pat: Option<(u32, StateID)>) -> Frame {
    Frame::Str {
        min,
        max,
        count: 0,
        esc: Esc::None,
        cont: 0,
        lo: 0x80,
        hi: 0xbf,
        pat,
    }
}

fn num_frame(integer: bool, node: NodeId) -> Frame {
    Frame::Num {
        integer,
        st: NumSt::Start,
        digits: 0,
        node,
        neg: false,
        int: 0,
        frac: 0,
    }
}
