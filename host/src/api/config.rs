//! `sandgraph serve` settings: environment variables `SANDGRAPH_<NAME>` over an optional YAML
//! config file of the same names in lower case (`SANDGRAPH_CONFIG` or `--config`), over defaults.
//! Every value is checked at start, so a typo fails the start instead of a request.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::egress::SecretStore;
use crate::sandbox::manifest::{parse_duration, parse_size};

#[derive(Debug, Clone)]
pub struct Config {
    /// `listen`: address to bind (port 0 picks a free one).
    pub listen: SocketAddr,
    /// `journal`: the journal directory (also holds stored graphs and tools), or a
    /// `postgres://` URL of the database several replicas share.
    pub journal: PathBuf,
    /// `run_lease`: on a shared (PostgreSQL) journal, how long a replica holds a run it claimed
    /// without renewing it (it renews every third of this); a run whose lease ran out is taken
    /// over by another replica.
    pub run_lease: Duration,
    /// `tools` + `components`: preload every manifest under the `tools` folders
    /// (comma-separated, e.g. `tools,agents`) with its component.
    pub tools: Option<Vec<PathBuf>>,
    pub components: Option<PathBuf>,
    /// `cache_dir`: compiled components (none: compile in memory).
    pub cache_dir: Option<PathBuf>,
    /// `secrets_dir`: operator secrets, one file per secret named as the secret (a mounted
    /// Kubernetes Secret has this layout): injected into tool egress by name and used for
    /// models' `apiKeySecret`; never shown to a guest.
    pub secrets_dir: Option<PathBuf>,
    /// `allow_private`: comma-separated non-public addresses egress may reach.
    pub allow_private: Vec<IpAddr>,
    /// `egress_ca`: comma-separated PEM files of CA certificates `https` egress trusts besides
    /// the public roots.
    pub egress_ca: Vec<PathBuf>,
    /// `max_graph_bytes`, `max_tool_bytes`, `max_run_bytes`: request body caps per route.
    pub max_graph_bytes: usize,
    pub max_tool_bytes: usize,
    pub max_run_bytes: usize,
    /// `max_concurrent_runs`: runs executing at once; `run_queue`: submissions that may wait for
    /// a slot (beyond that, 429).
    pub max_concurrent_runs: usize,
    pub run_queue: usize,
    /// `rate_limit` (requests per second) and `rate_burst`: per-subject token bucket.
    pub rate_limit: f64,
    pub rate_burst: u32,
    /// `max_parallel_steps`: steps of one run executing at once.
    pub max_parallel_steps: usize,
    /// `shutdown_grace`: how long running steps may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `header_timeout`: a client must send its request head within this (slow-loris bound).
    pub header_timeout: Duration,
    /// `body_timeout`: and its body within this.
    pub body_timeout: Duration,
    /// `sse_heartbeat`: comment line interval on idle event streams.
    pub sse_heartbeat: Duration,
    /// `auth_tokens`, `auth_jwks`, `auth_issuer`, `auth_audience`: authentication sources.
    pub auth_tokens: Option<PathBuf>,
    pub auth_jwks: Option<PathBuf>,
    pub auth_issuer: Option<String>,
    pub auth_audience: Option<String>,
    /// `auth_leeway`: clock skew tolerated on a JWT's `exp` and `nbf`.
    pub auth_leeway: Duration,
    /// `auth_reload_interval`: how often the tokens and JWKS files are looked at for changes
    /// (`0s`: read once at start).
    pub auth_reload_interval: Duration,
    /// `otlp_endpoint`: OTLP/HTTP collector base URL (`http://host:4318`); spans go to
    /// `<endpoint>/v1/traces`. Unset: no trace export.
    pub otlp_endpoint: Option<String>,
    /// `otlp_service_name`: the exported `service.name` (default `sandgraph`).
    pub otlp_service_name: String,
    /// `otlp_headers`: headers sent with every export, `name=value,...` with percent-encoded
    /// values (the `OTEL_EXPORTER_OTLP_HEADERS` format), e.g. a collector's API key.
    pub otlp_headers: crate::api::telemetry::ExportHeaders,
    /// `otlp_ca`: a PEM file of CA certificates an `https` collector may be signed by, besides
    /// the public roots.
    pub otlp_ca: Option<PathBuf>,
    /// `idempotency_ttl`: how long an `Idempotency-Key` replays its run (then it may start a new one).
    pub idempotency_ttl: Duration,
    /// `model_url`: base URL of the OpenAI-compatible model backend (`http://sandgraph-infer:8081`);
    /// `/readyz` is 503 while its `/health` does not answer 200. Unset: nothing to probe.
    pub model_url: Option<String>,
    /// `model_probe_timeout`: how long `/readyz` waits for the backend's `/health`.
    pub model_probe_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("config `{key}` (env SANDGRAPH_{}): {reason}", key.to_uppercase())]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

/// Where values come from: the environment first, then the file.
pub struct Source {
    env: BTreeMap<String, String>,
    file: BTreeMap<String, String>,
}

impl Source {
    /// The process environment plus the file named by `file` or `SANDGRAPH_CONFIG`.
    pub fn from_process(file: Option<&Path>) -> Result<Source, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SANDGRAPH_"))
            .collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("SANDGRAPH_CONFIG").map(PathBuf::from));
        Source::new(env, file.as_deref())
    }

    pub fn new(env: BTreeMap<String, String>, file: Option<&Path>) -> Result<Source, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = file {
            let err = |reason: String| ConfigError {
                key: "config".into(),
                reason: format!("{}: {reason}", path.display()),
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let doc: BTreeMap<String, serde_norway::Value> =
                serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?;
            for (k, v) in doc {
                let s = match v {
                    serde_norway::Value::String(s) => s,
                    serde_norway::Value::Number(n) => n.to_string(),
                    serde_norway::Value::Bool(b) => b.to_string(),
                    serde_norway::Value::Sequence(items) => items
                        .iter()
                        .map(|i| match i {
                            serde_norway::Value::String(s) => s.clone(),
                            other => serde_norway::to_string(other)
                                .unwrap_or_default()
                                .trim()
                                .to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => return Err(err(format!("`{k}` must be a string, number or list"))),
                };
                values.insert(k, s);
            }
        }
        Ok(Source { env, file: values })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.env
            .get(&format!("SANDGRAPH_{}", key.to_uppercase()))
            .or_else(|| self.file.get(key))
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

fn parse<T>(
    src: &Source,
    key: &str,
    default: T,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match src.get(key) {
        None => Ok(default),
        Some(v) => f(v.trim()).map_err(|reason| ConfigError {
            key: key.to_owned(),
            reason,
        }),
    }
}

fn count(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| format!("`{v}` is not a whole number"))
}

fn size(v: &str) -> Result<usize, String> {
    parse_size(v).map(|n| n as usize)
}

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v)
}

/// A duration that may also be written in hours or days (`24h`, `7d`).
fn long_duration(v: &str) -> Result<Duration, String> {
    let unit = |n: &str, secs: u64| {
        n.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(secs))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{v}` is not a duration like 24h, 7d, 30m or 0s"))
    };
    match (v.strip_suffix('h'), v.strip_suffix('d')) {
        (Some(n), _) => unit(n, 3600),
        (_, Some(n)) => unit(n, 86_400),
        _ => duration(v),
    }
}

/// The secrets under `dir`: each regular file (symlinks followed) whose name does not start
/// with `.` is one secret, its value the content without one trailing newline. Kubernetes'
/// `..data` bookkeeping entries are skipped by that rule.
pub fn read_secrets_dir(dir: &Path) -> Result<SecretStore, ConfigError> {
    let err = |reason: String| ConfigError {
        key: "secrets_dir".into(),
        reason,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| err(format!("{}: cannot list the secrets: {e}", dir.display())))?;
    let mut store = SecretStore::default();
    for entry in entries {
        let entry = entry.map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let mut value = String::from_utf8(bytes)
            .map_err(|_| err(format!("{}: the secret is not UTF-8 text", path.display())))?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        if value.is_empty() {
            return Err(err(format!("{}: the secret is empty", path.display())));
        }
        store.insert(name, value);
    }
    Ok(store)
}

impl Config {
    /// The operator secrets (`secrets_dir`), or none.
    pub fn secret_store(&self) -> Result<SecretStore, ConfigError> {
        match &self.secrets_dir {
            Some(dir) => read_secrets_dir(dir),
            None => Ok(SecretStore::default()),
        }
    }

    pub fn from_source(src: &Source) -> Result<Config, ConfigError> {
        let path = |key: &str| src.get(key).map(PathBuf::from);
        let config = Config {
            listen: parse(src, "listen", "127.0.0.1:8080".parse().unwrap(), |v| {
                v.parse()
                    .map_err(|_| format!("`{v}` is not an address like 0.0.0.0:8080"))
            })?,
            journal: path("journal").unwrap_or_else(default_journal),
            tools: src.get("tools").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
            components: path("components"),
            cache_dir: path("cache_dir"),
            secrets_dir: path("secrets_dir"),
            allow_private: parse(src, "allow_private", Vec::new(), |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("`{s}` is not an IP address"))
                    })
                    .collect()
            })?,
            egress_ca: parse(src, "egress_ca", Vec::new(), |v| {
                Ok(v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect())
            })?,
            max_graph_bytes: parse(src, "max_graph_bytes", 1 << 20, size)?,
            max_tool_bytes: parse(src, "max_tool_bytes", 64 << 20, size)?,
            max_run_bytes: parse(src, "max_run_bytes", 1 << 20, size)?,
            max_concurrent_runs: parse(src, "max_concurrent_runs", 64, count)?,
            run_queue: parse(src, "run_queue", 256, count)?,
            max_parallel_steps: parse(src, "max_parallel_steps", 16, count)?,
            rate_limit: parse(src, "rate_limit", 50.0, |v| {
                v.parse::<f64>()
                    .map_err(|_| format!("`{v}` is not a number of requests per second"))
            })?,
            rate_burst: parse(src, "rate_burst", 100, |v| {
                v.parse::<u32>()
                    .map_err(|_| format!("`{v}` is not a whole number"))
            })?,
            shutdown_grace: parse(src, "shutdown_grace", Duration::from_secs(30), duration)?,
            run_lease: parse(src, "run_lease", Duration::from_secs(15), duration)?,
            header_timeout: parse(src, "header_timeout", Duration::from_secs(10), duration)?,
            body_timeout: parse(src, "body_timeout", Duration::from_secs(30), duration)?,
            sse_heartbeat: parse(src, "sse_heartbeat", Duration::from_secs(15), duration)?,
            auth_tokens: path("auth_tokens"),
            auth_jwks: path("auth_jwks"),
            auth_issuer: src.get("auth_issuer"),
            auth_audience: src.get("auth_audience"),
            auth_leeway: parse(src, "auth_leeway", Duration::from_secs(60), duration)?,
            auth_reload_interval: parse(
                src,
                "auth_reload_interval",
                Duration::from_secs(5),
                duration,
            )?,
            otlp_endpoint: parse(src, "otlp_endpoint", None, |v| {
                crate::api::telemetry::check_endpoint(v)
                    .map(|_| Some(v.to_owned()))
                    .map_err(|e| e.to_string())
            })?,
            otlp_service_name: src
                .get("otlp_service_name")
                .unwrap_or_else(|| "sandgraph".to_owned()),
            otlp_headers: parse(
                src,
                "otlp_headers",
                crate::api::telemetry::ExportHeaders::default(),
                crate::api::telemetry::ExportHeaders::parse,
            )?,
            otlp_ca: path("otlp_ca"),
            idempotency_ttl: parse(
                src,
                "idempotency_ttl",
                Duration::from_secs(24 * 3600),
                long_duration,
            )?,
            model_url: parse(src, "model_url", None, |v| {
                crate::api::model_probe::ModelProbe::new(v, Duration::from_secs(1))
                    .map(|_| Some(v.to_owned()))
                    .map_err(|e| e.to_string())
            })?,
            model_probe_timeout: parse(
                src,
                "model_probe_timeout",
                Duration::from_secs(2),
                duration,
            )?,
        };
        if config.max_concurrent_runs == 0 {
            return Err(ConfigError {
                key: "max_concurrent_runs".into(),
                reason: "must be at least 1".into(),
            });
        }
        if config.run_lease < Duration::from_millis(300) {
            return Err(ConfigError {
                key: "run_lease".into(),
                reason: "must be at least 300ms (it is renewed every third of it)".into(),
            });
        }
        if config.tools.is_some() != config.components.is_some() {
            return Err(ConfigError {
                key: "tools".into(),
                reason:
                    "set both `tools` (manifests) and `components` (built .wasm files), or neither"
                        .into(),
            });
        }
        Ok(config)
    }

    /// Defaults with `journal`, as tests and embedders start from.
    pub fn with_journal(journal: PathBuf) -> Config {
        let mut c = Config::from_source(&Source {
            env: BTreeMap::new(),
            file: BTreeMap::new(),
        })
        .expect("the defaults are valid");
        c.journal = journal;
        c
    }
}

fn default_journal() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("sandgraph/journal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:9000\nrun_queue: 3\nallow_private: [127.0.0.1]\n",
        )
        .unwrap();
        let src = Source::new(env(&[("SANDGRAPH_RUN_QUEUE", "7")]), Some(&file)).unwrap();
        let c = Config::from_source(&src).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.run_queue, 7);
        assert_eq!(
            c.allow_private,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );

        let src = Source::new(env(&[("SANDGRAPH_SHUTDOWN_GRACE", "soon")]), None).unwrap();
        let e = Config::from_source(&src).unwrap_err().to_string();
        assert!(e.contains("SANDGRAPH_SHUTDOWN_GRACE"), "{e}");
        let src = Source::new(env(&[("SANDGRAPH_LISTEN", "nowhere")]), None).unwrap();
        let e = Config::from_source(&src).unwrap_err().to_string();
        assert!(e.contains("not an address"), "{e}");
    }

    #[test]
    fn idempotency_ttl_takes_hours_and_days_and_defaults_to_a_day() {
        let ttl = |v: &str| {
            Config::from_source(
                &Source::new(env(&[("SANDGRAPH_IDEMPOTENCY_TTL", v)]), None).unwrap(),
            )
            .map(|c| c.idempotency_ttl)
            .map_err(|e| e.to_string())
        };
        assert_eq!(ttl(""), Ok(Duration::from_secs(86_400)));
        assert_eq!(ttl("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(ttl("0s"), Ok(Duration::ZERO));
        let e = ttl("forever").unwrap_err();
        assert!(e.contains("SANDGRAPH_IDEMPOTENCY_TTL"), "{e}");
        let e = ttl("xh").unwrap_err();
        assert!(e.contains("not a duration like 24h"), "{e}");
    }

    #[test]
    fn otlp_headers_take_the_otel_format_and_never_show_their_values() {
        let headers = |v: &str| {
            Config::from_source(&Source::new(env(&[("SANDGRAPH_OTLP_HEADERS", v)]), None).unwrap())
                .map(|c| c.otlp_headers)
                .map_err(|e| e.to_string())
        };
        let h = headers("x-api-key=abc123, Authorization=Basic%20dXNlcjpwdw==").unwrap();
        assert_eq!(
            h.0,
            vec![
                ("x-api-key".to_owned(), "abc123".to_owned()),
                ("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned()),
            ]
        );
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("abc123") && !shown.contains("dXNlcjpwdw"),
            "{shown}"
        );
        for (bad, why) in [
            ("x-api-key", "is not name=value"),
            ("bad name=1", "is not a header name"),
            ("content-type=text/plain", "set by the exporter"),
            ("x-key=a%0Ab", "characters a header cannot carry"),
            ("x-key=%FF", "not UTF-8"),
        ] {
            let e = headers(bad).unwrap_err();
            assert!(
                e.contains("SANDGRAPH_OTLP_HEADERS") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_model_url_must_be_plain_http() {
        let model = |v: &str| {
            Config::from_source(&Source::new(env(&[("SANDGRAPH_MODEL_URL", v)]), None).unwrap())
                .map(|c| c.model_url)
                .map_err(|e| e.to_string())
        };
        assert_eq!(model(""), Ok(None));
        assert_eq!(
            model("http://127.0.0.1:8081"),
            Ok(Some("http://127.0.0.1:8081".to_owned()))
        );
        let e = model("https://infer.example:443").unwrap_err();
        assert!(e.contains("SANDGRAPH_MODEL_URL"), "{e}");
        assert!(e.contains("only plain http"), "{e}");
    }

    #[test]
    fn a_mounted_secret_folder_reads_like_kubernetes_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        // kubelet: the values live in a timestamped folder, `..data` links to it, and each
        // secret is a link `<name> -> ..data/<name>`.
        let stamp = dir.path().join("..2026_12_05_18_00_00.1");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("OPENAI_KEY"), "sk-test-123\n").unwrap();
        std::fs::write(stamp.join("GITHUB_TOKEN"), "ghp_abc").unwrap();
        std::os::unix::fs::symlink(&stamp, dir.path().join("..data")).unwrap();
        for name in ["OPENAI_KEY", "GITHUB_TOKEN"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.path().join(name))
                .unwrap();
        }
        let source = Source::new(
            env(&[("SANDGRAPH_SECRETS_DIR", &dir.path().display().to_string())]),
            None,
        )
        .unwrap();
        let store = Config::from_source(&source)
            .unwrap()
            .secret_store()
            .unwrap();
        assert_eq!(store.get("OPENAI_KEY"), Some("sk-test-123"));
        assert_eq!(store.get("GITHUB_TOKEN"), Some("ghp_abc"));
        assert_eq!(store.values().count(), 2, "{store:?}");
        // Values never reach Debug output.
        assert!(!format!("{store:?}").contains("sk-test"));

        std::fs::write(dir.path().join("EMPTY"), "\n").unwrap();
        let e = read_secrets_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("SANDGRAPH_SECRETS_DIR") && e.contains("EMPTY"),
            "{e}"
        );
        let e = read_secrets_dir(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot list the secrets"), "{e}");
    }
}
