//! Checks that a caller's path stays inside the workspace, before any I/O.
//!
//! Lexical only (no `..`, no absolute paths); symlinks pointing out are the host's
//! job, which refuses to follow them out of the preopened directory.

use std::{fmt, path::PathBuf};

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Absolute(String),
    ParentComponent(String),
    Nul(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the path is empty; use `.` for the workspace root"),
            Self::Absolute(p) => write!(
                f,
                "`{p}` is absolute; paths are relative to the workspace root (e.g. `notes/a.txt`)"
            ),
            Self::ParentComponent(p) => write!(
                f,
                "`{p}` uses `..` to leave its directory; paths must stay inside the workspace"
            ),
            Self::Nul(p) => write!(f, "`{}` contains a NUL byte", p.escape_debug()),
        }
    }
}

impl std::error::Error for PathError {}

/// The normalized relative path (`.` components dropped); empty means the root.
pub fn relative(path: &str) -> Result<PathBuf, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_owned()));
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    let mut out = PathBuf::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::ParentComponent(path.to_owned())),
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_relative_paths() {
        assert_eq!(relative("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(relative("./a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(relative(".").unwrap(), PathBuf::new());
        assert_eq!(relative("a/").unwrap(), PathBuf::from("a"));
    }

    #[test]
    fn rejects_escapes_with_a_reason() {
        assert_eq!(
            relative("../etc/passwd").unwrap_err().to_string(),
            "`../etc/passwd` uses `..` to leave its directory; paths must stay inside the workspace"
        );
        assert_eq!(
            relative("a/../../b"),
            Err(PathError::ParentComponent("a/../../b".into()))
        );
        assert_eq!(
            relative("a\\..\\b"),
            Err(PathError::ParentComponent("a\\..\\b".into()))
        );
        assert_eq!(
            relative("/etc/passwd").unwrap_err().to_string(),
            "`/etc/passwd` is absolute; paths are relative to the workspace root (e.g. `notes/a.txt`)"
        );
        assert_eq!(relative(""), Err(PathError::Empty));
        assert_eq!(relative("a\0b"), Err(PathError::Nul("a\0b".into())));
    }
}
