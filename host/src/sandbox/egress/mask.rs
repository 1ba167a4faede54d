//! Keeping operator secrets out of what egress hands a guest. Every response body, header and
//! trailer of every request is searched for every value in the operator's secret store — not
//! only the request that carried it, since a server may store a value and hand it back later —
//! in raw form and in the encodings servers commonly apply (percent, JSON and HTML escapes,
//! hex, base64, base64url), including any run of at least `MIN_PARTIAL` consecutive bytes of a
//! secret (a prefix, a suffix). Matches are replaced by `*` of the same length, so framing and
//! lengths stay as the server sent them, also where a match spans frames.
//!
//! What masking cannot do: recognise a secret a server transformed in any other way (hashed,
//! encrypted, reversed, split into pieces shorter than `MIN_PARTIAL`, double-encoded).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::Error as HttpError;

/// The shortest run of a secret's bytes that is masked on its own (a secret shorter than this
/// is masked whole). Shorter fragments are not recognisable without masking ordinary text.
pub const MIN_PARTIAL: usize = 8;

/// How a masked occurrence was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    Raw,
    /// Percent-, JSON- or HTML-escaped (any mix of escaped and plain characters).
    Escaped,
    Hex,
    Base64,
    Base64Url,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Raw => "raw",
            Form::Escaped => "escaped",
            Form::Hex => "hex",
            Form::Base64 => "base64",
            Form::Base64Url => "base64url",
        }
    }
}

/// Occurrences masked, by form.
pub type MaskCounts = BTreeMap<Form, u32>;

/// Finds every recognisable form of a fixed set of secret values.
#[derive(Debug)]
pub struct SecretMasker {
    automaton: AhoCorasick,
    forms: Vec<Form>,
    /// How many trailing bytes of a stream may still be the start of an unfinished occurrence.
    hold: usize,
}

/// The base64 characters fully determined by `data` when it starts `shift` bytes into a
/// 3-byte group, in `engine`'s alphabet; empty when too short to be specific.
fn base64_core(engine: &base64::engine::GeneralPurpose, data: &[u8], shift: usize) -> Vec<u8> {
    let mut padded = vec![0u8; shift];
    padded.extend_from_slice(data);
    padded.extend_from_slice(&[0, 0]);
    let text = engine.encode(&padded);
    let first_bit = 8 * shift;
    let end_bit = 8 * (shift + data.len());
    let from = first_bit.div_ceil(6);
    let to = end_bit / 6;
    if to <= from {
        return Vec::new();
    }
    text.as_bytes()[from..to].to_vec()
}

impl SecretMasker {
    /// `None` when there is nothing to mask.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<SecretMasker> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut forms = Vec::new();
        let mut longest = 0;
        let std = base64::engine::general_purpose::STANDARD_NO_PAD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for secret in secrets {
            if secret.is_empty() {
                continue;
            }
            longest = longest.max(secret.len());
            let k = secret.len().min(MIN_PARTIAL);
            for gram in secret.windows(k) {
                let mut add = |p: Vec<u8>, form: Form| {
                    // Encoded forms shorter than 6 characters would match ordinary text.
                    if form == Form::Raw || p.len() >= 6 {
                        patterns.push(p);
                        forms.push(form);
                    }
                };
                add(gram.to_vec(), Form::Raw);
                // Matching ignores ASCII case: upper-case hex and an upper-cased echo too.
                add(hex::encode(gram).into_bytes(), Form::Hex);
                for shift in 0..3 {
                    add(base64_core(&std, gram, shift), Form::Base64);
                    let u = base64_core(&url, gram, shift);
                    if u.iter().any(|&b| b == b'-' || b == b'_') {
                        add(u, Form::Base64Url);
                    }
                }
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .build(&patterns)
            .expect("literal patterns always build");
        // The longest source text one pattern can match: a pattern is at most two characters
        // per byte of a `MIN_PARTIAL` run (hex), and one decoded byte comes from at most 18
        // source bytes (an escape of an escape). Independent of the secret's length, so a long
        // secret does not delay a streamed response more.
        let hold = 18 * 2 * longest.min(MIN_PARTIAL);
        Some(SecretMasker {
            automaton,
            forms,
            hold,
        })
    }

    /// Source intervals of every occurrence in `text` (raw and decoded views), merged into
    /// runs.
    fn runs(&self, text: &[u8]) -> Vec<(usize, usize, Form)> {
        let mut hits: Vec<(usize, usize, Form)> = self
            .automaton
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end(), self.forms[m.pattern().as_usize()]))
            .collect();
        // Escapes decoded once, then once more (a double-encoded `%2573`), each view searched
        // with its bytes mapped back to the source range they came from.
        let mut view: std::borrow::Cow<'_, [u8]> = text.into();
        let mut to_source: Option<Vec<(usize, usize)>> = None;
        for _ in 0..2 {
            let (decoded, local) = decode_view(&view);
            // Every escape decodes to fewer bytes: same length, nothing was decoded.
            if decoded.len() == view.len() {
                break;
            }
            let spans: Vec<(usize, usize)> = match &to_source {
                None => local,
                Some(outer) => local
                    .iter()
                    .map(|&(s, e)| (outer[s].0, outer[e - 1].1))
                    .collect(),
            };
            for m in self.automaton.find_overlapping_iter(&decoded) {
                let (s, e) = (spans[m.start()].0, spans[m.end() - 1].1);
                let form = match self.forms[m.pattern().as_usize()] {
                    Form::Raw if e - s != m.len() => Form::Escaped,
                    other => other,
                };
                hits.push((s, e, form));
            }
            view = decoded.into();
            to_source = Some(spans);
        }
        hits.sort();
        // A run is named by its most encoded part (`Raw` < `Escaped` < `Hex` < `Base64`…).
        let mut runs: Vec<(usize, usize, Form)> = Vec::new();
        for (s, e, f) in hits {
            match runs.last_mut() {
                Some(last) if s <= last.1 => {
                    last.1 = last.1.max(e);
                    last.2 = last.2.max(f);
                }
                _ => runs.push((s, e, f)),
            }
        }
        runs
    }

    /// Does `text` hold any recognisable form of a secret?
    pub fn finds(&self, text: &[u8]) -> bool {
        !self.runs(text).is_empty()
    }

    /// Masks every occurrence in `text` in place; counts what it masked.
    pub fn mask(&self, text: &mut [u8]) -> MaskCounts {
        let mut counts = MaskCounts::new();
        for (s, e, f) in self.runs(text) {
            text[s..e].fill(b'*');
            *counts.entry(f).or_default() += 1;
        }
        counts
    }
}

/// `text` with percent, JSON and HTML escapes decoded, and for each decoded byte the source
/// range it came from.
fn decode_view(text: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut out = Vec::with_capacity(text.len());
    let mut spans = Vec::with_capacity(text.len());
    let hex = |b: &[u8]| -> Option<u32> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
    };
    let push_char = |out: &mut Vec<u8>, spans: &mut Vec<(usize, usize)>, c: u32, s, e| {
        let mut buf = [0u8; 4];
        match char::from_u32(c) {
            Some(ch) => {
                for b in ch.encode_utf8(&mut buf).bytes() {
                    out.push(b);
                    spans.push((s, e));
                }
            }
            None => {
                out.push(b'?');
                spans.push((s, e));
            }
        }
    };
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let (value, len): (u32, usize) = match rest {
            [b'%', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                // Percent escapes are bytes; push the byte itself, not a code point.
                out.push(hex(&rest[1..3]).unwrap_or(0) as u8);
                spans.push((i, i + 3));
                i += 3;
                continue;
            }
            [b'\\', b'u', ..] if rest.len() >= 6 && hex(&rest[2..6]).is_some() => {
                let hi = hex(&rest[2..6]).unwrap_or(0);
                if (0xd800..0xdc00).contains(&hi)
                    && rest.len() >= 12
                    && rest[6] == b'\\'
                    && rest[7] == b'u'
                    && let Some(lo) = hex(&rest[8..12]).filter(|l| (0xdc00..0xe000).contains(l))
                {
                    (0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00), 12)
                } else {
                    (hi, 6)
                }
            }
            [b'\\', b'x', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                out.push(hex(&rest[2..4]).unwrap_or(0) as u8);
                spans.push((i, i + 4));
                i += 4;
                continue;
            }
            [b'\\', c, ..] if b"/\\\"'nrtbf".contains(c) => (
                match c {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 8,
                    b'f' => 12,
                    other => *other,
                } as u32,
                2,
            ),
            [b'&', ..] => match html_entity(rest) {
                Some((c, len)) => (c, len),
                None => (b'&' as u32, 1),
            },
            [b, ..] => {
                out.push(*b);
                spans.push((i, i + 1));
                i += 1;
                continue;
            }
            [] => break,
        };
        push_char(&mut out, &mut spans, value, i, i + len);
        i += len;
    }
    (out, spans)
}

/// `&#47;`, `&#x2f;` or a few named entities at the start of `text`: (code point, length).
fn html_entity(text: &[u8]) -> Option<(u32, usize)> {
    let end = text.iter().take(12).position(|&b| b == b';')?;
    let body = std::str::from_utf8(&text[1..end]).ok()?;
    let c = if let Some(num) = body.strip_prefix('#') {
        match num.strip_prefix(['x', 'X']) {
            Some(h) => u32::from_str_radix(h, 16).ok()?,
            None => num.parse().ok()?,
        }
    } else {
        match body {
            "amp" => '&' as u32,
            "lt" => '<' as u32,
            "gt" => '>' as u32,
            "quot" => '"' as u32,
            "apos" => '\'' as u32,
            "sol" => '/' as u32,
            "plus" => '+' as u32,
            "equals" => '=' as u32,
            "colon" => ':' as u32,
            _ => return None,
        }
    };
    Some((c, end + 1))
}

/// A response body with every recognisable occurrence of a secret masked, also where an
/// occurrence spans frames: the last `hold` bytes wait for the next frame (or the end) before
/// they are handed on, and are searched again with what follows. Trailers are dropped when
/// masking is on: a trailer is headers the guest reads after the body, and nothing a tool
/// needs from an API.
pub struct Masked<B> {
    inner: B,
    masker: std::sync::Arc<SecretMasker>,
    /// Bytes not yet handed on, as the server sent them, and which of them are masked.
    held: Vec<u8>,
    flags: Vec<bool>,
    /// Absolute offset of `held[0]` in the body, and the end of the last run counted.
    base: usize,
    counted_until: usize,
    ended: bool,
    counts: MaskCounts,
    on_mask: OnMask,
}

/// Told the counts so far and whether trailers were dropped.
type OnMask = Box<dyn Fn(&MaskCounts, bool) + Send>;

impl<B> Masked<B> {
    /// `on_mask(counts, trailers_dropped)` is called whenever either changes.
    pub fn new(
        inner: B,
        masker: std::sync::Arc<SecretMasker>,
        on_mask: impl Fn(&MaskCounts, bool) + Send + 'static,
    ) -> Self {
        Masked {
            inner,
            masker,
            held: Vec::new(),
            flags: Vec::new(),
            base: 0,
            counted_until: 0,
            ended: false,
            counts: MaskCounts::new(),
            on_mask: Box::new(on_mask),
        }
    }

    /// Flags every occurrence in `held`; counts each once, when it is about to be handed on
    /// (it starts before `ready`) or the body ended.
    fn scan(&mut self, last: bool, ready: usize) {
        let mut changed = false;
        for (s, e, f) in self.masker.runs(&self.held) {
            self.flags[s..e].fill(true);
            let complete = last || s < ready;
            if complete && self.base + s >= self.counted_until {
                *self.counts.entry(f).or_default() += 1;
                self.counted_until = self.base + e;
                changed = true;
            }
        }
        if changed {
            (self.on_mask)(&self.counts, false);
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        let out: Vec<u8> = self
            .held
            .drain(..n)
            .zip(self.flags.drain(..n))
            .map(|(b, masked)| if masked { b'*' } else { b })
            .collect();
        self.base += n;
        Bytes::from(out)
    }
}

impl<B> Body for Masked<B>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                if !this.held.is_empty() {
                    let n = this.held.len();
                    return Poll::Ready(Some(Ok(Frame::data(this.take(n)))));
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        this.flags.resize(this.held.len(), false);
                        let ready = this.held.len().saturating_sub(this.masker.hold);
                        this.scan(false, ready);
                        if ready > 0 {
                            return Poll::Ready(Some(Ok(Frame::data(this.take(ready)))));
                        }
                    }
                    Err(_trailers) => {
                        this.scan(true, 0);
                        (this.on_mask)(&this.counts, true);
                        this.ended = true;
                    }
                },
                Poll::Ready(None) => {
                    this.scan(true, 0);
                    this.ended = true;
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    const SECRET: &str = "s3cr3t-t0ken/value+xyz~?>";

    fn masker() -> SecretMasker {
        SecretMasker::new([SECRET.as_bytes(), b"k3y!"]).unwrap()
    }

    fn masked(text: &str) -> (String, MaskCounts) {
        let mut b = text.as_bytes().to_vec();
        let counts = masker().mask(&mut b);
        (String::from_utf8(b).unwrap(), counts)
    }

    #[test]
    fn every_common_encoding_of_a_secret_is_masked() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let json_all: String = SECRET
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let json_upper: String = SECRET
            .chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect();
        let pct_all: String = SECRET.bytes().map(|b| format!("%{b:02x}")).collect();
        let html: String = SECRET.bytes().map(|b| format!("&#{b};")).collect();
        // (text, form, how many of its characters must be masked at least)
        let whole = |t: String, f| {
            let n = t.len();
            (t, f, n)
        };
        // Base64 characters at the edges also carry neighbouring bits and padding.
        let b64_min = SECRET.len() * 4 / 3 - 2;
        let cases: Vec<(String, Form, usize)> = vec![
            whole(SECRET.to_string(), Form::Raw),
            whole(SECRET.replace('/', "\\/"), Form::Escaped),
            whole(
                SECRET.replace('/', "%2F").replace('+', "%2B"),
                Form::Escaped,
            ),
            whole(SECRET.replace('/', "%2f"), Form::Escaped),
            whole(pct_all, Form::Escaped),
            whole(json_all, Form::Escaped),
            whole(json_upper, Form::Escaped),
            whole(html, Form::Escaped),
            whole(SECRET.replace('/', "&#x2F;"), Form::Escaped),
            whole(hex::encode(SECRET), Form::Hex),
            whole(hex::encode_upper(SECRET), Form::Hex),
            (b64.encode(SECRET), Form::Base64, b64_min),
            (
                b64.encode(format!("Bearer {SECRET}")),
                Form::Base64,
                b64_min,
            ),
            (b64.encode(format!("x:{SECRET}")), Form::Base64, b64_min),
            (b64.encode(format!("ab{SECRET}")), Form::Base64, b64_min),
            (b64u.encode(format!("?{SECRET}?")), Form::Base64Url, b64_min),
            // A base64 value, then percent-encoded as a query parameter would be.
            (
                b64.encode(format!("a{SECRET}"))
                    .replace('/', "%2F")
                    .replace('+', "%2B"),
                Form::Base64,
                b64_min,
            ),
            whole(SECRET[..12].to_string(), Form::Raw),
            whole(SECRET[SECRET.len() - 9..].to_string(), Form::Raw),
            whole(SECRET[3..15].replace('/', "\\/"), Form::Escaped),
            whole(SECRET.to_ascii_uppercase(), Form::Raw),
            whole(
                SECRET.bytes().map(|b| format!("%25{b:02x}")).collect(),
                Form::Escaped,
            ),
            whole(
                SECRET.replace('/', "%252F").replace('+', "%5Cu002b"),
                Form::Escaped,
            ),
        ];
        for (form_text, form, min_stars) in cases {
            let text = format!("before {form_text} after");
            let (out, counts) = masked(&text);
            let stars = out.matches('*').count();
            assert!(
                out.starts_with("before ") && out.ends_with(" after"),
                "{form_text}: {out}"
            );
            assert!(
                stars >= min_stars,
                "{form_text}: only {stars} of {} masked: {out}",
                form_text.len()
            );
            assert_eq!(counts, MaskCounts::from([(form, 1)]), "{form_text}: {out}");
        }
    }

    #[test]
    fn short_secrets_are_masked_whole_and_unrelated_text_is_left_alone() {
        let (out, counts) = masked("key k3y! and k3y and s3cr3t-");
        assert_eq!(out, "key **** and k3y and s3cr3t-");
        assert_eq!(counts, MaskCounts::from([(Form::Raw, 1)]));
        let text = "plain text with nothing secret, {\"a\":\"\\/\\u0041\"} %41 &amp;";
        assert_eq!(masked(text).0, text);
    }

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = HttpError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn secrets_are_masked_wherever_the_frames_split_them() {
        let json = SECRET.replace('/', "\\/");
        // Longer than what is held back, so frames are handed on while later ones still come.
        let filler = "lorem ipsum dolor sit amet ".repeat(12);
        let text = format!(
            "a={SECRET}; {filler} b={json}; c=s3cr3t; {filler} d={}!",
            hex::encode(SECRET)
        );
        let mut want = text.clone().into_bytes();
        masker().mask(&mut want);
        assert!(!String::from_utf8_lossy(&want).contains("s3cr3t-"));
        for size in (1..=40).chain([63, 100, 257, 500, text.len()]) {
            let mut frames: std::collections::VecDeque<Frame<Bytes>> = text
                .as_bytes()
                .chunks(size)
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", http::HeaderValue::from_static(SECRET));
            frames.push_back(Frame::trailers(trailers));
            let seen = Arc::new(Mutex::new((MaskCounts::new(), false)));
            let record = seen.clone();
            let body = Masked::new(Frames(frames), Arc::new(masker()), move |c, t| {
                let mut r = record.lock().unwrap();
                r.0 = c.clone();
                r.1 |= t;
            });
            let collected = body.collect().await.unwrap();
            assert!(
                collected.trailers().is_none(),
                "chunk size {size}: trailer kept"
            );
            assert_eq!(collected.to_bytes().to_vec(), want, "chunk size {size}");
            let (counts, trailers_dropped) = seen.lock().unwrap().clone();
            assert_eq!(
                counts,
                MaskCounts::from([(Form::Raw, 1), (Form::Escaped, 1), (Form::Hex, 1)]),
                "chunk size {size}"
            );
            assert!(trailers_dropped, "chunk size {size}");
        }
    }
}
