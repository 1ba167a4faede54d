//! The typed result of one sandboxed call and the audit record that goes with it.
//! Callers (CLI, graph scheduler) match on `CallError` kinds instead of parsing strings, and
//! every call, successful or not, leaves one audit record emitted as a `tracing` event.

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
}

impl Capability {
    pub fn parse(s: &str) -> Option<Capability> {
        Some(match s {
            "egress" => Capability::Egress,
            "filesystem" => Capability::Filesystem,
            "env" => Capability::Env,
            "secret" => Capability::Secret,
            "sockets" => Capability::Sockets,
            _ => return None,
        })
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
    #[error("output nests arrays and objects deeper than {limit_depth} levels")]
    OutputTooDeep { limit_depth: usize },
    #[error("trap: {message}")]
    Trap { message: String },
    #[error("bad component: {reason}")]
    BadComponent { reason: String },
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
            CallError::Trap { .. } => "trap",
            CallError::BadComponent { .. } => "bad_component",
        }
    }

    /// A denial the guest reported itself. Tools (and the SDK) may write
    /// `"<capability>: <target>: <detail>"` so the outcome names the capability.
    pub fn from_guest_denial(message: &str) -> CallError {
        let mut parts = message.splitn(3, ": ");
        if let (Some(cap), Some(target)) = (parts.next(), parts.next())
            && let Some(capability) = Capability::parse(cap)
        {
            return CallError::Denied {
                capability,
                target: target.to_string(),
                missing_rule: parts.next().unwrap_or("reported by the tool").to_string(),
            };
        }
        CallError::ToolFailed {
            message: format!("tool reported a denial: {message}"),
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
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What the host records about every call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tool: String,
    /// `sha256:<hex>` of the component bytes.
    pub component_digest: String,
    pub duration_us: u64,
    /// Largest linear memory the guest reached, in bytes.
    pub memory_peak_bytes: u64,
    /// Input document plus response bodies read from egress.
    pub bytes_in: u64,
    /// Output document plus request bodies sent by egress.
    pub bytes_out: u64,
    pub egress: Vec<EgressAttempt>,
    /// `ok` or the error kind.
    pub outcome: String,
}

impl AuditRecord {
    /// Emits the record as one structured `tracing` event (target `sandgraph::audit`).
    pub fn emit(&self) {
        if !tracing::enabled!(target: "sandgraph::audit", tracing::Level::INFO) {
            return;
        }
        let egress = serde_json::to_string(&self.egress).unwrap_or_default();
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
    fn guest_denials_name_the_capability_when_they_can() {
        assert_eq!(
            CallError::from_guest_denial("filesystem: /etc/passwd: no preopen"),
            CallError::Denied {
                capability: Capability::Filesystem,
                target: "/etc/passwd".into(),
                missing_rule: "no preopen".into()
            }
        );
        assert!(matches!(
            CallError::from_guest_denial("nope"),
            CallError::ToolFailed { .. }
        ));
    }
}
