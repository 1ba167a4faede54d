//! What authentication and rate limiting add to each API request: `Authenticator::authenticate`
//! for an opaque token from a 100-entry tokens file (the baseline), RS256 and ES256 JWTs on first
//! use (signature checked) and repeated (verified-token cache), and `RateLimiter::check` across
//! 1,000 subjects. Prints the
//! median and p99 per call and the ratio to the baseline, all measured in the same run.
//!
//! Run: `cargo bench -p sandgraph --bench auth` (`SANDGRAPH_BENCH_ITERS` sets calls per case)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sandgraph::api::auth::{AuthConfig, Authenticator};
use sandgraph::api::limits::RateLimiter;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    h
}

fn sign(alg: Algorithm, kid: &str, pem: &str, jti: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "aud": "sandgraph-api", "sub": "bench",
        "exp": now + 3600, "scope": "runs:read runs:write", "jti": jti,
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let pem = std::fs::read(fixture(pem)).expect("fixture key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("fixture key parses");
    jsonwebtoken::encode(&header, &claims, &key).expect("signs")
}

/// Median and p99 of `iters` timed calls.
fn measure(iters: usize, mut call: impl FnMut(usize)) -> (Duration, Duration) {
    for i in 0..iters.min(100) {
        call(i);
    }
    let mut times: Vec<Duration> = (0..iters)
        .map(|i| {
            let t = Instant::now();
            call(i);
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// Median and p99 of one timed call per input (no warm-up: each input is used once).
fn measure_each<T>(inputs: &[T], mut call: impl FnMut(&T)) -> (Duration, Duration) {
    let mut times: Vec<Duration> = inputs
        .iter()
        .map(|input| {
            let t = Instant::now();
            call(input);
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn main() {
    let iters: usize = std::env::var("SANDGRAPH_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens_file = dir.path().join("tokens.yaml");
    let mut text = String::from("tokens:\n");
    for i in 0..100 {
        text.push_str(&format!(
            "  - subject: s{i}\n    token: bench-token-{i:08}-padding\n    scopes: [runs:read]\n"
        ));
    }
    std::fs::write(&tokens_file, text).expect("write tokens file");
    let auth = Authenticator::load(&AuthConfig {
        tokens_file: Some(tokens_file),
        jwks_file: Some(fixture("test-only-jwks.json")),
        issuer: Some("https://issuer.test".into()),
        audience: Some("sandgraph-api".into()),
        ..AuthConfig::default()
    })
    .expect("bench auth config loads");

    let opaque = bearer("bench-token-00000099-padding");
    let rs256 = bearer(&sign(Algorithm::RS256, "rsa-1", "test-only-rsa.pem", 0));
    let es256 = bearer(&sign(Algorithm::ES256, "ec-1", "test-only-ec.pem", 0));
    // Distinct tokens, so each call checks a signature (a client's first request).
    let fresh = iters.min(2_000);
    let fresh_rs: Vec<_> = (1..=fresh)
        .map(|i| bearer(&sign(Algorithm::RS256, "rsa-1", "test-only-rsa.pem", i)))
        .collect();
    let fresh_es: Vec<_> = (1..=fresh)
        .map(|i| bearer(&sign(Algorithm::ES256, "ec-1", "test-only-ec.pem", i)))
        .collect();
    let limiter = RateLimiter::new(1e9, 1_000_000);
    let subjects: Vec<String> = (0..1000).map(|i| format!("subject-{i}")).collect();

    let cases: Vec<(&str, (Duration, Duration))> = vec![
        (
            "opaque token (100-entry file)",
            measure(iters, |_| {
                auth.authenticate(&opaque).expect("known token");
            }),
        ),
        (
            "RS256 JWT (2048-bit), first use",
            measure_each(&fresh_rs, |h| {
                auth.authenticate(h).expect("valid JWT");
            }),
        ),
        (
            "ES256 JWT (P-256), first use",
            measure_each(&fresh_es, |h| {
                auth.authenticate(h).expect("valid JWT");
            }),
        ),
        (
            "RS256 JWT, repeated (verified cache)",
            measure(iters, |_| {
                auth.authenticate(&rs256).expect("valid JWT");
            }),
        ),
        (
            "ES256 JWT, repeated (verified cache)",
            measure(iters, |_| {
                auth.authenticate(&es256).expect("valid JWT");
            }),
        ),
        (
            "rate limiter check (1,000 subjects)",
            measure(iters, |i| {
                limiter
                    .check(&subjects[i % subjects.len()])
                    .expect("under the limit");
            }),
        ),
    ];
    let baseline = cases[0].1.0.as_secs_f64();
    println!("{iters} calls per case ({fresh} distinct tokens for first use), one thread");
    println!(
        "{:<40} {:>12} {:>12} {:>10}",
        "case", "median", "p99", "x opaque"
    );
    for (name, (median, p99)) in &cases {
        println!(
            "{:<40} {:>10.1}µs {:>10.1}µs {:>10.2}",
            name,
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            median.as_secs_f64() / baseline
        );
    }
}
