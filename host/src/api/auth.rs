//! Who is calling: an opaque bearer token listed (as a SHA-256 digest) in a tokens file, or a
//! JWT from an OIDC issuer checked against a JWKS file. Every refusal names its reason without
//! ever echoing the token, and maps to a 401 (or 403 for a missing scope) with a stable type.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a principal may do. Routes name the scope they need; probes need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    GraphsWrite,
    ToolsWrite,
    RunsWrite,
    RunsRead,
    /// Call tools over MCP (`/mcp`).
    ToolsCall,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::GraphsWrite,
        Scope::ToolsWrite,
        Scope::RunsWrite,
        Scope::RunsRead,
        Scope::ToolsCall,
    ];

    /// The wire name: `graphs:write`, `tools:write`, `runs:write`, `runs:read`, `tools:call`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::GraphsWrite => "graphs:write",
            Scope::ToolsWrite => "tools:write",
            Scope::RunsWrite => "runs:write",
            Scope::RunsRead => "runs:read",
            Scope::ToolsCall => "tools:call",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn scope_list() -> String {
    Scope::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let name = String::deserialize(d)?;
        Scope::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown scope {name:?}; expected one of {}",
                scope_list()
            ))
        })
    }
}

/// A scope as written in a tokens file or a token's claims: one of [`Scope`], or a narrowing of
/// `tools:call` (which it implies) for MCP: `tools:call:<tool>` (only the tools so named) or
/// `tools:egress:<host>` (calls reach only the hosts so named, a pattern as in manifests).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ScopeName {
    Plain(Scope),
    Tool(String),
    EgressHost(String),
}

impl ScopeName {
    fn parse(name: &str) -> Option<ScopeName> {
        if let Some(tool) = name.strip_prefix("tools:call:").filter(|t| !t.is_empty()) {
            return Some(ScopeName::Tool(tool.to_owned()));
        }
        if let Some(host) = name.strip_prefix("tools:egress:").filter(|h| !h.is_empty()) {
            return Some(ScopeName::EgressHost(host.to_owned()));
        }
        Scope::parse(name).map(ScopeName::Plain)
    }
}

impl<'de> Deserialize<'de> for ScopeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ScopeName, D::Error> {
        let name = String::deserialize(d)?;
        ScopeName::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown scope {name:?}; expected one of {}, tools:call:<tool> or tools:egress:<host>",
                scope_list()
            ))
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tokens file's `subject`, or the JWT's `sub`. Rate limits are per subject.
    pub subject: String,
    pub scopes: Vec<Scope>,
    /// What its `tools:call:<tool>` and `tools:egress:<host>` scopes narrow its MCP calls to.
    pub grant: crate::mcp::ClientGrant,
}

impl Principal {
    /// `subject` holding `names` (deduplicated; a narrowing implies `tools:call`).
    fn new(subject: String, names: Vec<ScopeName>) -> Principal {
        let mut scopes = Vec::new();
        let mut grant = crate::mcp::ClientGrant::default();
        for name in names {
            match name {
                ScopeName::Plain(s) => scopes.push(s),
                ScopeName::Tool(t) => {
                    scopes.push(Scope::ToolsCall);
                    grant.tools.get_or_insert_with(Default::default).insert(t);
                }
                ScopeName::EgressHost(h) => {
                    scopes.push(Scope::ToolsCall);
                    let hosts = grant.egress_hosts.get_or_insert_with(Vec::new);
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
            }
        }
        scopes.sort();
        scopes.dedup();
        Principal {
            subject,
            scopes,
            grant,
        }
    }
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// 403 `insufficient-scope` unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope {
                subject: self.subject.clone(),
                required: scope,
            })
        }
    }
}

/// Where credentials come from. At least one of `tokens_file` and `jwks_file` must be set;
/// with a JWKS file, `issuer` and `audience` are required.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub tokens_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        }
    }
}

/// A configuration the server must not start with.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no credentials configured: set a tokens file, or a JWKS file with issuer and audience; \
         the API does not run unauthenticated"
    )]
    NothingConfigured,
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), at(*line, *column))]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("{}{}: {entry}: {problem}", path.display(), at(*line, None))]
    TokenEntry {
        path: PathBuf,
        /// `entry 2 (subject "ci")`: 1-based, as a person counts entries.
        entry: String,
        line: Option<usize>,
        problem: String,
    },
    #[error("{}: {key}: {problem}", path.display())]
    JwksKey {
        path: PathBuf,
        /// `key 1 (kid "abc")`.
        key: String,
        problem: String,
    },
    #[error("JWT validation: {0}")]
    JwtSetting(String),
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Why a request was refused. `status()` is 401 for every credential problem and 403 for a
/// missing scope; `detail()` is safe to return and log (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header; send 'Authorization: Bearer <token>'")]
    MissingCredentials,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(String),
    #[error("the bearer token is not known")]
    UnknownToken,
    #[error("the bearer token is not a well-formed JWT: {0}")]
    MalformedJwt(String),
    #[error("JWT algorithm {alg:?} is refused; accepted: RS256, ES256")]
    AlgorithmNotAllowed { alg: String },
    #[error("JWT key id {kid:?} is not in the JWKS")]
    UnknownKey { kid: String },
    #[error("JWT has no 'kid' header and the JWKS holds more than one {alg} key")]
    MissingKeyId { alg: String },
    #[error("JWT algorithm {alg} does not match key {kid:?}, which is for {key_alg}")]
    KeyAlgorithmMismatch {
        kid: String,
        alg: String,
        key_alg: String,
    },
    #[error("JWT signature does not verify")]
    BadSignature,
    #[error("JWT expired at {exp} (now {now}, leeway {leeway_s}s)")]
    Expired { exp: u64, now: u64, leeway_s: u64 },
    #[error("JWT is not valid before {nbf} (now {now}, leeway {leeway_s}s)")]
    NotYetValid { nbf: u64, now: u64, leeway_s: u64 },
    #[error("JWT issuer {got:?} is not the configured issuer")]
    WrongIssuer { got: String },
    #[error("JWT audience {got:?} does not include the configured audience")]
    WrongAudience { got: String },
    #[error("JWT has no '{0}' claim")]
    MissingClaim(&'static str),
    #[error("JWT claim '{claim}' is invalid: {problem}")]
    InvalidClaim {
        claim: &'static str,
        problem: String,
    },
    #[error("subject {subject:?} lacks scope '{required}'")]
    InsufficientScope { subject: String, required: Scope },
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }

    /// Stable slug for the problem `type` (the server prefixes its type base).
    pub fn problem_type(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing-credentials",
            AuthError::MalformedAuthorization(_) => "malformed-authorization",
            AuthError::UnknownToken => "unknown-token",
            AuthError::MalformedJwt(_) => "malformed-token",
            AuthError::AlgorithmNotAllowed { .. } => "token-algorithm-refused",
            AuthError::UnknownKey { .. } | AuthError::MissingKeyId { .. } => "unknown-signing-key",
            AuthError::KeyAlgorithmMismatch { .. } => "token-algorithm-refused",
            AuthError::BadSignature => "bad-token-signature",
            AuthError::Expired { .. } => "token-expired",
            AuthError::NotYetValid { .. } => "token-not-yet-valid",
            AuthError::WrongIssuer { .. } => "wrong-token-issuer",
            AuthError::WrongAudience { .. } => "wrong-token-audience",
            AuthError::MissingClaim(_) | AuthError::InvalidClaim { .. } => "invalid-token-claims",
            AuthError::InsufficientScope { .. } => "insufficient-scope",
        }
    }

    /// The reason, for the problem `detail` and for logs.
    pub fn detail(&self) -> String {
        self.to_string()
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3): no error code when no credentials were sent,
    /// `invalid_request` for a malformed header, `insufficient_scope` for 403, else
    /// `invalid_token`.
    pub fn www_authenticate(&self) -> String {
        let code = match self {
            AuthError::MissingCredentials => return "Bearer realm=\"sandgraph\"".to_string(),
            AuthError::MalformedAuthorization(_) => "invalid_request",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            _ => "invalid_token",
        };
        let mut value = format!(
            "Bearer realm=\"sandgraph\", error=\"{code}\", error_description=\"{}\"",
            quoted_string_safe(&self.detail())
        );
        if let AuthError::InsufficientScope { required, .. } = self {
            value.push_str(&format!(", scope=\"{required}\""));
        }
        value
    }
}

/// RFC 6750 allows `%x20-21 / %x23-5B / %x5D-7E` inside `error_description`.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// A value from a token, shortened and made printable before it goes into a detail.
fn shown(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

struct TokenEntry {
    digest: [u8; 32],
    principal: Principal,
}

struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct JwtSettings {
    keys: Vec<JwksKey>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Checks the `Authorization` header of each request. Cheap to share behind an `Arc`.
pub struct Authenticator {
    tokens: Vec<TokenEntry>,
    jwt: Option<JwtSettings>,
    now: WallClock,
    /// JWTs whose signature and claims already checked out, by SHA-256 of the whole token:
    /// a client sending the same token again skips the signature check (RS256/ES256 cost
    /// 40-80 times an opaque-token lookup). Time claims are still checked on every use.
    verified: Mutex<HashMap<[u8; 32], VerifiedJwt>>,
    signature_checks: AtomicU64,
}

#[derive(Clone)]
struct VerifiedJwt {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
}

/// Verified JWTs remembered at most; the cache is emptied when it fills.
const VERIFIED_CACHE_MAX: usize = 4096;

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwks_keys", &self.jwt.as_ref().map(|j| j.keys.len()))
            .finish()
    }
}

impl Authenticator {
    /// Reads the tokens file and the JWKS file; every problem names the file and the entry.
    pub fn load(config: &AuthConfig) -> Result<Authenticator, AuthConfigError> {
        if config.tokens_file.is_none() && config.jwks_file.is_none() {
            return Err(AuthConfigError::NothingConfigured);
        }
        let tokens = match &config.tokens_file {
            Some(path) => load_tokens(path, &read(path)?)?,
            None => Vec::new(),
        };
        let jwt = match &config.jwks_file {
            Some(path) => {
                let issuer = config.issuer.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                    AuthConfigError::JwtSetting(
                        "a JWKS file is set but no issuer; set the issuer the tokens' 'iss' must equal"
                            .into(),
                    )
                })?;
                let audience =
                    config.audience.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                        AuthConfigError::JwtSetting(
                            "a JWKS file is set but no audience; set the audience the tokens' 'aud' must include"
                                .into(),
                        )
                    })?;
                Some(JwtSettings {
                    keys: load_jwks(path, &read(path)?)?,
                    issuer,
                    audience,
                    leeway_s: config.leeway.as_secs(),
                })
            }
            None => {
                if config.issuer.is_some() || config.audience.is_some() {
                    return Err(AuthConfigError::JwtSetting(
                        "an issuer or audience is set but no JWKS file to check signatures with"
                            .into(),
                    ));
                }
                None
            }
        };
        Ok(Authenticator {
            tokens,
            jwt,
            now: Arc::new(SystemTime::now),
            verified: Mutex::new(HashMap::new()),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// Replaces the wall clock used for `exp`/`nbf` (tests).
    pub fn with_clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.now = Arc::new(now);
        self
    }

    /// The principal behind the request's `Authorization: Bearer` header.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::MissingCredentials)?;
        if values.next().is_some() {
            return Err(AuthError::MalformedAuthorization(
                "more than one Authorization header".into(),
            ));
        }
        let value = value.to_str().map_err(|_| {
            AuthError::MalformedAuthorization("the value is not visible ASCII".into())
        })?;
        let token = bearer_token(value)?;
        self.authenticate_token(token)
    }

    /// The principal behind a bare token (the part after `Bearer `).
    pub fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every entry, without stopping at a match.
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(&entry.principal);
            }
        }
        if let Some(principal) = found {
            return Ok(principal.clone());
        }
        let Some(jwt) = &self.jwt else {
            return Err(AuthError::UnknownToken);
        };
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthError::UnknownToken);
        }
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        if let Some(v) = cached {
            self.check_times(jwt, v.exp, v.nbf)?;
            return Ok(v.principal);
        }
        let v = self.verify_jwt(jwt, token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_CACHE_MAX {
            verified.clear();
        }
        verified.insert(digest, v.clone());
        Ok(v.principal)
    }

    /// How many JWT signatures were checked (cache misses); for metrics and tests.
    pub fn jwt_signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    fn unix_now(&self) -> u64 {
        (self.now)()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn check_times(&self, jwt: &JwtSettings, exp: u64, nbf: Option<u64>) -> Result<(), AuthError> {
        let now = self.unix_now();
        let leeway_s = jwt.leeway_s;
        if now > exp.saturating_add(leeway_s) {
            return Err(AuthError::Expired { exp, now, leeway_s });
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(leeway_s)
        {
            return Err(AuthError::NotYetValid { nbf, now, leeway_s });
        }
        Ok(())
    }

    fn verify_jwt(&self, jwt: &JwtSettings, token: &str) -> Result<VerifiedJwt, AuthError> {
        let header_part = token.split('.').next().unwrap_or_default();
        let header = decode_json_part(header_part, "header")?;
        let alg = match header.get("alg") {
            Some(serde_json::Value::String(alg)) => alg.clone(),
            Some(_) => {
                return Err(AuthError::MalformedJwt(
                    "header 'alg' is not a string".into(),
                ));
            }
            None => return Err(AuthError::MalformedJwt("header has no 'alg'".into())),
        };
        let algorithm = match alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::AlgorithmNotAllowed { alg: shown(&alg) }),
        };
        if header.contains_key("crit") {
            // RFC 7515 §4.1.11: extensions marked critical must be understood; we know none.
            return Err(AuthError::MalformedJwt(
                "header lists 'crit' extensions, which this server does not implement".into(),
            ));
        }
        let key = match header.get("kid") {
            Some(serde_json::Value::String(kid)) => jwt
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or_else(|| AuthError::UnknownKey { kid: shown(kid) })?,
            Some(_) => {
                return Err(AuthError::MalformedJwt(
                    "header 'kid' is not a string".into(),
                ));
            }
            None => {
                let mut same_alg = jwt.keys.iter().filter(|k| k.alg == algorithm);
                match (same_alg.next(), same_alg.next()) {
                    (Some(key), None) => key,
                    (None, _) => {
                        return Err(AuthError::UnknownKey {
                            kid: format!("(none; no {alg} key in the JWKS)"),
                        });
                    }
                    (Some(_), Some(_)) => return Err(AuthError::MissingKeyId { alg }),
                }
            }
        };
        if key.alg != algorithm {
            return Err(AuthError::KeyAlgorithmMismatch {
                kid: key.kid.clone().unwrap_or_default(),
                alg,
                key_alg: format!("{:?}", key.alg),
            });
        }

        // The crate checks the signature; the claims are checked below against our clock.
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                        AuthError::BadSignature
                    }
                    K::Base64(_) => AuthError::MalformedJwt("a part is not base64url".into()),
                    K::Json(_) | K::Utf8(_) => {
                        AuthError::MalformedJwt("the header or claims are not a JSON object".into())
                    }
                    K::InvalidToken => {
                        AuthError::MalformedJwt("expected three dot-separated parts".into())
                    }
                    K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed { alg: alg.clone() },
                    other => AuthError::MalformedJwt(format!("{other:?}")),
                }
            })?;
        let claims = data
            .claims
            .as_object()
            .ok_or_else(|| AuthError::MalformedJwt("the claims are not a JSON object".into()))?;
        self.check_claims(jwt, claims)
    }

    fn check_claims(
        &self,
        jwt: &JwtSettings,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<VerifiedJwt, AuthError> {
        let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        let nbf = numeric_date(claims, "nbf")?;
        self.check_times(jwt, exp, nbf)?;
        match claims.get("iss") {
            None => return Err(AuthError::MissingClaim("iss")),
            Some(serde_json::Value::String(iss)) if *iss == jwt.issuer => {}
            Some(serde_json::Value::String(iss)) => {
                return Err(AuthError::WrongIssuer { got: shown(iss) });
            }
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "iss",
                    problem: "not a string".into(),
                });
            }
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            None => return Err(AuthError::MissingClaim("aud")),
            Some(serde_json::Value::String(aud)) => vec![aud.as_str()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| AuthError::InvalidClaim {
                        claim: "aud",
                        problem: "an array entry is not a string".into(),
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "aud",
                    problem: "neither a string nor an array of strings".into(),
                });
            }
        };
        if !audiences.contains(&jwt.audience.as_str()) {
            return Err(AuthError::WrongAudience {
                got: shown(&audiences.join(" ")),
            });
        }
        let subject = match claims.get("sub") {
            None => return Err(AuthError::MissingClaim("sub")),
            Some(serde_json::Value::String(sub)) if !sub.is_empty() => sub.clone(),
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "sub",
                    problem: "not a non-empty string".into(),
                });
            }
        };
        Ok(VerifiedJwt {
            principal: Principal::new(subject, claim_scopes(claims)?),
            exp,
            nbf,
        })
    }
}

/// `scope` (RFC 8693: space-separated string) or `scp` (string or array, as some issuers
/// send it). Scopes this API does not know (`openid`, `profile`) are ignored.
fn claim_scopes(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<ScopeName>, AuthError> {
    let mut names: Vec<&str> = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            None => {}
            Some(serde_json::Value::String(s)) => names.extend(s.split_ascii_whitespace()),
            Some(serde_json::Value::Array(list)) => {
                for v in list {
                    names.push(v.as_str().ok_or_else(|| AuthError::InvalidClaim {
                        claim: if claim == "scope" { "scope" } else { "scp" },
                        problem: "an array entry is not a string".into(),
                    })?);
                }
            }
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: if claim == "scope" { "scope" } else { "scp" },
                    problem: "neither a string nor an array of strings".into(),
                });
            }
        }
    }
    Ok(names.into_iter().filter_map(ScopeName::parse).collect())
}

fn numeric_date(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &'static str,
) -> Result<Option<u64>, AuthError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => match v.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                _ => Err(AuthError::InvalidClaim {
                    claim,
                    problem: "not a non-negative number of seconds since the epoch".into(),
                }),
            },
        },
    }
}

fn decode_json_part(
    part: &str,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::MalformedJwt(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(AuthError::MalformedJwt(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let value = value.trim();
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(AuthError::MalformedAuthorization(
            "expected 'Bearer <token>'".into(),
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Name the scheme only when it looks like one, so a bare credential is never echoed.
        let named = scheme.len() <= 16 && scheme.chars().all(|c| c.is_ascii_alphabetic());
        return Err(AuthError::MalformedAuthorization(if named {
            format!("scheme '{scheme}' is not supported; use 'Bearer <token>'")
        } else {
            "expected 'Bearer <token>'".into()
        }));
    }
    let token = rest.trim_start();
    if token.is_empty() {
        return Err(AuthError::MalformedAuthorization(
            "the bearer token is empty".into(),
        ));
    }
    if token.contains(char::is_whitespace) {
        return Err(AuthError::MalformedAuthorization(
            "the bearer token contains whitespace".into(),
        ));
    }
    Ok(token)
}

fn read(path: &Path) -> Result<String, AuthConfigError> {
    std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// ---- tokens file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<RawTokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenEntry {
    subject: Option<String>,
    token: Option<String>,
    sha256: Option<String>,
    scopes: Option<Vec<ScopeName>>,
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

fn load_tokens(path: &Path, text: &str) -> Result<Vec<TokenEntry>, AuthConfigError> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let file: TokensFile = if is_json {
        serde_json::from_str(text).map_err(|e| AuthConfigError::Syntax {
            path: path.to_path_buf(),
            line: Some(e.line()),
            column: Some(e.column()),
            message: e.to_string(),
        })?
    } else {
        serde_norway::from_str(text).map_err(|e| {
            let loc = e.location();
            AuthConfigError::Syntax {
                path: path.to_path_buf(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?
    };
    if file.tokens.is_empty() {
        return Err(AuthConfigError::TokenEntry {
            path: path.to_path_buf(),
            entry: "tokens".into(),
            line: None,
            problem: "the list is empty; add at least one entry".into(),
        });
    }
    let lines = entry_lines(text, is_json);
    let mut entries: Vec<TokenEntry> = Vec::with_capacity(file.tokens.len());
    for (i, raw) in file.tokens.into_iter().enumerate() {
        let entry_name = match &raw.subject {
            Some(s) => format!("entry {} (subject {:?})", i + 1, shown(s)),
            None => format!("entry {}", i + 1),
        };
        let fail = |problem: String| AuthConfigError::TokenEntry {
            path: path.to_path_buf(),
            entry: entry_name.clone(),
            line: lines.get(i).copied(),
            problem,
        };
        let subject = match raw.subject {
            Some(s) if !s.trim().is_empty() => s,
            _ => return Err(fail("has no 'subject'; name who holds the token".into())),
        };
        let digest: [u8; 32] = match (raw.token, raw.sha256) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "has both 'token' and 'sha256'; keep only 'sha256'".into(),
                ));
            }
            (None, None) => {
                return Err(fail(
                    "has neither 'sha256' nor 'token'; add 'sha256: <hex SHA-256 of the token>'"
                        .into(),
                ));
            }
            (Some(token), None) => {
                if token.len() < MIN_TOKEN_LEN
                    || token.contains(|c: char| c.is_whitespace() || c.is_control())
                {
                    return Err(fail(format!(
                        "'token' must be at least {MIN_TOKEN_LEN} characters without whitespace"
                    )));
                }
                Sha256::digest(token.as_bytes()).into()
            }
            (None, Some(hex_digest)) => {
                let bytes = hex::decode(hex_digest.trim())
                    .ok()
                    .filter(|b| b.len() == 32);
                match bytes {
                    Some(b) => b.try_into().expect("length checked"),
                    None => {
                        return Err(fail(
                            "'sha256' must be 64 hex digits (the SHA-256 of the token)".into(),
                        ));
                    }
                }
            }
        };
        let scopes = match raw.scopes {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err(fail(format!(
                    "has no 'scopes'; list some of {}",
                    scope_list()
                )));
            }
        };
        if let Some(j) = entries
            .iter()
            .position(|e| bool::from(e.digest.ct_eq(&digest)))
        {
            return Err(fail(format!(
                "has the same token as entry {}; every token must be distinct",
                j + 1
            )));
        }
        entries.push(TokenEntry {
            digest,
            principal: Principal::new(subject, scopes),
        });
    }
    Ok(entries)
}

/// 1-based line of each `tokens` entry, for error messages: a YAML entry starts with `-`, a
/// JSON entry with `{` inside the list. Best effort; errors still name the entry by number.
fn entry_lines(text: &str, is_json: bool) -> Vec<usize> {
    let mut lines = Vec::new();
    if is_json {
        let mut depth = 0i32;
        let mut in_string = false;
        let mut escaped = false;
        let mut line = 1;
        for c in text.chars() {
            if c == '\n' {
                line += 1;
            }
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' => {
                    depth += 1;
                    // depth 3: the object opened inside `"tokens": [`.
                    if c == '{' && depth == 3 {
                        lines.push(line);
                    }
                }
                '}' | ']' => depth -= 1,
                _ => {}
            }
        }
    } else {
        let mut indent: Option<usize> = None;
        for (n, l) in text.lines().enumerate() {
            let trimmed = l.trim_start();
            if trimmed.starts_with("- ") || trimmed == "-" {
                let width = l.len() - trimmed.len();
                if indent.is_none() {
                    indent = Some(width);
                }
                if indent == Some(width) {
                    lines.push(n + 1);
                }
            }
        }
    }
    lines
}

// ---- JWKS file ----

fn load_jwks(path: &Path, text: &str) -> Result<Vec<JwksKey>, AuthConfigError> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| AuthConfigError::Syntax {
            path: path.to_path_buf(),
            line: Some(e.line()),
            column: Some(e.column()),
            message: e.to_string(),
        })?;
    let Some(raw_keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err(AuthConfigError::Syntax {
            path: path.to_path_buf(),
            line: None,
            column: None,
            message: "expected a JWK set: an object with a 'keys' array".into(),
        });
    };
    if raw_keys.is_empty() {
        return Err(AuthConfigError::Syntax {
            path: path.to_path_buf(),
            line: None,
            column: None,
            message: "'keys' is empty; add the issuer's signing keys".into(),
        });
    }
    let mut keys: Vec<JwksKey> = Vec::new();
    for (i, raw) in raw_keys.iter().enumerate() {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_string);
        let name = match &kid {
            Some(k) => format!("key {} (kid {:?})", i + 1, shown(k)),
            None => format!("key {}", i + 1),
        };
        let fail = |problem: String| AuthConfigError::JwksKey {
            path: path.to_path_buf(),
            key: name.clone(),
            problem,
        };
        let jwk: Jwk =
            serde_json::from_value(raw.clone()).map_err(|e| fail(format!("not a JWK: {e}")))?;
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            // An encryption key in the issuer's set is not for us; skip it.
            continue;
        }
        if raw.get("d").is_some() {
            return Err(fail(
                "contains a private key ('d'); a JWKS file must hold public keys only".into(),
            ));
        }
        let (alg, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let n = URL_SAFE_NO_PAD
                    .decode(&rsa.n)
                    .map_err(|_| fail("'n' is not base64url".into()))?;
                let modulus_bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
                if modulus_bits < 2048 {
                    return Err(fail(format!(
                        "RSA modulus is about {modulus_bits} bits; at least 2048 are required"
                    )));
                }
                let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e)
                    .map_err(|e| fail(format!("bad RSA components: {e}")))?;
                (Algorithm::RS256, key)
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                if ec.curve != EllipticCurve::P256 {
                    return Err(fail(format!(
                        "curve {:?} is not supported; ES256 needs P-256",
                        ec.curve
                    )));
                }
                let (x, y) = (
                    URL_SAFE_NO_PAD.decode(&ec.x).ok(),
                    URL_SAFE_NO_PAD.decode(&ec.y).ok(),
                );
                if x.map(|x| x.len()) != Some(32) || y.map(|y| y.len()) != Some(32) {
                    return Err(fail(
                        "'x' and 'y' must be 32 bytes of base64url each".into(),
                    ));
                }
                let key = DecodingKey::from_ec_components(&ec.x, &ec.y)
                    .map_err(|e| fail(format!("bad EC components: {e}")))?;
                (Algorithm::ES256, key)
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(fail(
                    "is a symmetric ('oct') key; only RSA and EC P-256 public keys are accepted"
                        .into(),
                ));
            }
            _ => {
                return Err(fail(
                    "key type is not supported; only RSA (RS256) and EC P-256 (ES256)".into(),
                ));
            }
        };
        match jwk.common.key_algorithm {
            None => {}
            Some(KeyAlgorithm::RS256) if alg == Algorithm::RS256 => {}
            Some(KeyAlgorithm::ES256) if alg == Algorithm::ES256 => {}
            Some(other) => {
                return Err(fail(format!(
                    "'alg' is {other:?}; only RS256 (RSA keys) and ES256 (P-256 keys) are accepted"
                )));
            }
        }
        if let Some(k) = &kid
            && keys
                .iter()
                .any(|other| other.kid.as_deref() == Some(k.as_str()))
        {
            return Err(fail("repeats a kid; every key id must be distinct".into()));
        }
        keys.push(JwksKey { kid, alg, key });
    }
    if keys.is_empty() {
        return Err(AuthConfigError::Syntax {
            path: path.to_path_buf(),
            line: None,
            column: None,
            message: "no signing keys (every key is marked \"use\": \"enc\")".into(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "sandgraph-api";
    const ADMIN: &str = "test-only-admin-token-0001";
    const READER: &str = "test-only-reader-token-0002";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth")
            .join(name)
    }

    fn config() -> AuthConfig {
        AuthConfig {
            tokens_file: Some(fixture("test-only-tokens.yaml")),
            jwks_file: Some(fixture("test-only-jwks.json")),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway: Duration::from_secs(30),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::load(&config())
            .unwrap()
            .with_clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
    }

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    fn key(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
            "exp": NOW + 300, "nbf": NOW - 10, "iat": NOW - 10,
            "scope": "openid runs:read runs:write",
        })
    }

    fn sign_rs(kid: Option<&str>, claims: &serde_json::Value, pem: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(&key(pem)).unwrap(),
        )
        .unwrap()
    }

    fn sign_es(kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        let k = EncodingKey::from_ec_pem(&key("test-only-ec.pem")).unwrap();
        jsonwebtoken::encode(&header, claims, &k).unwrap()
    }

    fn rs(claims: &serde_json::Value) -> String {
        sign_rs(Some("rsa-1"), claims, "test-only-rsa.pem")
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// Authenticates `token` and checks the refusal never repeats it.
    fn refuse(token: &str) -> AuthError {
        let err = authenticator()
            .authenticate(&headers(&format!("Bearer {token}")))
            .unwrap_err();
        for text in [err.detail(), err.www_authenticate()] {
            assert!(!text.contains(token), "{text} echoes the token");
        }
        assert_eq!(err.status(), 401, "{err}");
        assert!(err.www_authenticate().contains("error=\"invalid_token\""));
        err
    }

    #[test]
    fn tokens_file_tokens_authenticate_with_their_scopes() {
        let auth = authenticator();
        let admin = auth
            .authenticate(&headers(&format!("Bearer {ADMIN}")))
            .unwrap();
        assert_eq!(admin.subject, "admin");
        assert_eq!(admin.scopes, Scope::ALL.to_vec());
        // The scheme is case-insensitive.
        let reader = auth
            .authenticate(&headers(&format!("bearer {READER}")))
            .unwrap();
        assert_eq!(reader.subject, "reader");
        assert_eq!(reader.scopes, vec![Scope::RunsRead]);
        assert!(reader.require(Scope::RunsRead).is_ok());
    }

    #[test]
    fn json_tokens_file_with_a_plain_token() {
        let auth = Authenticator::load(&AuthConfig {
            tokens_file: Some(fixture("test-only-tokens.json")),
            ..AuthConfig::default()
        })
        .unwrap();
        let p = auth
            .authenticate_token("test-only-ci-token-plain-0003")
            .unwrap();
        assert_eq!(p.subject, "ci");
        assert_eq!(p.scopes, vec![Scope::RunsWrite, Scope::RunsRead]);
    }

    #[test]
    fn missing_scope_is_403_naming_the_scope() {
        let reader = authenticator().authenticate_token(READER).unwrap();
        let err = reader.require(Scope::GraphsWrite).unwrap_err();
        assert_eq!(
            err,
            AuthError::InsufficientScope {
                subject: "reader".into(),
                required: Scope::GraphsWrite
            }
        );
        assert_eq!(err.status(), 403);
        assert_eq!(err.problem_type(), "insufficient-scope");
        let www = err.www_authenticate();
        assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        assert!(www.contains("scope=\"graphs:write\""), "{www}");
    }

    #[test]
    fn narrowing_scopes_imply_tools_call_and_name_the_client_grant() {
        let auth = authenticator();
        let p = auth
            .authenticate(&headers("Bearer test-only-narrow-token-0003"))
            .unwrap();
        assert_eq!(p.scopes, vec![Scope::ToolsCall]);
        assert_eq!(p.grant.tools, Some(["http-get".to_owned()].into()));
        assert_eq!(p.grant.egress_hosts, Some(vec!["allowed.test".to_owned()]));
        // From a JWT's scope claim too; a plain tools:call narrows nothing.
        let mut c = claims();
        c["scope"] = json!("tools:call tools:call:calc tools:egress:*.example.com");
        let p = auth
            .authenticate(&headers(&format!("Bearer {}", rs(&c))))
            .unwrap();
        assert_eq!(p.scopes, vec![Scope::ToolsCall]);
        assert_eq!(p.grant.tools, Some(["calc".to_owned()].into()));
        assert_eq!(p.grant.egress_hosts, Some(vec!["*.example.com".to_owned()]));
        let admin = auth
            .authenticate(&headers(&format!("Bearer {ADMIN}")))
            .unwrap();
        assert_eq!(admin.grant, crate::mcp::ClientGrant::default());
        // An empty narrowing is no scope at all, named in the file's error.
        let err = load_tokens_text(
            "tokens.yaml",
            &format!(
                "tokens:\n  - subject: a\n    sha256: {GOOD}\n    scopes: [\"tools:call:\"]\n"
            ),
        );
        assert!(err.to_string().contains("tools:call:<tool>"), "{err}");
    }

    #[test]
    fn unknown_opaque_token_is_refused() {
        assert_eq!(
            refuse("test-only-nobody-token-9999"),
            AuthError::UnknownToken
        );
        assert_eq!(
            refuse("a.b.c"),
            AuthError::MalformedJwt("the header is not base64url".into())
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let auth = authenticator();
        let err = auth.authenticate(&http::HeaderMap::new()).unwrap_err();
        assert_eq!(err, AuthError::MissingCredentials);
        assert_eq!(err.status(), 401);
        assert_eq!(err.www_authenticate(), "Bearer realm=\"sandgraph\"");

        let err = auth
            .authenticate(&headers("Basic YWxpY2U6c2VjcmV0"))
            .unwrap_err();
        assert!(matches!(&err, AuthError::MalformedAuthorization(m) if m.contains("'Basic'")));
        assert!(!err.detail().contains("YWxpY2U6c2VjcmV0"));
        assert!(err.www_authenticate().contains("error=\"invalid_request\""));

        // A bare credential with no scheme is never echoed.
        let err = auth.authenticate(&headers(ADMIN)).unwrap_err();
        assert_eq!(
            err,
            AuthError::MalformedAuthorization("expected 'Bearer <token>'".into())
        );
        let err = auth.authenticate(&headers("Bearer ")).unwrap_err();
        assert!(matches!(err, AuthError::MalformedAuthorization(_)), "{err}");

        let mut two = headers(&format!("Bearer {ADMIN}"));
        two.append(
            http::header::AUTHORIZATION,
            format!("Bearer {READER}").parse().unwrap(),
        );
        let err = auth.authenticate(&two).unwrap_err();
        assert_eq!(
            err,
            AuthError::MalformedAuthorization("more than one Authorization header".into())
        );
    }

    #[test]
    fn rs256_jwt_is_accepted_with_its_scopes() {
        let p = authenticator()
            .authenticate(&headers(&format!("Bearer {}", rs(&claims()))))
            .unwrap();
        assert_eq!(p.subject, "alice");
        // `openid` is not ours and is ignored.
        assert_eq!(p.scopes, vec![Scope::RunsWrite, Scope::RunsRead]);
    }

    #[test]
    fn es256_jwt_with_scp_array_and_audience_list_is_accepted() {
        let mut c = claims();
        c["aud"] = json!(["other", AUDIENCE]);
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["graphs:write", "tools:write"]);
        let p = authenticator()
            .authenticate_token(&sign_es(Some("ec-1"), &c))
            .unwrap();
        assert_eq!(p.scopes, vec![Scope::GraphsWrite, Scope::ToolsWrite]);
        // Without a kid, the only key of the token's algorithm is used.
        assert!(
            authenticator()
                .authenticate_token(&sign_es(None, &claims()))
                .is_ok()
        );
    }

    #[test]
    fn a_verified_jwt_is_remembered_but_still_expires() {
        let now = Arc::new(AtomicU64::new(NOW));
        let clock = now.clone();
        let auth = Authenticator::load(&config())
            .unwrap()
            .with_clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst)));
        let token = rs(&claims());
        let first = auth.authenticate_token(&token).unwrap();
        assert_eq!(auth.authenticate_token(&token).unwrap(), first);
        assert_eq!(
            auth.jwt_signature_checks(),
            1,
            "the second use skips the signature"
        );
        // The cached token expires like any other: exp NOW+300, leeway 30.
        now.store(NOW + 331, Ordering::SeqCst);
        assert_eq!(
            auth.authenticate_token(&token),
            Err(AuthError::Expired {
                exp: NOW + 300,
                now: NOW + 331,
                leeway_s: 30
            })
        );
        // A refused token is not remembered: every try checks it again.
        now.store(NOW, Ordering::SeqCst);
        let forged = sign_rs(Some("rsa-1"), &claims(), "test-only-rsa-other.pem");
        for _ in 0..2 {
            assert_eq!(
                auth.authenticate_token(&forged),
                Err(AuthError::BadSignature)
            );
        }
        assert_eq!(auth.jwt_signature_checks(), 3);
    }

    #[test]
    fn alg_none_is_refused() {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims())
        );
        assert_eq!(
            refuse(&token),
            AuthError::AlgorithmNotAllowed { alg: "none".into() }
        );
        assert_eq!(refuse(&token).problem_type(), "token-algorithm-refused");
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion: an HMAC keyed with the RSA public key an attacker can read.
        let public = std::fs::read(fixture("test-only-jwks.json")).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(
            refuse(&token),
            AuthError::AlgorithmNotAllowed {
                alg: "HS256".into()
            }
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let token = sign_rs(Some("rsa-9"), &claims(), "test-only-rsa.pem");
        assert_eq!(
            refuse(&token),
            AuthError::UnknownKey {
                kid: "rsa-9".into()
            }
        );
        assert_eq!(refuse(&token).problem_type(), "unknown-signing-key");
    }

    #[test]
    fn token_algorithm_must_match_the_key() {
        let token = sign_es(Some("rsa-1"), &claims());
        assert_eq!(
            refuse(&token),
            AuthError::KeyAlgorithmMismatch {
                kid: "rsa-1".into(),
                alg: "ES256".into(),
                key_alg: "RS256".into()
            }
        );
    }

    #[test]
    fn forged_and_tampered_signatures_are_refused() {
        let forged = sign_rs(Some("rsa-1"), &claims(), "test-only-rsa-other.pem");
        assert_eq!(refuse(&forged), AuthError::BadSignature);

        // Same signature, claims swapped for more scopes.
        let good = rs(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut more = claims();
        more["scope"] = json!("graphs:write tools:write runs:write runs:read");
        let tampered = format!("{}.{}.{}", parts[0], b64(&more), parts[2]);
        assert_eq!(refuse(&tampered), AuthError::BadSignature);
        assert_eq!(refuse(&tampered).problem_type(), "bad-token-signature");

        let es = sign_es(Some("ec-1"), &claims());
        let (head, sig) = es.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[5] ^= 1;
        let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(refuse(&flipped), AuthError::BadSignature);
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW - 29);
        assert!(
            authenticator().authenticate_token(&rs(&c)).is_ok(),
            "inside the 30 s leeway"
        );
        c["exp"] = json!(NOW - 31);
        assert_eq!(
            refuse(&rs(&c)),
            AuthError::Expired {
                exp: NOW - 31,
                now: NOW,
                leeway_s: 30
            }
        );
        assert_eq!(refuse(&rs(&c)).problem_type(), "token-expired");
    }

    #[test]
    fn not_yet_valid_is_refused() {
        let mut c = claims();
        c["nbf"] = json!(NOW + 31);
        assert_eq!(
            refuse(&rs(&c)),
            AuthError::NotYetValid {
                nbf: NOW + 31,
                now: NOW,
                leeway_s: 30
            }
        );
        c["nbf"] = json!(NOW + 29);
        assert!(authenticator().authenticate_token(&rs(&c)).is_ok());
    }

    #[test]
    fn wrong_audience_and_issuer_are_refused() {
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert_eq!(
            refuse(&rs(&c)),
            AuthError::WrongAudience {
                got: "someone-else".into()
            }
        );
        assert_eq!(refuse(&rs(&c)).problem_type(), "wrong-token-audience");
        let mut c = claims();
        c["iss"] = json!("https://evil.test");
        assert_eq!(
            refuse(&rs(&c)),
            AuthError::WrongIssuer {
                got: "https://evil.test".into()
            }
        );
    }

    #[test]
    fn required_claims_must_be_present_and_well_typed() {
        for claim in ["exp", "iss", "aud", "sub"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(claim);
            assert!(
                matches!(refuse(&rs(&c)), AuthError::MissingClaim(n) if n == claim),
                "{claim}"
            );
        }
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert!(matches!(
            refuse(&rs(&c)),
            AuthError::InvalidClaim { claim: "exp", .. }
        ));
        let mut c = claims();
        c["scope"] = json!(7);
        assert!(matches!(
            refuse(&rs(&c)),
            AuthError::InvalidClaim { claim: "scope", .. }
        ));
    }

    #[test]
    fn malformed_jwts_are_refused() {
        let token = rs(&claims());
        let (head, rest) = token.split_once('.').unwrap();
        assert_eq!(
            refuse(&format!("{head}!.{rest}")),
            AuthError::MalformedJwt("the header is not base64url".into())
        );
        let crit = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1})),
            b64(&claims()),
            token.rsplit('.').next().unwrap()
        );
        assert!(matches!(refuse(&crit), AuthError::MalformedJwt(m) if m.contains("'crit'")));
        let no_alg = format!("{}.{}.", b64(&json!({"typ": "JWT"})), b64(&claims()));
        assert_eq!(
            refuse(&no_alg),
            AuthError::MalformedJwt("header has no 'alg'".into())
        );
    }

    #[test]
    fn jwt_without_jwks_configured_is_an_unknown_token() {
        let auth = Authenticator::load(&AuthConfig {
            tokens_file: Some(fixture("test-only-tokens.yaml")),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(
            auth.authenticate_token(&rs(&claims())),
            Err(AuthError::UnknownToken)
        );
    }

    // ---- configuration errors ----

    fn load_tokens_text(name: &str, text: &str) -> AuthConfigError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Authenticator::load(&AuthConfig {
            tokens_file: Some(path),
            ..AuthConfig::default()
        })
        .unwrap_err()
    }

    const GOOD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn nothing_configured_is_refused() {
        assert!(matches!(
            Authenticator::load(&AuthConfig::default()),
            Err(AuthConfigError::NothingConfigured)
        ));
    }

    #[test]
    fn unreadable_tokens_file_names_the_path() {
        let err = Authenticator::load(&AuthConfig {
            tokens_file: Some(fixture("no-such-tokens.yaml")),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, AuthConfigError::Read { .. }));
        assert!(err.to_string().contains("no-such-tokens.yaml"), "{err}");
    }

    #[test]
    fn unknown_scope_names_file_line_and_column() {
        let text = format!(
            "tokens:\n  - subject: a\n    sha256: {GOOD}\n    scopes: [runs:read, runs:delete]\n"
        );
        let err = load_tokens_text("tokens.yaml", &text);
        let msg = err.to_string();
        assert!(
            matches!(err, AuthConfigError::Syntax { line: Some(4), .. }),
            "{msg}"
        );
        assert!(msg.contains("tokens.yaml:4:"), "{msg}");
        assert!(msg.contains("unknown scope \"runs:delete\""), "{msg}");
    }

    #[test]
    fn bad_entries_name_the_entry_and_its_line() {
        let cases: &[(&str, &str)] = &[
            (
                "  - sha256: GOOD\n    scopes: [runs:read]\n",
                "entry 2: has no 'subject'",
            ),
            (
                "  - subject: b\n    token: test-only-a-long-enough-token\n    sha256: GOOD\n    scopes: [runs:read]\n",
                "entry 2 (subject \"b\"): has both 'token' and 'sha256'",
            ),
            (
                "  - subject: b\n    scopes: [runs:read]\n",
                "entry 2 (subject \"b\"): has neither 'sha256' nor 'token'",
            ),
            (
                "  - subject: b\n    sha256: 1234\n    scopes: [runs:read]\n",
                "entry 2 (subject \"b\"): 'sha256' must be 64 hex digits",
            ),
            (
                "  - subject: b\n    token: short\n    scopes: [runs:read]\n",
                "entry 2 (subject \"b\"): 'token' must be at least 16 characters",
            ),
            (
                "  - subject: b\n    sha256: GOOD\n    scopes: []\n",
                "entry 2 (subject \"b\"): has no 'scopes'",
            ),
            (
                "  - subject: b\n    sha256: OTHER\n    scopes: [runs:read]\n",
                "entry 2 (subject \"b\"): has the same token as entry 1",
            ),
        ];
        for (second, expected) in cases {
            let other = GOOD.to_string();
            let first =
                format!("tokens:\n  - subject: a\n    sha256: {GOOD}\n    scopes: [runs:read]\n");
            // Entry 2 uses a different digest unless the case is about duplicates.
            let second = second
                .replace(
                    "sha256: GOOD",
                    &format!("sha256: {}", GOOD.replace('0', "f")),
                )
                .replace("OTHER", &other);
            let err = load_tokens_text("tokens.yaml", &format!("{first}{second}"));
            let msg = err.to_string();
            assert!(
                matches!(err, AuthConfigError::TokenEntry { line: Some(5), .. }),
                "{msg}"
            );
            assert!(msg.contains(&format!("tokens.yaml:5: {expected}")), "{msg}");
        }
    }

    #[test]
    fn entry_lines_skip_nested_block_lists() {
        let text = format!(
            "# comment\ntokens:\n  - subject: a\n    sha256: \"{GOOD}\"\n    scopes:\n      - runs:read\n      - runs:write\n  - subject: b\n    scopes:\n      - runs:read\n"
        );
        let err = load_tokens_text("tokens.yaml", &text);
        assert!(
            err.to_string()
                .contains("tokens.yaml:8: entry 2 (subject \"b\"): has neither"),
            "{err}"
        );
    }

    #[test]
    fn json_tokens_file_errors_have_lines_too() {
        let err = load_tokens_text(
            "tokens.json",
            "{\"tokens\": [\n {\"subject\": \"a\", \"token\": \"test-only-long-token-1\", \"scopes\": [\"runs:read\"]},\n {\"subject\": \"b\", \"scopes\": [\"runs:read\"]}\n]}\n",
        );
        assert!(
            err.to_string()
                .contains("tokens.json:3: entry 2 (subject \"b\")"),
            "{err}"
        );
        let err = load_tokens_text("tokens.json", "{\"tokens\": [\n  {\"subject\": }\n]}");
        assert!(
            matches!(err, AuthConfigError::Syntax { line: Some(2), .. }),
            "{err}"
        );
        let err = load_tokens_text("tokens.yaml", "tokens: []\n");
        assert!(err.to_string().contains("the list is empty"), "{err}");
        let err = load_tokens_text("tokens.yaml", "tokens:\n  - subject: a\n    colour: red\n");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    fn load_jwks_text(text: &str) -> AuthConfigError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, text).unwrap();
        Authenticator::load(&AuthConfig {
            jwks_file: Some(path),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..AuthConfig::default()
        })
        .unwrap_err()
    }

    #[test]
    fn jwks_needs_issuer_and_audience() {
        let mut c = config();
        c.issuer = None;
        assert!(
            matches!(Authenticator::load(&c), Err(AuthConfigError::JwtSetting(m)) if m.contains("no issuer"))
        );
        let mut c = config();
        c.audience = Some(String::new());
        assert!(
            matches!(Authenticator::load(&c), Err(AuthConfigError::JwtSetting(m)) if m.contains("no audience"))
        );
        let c = AuthConfig {
            tokens_file: Some(fixture("test-only-tokens.yaml")),
            issuer: Some(ISSUER.into()),
            ..AuthConfig::default()
        };
        assert!(matches!(
            Authenticator::load(&c),
            Err(AuthConfigError::JwtSetting(_))
        ));
    }

    #[test]
    fn weak_symmetric_private_and_duplicate_jwks_keys_are_refused() {
        let weak = std::fs::read_to_string(fixture("test-only-jwks-rsa-1024.json")).unwrap();
        let err = load_jwks_text(&weak);
        assert!(
            err.to_string()
                .contains("key 1 (kid \"weak\"): RSA modulus"),
            "{err}"
        );

        let err = load_jwks_text(r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#);
        assert!(
            err.to_string()
                .contains("key 1 (kid \"h\"): is a symmetric"),
            "{err}"
        );

        let mut set: serde_json::Value =
            serde_json::from_slice(&key("test-only-jwks.json")).unwrap();
        set["keys"][1]["d"] = json!("AAAA");
        let err = load_jwks_text(&set.to_string());
        assert!(
            err.to_string()
                .contains("key 2 (kid \"ec-1\"): contains a private key"),
            "{err}"
        );

        let mut set: serde_json::Value =
            serde_json::from_slice(&key("test-only-jwks.json")).unwrap();
        set["keys"][1]["kid"] = json!("rsa-1");
        let err = load_jwks_text(&set.to_string());
        assert!(
            err.to_string()
                .contains("key 2 (kid \"rsa-1\"): repeats a kid"),
            "{err}"
        );

        let mut set: serde_json::Value =
            serde_json::from_slice(&key("test-only-jwks.json")).unwrap();
        set["keys"][0]["alg"] = json!("RS512");
        let err = load_jwks_text(&set.to_string());
        assert!(
            err.to_string()
                .contains("key 1 (kid \"rsa-1\"): 'alg' is RS512"),
            "{err}"
        );

        let err = load_jwks_text("{\"keys\": []}");
        assert!(err.to_string().contains("'keys' is empty"), "{err}");
        let err = load_jwks_text("{\"keys\": [\n  oops\n]}");
        assert!(
            matches!(err, AuthConfigError::Syntax { line: Some(2), .. }),
            "{err}"
        );
    }

    #[test]
    fn www_authenticate_description_stays_a_valid_quoted_string() {
        let err = AuthError::WrongIssuer {
            got: "a\"b\\c\u{e9}".into(),
        };
        let www = err.www_authenticate();
        let description = www.split("error_description=\"").nth(1).unwrap();
        let inner = description.strip_suffix('"').unwrap();
        assert!(
            inner
                .chars()
                .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
            "{www}"
        );
        assert!(http::HeaderValue::from_str(&www).is_ok());
    }
}
