//! The per-run workspace: one host directory preopened as `/workspace`, read-only or read-write,
//! and nothing else. wasmtime-wasi resolves guest paths with cap-std under that one directory
//! handle, so `..`, absolute paths and symlinks cannot reach outside it.

use std::path::Path;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::manifest::WorkspaceMode;
use super::outcome::{CallError, Capability};

/// Where the guest sees its workspace.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// Preopens `dir` as `/workspace` with `mode`; `WorkspaceMode::None` preopens nothing.
pub fn grant_workspace(
    builder: &mut WasiCtxBuilder,
    dir: &Path,
    mode: WorkspaceMode,
) -> Result<(), CallError> {
    let perms = match mode {
        WorkspaceMode::None => return Ok(()),
        WorkspaceMode::Ro => FsPerms::ReadOnly,
        WorkspaceMode::Rw => FsPerms::ReadWrite,
    };
    let denied = |why: String| CallError::Denied {
        capability: Capability::Filesystem,
        target: dir.display().to_string(),
        missing_rule: why,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(denied("the workspace path is not a directory".into())),
        Err(e) => return Err(denied(format!("cannot open the workspace directory: {e}"))),
    }
    builder
        .preopened_dir(dir, GUEST_WORKSPACE, perms)
        .map_err(|e| denied(format!("cannot preopen the workspace directory: {e:#}")))?;
    Ok(())
}
