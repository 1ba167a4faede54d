//! Request paths as rules see them and servers receive them. A path is normalised once (RFC 3986
//! §6.2.2: percent-encodings of unreserved characters decoded, other escapes in upper case, dot
//! segments removed, runs of `/` merged); rules are matched against that form and exactly that
//! form is sent, so no server reading the path differently can land outside the rule. What has
//! no single safe reading (an encoded `/` or `\`, a NUL, `..;`, overlong UTF-8, a double
//! encoding) is refused with the reason.

use super::super::manifest::{EgressRule, UrlScheme, host_matches};

/// Why a request path cannot be normalised safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("path `{path}` does not start with `/`")]
    NotAbsolute { path: String },
    #[error(
        "`{escape}` in path `{path}` is not a valid percent-encoding (`%` needs two hex digits)"
    )]
    InvalidPercent { path: String, escape: String },
    #[error(
        "`{escape}` in path `{path}` encodes a path separator; servers disagree on whether it splits the segment, so it is refused"
    )]
    EncodedSeparator { path: String, escape: String },
    #[error("`{escape}` in path `{path}` encodes a control character")]
    EncodedControl { path: String, escape: String },
    #[error(
        "`{escape}` in path `{path}` is a double percent-encoding (`%25` followed by hex digits); a server that decodes twice would read another path"
    )]
    DoubleEncoding { path: String, escape: String },
    #[error(
        "path `{path}` decodes to bytes that are not UTF-8 (an overlong or truncated encoding a lenient server may read as `.` or `/`)"
    )]
    NotUtf8 { path: String },
    #[error("path `{path}` contains a backslash, which some servers read as `/`")]
    Backslash { path: String },
    #[error("path `{path}` contains a control character")]
    Control { path: String },
    #[error(
        "segment `{segment}` of path `{path}` is a dot segment with parameters or padding (`..;`, `.. `, `...`), which servers resolve differently"
    )]
    AmbiguousDotSegment { path: String, segment: String },
}

/// The form of a request target a rule is matched against and the server receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// The normalised path (starts with `/`).
    pub path: String,
    /// `path` plus the query exactly as the guest wrote it (`?` included), what is sent.
    pub path_and_query: String,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalises `path_and_query` (origin form: `/path?query`).
pub fn normalise(path_and_query: &str) -> Result<Normalised, PathRefusal> {
    let (raw, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i..])),
        None => (path_and_query, None),
    };
    let raw = if raw.is_empty() { "/" } else { raw };
    let path = || raw.to_string();
    if !raw.starts_with('/') {
        return Err(PathRefusal::NotAbsolute { path: path() });
    }
    let bytes = raw.as_bytes();
    // Decode into `decoded` (every escape) to check UTF-8, and build each segment's canonical
    // text: unreserved characters as themselves, every other escape in upper case.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut segments: Vec<(String, Vec<u8>)> = vec![(String::new(), Vec::new())];
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (text, value): (String, u8) = match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).unwrap_or(&bytes[i + 1..]);
                let escape = String::from_utf8_lossy(&bytes[i..(i + 3).min(bytes.len())]);
                let (Some(h), Some(l)) = (
                    hex.first().copied().and_then(hex_val),
                    hex.get(1).copied().and_then(hex_val),
                ) else {
                    return Err(PathRefusal::InvalidPercent {
                        path: path(),
                        escape: escape.into_owned(),
                    });
                };
                let v = h * 16 + l;
                let escape = escape.to_ascii_uppercase();
                match v {
                    b'/' | b'\\' => {
                        return Err(PathRefusal::EncodedSeparator {
                            path: path(),
                            escape,
                        });
                    }
                    0..=0x1f | 0x7f => {
                        return Err(PathRefusal::EncodedControl {
                            path: path(),
                            escape,
                        });
                    }
                    b'%' if bytes.get(i + 3).copied().and_then(hex_val).is_some()
                        && bytes.get(i + 4).copied().and_then(hex_val).is_some() =>
                    {
                        return Err(PathRefusal::DoubleEncoding {
                            path: path(),
                            escape: String::from_utf8_lossy(&bytes[i..i + 5]).into_owned(),
                        });
                    }
                    _ => {}
                }
                i += 3;
                if is_unreserved(v) {
                    ((v as char).to_string(), v)
                } else {
                    (escape, v)
                }
            }
            b'\\' => return Err(PathRefusal::Backslash { path: path() }),
            0..=0x1f | 0x7f => return Err(PathRefusal::Control { path: path() }),
            b'/' => {
                i += 1;
                decoded.push(b'/');
                segments.push((String::new(), Vec::new()));
                continue;
            }
            // Not a `pchar` (RFC 3986 §3.3): sent percent-encoded.
            0x80..
            | b' '
            | b'"'
            | b'<'
            | b'>'
            | b'`'
            | b'{'
            | b'}'
            | b'|'
            | b'^'
            | b'#'
            | b'['
            | b']' => {
                i += 1;
                (format!("%{b:02X}"), b)
            }
            _ => {
                i += 1;
                ((b as char).to_string(), b)
            }
        };
        decoded.push(value);
        let last = segments.last_mut().expect("starts with one segment");
        last.0.push_str(&text);
        last.1.push(value);
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathRefusal::NotUtf8 { path: path() });
    }
    // segments[0] is the empty text before the leading `/`.
    let n = segments.len();
    let mut out: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for (k, (text, value)) in segments.into_iter().enumerate().skip(1) {
        let last = k == n - 1;
        let before_params = value.split(|&b| b == b';').next().unwrap_or(&[]);
        let dots_and_spaces = !value.is_empty() && value.iter().all(|&b| b == b'.' || b == b' ');
        let dot_params = value.contains(&b';') && (before_params == b"." || before_params == b"..");
        if dot_params || (dots_and_spaces && value != b"." && value != b"..") {
            return Err(PathRefusal::AmbiguousDotSegment {
                path: path(),
                segment: text,
            });
        }
        match value.as_slice() {
            b"" => trailing_slash = last,
            b"." => trailing_slash = last,
            b".." => {
                out.pop();
                trailing_slash = last;
            }
            _ => {
                out.push(text);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::from("/");
    path.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        path.push('/');
    }
    let path_and_query = match query {
        Some(q) => format!("{path}{q}"),
        None => path.clone(),
    };
    Ok(Normalised {
        path,
        path_and_query,
    })
}

/// A rule's path glob in the same canonical spelling as normalised paths (unreserved
/// characters decoded, other escapes in upper case), so `/%7Euser/**` and `/~user/**` agree.
fn canonical_glob(glob: &str) -> std::borrow::Cow<'_, str> {
    if !glob.contains('%') {
        return glob.into();
    }
    let b = glob.as_bytes();
    let mut out = String::with_capacity(glob.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            )
        {
            let v = h * 16 + l;
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out.into()
}

/// Does a path glob match? `*` matches within one segment, `**` across segments.
pub fn path_matches(glob: &str, path: &str) -> bool {
    fn go(g: &[u8], p: &[u8]) -> bool {
        match g {
            [] => p.is_empty(),
            [b'/', b'*', b'*'] => {
                // `/x/**` matches `/x`, `/x/` and everything below.
                p.is_empty() || p[0] == b'/'
            }
            [b'*', b'*', rest @ ..] => (0..=p.len()).any(|i| go(rest, &p[i..])),
            [b'*', rest @ ..] => {
                let seg = p.iter().position(|&c| c == b'/').unwrap_or(p.len());
                (0..=seg).any(|i| go(rest, &p[i..]))
            }
            [c, rest @ ..] => p.first() == Some(c) && go(rest, &p[1..]),
        }
    }
    go(canonical_glob(glob).as_bytes(), path.as_bytes())
}

/// Does a rule's host name the request host? IP literals compare as addresses.
pub fn rule_names_host(rule_host: &str, host: &str) -> bool {
    if rule_host.contains('*') {
        return host_matches(rule_host, host);
    }
    match (
        rule_host.parse::<std::net::IpAddr>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => host_matches(rule_host, host),
        _ => false,
    }
}

/// The rule that allows a request, or the reason none does (what rule is missing). `path` is
/// the normalised path.
pub fn match_rule(
    rules: &[EgressRule],
    scheme: UrlScheme,
    host: &str,
    port: u16,
    path: &str,
    method: &str,
) -> Result<usize, String> {
    let by_host: Vec<usize> = (0..rules.len())
        .filter(|&i| rule_names_host(&rules[i].host, host))
        .collect();
    if by_host.is_empty() {
        return Err(format!("no egress rule for host `{host}`"));
    }
    let by_origin: Vec<usize> = by_host
        .into_iter()
        .filter(|&i| {
            let r = &rules[i];
            r.scheme == scheme && r.port.unwrap_or(r.scheme.default_port()) == port
        })
        .collect();
    if by_origin.is_empty() {
        return Err(format!(
            "no egress rule for {}://{host}:{port} (scheme and port must match a rule)",
            scheme.as_str()
        ));
    }
    let by_path: Vec<usize> = by_origin
        .into_iter()
        .filter(|&i| rules[i].paths.iter().any(|g| path_matches(g, path)))
        .collect();
    if by_path.is_empty() {
        return Err(format!("no egress rule allows path `{path}` on `{host}`"));
    }
    by_path
        .iter()
        .copied()
        .find(|&i| rules[i].methods.iter().any(|m| m == method))
        .ok_or_else(|| format!("method {method} is not allowed for `{host}{path}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, port: Option<u16>, paths: &[&str], methods: &[&str]) -> EgressRule {
        EgressRule {
            scheme: UrlScheme::Http,
            host: host.into(),
            port,
            paths: paths.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            inject: vec![],
        }
    }

    #[test]
    fn globs() {
        assert!(path_matches("/**", "/"));
        assert!(path_matches("/**", "/a/b"));
        assert!(path_matches("/v1/**", "/v1"));
        assert!(path_matches("/v1/**", "/v1/x/y"));
        assert!(!path_matches("/v1/**", "/v10"));
        assert!(!path_matches("/v1/**", "/v2/x"));
        assert!(path_matches("/v1/*/items", "/v1/abc/items"));
        assert!(!path_matches("/v1/*/items", "/v1/a/b/items"));
        assert!(path_matches("/exact", "/exact"));
        assert!(!path_matches("/exact", "/exact/more"));
        assert!(path_matches("/%7euser/**", "/~user/x"));
        assert!(path_matches("/a%2fb", "/a%2Fb"));
    }

    #[test]
    fn paths_normalise_to_one_form() {
        for (raw, want) in [
            ("", "/"),
            ("/", "/"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("/public/.", "/public/"),
            ("/public/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//admin", "/admin"),
            ("/public//../admin", "/admin"),
            ("/public/x/", "/public/x/"),
            ("/%7Euser/%41%62c", "/~user/Abc"),
            ("/a%3ab/%c3%a9", "/a%3Ab/%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a%20b", "/a%20b"),
            ("/search?q=../x&y=%2f", "/search?q=../x&y=%2f"),
            ("/p/../q?x", "/q?x"),
            ("/a;v=1/b", "/a;v=1/b"),
            ("/...a/b", "/...a/b"),
        ] {
            assert_eq!(
                normalise(raw).map(|n| n.path_and_query),
                Ok(want.to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn paths_without_a_safe_reading_are_refused_with_the_reason() {
        use PathRefusal as R;
        let kind = |raw: &str| match normalise(raw) {
            Ok(n) => format!("ok {}", n.path),
            Err(e) => match e {
                R::NotAbsolute { .. } => "not_absolute",
                R::InvalidPercent { .. } => "invalid_percent",
                R::EncodedSeparator { .. } => "encoded_separator",
                R::EncodedControl { .. } => "encoded_control",
                R::DoubleEncoding { .. } => "double_encoding",
                R::NotUtf8 { .. } => "not_utf8",
                R::Backslash { .. } => "backslash",
                R::Control { .. } => "control",
                R::AmbiguousDotSegment { .. } => "ambiguous_dot_segment",
            }
            .to_string(),
        };
        for (raw, want) in [
            ("admin", "not_absolute"),
            ("/public/..%2fadmin", "encoded_separator"),
            ("/public/..%2Fadmin", "encoded_separator"),
            ("/public/..%5cadmin", "encoded_separator"),
            ("/public\\..\\admin", "backslash"),
            ("/public/%00/x", "encoded_control"),
            ("/public/%0a", "encoded_control"),
            ("/public/%zz", "invalid_percent"),
            ("/public/%2", "invalid_percent"),
            ("/public/%", "invalid_percent"),
            ("/public/%%32%65", "invalid_percent"),
            ("/public/%252e%252e/admin", "double_encoding"),
            ("/public/%c0%ae%c0%ae/admin", "not_utf8"),
            ("/public/%e0%80%ae/admin", "not_utf8"),
            ("/public/%c0%af", "not_utf8"),
            ("/public/..;/admin", "ambiguous_dot_segment"),
            ("/public/.;x/admin", "ambiguous_dot_segment"),
            ("/public/%2e%2e;/admin", "ambiguous_dot_segment"),
            ("/public/.. /admin", "ambiguous_dot_segment"),
            ("/public/..%20/admin", "ambiguous_dot_segment"),
            ("/public/.../admin", "ambiguous_dot_segment"),
        ] {
            assert_eq!(kind(raw), want, "{raw}");
        }
        assert_eq!(
            normalise("/public/..%2fadmin").unwrap_err().to_string(),
            "`%2F` in path `/public/..%2fadmin` encodes a path separator; servers disagree on whether it splits the segment, so it is refused"
        );
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in ["/public/../a/%7e/./b/", "//x//y", "/a%3ab", "/%c3%a9?q"] {
            let once = normalise(raw).unwrap();
            assert_eq!(normalise(&once.path_and_query).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn rule_matching_names_what_is_missing() {
        let rules = vec![rule("api.test", Some(8080), &["/v1/**"], &["GET"])];
        let m = |s, h, p, path, meth| match_rule(&rules, s, h, p, path, meth);
        assert_eq!(m(UrlScheme::Http, "api.test", 8080, "/v1/x", "GET"), Ok(0));
        assert_eq!(
            m(UrlScheme::Http, "evil.test", 8080, "/v1/x", "GET"),
            Err("no egress rule for host `evil.test`".into())
        );
        assert!(
            m(UrlScheme::Https, "api.test", 8080, "/v1/x", "GET")
                .unwrap_err()
                .contains("scheme and port")
        );
        assert!(
            m(UrlScheme::Http, "api.test", 80, "/v1/x", "GET")
                .unwrap_err()
                .contains("scheme and port")
        );
        assert_eq!(
            m(UrlScheme::Http, "api.test", 8080, "/admin", "GET"),
            Err("no egress rule allows path `/admin` on `api.test`".into())
        );
        assert_eq!(
            m(UrlScheme::Http, "api.test", 8080, "/v1/x", "POST"),
            Err("method POST is not allowed for `api.test/v1/x`".into())
        );
        let v6 = vec![rule("::1", None, &["/**"], &["GET"])];
        assert_eq!(
            match_rule(&v6, UrlScheme::Http, "::1", 80, "/", "GET"),
            Ok(0)
        );
        let any = vec![rule("*", None, &["/**"], &["GET"])];
        assert_eq!(
            match_rule(&any, UrlScheme::Http, "127.0.0.1", 80, "/", "GET"),
            Ok(0)
        );
    }
}
