//! The operator's models file: which provider answers each model alias, and what the alias
//! falls back to. Read once at start (`--models FILE` or `SANDGRAPH_MODELS`); every problem is
//! reported as `file:line:col: message`, unknown keys included.
//!
//! ```yaml
//! models:
//!   default: { provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf }
//!   remote:  { provider: openai, endpoint: http://127.0.0.1:8080/v1, model: smollm2,
//!              apiKeySecret: OPENAI_KEY, timeout: {connect: 2s, read: 60s}, retries: 3,
//!              fallback: [default] }
//! ```
//!
//! Relative `path`s are resolved against the models file's folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::embedded::{EmbeddedBackend, EmbeddedSettings};
use super::openai::backoff::Backoff;
use super::openai::client::{Endpoint, Timeouts};
use super::openai::{ApiKey, OpenAiSettings};
use crate::graph::yaml::{self, Located, Pos, Yaml, YamlValue};
use crate::sandbox::egress::SecretStore;

/// Why a models file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelsConfigError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
}

/// One alias as configured.
#[derive(Debug, Clone)]
pub struct AliasSpec {
    pub alias: String,
    pub provider: ProviderSpec,
    /// Aliases tried, in order, when this one's provider is unavailable or times out.
    pub fallback: Vec<(String, Pos)>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum ProviderSpec {
    Embedded(EmbeddedSettings),
    OpenAi {
        settings: OpenAiSettings,
        breaker: BreakerSpec,
    },
}

/// When an endpoint's circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    pub failures: u32,
    pub cooldown: Duration,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = crate::sandbox::manifest::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "duration `{s}` must be above zero"
        )));
    }
    Ok(v)
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedEntry {
    #[allow(dead_code)]
    provider: String,
    path: String,
    #[serde(default)]
    backend: Option<EmbeddedBackend>,
    #[serde(default)]
    slots: Option<usize>,
    #[serde(default)]
    context: Option<usize>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default, rename = "maxWaiting")]
    max_waiting: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    fallback: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutEntry {
    #[serde(default, deserialize_with = "opt_duration")]
    connect: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    read: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackoffEntry {
    #[serde(default, deserialize_with = "opt_duration")]
    base: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    max: Option<Duration>,
    #[serde(default, rename = "maxRetryAfter", deserialize_with = "opt_duration")]
    max_retry_after: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BreakerEntry {
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    cooldown: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiEntry {
    #[allow(dead_code)]
    provider: String,
    endpoint: String,
    model: String,
    #[serde(default, rename = "apiKeySecret")]
    api_key_secret: Option<String>,
    #[serde(default)]
    timeout: Option<TimeoutEntry>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    backoff: Option<BackoffEntry>,
    #[serde(default)]
    breaker: Option<BreakerEntry>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    fallback: Vec<String>,
}

/// Most retries one provider may be configured with.
pub const MAX_RETRIES: u32 = 10;

/// Parses a models file's text; `file` names it in errors and relative paths resolve against
/// `base_dir`. Secrets named by `apiKeySecret` are looked up in `secrets` now.
pub fn parse(
    file: &str,
    text: &str,
    base_dir: &Path,
    secrets: &SecretStore,
) -> Result<Vec<AliasSpec>, ModelsConfigError> {
    let err = |l: Located| ModelsConfigError::Invalid {
        file: file.to_owned(),
        line: l.pos.line,
        col: l.pos.col,
        message: l.message,
    };
    let at = |pos: Pos, message: String| err(Located { pos, message });
    let (root, duplicates) = yaml::parse(text).map_err(err)?;
    if let Some(d) = duplicates.into_iter().next() {
        return Err(err(d));
    }
    let YamlValue::Map(top) = &root.value else {
        return Err(at(
            root.pos,
            "a models file is a mapping with one key, `models`".into(),
        ));
    };
    for (k, _) in top {
        if k.as_str() != Some("models") {
            return Err(at(
                k.pos,
                format!(
                    "unknown key `{}`; a models file has only `models`",
                    k.as_str().unwrap_or("?")
                ),
            ));
        }
    }
    let models = root.get("models").ok_or_else(|| {
        at(
            root.pos,
            "`models` is missing; list the model aliases under it".into(),
        )
    })?;
    let YamlValue::Map(entries) = &models.value else {
        return Err(at(
            models.pos,
            "`models` must map each alias to its provider settings".into(),
        ));
    };
    if entries.is_empty() {
        return Err(at(
            models.pos,
            "`models` is empty; define at least one alias".into(),
        ));
    }
    let mut specs = Vec::with_capacity(entries.len());
    for (key, node) in entries {
        let alias = key.as_str().unwrap_or_default().to_owned();
        if alias.is_empty()
            || !alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(at(
                key.pos,
                format!("model alias `{alias}`: use letters, digits, `-`, `_` and `.`"),
            ));
        }
        specs.push(alias_spec(&alias, node, base_dir, secrets).map_err(err)?);
    }
    check_fallbacks(&specs).map_err(err)?;
    Ok(specs)
}

fn located(pos: Pos, message: String) -> Located {
    Located { pos, message }
}

fn alias_spec(
    alias: &str,
    node: &Yaml,
    base_dir: &Path,
    secrets: &SecretStore,
) -> Result<AliasSpec, Located> {
    if !matches!(node.value, YamlValue::Map(_)) {
        return Err(located(
            node.pos,
            format!("model alias `{alias}`: expected a mapping with `provider` and its settings"),
        ));
    }
    let provider = node.get("provider").ok_or_else(|| {
        located(
            node.pos,
            format!("model alias `{alias}`: `provider` is missing; use embedded or openai"),
        )
    })?;
    let fallback = match node.get("fallback") {
        None => Vec::new(),
        Some(f) => match &f.value {
            YamlValue::Seq(items) => items
                .iter()
                .map(|i| {
                    i.as_str().map(|s| (s.to_owned(), i.pos)).ok_or_else(|| {
                        located(i.pos, "a fallback is a model alias (a string)".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(located(
                    f.pos,
                    "`fallback` is a list of model aliases, e.g. [default]".into(),
                ));
            }
        },
    };
    let provider = match provider.as_str() {
        Some("embedded") => {
            let e: EmbeddedEntry = yaml::from_yaml(node)?;
            let path_pos = node.get("path").map_or(node.pos, |p| p.pos);
            let path = base_dir.join(&e.path);
            if !path.is_file() {
                return Err(located(
                    path_pos,
                    format!(
                        "model alias `{alias}`: model file {} does not exist (relative paths start at the models file's folder); fetch it with `sandgraph-infer pull smollm2-135m` or point `path` at a GGUF file",
                        path.display()
                    ),
                ));
            }
            let mut s = EmbeddedSettings::new(path);
            if let Some(b) = e.backend {
                s.backend = b;
            }
            for (v, field, name) in [
                (e.slots, &mut s.slots, "slots"),
                (e.context, &mut s.context, "context"),
                (e.max_waiting, &mut s.max_waiting, "maxWaiting"),
            ] {
                if let Some(v) = v {
                    if v == 0 {
                        let pos = node.get(name).map_or(node.pos, |p| p.pos);
                        return Err(located(pos, format!("`{name}` must be at least 1")));
                    }
                    *field = v;
                }
            }
            if e.threads == Some(0) {
                let pos = node.get("threads").map_or(node.pos, |p| p.pos);
                return Err(located(pos, "`threads` must be at least 1".into()));
            }
            s.threads = e.threads;
            ProviderSpec::Embedded(s)
        }
        Some("openai") => {
            let e: OpenAiEntry = yaml::from_yaml(node)?;
            let pos_of = |k: &str| node.get(k).map_or(node.pos, |p| p.pos);
            let endpoint = Endpoint::parse(&e.endpoint)
                .map_err(|why| located(pos_of("endpoint"), format!("endpoint {why}")))?;
            if e.model.is_empty() {
                return Err(located(pos_of("model"), "`model` must not be empty".into()));
            }
            let api_key = match &e.api_key_secret {
                None => None,
                Some(name) => {
                    let value = secrets.get(name).ok_or_else(|| {
                        located(
                            pos_of("apiKeySecret"),
                            format!(
                                "operator secret `{name}` is not set; pass it as --secret {name}=VALUE"
                            ),
                        )
                    })?;
                    Some(ApiKey::new(name, value))
                }
            };
            let retries = e.retries.unwrap_or(2);
            if retries > MAX_RETRIES {
                return Err(located(
                    pos_of("retries"),
                    format!("retries = {retries}: at most {MAX_RETRIES}"),
                ));
            }
            let t = e.timeout.unwrap_or_default();
            let defaults = Timeouts::default();
            let b = e.backoff.unwrap_or_default();
            let default_backoff = Backoff::default();
            let br = e.breaker.unwrap_or_default();
            let default_breaker = BreakerSpec::default();
            if br.failures == Some(0) {
                return Err(located(
                    pos_of("breaker"),
                    "breaker.failures must be at least 1".into(),
                ));
            }
            ProviderSpec::OpenAi {
                settings: OpenAiSettings {
                    endpoint,
                    model: e.model,
                    api_key,
                    timeouts: Timeouts {
                        connect: t.connect.unwrap_or(defaults.connect),
                        read: t.read.unwrap_or(defaults.read),
                    },
                    retries,
                    backoff: Backoff {
                        base: b.base.unwrap_or(default_backoff.base),
                        cap: b.max.unwrap_or(default_backoff.cap),
                        max_retry_after: b
                            .max_retry_after
                            .unwrap_or(default_backoff.max_retry_after),
                    },
                    stream: e.stream.unwrap_or(true),
                },
                breaker: BreakerSpec {
                    failures: br.failures.unwrap_or(default_breaker.failures),
                    cooldown: br.cooldown.unwrap_or(default_breaker.cooldown),
                },
            }
        }
        Some(other) => {
            return Err(located(
                provider.pos,
                format!(
                    "model alias `{alias}`: unknown provider `{other}`; use embedded or openai"
                ),
            ));
        }
        None => {
            return Err(located(
                provider.pos,
                format!("model alias `{alias}`: `provider` is a word: embedded or openai"),
            ));
        }
    };
    Ok(AliasSpec {
        alias: alias.to_owned(),
        provider,
        fallback,
        pos: node.pos,
    })
}

/// Every fallback names a defined alias, and no chain comes back to where it started.
fn check_fallbacks(specs: &[AliasSpec]) -> Result<(), Located> {
    let find = |a: &str| specs.iter().find(|s| s.alias == a);
    for s in specs {
        for (f, pos) in &s.fallback {
            if find(f).is_none() {
                let known: Vec<&str> = specs.iter().map(|s| s.alias.as_str()).collect();
                return Err(located(
                    *pos,
                    format!(
                        "model alias `{}`: fallback `{f}` is not defined here; defined: {}",
                        s.alias,
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    // Depth-first from every alias; a fallback back into the current path is a cycle.
    fn visit<'a>(
        specs: &'a [AliasSpec],
        alias: &'a str,
        path: &mut Vec<&'a str>,
    ) -> Result<(), Located> {
        let spec = specs.iter().find(|s| s.alias == alias).expect("checked");
        path.push(alias);
        for (f, pos) in &spec.fallback {
            if path.contains(&f.as_str()) {
                return Err(located(
                    *pos,
                    format!(
                        "fallback cycle: {} -> {f}; a fallback chain must end",
                        path.join(" -> ")
                    ),
                ));
            }
            visit(specs, f, path)?;
        }
        path.pop();
        Ok(())
    }
    for s in specs {
        visit(specs, &s.alias, &mut Vec::new())?;
    }
    Ok(())
}

/// Where the model lives when there is no models file: `$SANDGRAPH_MODEL` when set, else
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` (where scripts/setup.sh and `sandgraph-infer pull`
/// put it) in the working directory or the nearest of its parents that has one. When none
/// has it, the working directory's path (its absence is reported when the alias is used).
pub fn default_model_path() -> PathBuf {
    const DEFAULT: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if let Some(p) = std::env::var_os("SANDGRAPH_MODEL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .map(|d| d.join(DEFAULT))
        .find(|p| p.is_file())
        .unwrap_or_else(|| cwd.join(DEFAULT))
}
