//! The capability manifest a tool ships beside its component, and how it meets operator policy.
//! A tool gets nothing by default; the effective grant is operator policy ∩ manifest ∩ per-call
//! grant, computed here once so every other sandbox module reads one narrowed value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Errors reading or validating a manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: cannot read manifest: {message}")]
    Read { file: String, message: String },
}

/// A parsed `ToolManifest` (apiVersion `sandgraph.dev/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workspace: WorkspaceMode,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UrlScheme {
    Http,
    Https,
}

impl UrlScheme {
    pub fn default_port(self) -> u16 {
        match self {
            UrlScheme::Http => 80,
            UrlScheme::Https => 443,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            UrlScheme::Http => "http",
            UrlScheme::Https => "https",
        }
    }
}

/// One allowed kind of outgoing HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub scheme: UrlScheme,
    /// Exact name, `*.example.com`, or `*` (any public host).
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub inject: Vec<InjectHeader>,
}

fn default_paths() -> Vec<String> {
    vec!["/**".to_string()]
}
fn default_methods() -> Vec<String> {
    vec!["GET".to_string()]
}

/// A header the host adds from the operator's secret store; the guest never sees the value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectHeader {
    pub header: String,
    pub secret: String,
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_format() -> String {
    "{secret}".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    #[default]
    None,
    Ro,
    Rw,
}

/// The fewest resource-table entries a tool can run with (stdio streams, preopens, a request).
pub const MIN_HANDLES: u64 = 16;

/// Resource limits; every field parsed strictly (`64MiB`, `5s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory", deserialize_with = "de_size")]
    pub memory: u64,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    #[serde(default = "default_max_output", deserialize_with = "de_size")]
    pub max_output: u64,
    #[serde(default = "default_max_response", deserialize_with = "de_size")]
    pub max_response: u64,
    /// Host resource-table entries alive at once (files, streams, header sets, requests).
    #[serde(default = "default_max_handles", deserialize_with = "de_count")]
    pub max_handles: u64,
    /// Workspace files and directories open at once.
    #[serde(default = "default_max_open_files", deserialize_with = "de_count")]
    pub max_open_files: u64,
    /// Outgoing HTTP connections per call.
    #[serde(default = "default_max_connections", deserialize_with = "de_count")]
    pub max_connections: u64,
    /// Bytes the call may write into a `rw` workspace.
    #[serde(default = "default_max_write", deserialize_with = "de_size")]
    pub max_write: u64,
    /// Files, directories and links the call may create in a `rw` workspace.
    #[serde(default = "default_max_files_created", deserialize_with = "de_count")]
    pub max_files_created: u64,
    /// Bytes the call may draw from `wasi:random`.
    #[serde(default = "default_max_random", deserialize_with = "de_size")]
    pub max_random: u64,
}

fn default_memory() -> u64 {
    64 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_output() -> u64 {
    1 << 20
}
fn default_max_response() -> u64 {
    4 << 20
}
fn default_max_handles() -> u64 {
    1024
}
fn default_max_open_files() -> u64 {
    128
}
fn default_max_connections() -> u64 {
    64
}
fn default_max_write() -> u64 {
    64 << 20
}
fn default_max_files_created() -> u64 {
    1000
}
fn default_max_random() -> u64 {
    1 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: default_memory(),
            timeout: default_timeout(),
            max_output: default_max_output(),
            max_response: default_max_response(),
            max_handles: default_max_handles(),
            max_open_files: default_max_open_files(),
            max_connections: default_max_connections(),
            max_write: default_max_write(),
            max_files_created: default_max_files_created(),
            max_random: default_max_random(),
        }
    }
}

impl Limits {
    /// No limit at all: the neutral value for `min` (a grant that narrows nothing).
    pub fn unbounded() -> Limits {
        Limits {
            memory: u64::MAX,
            timeout: Duration::MAX,
            max_output: u64::MAX,
            max_response: u64::MAX,
            max_handles: u64::MAX,
            max_open_files: u64::MAX,
            max_connections: u64::MAX,
            max_write: u64::MAX,
            max_files_created: u64::MAX,
            max_random: u64::MAX,
        }
    }

    /// The tighter of two limit sets, field by field.
    pub fn min(self, other: Limits) -> Limits {
        Limits {
            memory: self.memory.min(other.memory),
            timeout: self.timeout.min(other.timeout),
            max_output: self.max_output.min(other.max_output),
            max_response: self.max_response.min(other.max_response),
            max_handles: self.max_handles.min(other.max_handles),
            max_open_files: self.max_open_files.min(other.max_open_files),
            max_connections: self.max_connections.min(other.max_connections),
            max_write: self.max_write.min(other.max_write),
            max_files_created: self.max_files_created.min(other.max_files_created),
            max_random: self.max_random.min(other.max_random),
        }
    }
}

fn de_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    u64::deserialize(d)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n = s[..digits].parse().ok()?;
    Some((n, &s[digits..]))
}

/// Parses `512B`, `64KiB`, `64MiB`, `1GiB`, `10KB`, `10MB`, `1GB`: an integer and a unit, no space.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size `{s}`: write an integer and a unit, e.g. `64MiB` (units: B, KB, MB, GB, KiB, MiB, GiB)"
        )
    };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let mult: u64 = match unit {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses `250ms`, `5s`, `2m`: an integer and a unit, no space.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration `{s}`: write an integer and a unit, e.g. `5s` (units: ms, s, m)")
    };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large")),
        _ => Err(bad()),
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Manifest::parse(&file, &text)
    }

    /// Parses and validates manifest text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = e.to_string();
            // serde_norway appends " at line L column C"; the prefix already says it.
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            ManifestError::Parse {
                file: file.to_string(),
                line,
                column,
                message,
            }
        })?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    fn validate(&self, file: &str) -> Result<(), ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            file: file.to_string(),
            message,
        };
        if self.api_version != "sandgraph.dev/v1" {
            return Err(invalid(format!(
                "apiVersion: `{}` is not supported; use `sandgraph.dev/v1`",
                self.api_version
            )));
        }
        if self.kind != "ToolManifest" {
            return Err(invalid(format!(
                "kind: `{}` is not supported here; use `ToolManifest`",
                self.kind
            )));
        }
        if self.metadata.name.is_empty() {
            return Err(invalid("metadata.name: must not be empty".into()));
        }
        for (i, rule) in self.spec.egress.iter().enumerate() {
            let at = format!("spec.egress[{i}]");
            let h = &rule.host;
            let host_ok = h == "*"
                || h.strip_prefix("*.").is_some_and(valid_host_name)
                || valid_host_name(h)
                || h.parse::<IpAddr>().is_ok();
            if !host_ok {
                return Err(invalid(format!(
                    "{at}.host: `{h}` is not a host name, `*.domain` or `*`"
                )));
            }
            if rule.port == Some(0) {
                return Err(invalid(format!("{at}.port: 0 is not a port")));
            }
            if rule.paths.is_empty() {
                return Err(invalid(format!(
                    "{at}.paths: must not be empty (omit it for `/**`)"
                )));
            }
            for p in &rule.paths {
                if !p.starts_with('/') {
                    return Err(invalid(format!("{at}.paths: `{p}` must start with `/`")));
                }
            }
            if rule.methods.is_empty() {
                return Err(invalid(format!(
                    "{at}.methods: must not be empty (omit it for [GET])"
                )));
            }
            for m in &rule.methods {
                if !matches!(
                    m.as_str(),
                    "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
                ) {
                    return Err(invalid(format!(
                        "{at}.methods: `{m}` is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                    )));
                }
            }
            for (j, inj) in rule.inject.iter().enumerate() {
                let name = http::HeaderName::from_bytes(inj.header.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "{at}.inject[{j}].header: `{}` is not a valid header name",
                        inj.header
                    ))
                })?;
                if name == http::header::HOST || name == http::header::CONTENT_LENGTH {
                    return Err(invalid(format!(
                        "{at}.inject[{j}].header: `{}` is managed by the host and cannot be injected",
                        inj.header
                    )));
                }
                if inj.secret.is_empty() {
                    return Err(invalid(format!(
                        "{at}.inject[{j}].secret: must not be empty"
                    )));
                }
                if !inj.format.contains("{secret}") {
                    return Err(invalid(format!(
                        "{at}.inject[{j}].format: `{}` must contain `{{secret}}`",
                        inj.format
                    )));
                }
            }
        }
        for k in self.spec.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(format!(
                    "spec.env: `{k}` is not a valid variable name"
                )));
            }
        }
        if self.spec.limits.memory == 0 || self.spec.limits.timeout.is_zero() {
            return Err(invalid(
                "spec.limits: memory and timeout must be greater than zero".into(),
            ));
        }
        // Every call needs a few handles (its stdio streams, the preopen) to run at all.
        if self.spec.limits.max_handles < MIN_HANDLES {
            return Err(invalid(format!(
                "spec.limits.max_handles: {} is too few for any tool to run; use at least {MIN_HANDLES}",
                self.spec.limits.max_handles
            )));
        }
        Ok(())
    }
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What the operator running the host allows any tool, whatever its manifest says.
#[derive(Debug, Clone)]
pub struct OperatorPolicy {
    /// Upper bounds for every tool's limits.
    pub max_limits: Limits,
    /// Egress host patterns the operator permits (`None`: any public host).
    pub egress_hosts: Option<Vec<String>>,
    /// Exact non-public addresses egress may reach anyway (tests allow 127.0.0.1).
    pub allow_private: Vec<IpAddr>,
    /// Environment variable names a manifest may set (`None`: any).
    pub env_names: Option<Vec<String>>,
    /// Whether tools may receive a workspace directory at all.
    pub allow_workspace: bool,
}

impl Default for OperatorPolicy {
    fn default() -> Self {
        OperatorPolicy {
            max_limits: Limits {
                memory: 1 << 30,
                timeout: Duration::from_secs(60),
                max_output: 16 << 20,
                max_response: 64 << 20,
                max_handles: 16_384,
                max_open_files: 1024,
                max_connections: 1024,
                max_write: 1 << 30,
                max_files_created: 100_000,
                max_random: 64 << 20,
            },
            egress_hosts: None,
            allow_private: Vec::new(),
            env_names: None,
            allow_workspace: true,
        }
    }
}

/// What one call is granted on top of the manifest; it can only narrow.
#[derive(Debug, Clone, Default)]
pub struct CallGrant {
    /// Host directory to expose as `/workspace` and the widest mode this call allows.
    pub workspace: Option<(PathBuf, WorkspaceMode)>,
    /// Extra, tighter limits for this call.
    pub limits: Option<Limits>,
    /// Egress host patterns this call allows (`None`: whatever the manifest and operator allow).
    pub egress_hosts: Option<Vec<String>>,
}

/// The narrowed capabilities one call runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveGrant {
    pub tool: String,
    pub egress: Vec<EgressRule>,
    pub env: Vec<(String, String)>,
    pub workspace: Option<(PathBuf, WorkspaceMode)>,
    pub limits: Limits,
    pub allow_private: Vec<IpAddr>,
}

/// Does host pattern `pattern` (`*`, `*.example.com`, exact) cover the name `host`?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
    }
    pattern == host
}

/// Is every host `rule_host` can name also allowed by one of `allowed` patterns?
fn rule_host_within(rule_host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        let r = rule_host.to_ascii_lowercase();
        if a == "*" {
            return true;
        }
        if r == "*" {
            return false;
        }
        if let Some(rs) = r.strip_prefix("*.") {
            // `*.x.y` is within `*.y` and `*.x.y`, never within an exact name.
            return a
                .strip_prefix("*.")
                .is_some_and(|asfx| rs == asfx || host_matches(&a, rs));
        }
        host_matches(&a, &r)
    })
}

/// Keeps each rule whose hosts all lie within `allowed`; a wider rule (`*`, `*.example.com`) is
/// replaced by copies of itself for each allowed pattern it covers, so narrowing `https *` to
/// `example.com` leaves `https example.com` with the rule's ports, paths, methods and secrets.
fn narrow_rules(rules: Vec<EgressRule>, allowed: &[String]) -> Vec<EgressRule> {
    let mut out = Vec::new();
    for rule in rules {
        if rule_host_within(&rule.host, allowed) {
            out.push(rule);
            continue;
        }
        for a in allowed {
            if rule_host_within(a, std::slice::from_ref(&rule.host)) {
                let mut narrowed = rule.clone();
                narrowed.host = a.to_ascii_lowercase();
                if !out.contains(&narrowed) {
                    out.push(narrowed);
                }
            }
        }
    }
    out
}

impl EffectiveGrant {
    /// No capabilities at all, under the default limits: what `info()` runs with.
    pub fn nothing(tool: &str) -> Self {
        EffectiveGrant {
            tool: tool.to_owned(),
            egress: vec![],
            env: vec![],
            workspace: None,
            limits: Limits::default(),
            allow_private: vec![],
        }
    }

    /// operator ∩ manifest ∩ call; nothing here can widen what the manifest asks for.
    pub fn intersect(policy: &OperatorPolicy, manifest: &Manifest, call: &CallGrant) -> Self {
        let mut egress: Vec<EgressRule> = manifest.spec.egress.clone();
        if let Some(allowed) = &policy.egress_hosts {
            egress = narrow_rules(egress, allowed);
        }
        if let Some(allowed) = &call.egress_hosts {
            egress = narrow_rules(egress, allowed);
        }
        let env = manifest
            .spec
            .env
            .iter()
            .filter(|(k, _)| {
                policy
                    .env_names
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == *k))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let workspace = match (&call.workspace, manifest.spec.workspace) {
            (_, WorkspaceMode::None) => None,
            (None, _) => None,
            (Some(_), _) if !policy.allow_workspace => None,
            (Some((dir, call_mode)), wanted) => match wanted.min(*call_mode) {
                WorkspaceMode::None => None,
                mode => Some((dir.clone(), mode)),
            },
        };
        let mut limits = manifest.spec.limits.min(policy.max_limits);
        if let Some(l) = call.limits {
            limits = limits.min(l);
        }
        EffectiveGrant {
            tool: manifest.metadata.name.clone(),
            egress,
            env,
            workspace,
            limits,
            allow_private: policy.allow_private.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: sandgraph.dev/v1
kind: ToolManifest
metadata: { name: http-get }
spec:
  egress:
    - scheme: https
      host: api.example.com
      port: 443
      paths: ["/v1/**"]
      methods: [GET, HEAD]
      inject:
        - { header: Authorization, secret: EXAMPLE_TOKEN, format: "Bearer {secret}" }
  env: { LOG_LEVEL: info }
  workspace: ro
  limits: { memory: 64MiB, timeout: 5s, max_output: 1MiB, max_response: 4MiB, max_handles: 512, max_open_files: 32, max_connections: 8, max_write: 10MiB, max_files_created: 100, max_random: 4KiB }
"#;

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse("m.yaml", FULL).unwrap();
        assert_eq!(m.metadata.name, "http-get");
        let r = &m.spec.egress[0];
        assert_eq!(r.scheme, UrlScheme::Https);
        assert_eq!(r.methods, vec!["GET", "HEAD"]);
        assert_eq!(r.inject[0].format, "Bearer {secret}");
        assert_eq!(m.spec.workspace, WorkspaceMode::Ro);
        assert_eq!(m.spec.limits.memory, 64 << 20);
        assert_eq!(m.spec.limits.timeout, Duration::from_secs(5));
        let l = m.spec.limits;
        assert_eq!(
            (l.max_handles, l.max_open_files, l.max_connections),
            (512, 32, 8)
        );
        assert_eq!(
            (l.max_write, l.max_files_created, l.max_random),
            (10 << 20, 100, 4 << 10)
        );
    }

    #[test]
    fn narrowing_a_wildcard_rule_keeps_it_for_the_allowed_hosts_only() {
        let m = Manifest::parse(
            "m.yaml",
            r#"
apiVersion: sandgraph.dev/v1
kind: ToolManifest
metadata: { name: http-get }
spec:
  egress:
    - { scheme: https, host: "*", methods: [GET] }
    - { scheme: https, host: "*.example.org", methods: [GET] }
    - { scheme: http, host: 127.0.0.1, port: 8000 }
"#,
        )
        .unwrap();
        let call = CallGrant {
            egress_hosts: Some(vec![
                "Example.com".into(),
                "api.example.org".into(),
                "*.example.net".into(),
            ]),
            ..CallGrant::default()
        };
        let g = EffectiveGrant::intersect(&OperatorPolicy::default(), &m, &call);
        let hosts: Vec<(&str, UrlScheme)> = g
            .egress
            .iter()
            .map(|r| (r.host.as_str(), r.scheme))
            .collect();
        // The `*.example.org` rule narrowed to api.example.org equals the `*` rule's copy: kept
        // once. The http rule for 127.0.0.1 is outside every allowed host: gone.
        assert_eq!(
            hosts,
            [
                ("example.com", UrlScheme::Https),
                ("api.example.org", UrlScheme::Https),
                ("*.example.net", UrlScheme::Https),
            ]
        );
        assert!(g.egress.iter().all(|r| r.methods == ["GET"]));
    }

    #[test]
    fn defaults_deny_everything() {
        let m = Manifest::parse(
            "m.yaml",
            "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: calc }\n",
        )
        .unwrap();
        assert!(m.spec.egress.is_empty());
        assert!(m.spec.env.is_empty());
        assert_eq!(m.spec.workspace, WorkspaceMode::None);
        assert_eq!(m.spec.limits, Limits::default());
    }

    #[test]
    fn unknown_field_names_the_field_and_line() {
        let text = "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: x }\nspec:\n  limits: { memory: 1MiB, cpu: 2 }\n";
        match Manifest::parse("t.yaml", text).unwrap_err() {
            ManifestError::Parse {
                file,
                line,
                message,
                ..
            } => {
                assert_eq!(file, "t.yaml");
                assert_eq!(line, 5);
                assert!(message.contains("unknown field `cpu`"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_size_and_duration_are_rejected_with_the_value() {
        for (limits, needle) in [
            ("{ memory: 64 MiB }", "invalid size `64 MiB`"),
            ("{ memory: 1.5GiB }", "invalid size `1.5GiB`"),
            ("{ memory: 64mb }", "invalid size `64mb`"),
            ("{ timeout: 5 }", "invalid duration `5`"),
            ("{ timeout: 5h }", "invalid duration `5h`"),
            ("{ max_output: -1B }", "invalid size `-1B`"),
            ("{ max_write: 10 }", "invalid size `10`"),
            ("{ max_random: lots }", "invalid size `lots`"),
            ("{ max_open_files: 1MiB }", "invalid type: string"),
            ("{ max_connections: -1 }", "invalid type: integer `-1`"),
        ] {
            let text = format!(
                "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: x }}\nspec:\n  limits: {limits}\n"
            );
            let err = Manifest::parse("t.yaml", &text).unwrap_err();
            let ManifestError::Parse { line, message, .. } = &err else {
                panic!("unexpected {err:?}")
            };
            assert_eq!(*line, 5, "{err}");
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    }

    #[test]
    fn semantic_errors_name_the_field() {
        for (spec, needle) in [
            (
                "egress: [{ scheme: ftp, host: a.b }]",
                "unknown variant `ftp`",
            ),
            (
                "egress: [{ scheme: http, host: 'a b' }]",
                "spec.egress[0].host",
            ),
            (
                "egress: [{ scheme: http, host: a.b, paths: ['v1'] }]",
                "spec.egress[0].paths: `v1`",
            ),
            (
                "egress: [{ scheme: http, host: a.b, methods: [get] }]",
                "spec.egress[0].methods: `get`",
            ),
            (
                "egress: [{ scheme: http, host: a.b, inject: [{header: Host, secret: S}] }]",
                "managed by the host",
            ),
            (
                "egress: [{ scheme: http, host: a.b, inject: [{header: X, secret: S, format: 'x'}] }]",
                "must contain `{secret}`",
            ),
            ("workspace: yes", "unknown variant `yes`"),
            (
                "limits: { max_handles: 3 }",
                "spec.limits.max_handles: 3 is too few",
            ),
        ] {
            let text = format!(
                "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: x }}\nspec:\n  {spec}\n"
            );
            let err = Manifest::parse("t.yaml", &text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let err = Manifest::parse(
            "t.yaml",
            "apiVersion: v2\nkind: ToolManifest\nmetadata: { name: x }\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.yaml: apiVersion: `v2` is not supported; use `sandgraph.dev/v1`"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
        assert!(host_matches("API.example.com", "api.example.com."));
        assert!(!host_matches("api.example.com", "api.example.com.evil"));
    }

    #[test]
    fn intersection_only_narrows() {
        let m = Manifest::parse("m.yaml", FULL).unwrap();
        let policy = OperatorPolicy {
            max_limits: Limits {
                memory: 32 << 20,
                ..OperatorPolicy::default().max_limits
            },
            env_names: Some(vec![]),
            ..OperatorPolicy::default()
        };
        let call = CallGrant {
            workspace: Some((PathBuf::from("/w"), WorkspaceMode::Rw)),
            limits: Some(Limits {
                timeout: Duration::from_secs(1),
                ..Limits::default()
            }),
            egress_hosts: None,
        };
        let g = EffectiveGrant::intersect(&policy, &m, &call);
        assert_eq!(g.limits.memory, 32 << 20);
        assert_eq!(g.limits.timeout, Duration::from_secs(1));
        assert!(g.env.is_empty(), "operator allows no env names");
        // Manifest asks ro; the call's rw does not widen it.
        assert_eq!(g.workspace, Some((PathBuf::from("/w"), WorkspaceMode::Ro)));
        assert_eq!(g.egress.len(), 1);

        let narrow = OperatorPolicy {
            egress_hosts: Some(vec!["*.other.org".into()]),
            ..OperatorPolicy::default()
        };
        let g = EffectiveGrant::intersect(&narrow, &m, &CallGrant::default());
        assert!(g.egress.is_empty());
        assert_eq!(g.workspace, None, "no directory granted for the call");

        // A manifest asking `*` is not within an operator's `*.example.com`.
        assert!(!rule_host_within("*", &["*.example.com".into()]));
        assert!(rule_host_within(
            "*.api.example.com",
            &["*.example.com".into()]
        ));
        assert!(rule_host_within(
            "api.example.com",
            &["*.example.com".into()]
        ));
    }
}
