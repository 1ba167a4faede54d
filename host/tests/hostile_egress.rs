//! Hostile egress cases, one table per class of escape (docs/SECURITY.md, "Egress"): path
//! spellings, private-address scope, authorities and embedded IPv4, and secrets read back in
//! any form. Each case names what the guest asks for and the exact outcome and audit it must
//! get; a loopback server records what actually went on the wire.

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::Harness;
use common::http_head::read_request_head;
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::manifest::CallGrant;
use sandgraph::sandbox::outcome::{CallError, CallReport, Capability, EgressAttempt};

const SECRET: &str = "s3cr3t-T0ken/value+xyz_42~?>";

fn fetch(url: &str) -> String {
    format!(r#"{{"url":"{url}","method":"GET"}}"#)
}

/// One request the server received: the request target exactly as sent, and the headers.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
}

/// A loopback HTTP/1.1 server that reflects, stores and re-serves what it is sent, in the
/// encodings a hostile or careless server might use.
struct EchoServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stored = Arc::new(Mutex::new(String::new()));
        {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (seen, stored) = (seen.clone(), stored.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &seen, &stored);
                    });
                }
            });
        }
        EchoServer { addr, seen }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }
}

fn encode(form: &str, auth: &str) -> String {
    let secret = auth.strip_prefix("Bearer ").unwrap_or(auth);
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match form {
        "raw" => auth.to_string(),
        "base64" => b64.encode(auth),
        "base64url" => b64url.encode(format!("{{\"token\":\"{secret}\"}}")),
        "hex" => hex::encode(secret),
        "HEX" => hex::encode_upper(secret),
        "percent" => secret.bytes().map(|b| format!("%{b:02X}")).collect(),
        "double" => secret.bytes().map(|b| format!("%25{b:02X}")).collect(),
        "upper" => secret.to_ascii_uppercase(),
        "json" => secret
            .chars()
            .map(|c| match c {
                '/' => "\\/".to_string(),
                c if c.is_ascii_digit() => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            })
            .collect(),
        "html" => secret.bytes().map(|b| format!("&#{b};")).collect(),
        "prefix" => secret[..10].to_string(),
        "suffix" => secret[secret.len() - 9..].to_string(),
        other => format!("unknown form {other}"),
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<Seen>>, stored: &Mutex<String>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = read_request_head(&mut reader)? else {
        return Ok(());
    };
    let mut body = vec![0; head.content_length().min(1 << 16)];
    reader.read_exact(&mut body)?;
    seen.lock().unwrap().push(Seen {
        target: head.target.clone(),
        headers: head.headers.clone(),
    });
    let auth = head.header("authorization").unwrap_or_default().to_string();
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    let mut out = conn;
    let respond = |out: &mut TcpStream, status: &str, extra: &str, body: &str| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    match path {
        "/reflect" => {
            let form = query.strip_prefix("form=").unwrap_or("raw");
            let body = format!("{{\"you_sent\":\"{}\"}}", encode(form, &auth));
            respond(&mut out, "200 OK", "", &body)
        }
        "/store" => {
            *stored.lock().unwrap() = auth.clone();
            respond(&mut out, "200 OK", "", "stored")
        }
        "/fetch" => {
            let value = stored.lock().unwrap().clone();
            respond(
                &mut out,
                "200 OK",
                "",
                &format!("earlier you sent: {value}"),
            )
        }
        "/gzip" => respond(
            &mut out,
            "200 OK",
            "Content-Encoding: gzip\r\n",
            "\u{1f}\u{8b} not really gzip",
        ),
        "/br" => respond(&mut out, "200 OK", "Content-Encoding: br\r\n", "brotli?"),
        "/te-gzip" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
        }
        "/location" => {
            let token = encode("percent", &auth);
            respond(
                &mut out,
                "302 Found",
                &format!("Location: /next?token={token}\r\n"),
                "",
            )
        }
        "/header-name" => respond(&mut out, "200 OK", "X-s3cr3t-T0ken: yes\r\n", "ok"),
        "/header-base64" => {
            let token = encode("base64", &auth);
            respond(&mut out, "200 OK", &format!("X-Session: {token}\r\n"), "ok")
        }
        "/trailers" => {
            let secret = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Token\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Token: {secret}\r\n\r\n"
            )
        }
        _ => respond(&mut out, "200 OK", "", "ok"),
    }
}

fn harness(resolver: StaticResolver, secrets: SecretStore) -> Harness {
    let mut h = Harness::with(resolver, secrets);
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    h
}

/// What a case must produce.
#[derive(Debug)]
enum Expect {
    /// Refused by the host: `denied` on egress naming `target`, the reason containing `why`.
    Denied { target: String, why: &'static str },
    /// Sent, and the server received exactly `sent` as the request target.
    Sent { sent: String },
}

fn denied(target: String, why: &'static str) -> Expect {
    Expect::Denied { target, why }
}

fn sent(sent: &str) -> Expect {
    Expect::Sent {
        sent: sent.to_string(),
    }
}

/// The one audited attempt of a single-request call.
fn only_attempt(name: &str, r: &CallReport) -> EgressAttempt {
    assert_eq!(r.audit.egress.len(), 1, "{name}: {:?}", r.audit.egress);
    r.audit.egress[0].clone()
}

async fn run_case(
    h: &Harness,
    server: &EchoServer,
    name: &str,
    spec: &str,
    url: &str,
    expect: &Expect,
) -> CallReport {
    let before = server.targets().len();
    let r = h
        .call("egress_fetch", spec, CallGrant::default(), &fetch(url))
        .await;
    let attempt = only_attempt(name, &r);
    match expect {
        Expect::Denied { target, why } => {
            match &r.result {
                Err(CallError::Denied {
                    capability: Capability::Egress,
                    target: t,
                    missing_rule,
                }) if t == target && missing_rule.contains(why) => {}
                other => panic!("{name}: expected denial of {target} ({why}), got {other:?}"),
            }
            assert!(!attempt.allowed, "{name}");
            assert_eq!(
                attempt.connected_to, None,
                "{name}: connected before refusing"
            );
            assert_eq!(server.targets().len(), before, "{name}: reached the server");
        }
        Expect::Sent { sent } => {
            assert!(r.result.is_ok(), "{name}: {:?}", r.result);
            assert!(attempt.allowed, "{name}: {attempt:?}");
            let targets = server.targets();
            assert_eq!(targets.len(), before + 1, "{name}");
            assert_eq!(&targets[before], sent, "{name}: bytes on the wire");
        }
    }
    r
}

// ---------------------------------------------------------------- paths

#[tokio::test(flavor = "multi_thread")]
async fn path_cases() {
    let server = EchoServer::start();
    let h = harness(StaticResolver::default(), SecretStore::default());
    let port = server.port();
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {port}, paths: ['/public/**'] }}]"
    );
    let u = |p: &str| server.url(p);
    let no_rule = "no egress rule allows path `/admin`";
    // (name, path the guest asks for, outcome, normalised_from audited)
    let cases: Vec<(&str, &str, Expect)> = vec![
        ("dot-dot", "/public/../admin", denied(u("/admin"), no_rule)),
        (
            "encoded dot-dot",
            "/public/%2e%2e/admin",
            denied(u("/admin"), no_rule),
        ),
        (
            "upper-case encoded dot-dot",
            "/public/%2E%2E/admin",
            denied(u("/admin"), no_rule),
        ),
        (
            "half-encoded dot-dot",
            "/public/.%2e/admin",
            denied(u("/admin"), no_rule),
        ),
        (
            "dot-dot after an empty segment",
            "/public//../admin",
            denied(u("/admin"), no_rule),
        ),
        (
            "dot segments climbing past the root",
            "/public/../../../admin",
            denied(u("/admin"), no_rule),
        ),
        ("double slash", "//admin", denied(u("/admin"), no_rule)),
        (
            "encoded slash",
            "/public/..%2fadmin",
            denied(u("/public/..%2fadmin"), "encodes a path separator"),
        ),
        (
            "encoded backslash",
            "/public/..%5Cadmin",
            denied(u("/public/..%5Cadmin"), "encodes a path separator"),
        ),
        (
            "double encoding",
            "/public/%252e%252e/admin",
            denied(u("/public/%252e%252e/admin"), "double percent-encoding"),
        ),
        (
            "overlong UTF-8 dot",
            "/public/%c0%ae%c0%ae/admin",
            denied(u("/public/%c0%ae%c0%ae/admin"), "not UTF-8"),
        ),
        (
            "invalid escape",
            "/public/%zz",
            denied(u("/public/%zz"), "not a valid percent-encoding"),
        ),
        (
            "truncated escape",
            "/public/%2",
            denied(u("/public/%2"), "not a valid percent-encoding"),
        ),
        (
            "encoded NUL",
            "/public/%00/x",
            denied(u("/public/%00/x"), "encodes a control character"),
        ),
        (
            "dot-dot with parameters",
            "/public/..;/admin",
            denied(u("/public/..;/admin"), "dot segment with parameters"),
        ),
        (
            "dot-dot with trailing space",
            "/public/..%20/admin",
            denied(u("/public/..%20/admin"), "dot segment with parameters"),
        ),
        (
            "allowed, sent normalised",
            "/public/./a/../b%7e",
            sent("/public/b~"),
        ),
        (
            "allowed, escapes upper-cased",
            "/public/%c3%a9?q=%2e%2e",
            sent("/public/%C3%A9?q=%2e%2e"),
        ),
        ("allowed as written", "/public/x", sent("/public/x")),
    ];
    for (name, path, expect) in &cases {
        let r = run_case(&h, &server, name, &spec, &u(path), expect).await;
        let attempt = only_attempt(name, &r);
        let changed = match expect {
            Expect::Sent { sent } => sent != path,
            Expect::Denied { target, .. } => !target.ends_with(path),
        };
        assert_eq!(
            attempt.normalised_from.as_deref(),
            changed.then_some(*path),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------- private addresses and authorities

#[tokio::test(flavor = "multi_thread")]
async fn private_address_cases() {
    let server = EchoServer::start();
    let port = server.port();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let mut resolver = StaticResolver::default();
    for name in ["api.test", "localhost", "wild.test"] {
        resolver.names.insert(name.into(), vec![loopback]);
    }
    let h = harness(resolver, SecretStore::default());
    let rule = |host: &str| format!("egress: [{{ scheme: http, host: '{host}', port: {port} }}]");
    let at = |host: &str| format!("http://{host}:{port}/ok");
    let scoped = "only to rules that name it";
    let cases: Vec<(&str, String, String, Expect)> = vec![
        (
            "any-host rule, allowed IP literal",
            rule("*"),
            at("127.0.0.1"),
            denied(at("127.0.0.1"), scoped),
        ),
        (
            "any-host rule, localhost by name",
            rule("*"),
            at("localhost"),
            denied(at("localhost"), scoped),
        ),
        (
            "wildcard rule, name resolving to it",
            rule("*.test"),
            at("wild.test"),
            denied(at("wild.test"), scoped),
        ),
        (
            "any-host rule, mapped spelling",
            rule("*"),
            at("[::ffff:127.0.0.1]"),
            denied(
                at("[::ffff:127.0.0.1]"),
                "IPv4-mapped IPv6 of 127.0.0.1, loopback",
            ),
        ),
        (
            "rule naming the address",
            rule("127.0.0.1"),
            at("127.0.0.1"),
            sent("/ok"),
        ),
        (
            "rule naming a host the resolver maps to it",
            rule("api.test"),
            at("api.test"),
            sent("/ok"),
        ),
        (
            "rule naming localhost",
            rule("localhost"),
            at("localhost"),
            sent("/ok"),
        ),
        (
            "rule naming another address",
            rule("127.0.0.2"),
            at("127.0.0.1"),
            denied(at("127.0.0.1"), "no egress rule for host `127.0.0.1`"),
        ),
    ];
    for (name, spec, url, expect) in &cases {
        run_case(&h, &server, name, spec, url, expect).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn address_cases() {
    let server = EchoServer::start();
    let port = server.port();
    let h = harness(StaticResolver::default(), SecretStore::default());
    let any = format!("egress: [{{ scheme: http, host: '*', port: {port} }}]");
    let local = format!("egress: [{{ scheme: http, host: 127.0.0.1, port: {port} }}]");
    let at = |host: &str| format!("http://{host}:{port}/ok");
    let v6 = |ip: &str| {
        let ip: std::net::Ipv6Addr = ip.parse().unwrap();
        format!("[{ip}]")
    };
    let odd = "unusual spelling of an IPv4 address";
    let userinfo = "carries userinfo";
    let cases: Vec<(&str, &String, String, Expect)> = vec![
        (
            "userinfo before an allowed address",
            &local,
            at("name@127.0.0.1"),
            denied(at("name@127.0.0.1"), userinfo),
        ),
        (
            "user and password",
            &local,
            at("u:p@127.0.0.1"),
            denied(at("u:p@127.0.0.1"), userinfo),
        ),
        (
            "IPv4-translated loopback",
            &any,
            at("[::ffff:0:7f00:1]"),
            denied(
                at(&v6("::ffff:0:7f00:1")),
                "IPv4-translated IPv6 of 127.0.0.1, loopback",
            ),
        ),
        (
            "IPv4-compatible loopback",
            &any,
            at("[::127.0.0.1]"),
            denied(
                at(&v6("::127.0.0.1")),
                "IPv4-compatible IPv6 of 127.0.0.1, loopback",
            ),
        ),
        (
            "IPv4-mapped metadata",
            &any,
            at("[::ffff:a9fe:a9fe]"),
            denied(
                at(&v6("::ffff:169.254.169.254")),
                "IPv4-mapped IPv6 of 169.254.169.254, cloud metadata",
            ),
        ),
        (
            "NAT64 loopback",
            &any,
            at("[64:ff9b::7f00:1]"),
            denied(at(&v6("64:ff9b::7f00:1")), "NAT64 of 127.0.0.1, loopback"),
        ),
        (
            "local-use NAT64",
            &any,
            at("[64:ff9b:1::7f00:1]"),
            denied(at(&v6("64:ff9b:1::7f00:1")), "local-use NAT64"),
        ),
        (
            "6to4 private",
            &any,
            at("[2002:a00:1::1]"),
            denied(at(&v6("2002:a00:1::1")), "6to4 of 10.0.0.1, private"),
        ),
        (
            "Teredo client loopback",
            &any,
            at("[2001:0:4136:e378:8000:63bf:80ff:fffe]"),
            denied(
                at(&v6("2001:0:4136:e378:8000:63bf:80ff:fffe")),
                "127.0.0.1, loopback",
            ),
        ),
        (
            "hex and short IPv4",
            &any,
            at("0x7f.1"),
            denied(at("0x7f.1"), odd),
        ),
        (
            "integer IPv4",
            &any,
            at("2130706433"),
            denied(at("2130706433"), odd),
        ),
        (
            "octal IPv4",
            &any,
            at("0177.0.0.1"),
            denied(at("0177.0.0.1"), odd),
        ),
        ("short IPv4", &any, at("127.1"), denied(at("127.1"), odd)),
        (
            "hex IPv4",
            &any,
            at("0x7f000001"),
            denied(at("0x7f000001"), odd),
        ),
        (
            "IPv4 with a trailing dot",
            &any,
            at("127.0.0.1."),
            denied(at("127.0.0.1."), odd),
        ),
    ];
    for (name, spec, url, expect) in &cases {
        run_case(&h, &server, name, spec, url, expect).await;
    }
    // The Host header names the vetted authority, whatever case or spelling the guest used.
    let r = h
        .call(
            "egress_fetch",
            &local,
            CallGrant::default(),
            &fetch(&at("127.0.0.1")),
        )
        .await;
    assert!(r.result.is_ok(), "{:?}", r.result);
    let seen = server.seen.lock().unwrap().last().cloned().unwrap();
    let host: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(host, [format!("127.0.0.1:{port}").as_str()]);
}

// ---------------------------------------------------------------- secrets

/// Every 8-byte run of the secret in raw, hex, base64 and escaped forms `text` still holds.
fn leaked_pieces(text: &str) -> Vec<String> {
    let decoded = unescape(text);
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut leaks = Vec::new();
    for w in SECRET.as_bytes().windows(8) {
        let w = std::str::from_utf8(w).unwrap();
        for form in [w.to_ascii_lowercase(), hex::encode(w)] {
            if text.to_ascii_lowercase().contains(&form)
                || decoded.to_ascii_lowercase().contains(&form)
            {
                leaks.push(form);
            }
        }
    }
    // The middle of any base64 spelling of the secret, whatever its alignment.
    for prefix in ["", "a", "ab"] {
        for engine in [&b64, &b64url] {
            let enc = engine.encode(format!("{prefix}{SECRET}"));
            let middle = &enc[4..enc.len() - 4];
            if text.contains(middle) || decoded.contains(middle) {
                leaks.push(middle.to_string());
            }
        }
    }
    leaks
}

/// An independent decoder of `%XX`, `\uXXXX`, `\/` and `&#NN;`, for checking what leaked.
fn unescape(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Some(v) = hex(&b[i + 1..i + 3])
        {
            out.push(v as u8);
            i += 3;
        } else if b[i..].starts_with(b"\\u")
            && i + 6 <= b.len()
            && let Some(v) = hex(&b[i + 2..i + 6])
        {
            out.push(v as u8);
            i += 6;
        } else if b[i..].starts_with(b"\\/") {
            out.push(b'/');
            i += 2;
        } else if b[i..].starts_with(b"&#")
            && let Some(end) = b[i..].iter().position(|&c| c == b';')
        {
            let v: u32 = std::str::from_utf8(&b[i + 2..i + end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(b'?' as u32);
            out.push(v as u8);
            i += end + 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn secret_harness(secrets: &[(&str, &str)]) -> Harness {
    let mut store = SecretStore::default();
    for (k, v) in secrets {
        store.insert(*k, *v);
    }
    harness(StaticResolver::default(), store)
}

fn inject_spec(port: u16, paths: &str) -> String {
    format!(
        "egress:\n  - scheme: http\n    host: 127.0.0.1\n    port: {port}\n    paths: {paths}\n    inject:\n      - {{ header: Authorization, secret: API_TOKEN, format: \"Bearer {{secret}}\" }}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_cases() {
    let server = EchoServer::start();
    let port = server.port();
    let h = secret_harness(&[("API_TOKEN", SECRET)]);
    let spec = inject_spec(port, "['/**']");
    let forms = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    // (name, path, masked forms the audit must report)
    let reflected: Vec<(&str, &str, BTreeMap<String, u32>)> = vec![
        ("raw echo", "/reflect?form=raw", forms(&[("raw", 1)])),
        (
            "base64 of the header",
            "/reflect?form=base64",
            forms(&[("base64", 1)]),
        ),
        (
            "base64url inside JSON",
            "/reflect?form=base64url",
            forms(&[("base64url", 1)]),
        ),
        ("hex", "/reflect?form=hex", forms(&[("hex", 1)])),
        ("upper-case hex", "/reflect?form=HEX", forms(&[("hex", 1)])),
        (
            "percent-encoded",
            "/reflect?form=percent",
            forms(&[("escaped", 1)]),
        ),
        (
            "double percent-encoded",
            "/reflect?form=double",
            forms(&[("escaped", 1)]),
        ),
        ("upper-cased", "/reflect?form=upper", forms(&[("raw", 1)])),
        (
            "JSON escapes",
            "/reflect?form=json",
            forms(&[("escaped", 1)]),
        ),
        (
            "HTML entities",
            "/reflect?form=html",
            forms(&[("escaped", 1)]),
        ),
        ("a prefix", "/reflect?form=prefix", forms(&[("raw", 1)])),
        ("a suffix", "/reflect?form=suffix", forms(&[("raw", 1)])),
    ];
    for (name, path, want) in &reflected {
        let r = h
            .call(
                "egress_fetch",
                &spec,
                CallGrant::default(),
                &fetch(&server.url(path)),
            )
            .await;
        let out: serde_json::Value =
            serde_json::from_str(r.result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}")))
                .unwrap();
        let body = out["body"].as_str().unwrap();
        assert_eq!(leaked_pieces(body), Vec::<String>::new(), "{name}: {body}");
        assert!(
            body.starts_with("{\"you_sent\":\"") && body.contains('*'),
            "{name}: {body}"
        );
        let a = only_attempt(name, &r);
        assert_eq!(&a.masked_forms, want, "{name}: {body}");
        assert_eq!(a.secrets_masked, want.values().sum::<u32>(), "{name}");
        assert_eq!(
            a.bytes_in,
            body.len() as u64,
            "{name}: masking keeps lengths"
        );
        let audit = serde_json::to_string(&r.audit).unwrap();
        assert_eq!(leaked_pieces(&audit), Vec::<String>::new(), "{name}: audit");
    }
    // Every request asked for an uncompressed answer.
    for s in server.seen.lock().unwrap().iter() {
        let ae: Vec<&str> = s
            .headers
            .iter()
            .filter(|(k, _)| k == "accept-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(ae, ["identity"], "{}", s.target);
    }

    // Answers the host cannot read are refused, naming the coding.
    for (path, coding) in [
        ("/gzip", "`content-encoding: gzip`"),
        ("/br", "`content-encoding: br`"),
        ("/te-gzip", "`transfer-encoding: gzip`"),
    ] {
        let r = h
            .call(
                "egress_fetch",
                &spec,
                CallGrant::default(),
                &fetch(&server.url(path)),
            )
            .await;
        match &r.result {
            Err(CallError::Denied {
                capability: Capability::Egress,
                target,
                missing_rule,
            }) if target == &server.url(path) && missing_rule.contains(coding) => {}
            other => panic!("{path}: {other:?}"),
        }
    }

    // Headers and trailers that carry the secret in any form are withheld.
    for (path, withheld) in [
        ("/location", "location"),
        ("/header-base64", "x-session"),
        ("/header-name", "x-************"),
        ("/trailers", "trailers"),
    ] {
        let r = h
            .call(
                "egress_fetch",
                &spec,
                CallGrant::default(),
                &fetch(&server.url(path)),
            )
            .await;
        let out = r.result.as_ref().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(leaked_pieces(out), Vec::<String>::new(), "{path}: {out}");
        let a = only_attempt(path, &r);
        assert_eq!(a.headers_withheld, [withheld], "{path}: {out}");
        let audit = serde_json::to_string(&r.audit).unwrap();
        assert_eq!(leaked_pieces(&audit), Vec::<String>::new(), "{path}: audit");
    }

    // Stored, then fetched in the same call under a rule that injects nothing.
    let both = format!(
        "{}\n  - {{ scheme: http, host: 127.0.0.1, port: {port}, paths: ['/fetch'] }}",
        inject_spec(port, "['/store']")
    );
    let input = format!(
        r#"{{"first":"{}","then":"{}"}}"#,
        server.url("/store"),
        server.url("/fetch")
    );
    let r = h
        .call("egress_fetch_twice", &both, CallGrant::default(), &input)
        .await;
    let out = r.result.clone().expect("both requests succeed");
    assert_eq!(leaked_pieces(&out), Vec::<String>::new(), "{out}");
    assert_eq!(r.audit.egress.len(), 2, "{:?}", r.audit.egress);
    assert_eq!(r.audit.egress[0].injected, ["Authorization"]);
    assert!(r.audit.egress[1].injected.is_empty());
    assert_eq!(r.audit.egress[1].masked_forms, forms(&[("raw", 1)]));

    // Stored by one call, fetched by another under a rule that injects nothing.
    let r = h
        .call(
            "egress_fetch",
            &spec,
            CallGrant::default(),
            &fetch(&server.url("/store")),
        )
        .await;
    assert!(r.result.is_ok(), "{:?}", r.result);
    let plain =
        format!("egress: [{{ scheme: http, host: 127.0.0.1, port: {port}, paths: ['/fetch'] }}]");
    let r = h
        .call(
            "egress_fetch",
            &plain,
            CallGrant::default(),
            &fetch(&server.url("/fetch")),
        )
        .await;
    let out = r.result.clone().expect("fetch succeeds");
    assert_eq!(leaked_pieces(&out), Vec::<String>::new(), "{out}");
    let stars = "*".repeat(SECRET.len());
    assert!(
        out.contains(&format!("earlier you sent: Bearer {stars}")),
        "{out}"
    );
    let a = only_attempt("fetch", &r);
    assert!(a.injected.is_empty());
    assert_eq!(a.masked_forms, forms(&[("raw", 1)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_is_not_a_header_value_is_its_own_outcome() {
    let server = EchoServer::start();
    for (value, shown) in [
        ("line\r\nX-Evil: 1", "a line break"),
        ("nul\0byte-in-the-token", "a NUL"),
    ] {
        let h = secret_harness(&[("API_TOKEN", value)]);
        let r = h
            .call(
                "egress_fetch",
                &inject_spec(server.port(), "['/**']"),
                CallGrant::default(),
                &fetch(&server.url("/ok")),
            )
            .await;
        assert_eq!(
            r.result,
            Err(CallError::SecretUnusable {
                secret: "API_TOKEN".into(),
                reason: "its value is not a valid value for header `Authorization` (control characters, line breaks or non-ASCII bytes); fix the value in the operator secret store".into(),
            }),
            "{shown}"
        );
        assert_eq!(r.audit.outcome, "secret_unusable");
        assert!(server.targets().is_empty(), "{shown}: sent anyway");
    }
}

// ---------------------------------------------------------------- the matcher, fuzzed

mod matcher {
    use proptest::prelude::*;
    use sandgraph::sandbox::egress::match_rule;
    use sandgraph::sandbox::egress::path::normalise;
    use sandgraph::sandbox::manifest::{EgressRule, UrlScheme};

    const SEGMENTS: &[&str] = &[
        "public",
        "admin",
        "v1",
        "a",
        "..",
        ".",
        "",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2e.",
        "%2f",
        "%5c",
        "%5C",
        "\\",
        "%00",
        "%zz",
        "%2",
        "%",
        "%252e",
        "%c0%ae",
        "%e0%80%ae",
        "..;",
        ".;x",
        "...",
        "..%20",
        "%7e",
        "%41",
        "~",
        "a;b",
        "%c3%a9",
        "x y",
    ];
    const GLOBS: &[&str] = &[
        "/public/**",
        "/public/*",
        "/admin",
        "/**",
        "/v1/*/a",
        "/public",
        "/a*",
        "/%7e/**",
    ];

    /// What a lenient server could read differently in a path we send: a separator hidden in
    /// an escape (`%2f`, `%5c`, `\\`), a dot segment (also decoded, with `;params` or padding),
    /// an empty segment, a NUL. `None` when every server reads the segments we matched.
    fn ambiguity(path: &str) -> Option<&'static str> {
        let b = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(v) = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                decoded.push(v);
                i += 3;
            } else {
                decoded.push(b[i]);
                i += 1;
            }
        }
        let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
        if text.contains('\0') {
            return Some("NUL");
        }
        let t = text.as_bytes();
        if (0..t.len()).any(|i| {
            t[i] == b'%'
                && t.len() > i + 2
                && t[i + 1].is_ascii_hexdigit()
                && t[i + 2].is_ascii_hexdigit()
        }) {
            return Some("an escape left after decoding once");
        }
        if text.split('/').count() != path.split('/').count() {
            return Some("hidden separator");
        }
        let segs: Vec<&str> = text.split('/').skip(1).collect();
        for (k, seg) in segs.iter().enumerate() {
            let base = seg.split(';').next().unwrap_or("");
            if seg.is_empty() && k + 1 != segs.len() && segs.len() > 1 {
                return Some("empty segment");
            }
            if !base.is_empty() && base.chars().all(|c| c == '.' || c == ' ') {
                return Some("dot segment");
            }
        }
        None
    }

    /// An independent glob matcher: segment by segment.
    fn glob_matches(glob: &str, path: &str) -> bool {
        fn seg(g: &[u8], s: &[u8]) -> bool {
            match g {
                [] => s.is_empty(),
                [b'*', rest @ ..] => (0..=s.len()).any(|i| seg(rest, &s[i..])),
                [c, rest @ ..] => s.first() == Some(c) && seg(rest, &s[1..]),
            }
        }
        fn go(g: &[&str], p: &[&str]) -> bool {
            match (g, p) {
                ([], []) => true,
                (["**"], _) => true,
                (["**", rest @ ..], _) => (0..=p.len()).any(|i| go(rest, &p[i..])),
                ([gh, gt @ ..], [ph, pt @ ..]) => seg(gh.as_bytes(), ph.as_bytes()) && go(gt, pt),
                _ => false,
            }
        }
        let glob = glob.replace("%7e", "~");
        let g: Vec<&str> = glob.split('/').collect();
        let p: Vec<&str> = path.split('/').collect();
        go(&g, &p)
    }

    fn rule(globs: Vec<&str>) -> EgressRule {
        EgressRule {
            scheme: UrlScheme::Http,
            host: "api.test".into(),
            port: None,
            paths: globs.into_iter().map(String::from).collect(),
            methods: vec!["GET".into()],
            inject: vec![],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A URL is allowed only if its normalised form matches a rule; the normalised form is
        /// what is sent, normalising it again changes nothing, and a lenient server reads the
        /// same path the rules were matched against.
        #[test]
        fn matcher_properties(
            segs in prop::collection::vec(prop::sample::select(SEGMENTS), 0..7),
            query in prop::option::of(prop::sample::select(&["q=1", "q=../admin", "x=%2f"][..])),
            rules in prop::collection::vec(prop::collection::vec(prop::sample::select(GLOBS), 1..3), 1..3),
        ) {
            let mut raw = format!("/{}", segs.join("/"));
            if let Some(q) = query {
                raw.push('?');
                raw.push_str(q);
            }
            let rules: Vec<EgressRule> = rules.into_iter().map(rule).collect();
            let Ok(n) = normalise(&raw) else {
                // Refused: nothing is sent, whatever the rules say.
                return Ok(());
            };
            prop_assert_eq!(&normalise(&n.path_and_query).unwrap(), &n);
            prop_assert!(n.path_and_query.starts_with(&n.path));
            prop_assert_eq!(ambiguity(&n.path), None, "{} from {}", n.path, raw);
            let allowed = match_rule(&rules, UrlScheme::Http, "api.test", 80, &n.path, "GET").is_ok();
            let expected = rules.iter().any(|r| r.paths.iter().any(|g| glob_matches(g, &n.path)));
            prop_assert_eq!(allowed, expected, "path {} from {}", n.path, raw);
        }
    }
}
