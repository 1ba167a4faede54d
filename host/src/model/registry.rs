//! `Models`: each model alias and its ordered chain of providers (the alias's own, then its
//! fallbacks'), built from the operator's models file or, without one, the embedded default.
//! A call walks the chain: a provider that is unavailable, timed out or circuit-open passes the
//! request to the next; an invalid request does not (no other provider would accept it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::config::{self, AliasSpec, ModelsConfigError, ProviderSpec};
use super::embedded::{EmbeddedProvider, EmbeddedSettings};
use super::openai::OpenAiProvider;
use super::openai::breaker::{BreakerState, CircuitBreaker};
use super::{ChatRequest, ChatResponse, ModelError, ModelProvider, TokenSink};
use crate::sandbox::egress::SecretStore;

/// The model aliases a host serves.
pub struct Models {
    chains: BTreeMap<String, Vec<Arc<dyn ModelProvider>>>,
    /// One breaker per endpoint URL, shared by every alias calling it.
    breakers: BTreeMap<String, Arc<CircuitBreaker>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chains: BTreeMap<&str, Vec<&str>> = self
            .chains
            .iter()
            .map(|(a, c)| (a.as_str(), c.iter().map(|p| p.name()).collect()))
            .collect();
        f.debug_struct("Models").field("chains", &chains).finish()
    }
}

impl Models {
    /// Reads a models file (see [`config`]); relative model paths start at its folder.
    pub fn from_file(path: &Path, secrets: &SecretStore) -> Result<Models, ModelsConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| ModelsConfigError::Read {
            file: file.clone(),
            message: format!("cannot read the models file: {e}"),
        })?;
        let text = crate::graph::yaml::utf8(text).map_err(|l| ModelsConfigError::Invalid {
            file: file.clone(),
            line: l.pos.line,
            col: l.pos.col,
            message: l.message.replace("a graph file", "a models file"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Models::parse(&file, &text, base, secrets)
    }

    /// Parses models-file text; `file` names it in errors.
    pub fn parse(
        file: &str,
        text: &str,
        base_dir: &Path,
        secrets: &SecretStore,
    ) -> Result<Models, ModelsConfigError> {
        let specs = config::parse(file, text, base_dir, secrets)?;
        Ok(Models::from_specs(&specs))
    }

    /// Without a models file: alias `default` is the embedded engine over the model found by
    /// [`config::default_model_path`] (loaded on first use; a missing file is reported then).
    pub fn embedded_default() -> Models {
        let provider: Arc<dyn ModelProvider> = Arc::new(EmbeddedProvider::new(
            "default",
            EmbeddedSettings::new(config::default_model_path()),
        ));
        Models::from_chains([("default".to_owned(), vec![provider])])
    }

    /// Aliases over providers built elsewhere (tests, other front ends): each chain is tried
    /// in order.
    pub fn from_chains(
        chains: impl IntoIterator<Item = (String, Vec<Arc<dyn ModelProvider>>)>,
    ) -> Models {
        Models {
            chains: chains.into_iter().collect(),
            breakers: BTreeMap::new(),
        }
    }

    fn from_specs(specs: &[AliasSpec]) -> Models {
        let mut breakers: BTreeMap<String, Arc<CircuitBreaker>> = BTreeMap::new();
        let mut own: BTreeMap<&str, Arc<dyn ModelProvider>> = BTreeMap::new();
        for s in specs {
            let p: Arc<dyn ModelProvider> = match &s.provider {
                ProviderSpec::Embedded(settings) => {
                    Arc::new(EmbeddedProvider::new(&s.alias, settings.clone()))
                }
                ProviderSpec::OpenAi { settings, breaker } => {
                    let b = breakers
                        .entry(settings.endpoint.url.clone())
                        .or_insert_with(|| {
                            Arc::new(CircuitBreaker::new(breaker.failures, breaker.cooldown))
                        })
                        .clone();
                    match OpenAiProvider::new(&s.alias, settings.clone(), b) {
                        Ok(p) => Arc::new(p),
                        // Only TLS setup can fail here; the alias answers with why.
                        Err(why) => Arc::new(Broken {
                            name: format!("openai:{}", s.alias),
                            why,
                        }),
                    }
                }
            };
            own.insert(&s.alias, p);
        }
        let mut chains = BTreeMap::new();
        for s in specs {
            let mut order: Vec<&str> = Vec::new();
            flatten(specs, &s.alias, &mut order);
            chains.insert(
                s.alias.clone(),
                order.iter().map(|a| own[a].clone()).collect(),
            );
        }
        Models { chains, breakers }
    }

    pub fn contains(&self, alias: &str) -> bool {
        self.chains.contains_key(alias)
    }

    /// The aliases, sorted.
    pub fn aliases(&self) -> Vec<&str> {
        self.chains.keys().map(String::as_str).collect()
    }

    /// The provider names of an alias's chain, in the order they are tried.
    pub fn chain(&self, alias: &str) -> Option<Vec<&str>> {
        self.chains
            .get(alias)
            .map(|c| c.iter().map(|p| p.name()).collect())
    }

    /// Each remote endpoint's circuit state (for metrics), by endpoint URL.
    pub fn breaker_states(&self) -> Vec<(&str, BreakerState)> {
        self.breakers
            .iter()
            .map(|(url, b)| (url.as_str(), b.state()))
            .collect()
    }

    /// Answers `request` with the first provider of `alias`'s chain that can. The answer's
    /// `timing.total` covers the whole walk (retries and fallbacks included).
    pub async fn chat(
        &self,
        alias: &str,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        let started = Instant::now();
        let chain = self.chains.get(alias).ok_or_else(|| {
            ModelError::InvalidRequest(format!(
                "model alias `{alias}` is not configured; the models file defines: {}",
                self.aliases().join(", ")
            ))
        })?;
        let mut failures: Vec<String> = Vec::new();
        let mut last = None;
        for provider in chain {
            match provider.chat(request, tokens).await {
                Ok(mut answer) => {
                    answer.timing.total = started.elapsed();
                    return Ok(answer);
                }
                Err(e @ (ModelError::Unavailable(_) | ModelError::Timeout(_))) => {
                    tracing::warn!(alias, provider = provider.name(), error = %e, "model provider failed; trying the next of the chain");
                    failures.push(e.to_string());
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let last = last.expect("a chain has at least one provider");
        if failures.len() == 1 {
            return Err(last);
        }
        let all = format!(
            "all {} providers of model alias `{alias}` failed: {}",
            failures.len(),
            failures.join("; ")
        );
        Err(match last {
            ModelError::Timeout(_) => ModelError::Timeout(all),
            _ => ModelError::Unavailable(all),
        })
    }
}

/// `alias`, then its fallbacks' chains depth first, each alias once (cycles were refused).
fn flatten<'a>(specs: &'a [AliasSpec], alias: &'a str, order: &mut Vec<&'a str>) {
    if order.contains(&alias) {
        return;
    }
    order.push(alias);
    let spec = specs.iter().find(|s| s.alias == alias).expect("checked");
    for (f, _) in &spec.fallback {
        flatten(specs, f, order);
    }
}

/// A provider that could not be set up; every call says why.
struct Broken {
    name: String,
    why: String,
}

#[async_trait::async_trait]
impl ModelProvider for Broken {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        _: &ChatRequest,
        _: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        Err(ModelError::Unavailable(format!(
            "{}: {}",
            self.name, self.why
        )))
    }
}

/// The models of `sandgraph run` and `sandgraph serve`: the file given by `--models` (or
/// `SANDGRAPH_MODELS`, which clap reads into the same flag), else the embedded default.
pub fn cli_models(
    path: Option<&Path>,
    secrets: &SecretStore,
) -> Result<Arc<Models>, ModelsConfigError> {
    match path {
        Some(p) => Models::from_file(p, secrets).map(Arc::new),
        None => Ok(Arc::new(Models::embedded_default())),
    }
}
