//! `sandgraph tool inspect|call`: one component, one call, outside any graph.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::sandbox::egress::SecretStore;
use crate::sandbox::manifest::{
    CallGrant, EffectiveGrant, Manifest, OperatorPolicy, WorkspaceMode,
};
use crate::sandbox::outcome::CallError;
use crate::sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// Print a component's world, imports, exports and `info()`.
    Inspect {
        /// The tool component (`.wasm`).
        component: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Call a tool once and print its output JSON on stdout.
    Call(CallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Directory for compiled components (default: $XDG_CACHE_HOME/sandgraph or ~/.cache/sandgraph).
    #[arg(long, env = "SANDGRAPH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile in memory only.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("sandgraph").join("components"))
        })
    }
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The tool component (`.wasm`).
    pub component: PathBuf,
    /// The tool's capability manifest (`*.sandgraph.yaml`).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The input JSON document.
    #[arg(long)]
    pub input: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// Host directory exposed as /workspace (mode comes from the manifest).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// What the operator lets tools reach and hands them, shared by every command that runs tools.
#[derive(Debug, Clone, Default, Args)]
pub struct OperatorArgs {
    /// Let egress reach this exact non-public address (repeatable), e.g. 127.0.0.1.
    #[arg(long = "allow-private", value_name = "IP")]
    pub allow_private: Vec<IpAddr>,
    /// An operator secret for header injection, NAME=VALUE (repeatable).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// A PEM file of CA certificates `https` egress trusts besides the public roots
    /// (repeatable), e.g. an internal CA or a TLS-inspecting proxy's.
    #[arg(long = "egress-ca", value_name = "PEM")]
    pub egress_ca: Vec<std::path::PathBuf>,
}

impl OperatorArgs {
    /// The `--secret` values as a store; a value without `=` is a usage error naming it.
    pub fn secret_store(&self) -> Result<SecretStore, String> {
        let mut secrets = SecretStore::default();
        for s in &self.secrets {
            let Some((name, value)) = s.split_once('=') else {
                return Err(format!(
                    "--secret `{}`: write NAME=VALUE",
                    s.split('=').next().unwrap_or_default()
                ));
            };
            secrets.insert(name, value);
        }
        Ok(secrets)
    }

    /// The certificates of every `--egress-ca` file; a bad file is a usage error naming it.
    pub fn extra_roots(&self) -> Result<crate::sandbox::egress::ExtraRoots, String> {
        crate::sandbox::egress::TlsRoots::read_pem_files(&self.egress_ca).map_err(|e| e.to_string())
    }
}

/// A CLI failure: either the typed call error or a usage problem, printed as JSON.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The JSON printed on stderr.
    pub fn to_json(&self) -> String {
        match self {
            CliError::Call(e) => serde_json::to_string(e).unwrap_or_default(),
            CliError::Usage(m) => serde_json::json!({ "kind": "usage", "message": m }).to_string(),
        }
    }
}

#[derive(Serialize)]
struct Inspection {
    digest: String,
    world: Option<String>,
    /// Calls start from the snapshot taken after the component's start-up hook.
    preinitialized: bool,
    imports: Vec<String>,
    exports: Vec<String>,
    info: Option<InfoJson>,
}

#[derive(Serialize)]
struct InfoJson {
    name: String,
    version: String,
    description: String,
    input_schema: serde_json::Value,
    output_schema: serde_json::Value,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))
}

/// Runs a tool subcommand; `Ok` holds what to print on stdout.
pub fn run(cmd: ToolCommand) -> Result<String, CliError> {
    match cmd {
        ToolCommand::Inspect { component, cache } => inspect(component, cache),
        ToolCommand::Call(args) => call(args),
    }
}

fn inspect(path: PathBuf, cache: CacheArgs) -> Result<String, CliError> {
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: cache.dir(),
        ..SandboxConfig::default()
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let tool = sandbox.registry().load_file(&path)?;
    let ty = tool.component.component_type();
    let engine = sandbox.engine();
    let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let info = runtime()?.block_on(sandbox.info(&tool))?;
    let schema =
        |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.to_string()));
    let out = Inspection {
        digest: tool.digest.clone(),
        world: Some("sandgraph:tool/tool@0.1.0".into()),
        preinitialized: tool.preinitialized,
        imports,
        exports,
        info: Some(InfoJson {
            input_schema: schema(&info.input_schema),
            output_schema: schema(&info.output_schema),
            name: info.name,
            version: info.version,
            description: info.description,
        }),
    };
    serde_json::to_string_pretty(&out).map_err(|e| CliError::Usage(e.to_string()))
}

fn call(args: CallArgs) -> Result<String, CliError> {
    let manifest =
        Manifest::from_file(&args.manifest).map_err(|e| CliError::Usage(e.to_string()))?;
    let secrets = args.operator.secret_store().map_err(CliError::Usage)?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache.dir(),
        secrets,
        extra_roots: args.operator.extra_roots().map_err(CliError::Usage)?,
        ..SandboxConfig::default()
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let policy = OperatorPolicy {
        allow_private: args.operator.allow_private.clone(),
        ..OperatorPolicy::default()
    };
    if manifest.spec.workspace != WorkspaceMode::None && args.workspace.is_none() {
        return Err(CliError::Usage(format!(
            "{}: the manifest asks for a workspace ({:?}); pass --workspace DIR",
            args.manifest.display(),
            manifest.spec.workspace
        )));
    }
    let grant = CallGrant {
        workspace: args.workspace.clone().map(|d| (d, WorkspaceMode::Rw)),
        ..CallGrant::default()
    };
    let grant = EffectiveGrant::intersect(&policy, &manifest, &grant);
    let tool = sandbox.registry().load_file(&args.component)?;
    let report = runtime()?.block_on(sandbox.call(&tool, &grant, &args.input));
    Ok(report.result?)
}
