//! The typed result of one sandboxed call and the audit record that goes with it.
//! Callers (CLI, graph scheduler) match on `CallError` kinds instead of parsing strings, and
//! every call, successful or not, leaves one audit record emitted as a `tracing` event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The capability a denial is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Egress,
    Filesystem,
    Env,
    Secret,
    Sockets,
    /// A model alias an agent step asked for (`sandgraph:agent/model`).
    Model,
    /// A tool an agent step asked to call (`sandgraph:agent/tools`).
    Tool,
}

impl Capability {
    pub fn parse(s: &str) -> Option<Capability> {
        Some(match s {
            "egress" => Capability::Egress,
            "filesystem" => Capability::Filesystem,
            "env" => Capability::Env,
            "secret" => Capability::Secret,
            "sockets" => Capability::Sockets,
            "model" => Capability::Model,
            "tool" => Capability::Tool,
            _ => return None,
        })
    }
}

/// A per-call resource other than memory and time, each capped by a `limits:` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitedResource {
    /// Entries of the host's resource table: open files, streams, pollables, header sets,
    /// requests. `limits.max_handles`.
    Handles,
    /// Files and directories open at once under the workspace. `limits.max_open_files`.
    OpenFiles,
    /// Outgoing HTTP connections the call opened. `limits.max_connections`.
    Connections,
    /// Bytes written into a `rw` workspace. `limits.max_write`.
    WorkspaceBytes,
    /// Files, directories and links created in a `rw` workspace. `limits.max_files_created`.
    FilesCreated,
    /// Bytes drawn from `wasi:random`. `limits.max_random`.
    RandomBytes,
}

impl LimitedResource {
    /// The manifest `limits:` key that sets this cap.
    pub fn manifest_key(self) -> &'static str {
        match self {
            LimitedResource::Handles => "max_handles",
            LimitedResource::OpenFiles => "max_open_files",
            LimitedResource::Connections => "max_connections",
            LimitedResource::WorkspaceBytes => "max_write",
            LimitedResource::FilesCreated => "max_files_created",
            LimitedResource::RandomBytes => "max_random",
        }
    }
}

/// Why a call produced no output. Serialises as `{"kind": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallError {
    #[error("invalid input: {message}")]
    InvalidInput { message: String },
    #[error("tool failed: {message}")]
    ToolFailed { message: String },
    #[error("denied {capability:?} to {target}: {missing_rule}")]
    Denied {
        capability: Capability,
        target: String,
        missing_rule: String,
    },
    #[error("timed out after {limit_ms} ms")]
    Timeout { limit_ms: u64 },
    #[error("memory limit of {limit_bytes} bytes exceeded")]
    MemoryLimitExceeded { limit_bytes: u64 },
    #[error("output larger than {limit_bytes} bytes")]
    OutputTooLarge { limit_bytes: u64 },
    /// The output nests arrays/objects deeper than every consumer (CLI, graph, API) accepts.
    #[error("output nests arrays and objects deeper than {max_depth} levels")]
    OutputTooDeep { max_depth: u32 },
    /// The output does not match the output schema the component declares in `info()`, which
    /// graph validation type-checked the expressions reading it against. Not transient.
    #[error("output does not match the component's declared output schema: {}", .errors.join("; "))]
    OutputInvalid { errors: Vec<String> },
    #[error(
        "{resource:?} limit of {limit} exceeded; raise limits.{} if the tool needs more",
        resource.manifest_key()
    )]
    ResourceLimitExceeded {
        resource: LimitedResource,
        limit: u64,
    },
    /// The guest ended its process (`wasi:cli/exit`, e.g. `std::process::exit`) instead of
    /// returning from `invoke`. Not transient: the same input exits the same way.
    #[error("the tool exited with status {code} instead of returning a result")]
    Exited { code: i32 },
    /// The tool itself returned `denied`; the host refused nothing, so this is never a host
    /// denial (those come only from the host's own record, as `Denied`).
    #[error("tool reported a denial the host did not record: {message}")]
    ToolDenied { message: String },
    #[error("trap: {message}")]
    Trap { message: String },
    #[error("bad component: {reason}")]
    BadComponent { reason: String },
    /// An agent step stopped because the run's `tokenBudget` or the node's `maxTokens` ran out.
    #[error("token budget exhausted: {message}")]
    BudgetExhausted { message: String },
    /// An operator secret that cannot be sent where a rule injects it (not a valid header
    /// value): the operator's configuration to fix, not a missing rule.
    #[error("operator secret `{secret}` cannot be injected: {reason}")]
    SecretUnusable { secret: String, reason: String },
}

impl CallError {
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::InvalidInput { .. } => "invalid_input",
            CallError::ToolFailed { .. } => "tool_failed",
            CallError::Denied { .. } => "denied",
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryLimitExceeded { .. } => "memory_limit_exceeded",
            CallError::OutputTooLarge { .. } => "output_too_large",
            CallError::OutputTooDeep { .. } => "output_too_deep",
            CallError::OutputInvalid { .. } => "output_invalid",
            CallError::ResourceLimitExceeded { .. } => "resource_limit_exceeded",
            CallError::Exited { .. } => "exited",
            CallError::ToolDenied { .. } => "tool_denied",
            CallError::Trap { .. } => "trap",
            CallError::BadComponent { .. } => "bad_component",
            CallError::BudgetExhausted { .. } => "budget_exhausted",
            CallError::SecretUnusable { .. } => "secret_unusable",
        }
    }

    /// A denial the guest reported itself: always tagged as the tool's own, whatever its text
    /// looks like, so a guest cannot forge a host denial.
    pub fn from_guest_denial(message: &str) -> CallError {
        CallError::ToolDenied {
            message: message.to_string(),
        }
    }
}

/// One outgoing HTTP request or socket use, allowed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressAttempt {
    pub capability: Capability,
    pub method: String,
    /// URL (egress) or socket address (sockets); never contains secret values.
    pub target: String,
    pub allowed: bool,
    /// Why it was denied, or which rule allowed it.
    pub reason: String,
    /// The address the host connected to, when it connected.
    pub connected_to: Option<String>,
    pub status: Option<u16>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Headers the host injected (names only) and guest-set headers it overwrote.
    pub injected: Vec<String>,
    /// The host gave up waiting (connect or first byte) within the call's time limit.
    #[serde(default)]
    pub timed_out: bool,
    /// Why the TLS handshake failed (`invalid peer certificate: UnknownIssuer`), for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_error: Option<String>,
    /// Occurrences of an injected secret masked in the response body (a reflecting server).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secrets_masked: u32,
    /// `secrets_masked` by the form the secret was written in (`raw`, `escaped`, `hex`,
    /// `base64`, `base64url`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub masked_forms: BTreeMap<String, u32>,
    /// Response headers (and `trailers`) withheld because they carried a secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_withheld: Vec<String>,
    /// The path as the guest wrote it, when the host sent its normalised form instead
    /// (`target` holds what was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalised_from: Option<String>,
    /// Request headers the host changed (`accept-encoding: identity`, a dropped `range`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewritten: Vec<String>,
    /// The refusal is an operator secret that cannot be injected (`target` names it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_unusable: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EgressAttempt {
    /// The call's outcome when this attempt is the host's refusal.
    pub fn call_error(&self) -> CallError {
        if self.secret_unusable {
            return CallError::SecretUnusable {
                secret: self.target.clone(),
                reason: self.reason.clone(),
            };
        }
        CallError::Denied {
            capability: self.capability,
            target: self.target.clone(),
            missing_rule: self.reason.clone(),
        }
    }
}

/// What the host records about every call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tool: String,
    /// `sha256:<hex>` of the component bytes.
    pub component_digest: String,
    pub duration_us: u64,
    /// Most memory the call held at once, in bytes: every linear memory and table of the
    /// component plus the host-side buffers it owned (header sets, unsent bodies, handles).
    pub memory_peak_bytes: u64,
    /// Input document plus response bodies read from egress.
    pub bytes_in: u64,
    /// Output document plus request bodies sent by egress.
    pub bytes_out: u64,
    pub egress: Vec<EgressAttempt>,
    /// `ok` or the error kind.
    pub outcome: String,
    /// What else the call consumed, as the host counted it.
    #[serde(default)]
    pub usage: ResourceUsage,
    /// Filesystem operations the host refused (the only source of filesystem denials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystem: Vec<FsRefusal>,
    /// For a tool called from inside an agent step: that step (`<run>/<step>@<attempt>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// Resource figures of one call, measured by the host (the limits compare against these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Sum of the component's linear memories at their largest, in bytes.
    pub linear_memory_bytes: u64,
    /// Sum of the component's tables at their largest, in bytes.
    pub table_bytes: u64,
    /// Largest host-side buffering the call owned at once, in bytes.
    pub host_bytes: u64,
    /// Most resource-table entries (handles) alive at once.
    pub handles_peak: u64,
    /// Most workspace files and directories open at once.
    pub open_files_peak: u64,
    /// Outgoing HTTP connections opened.
    pub connections: u64,
    /// Bytes written into the workspace.
    pub workspace_bytes_written: u64,
    /// Files, directories and links created in the workspace.
    pub files_created: u64,
    /// Bytes drawn from `wasi:random`.
    pub random_bytes: u64,
}

/// One filesystem operation the host refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRefusal {
    /// `open`, `write`, `symlink`, ...
    pub operation: String,
    /// The path as the guest sees it (`/workspace/...`).
    pub path: String,
    pub reason: String,
}

impl AuditRecord {
    /// Emits the record as one structured `tracing` event (target `sandgraph::audit`).
    pub fn emit(&self) {
        if !tracing::enabled!(target: "sandgraph::audit", tracing::Level::INFO) {
            return;
        }
        let egress = serde_json::to_string(&self.egress).unwrap_or_default();
        let usage = serde_json::to_string(&self.usage).unwrap_or_default();
        let filesystem = serde_json::to_string(&self.filesystem).unwrap_or_default();
        tracing::info!(
            target: "sandgraph::audit",
            tool = %self.tool,
            component_digest = %self.component_digest,
            duration_us = self.duration_us,
            memory_peak_bytes = self.memory_peak_bytes,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            outcome = %self.outcome,
            egress = %egress,
            usage = %usage,
            filesystem = %filesystem,
            parent = self.parent.as_deref().unwrap_or(""),
            "tool call"
        );
    }
}

/// Everything one call produced.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub result: Result<String, CallError>,
    pub audit: AuditRecord,
    /// Guest stdout and stderr, each capped (see `limits::LOG_CAP`).
    pub stdout: String,
    pub stderr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialise_with_a_snake_case_kind() {
        let e = CallError::Denied {
            capability: Capability::Egress,
            target: "http://a/".into(),
            missing_rule: "no rule".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"denied","capability":"egress","target":"http://a/","missing_rule":"no rule"}"#
        );
        let t = CallError::MemoryLimitExceeded { limit_bytes: 5 };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"kind":"memory_limit_exceeded","limit_bytes":5}"#
        );
        assert_eq!(t.kind(), "memory_limit_exceeded");
    }

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn audit_record_is_one_structured_tracing_event() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let record = AuditRecord {
            tool: "calc".into(),
            component_digest: "sha256:ab".into(),
            duration_us: 12,
            memory_peak_bytes: 65536,
            bytes_in: 3,
            bytes_out: 4,
            egress: vec![],
            outcome: "ok".into(),
            ..AuditRecord::default()
        };
        tracing::subscriber::with_default(subscriber, || record.emit());
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["target"], "sandgraph::audit");
        assert_eq!(v["fields"]["tool"], "calc");
        assert_eq!(v["fields"]["component_digest"], "sha256:ab");
        assert_eq!(v["fields"]["memory_peak_bytes"], 65536);
        assert_eq!(v["fields"]["outcome"], "ok");
        assert_eq!(v["fields"]["egress"], "[]");
    }

    #[test]
    fn guest_denials_are_never_host_denials() {
        // A message shaped exactly like a host denial stays the tool's own.
        for text in [
            "filesystem: /etc/passwd: no preopen",
            "nope",
            "egress: http://a/: no rule",
        ] {
            let e = CallError::from_guest_denial(text);
            assert_eq!(
                e,
                CallError::ToolDenied {
                    message: text.into()
                }
            );
            assert_eq!(e.kind(), "tool_denied");
        }
        let e = CallError::ResourceLimitExceeded {
            resource: LimitedResource::WorkspaceBytes,
            limit: 10,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"resource_limit_exceeded","resource":"workspace_bytes","limit":10}"#
        );
        assert!(e.to_string().contains("limits.max_write"), "{e}");
    }
}
