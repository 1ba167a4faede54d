//! The four operations over a workspace root, and the mapping of I/O errors to
//! tool errors: refusals by the sandbox become `denied`, everything else `failed`.
//!
//! The root is a parameter so the same code runs natively against a temp directory.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use sandgraph_guest::ToolError;

use crate::{Entry, EntryKind, Input, Output, WriteMode, paths};

/// Most entries a `list` returns.
pub const MAX_ENTRIES: usize = 10_000;

/// A workspace rooted at a directory (`/workspace` inside the component).
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Workspace { root: root.into() }
    }

    /// Runs one operation.
    pub fn run(&self, input: Input) -> Result<Output, ToolError> {
        if fs::metadata(&self.root).is_err() {
            return Err(ToolError::denied(format!(
                "filesystem: {}: no workspace is granted to this call (the manifest, the graph or the operator gives none)",
                self.root.display()
            )));
        }
        match input {
            Input::List { path, recursive } => self.list(&path, recursive),
            Input::Read { path, max_bytes } => self.read(&path, max_bytes),
            Input::Write {
                path,
                content,
                mode,
                create_dirs,
            } => self.write(&path, &content, mode, create_dirs),
            Input::Delete { path, recursive } => self.delete(&path, recursive),
        }
    }

    fn resolve(&self, path: &str) -> Result<(PathBuf, String), ToolError> {
        let rel = paths::relative(path)
            .map_err(|e| ToolError::invalid_input(format!("at `path`: {e}")))?;
        let shown = display(&rel);
        Ok((self.root.join(&rel), shown))
    }

    fn list(&self, path: &str, recursive: bool) -> Result<Output, ToolError> {
        let (dir, shown) = self.resolve(path)?;
        let mut entries = Vec::new();
        let mut pending = vec![(dir, shown)];
        let mut truncated = false;
        while let Some((dir, prefix)) = pending.pop() {
            let read = fs::read_dir(&dir).map_err(|e| self.io_error(&prefix, "list", e))?;
            for item in read {
                let item = item.map_err(|e| self.io_error(&prefix, "list", e))?;
                if entries.len() == MAX_ENTRIES {
                    truncated = true;
                    break;
                }
                let name = item.file_name().to_string_lossy().into_owned();
                let rel = if prefix == "." {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                // symlink_metadata: never follow a link while listing.
                let meta = fs::symlink_metadata(item.path())
                    .map_err(|e| self.io_error(&rel, "list", e))?;
                let kind = if meta.is_symlink() {
                    EntryKind::Symlink
                } else if meta.is_dir() {
                    EntryKind::Dir
                } else if meta.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                };
                if recursive && kind == EntryKind::Dir {
                    pending.push((item.path(), rel.clone()));
                }
                let size = (kind == EntryKind::File).then_some(meta.len());
                entries.push(Entry {
                    path: rel,
                    kind,
                    size,
                });
            }
            if truncated {
                break;
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Output::List { entries, truncated })
    }

    fn read(&self, path: &str, max_bytes: u32) -> Result<Output, ToolError> {
        let (file, shown) = self.resolve(path)?;
        let mut handle = File::open(&file).map_err(|e| self.io_error(&shown, "read", e))?;
        let meta = handle
            .metadata()
            .map_err(|e| self.io_error(&shown, "read", e))?;
        if meta.is_dir() {
            return Err(ToolError::failed(format!(
                "`{shown}` is a directory; use op `list`"
            )));
        }
        let mut bytes = Vec::new();
        (&mut handle)
            .take(u64::from(max_bytes) + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error(&shown, "read", e))?;
        let truncated = bytes.len() > max_bytes as usize;
        bytes.truncate(max_bytes as usize);
        Ok(Output::Read {
            path: shown,
            content: String::from_utf8_lossy(&bytes).into_owned(),
            size: meta.len(),
            truncated,
        })
    }

    fn write(
        &self,
        path: &str,
        content: &str,
        mode: WriteMode,
        create_dirs: bool,
    ) -> Result<Output, ToolError> {
        let (file, shown) = self.resolve(path)?;
        if shown == "." {
            return Err(ToolError::invalid_input(
                "at `path`: name a file, not the workspace root",
            ));
        }
        if create_dirs && let Some(parent) = file.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| self.io_error(&shown, "create the parent directories of", e))?;
        }
        let mut options = OpenOptions::new();
        match mode {
            WriteMode::Overwrite => options.write(true).create(true).truncate(true),
            WriteMode::Append => options.append(true).create(true),
            WriteMode::CreateNew => options.write(true).create_new(true),
        };
        let mut handle = options
            .open(&file)
            .map_err(|e| self.io_error(&shown, "write", e))?;
        handle
            .write_all(content.as_bytes())
            .and_then(|()| handle.flush())
            .map_err(|e| self.io_error(&shown, "write", e))?;
        Ok(Output::Write {
            path: shown,
            bytes_written: content.len() as u64,
        })
    }

    fn delete(&self, path: &str, recursive: bool) -> Result<Output, ToolError> {
        let (target, shown) = self.resolve(path)?;
        if shown == "." {
            return Err(ToolError::invalid_input(
                "at `path`: the workspace root itself cannot be deleted",
            ));
        }
        let meta = fs::symlink_metadata(&target).map_err(|e| self.io_error(&shown, "delete", e))?;
        let result = if meta.is_dir() {
            if recursive {
                fs::remove_dir_all(&target)
            } else {
                fs::remove_dir(&target)
            }
        } else {
            fs::remove_file(&target)
        };
        result.map_err(|e| {
            if meta.is_dir() && !recursive && e.kind() == io::ErrorKind::DirectoryNotEmpty {
                ToolError::failed(format!("`{shown}` is a directory that is not empty; set `recursive: true` to delete it with its content"))
            } else {
                self.io_error(&shown, "delete", e)
            }
        })?;
        Ok(Output::Delete { path: shown })
    }

    /// Sandbox refusals (read-only workspace, a link out of it) are denials; the rest
    /// are failures that name the file.
    fn io_error(&self, shown: &str, action: &str, e: io::Error) -> ToolError {
        let full = self.root.join(shown);
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ToolError::denied(format!(
                    "filesystem: {}: cannot {action} it: {e} (the workspace is read-only for this call, or the path leads out of it through a link)",
                    full.display()
                ))
            }
            io::ErrorKind::NotFound => {
                ToolError::failed(format!("`{shown}` does not exist in the workspace"))
            }
            io::ErrorKind::AlreadyExists => ToolError::failed(format!(
                "`{shown}` already exists; use mode `overwrite` or `append`"
            )),
            io::ErrorKind::NotADirectory => ToolError::failed(format!(
                "cannot {action} `{shown}`: a part of the path is a file, not a directory"
            )),
            _ => ToolError::failed(format!("cannot {action} `{shown}`: {e}")),
        }
    }
}

fn display(rel: &Path) -> String {
    let s = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    if s.is_empty() { ".".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandgraph_guest::schema::parse_input;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path());
        (dir, ws)
    }

    fn run(ws: &Workspace, json: &str) -> Result<Output, ToolError> {
        ws.run(parse_input::<Input>(json)?)
    }

    #[test]
    fn write_read_list_delete_round_trip() {
        let (_dir, ws) = ws();
        assert_eq!(
            run(
                &ws,
                r#"{"op":"write","path":"notes/a.txt","content":"héllo","create_dirs":true}"#
            )
            .unwrap(),
            Output::Write {
                path: "notes/a.txt".into(),
                bytes_written: 6
            }
        );
        run(
            &ws,
            r#"{"op":"write","path":"notes/a.txt","content":"!","mode":"append"}"#,
        )
        .unwrap();
        assert_eq!(
            run(&ws, r#"{"op":"read","path":"./notes//a.txt"}"#).unwrap(),
            Output::Read {
                path: "notes/a.txt".into(),
                content: "héllo!".into(),
                size: 7,
                truncated: false
            }
        );
        run(&ws, r#"{"op":"write","path":"top.txt","content":"x"}"#).unwrap();
        assert_eq!(
            run(&ws, r#"{"op":"list","recursive":true}"#).unwrap(),
            Output::List {
                entries: vec![
                    Entry {
                        path: "notes".into(),
                        kind: EntryKind::Dir,
                        size: None
                    },
                    Entry {
                        path: "notes/a.txt".into(),
                        kind: EntryKind::File,
                        size: Some(7)
                    },
                    Entry {
                        path: "top.txt".into(),
                        kind: EntryKind::File,
                        size: Some(1)
                    },
                ],
                truncated: false
            }
        );
        assert_eq!(
            run(&ws, r#"{"op":"list"}"#).unwrap(),
            Output::List {
                entries: vec![
                    Entry {
                        path: "notes".into(),
                        kind: EntryKind::Dir,
                        size: None
                    },
                    Entry {
                        path: "top.txt".into(),
                        kind: EntryKind::File,
                        size: Some(1)
                    },
                ],
                truncated: false
            }
        );
        assert_eq!(
            run(&ws, r#"{"op":"delete","path":"notes"}"#).unwrap_err(),
            ToolError::failed(
                "`notes` is a directory that is not empty; set `recursive: true` to delete it with its content"
            )
        );
        assert_eq!(
            run(&ws, r#"{"op":"delete","path":"notes","recursive":true}"#).unwrap(),
            Output::Delete {
                path: "notes".into()
            }
        );
        assert_eq!(
            run(&ws, r#"{"op":"delete","path":"top.txt"}"#).unwrap(),
            Output::Delete {
                path: "top.txt".into()
            }
        );
        assert_eq!(
            run(&ws, r#"{"op":"list"}"#).unwrap(),
            Output::List {
                entries: vec![],
                truncated: false
            }
        );
    }

    #[test]
    fn read_truncates_at_max_bytes() {
        let (_dir, ws) = ws();
        run(&ws, r#"{"op":"write","path":"big","content":"0123456789"}"#).unwrap();
        assert_eq!(
            run(&ws, r#"{"op":"read","path":"big","max_bytes":4}"#).unwrap(),
            Output::Read {
                path: "big".into(),
                content: "0123".into(),
                size: 10,
                truncated: true
            }
        );
    }

    #[test]
    fn escapes_are_invalid_input_before_any_io() {
        let (_dir, ws) = ws();
        assert_eq!(
            run(&ws, r#"{"op":"read","path":"../secret"}"#).unwrap_err(),
            ToolError::invalid_input(
                "at `path`: `../secret` uses `..` to leave its directory; paths must stay inside the workspace"
            )
        );
        assert_eq!(
            run(&ws, r#"{"op":"write","path":"/etc/passwd","content":""}"#).unwrap_err(),
            ToolError::invalid_input(
                "at `path`: `/etc/passwd` is absolute; paths are relative to the workspace root (e.g. `notes/a.txt`)"
            )
        );
        assert_eq!(
            run(&ws, r#"{"op":"delete","path":"."}"#).unwrap_err(),
            ToolError::invalid_input("at `path`: the workspace root itself cannot be deleted")
        );
    }

    #[test]
    fn missing_files_and_existing_files_are_named() {
        let (_dir, ws) = ws();
        assert_eq!(
            run(&ws, r#"{"op":"read","path":"nope.txt"}"#).unwrap_err(),
            ToolError::failed("`nope.txt` does not exist in the workspace")
        );
        run(&ws, r#"{"op":"write","path":"a","content":"1"}"#).unwrap();
        assert_eq!(
            run(
                &ws,
                r#"{"op":"write","path":"a","content":"2","mode":"create_new"}"#
            )
            .unwrap_err(),
            ToolError::failed("`a` already exists; use mode `overwrite` or `append`")
        );
        assert_eq!(
            run(&ws, r#"{"op":"write","path":"x/y","content":"2"}"#).unwrap_err(),
            ToolError::failed("`x/y` does not exist in the workspace")
        );
        assert_eq!(
            run(&ws, r#"{"op":"read","path":"."}"#).unwrap_err(),
            ToolError::failed("`.` is a directory; use op `list`")
        );
    }

    #[test]
    fn no_workspace_is_a_denial() {
        let ws = Workspace::new("/nonexistent-sandgraph-workspace");
        assert_eq!(
            run(&ws, r#"{"op":"list"}"#).unwrap_err(),
            ToolError::denied(
                "filesystem: /nonexistent-sandgraph-workspace: no workspace is granted to this call (the manifest, the graph or the operator gives none)"
            )
        );
    }

    #[test]
    fn unknown_op_and_missing_fields_are_invalid_input() {
        let (_dir, ws) = ws();
        assert!(
            matches!(run(&ws, r#"{"op":"move","path":"a"}"#), Err(ToolError::InvalidInput(m)) if m.contains("unknown variant `move`"))
        );
        assert_eq!(
            run(&ws, r#"{"op":"write","path":"a"}"#).unwrap_err(),
            ToolError::invalid_input("missing field `content`")
        );
    }
}
