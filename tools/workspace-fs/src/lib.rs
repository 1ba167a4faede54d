//! `workspace-fs`: list, read, write and delete files in the run's workspace.
//!
//! Agents share intermediate files through the workspace the host preopens as
//! `/workspace`. The tool accepts relative paths only and says so clearly; the host's
//! capability-scoped directory is what actually enforces the boundary.

mod paths;
mod workspace;

use sandgraph_guest::{ToolError, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use paths::{PathError, relative};
pub use workspace::Workspace;

/// Where the host mounts the run workspace inside the component.
pub const WORKSPACE_ROOT: &str = "/workspace";

/// One operation; `op` selects it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// Entries of a directory (default: the workspace root).
    List {
        #[serde(default = "dot")]
        path: String,
        /// Walk subdirectories too (at most 10 000 entries).
        #[serde(default)]
        recursive: bool,
    },
    /// A file's content as UTF-8 text (invalid sequences replaced).
    Read {
        path: String,
        /// Return at most this many bytes and set `truncated` (default 1 MiB).
        #[serde(default = "default_max_bytes")]
        #[schemars(range(max = 1048576))]
        max_bytes: u32,
    },
    /// Create or replace a file (or append to it).
    Write {
        path: String,
        content: String,
        #[serde(default)]
        mode: WriteMode,
        /// Create missing parent directories.
        #[serde(default)]
        create_dirs: bool,
    },
    /// Remove a file or an empty directory (`recursive` removes a whole tree).
    Delete {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
}

fn dot() -> String {
    ".".into()
}
fn default_max_bytes() -> u32 {
    1024 * 1024
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace the file if it exists.
    #[default]
    Overwrite,
    /// Add to the end of the file, creating it if needed.
    Append,
    /// Fail if the file already exists.
    CreateNew,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Output {
    List {
        entries: Vec<Entry>,
        truncated: bool,
    },
    Read {
        path: String,
        content: String,
        size: u64,
        truncated: bool,
    },
    Write {
        path: String,
        bytes_written: u64,
    },
    Delete {
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Entry {
    /// Relative to the workspace root, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes, for files.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[tool(
    name = "workspace-fs",
    description = "Lists, reads, writes and deletes files in the run workspace (paths relative to the workspace root)."
)]
fn invoke(input: Input) -> Result<Output, ToolError> {
    Workspace::new(WORKSPACE_ROOT).run(input)
}
