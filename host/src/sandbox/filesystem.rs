//! The per-run workspace: one host directory preopened as `/workspace`, read-only or read-write,
//! and nothing else. wasmtime-wasi resolves guest paths with cap-std under that one directory
//! handle, so `..`, absolute paths and symlinks cannot reach outside it. `wasi:filesystem` is
//! served through `WorkspaceFs`, which delegates to wasmtime-wasi and adds what it lacks: only
//! regular files and directories are opened (a FIFO, socket or device would block or leak),
//! links may not be created, open files, bytes written and files created are counted against
//! the call's limits, and every refusal lands in the host's own record.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorType, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::limits::CallBudget;
use super::manifest::WorkspaceMode;
use super::outcome::{CallError, Capability, FsRefusal, LimitedResource};

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

/// Why creating links is refused: a link is a path the host would have to re-check on every
/// later use (by this call, the next step, or the operator's own tools), so none are made.
pub const LINKS_REFUSED: &str =
    "creating symbolic links in the workspace is not allowed (a link could point outside it)";

/// What the filesystem wrapper keeps for one call.
pub struct FsState {
    budget: CallBudget,
    mode: WorkspaceMode,
    /// Guest path of each descriptor this call opened (the preopen is `/workspace`).
    paths: HashMap<u32, String>,
    /// Descriptors counted against `limits.max_open_files`.
    open: HashSet<u32>,
    refusals: Vec<FsRefusal>,
}

impl FsState {
    pub fn new(budget: CallBudget, mode: WorkspaceMode) -> Self {
        FsState {
            budget,
            mode,
            paths: HashMap::new(),
            open: HashSet::new(),
            refusals: Vec::new(),
        }
    }

    /// Operations the host refused, in order.
    pub fn refusals(&self) -> Vec<FsRefusal> {
        self.refusals.clone()
    }

    fn path_of(&self, fd: &Resource<types::Descriptor>, rel: &str) -> String {
        let base = self
            .paths
            .get(&fd.rep())
            .map(String::as_str)
            .unwrap_or(GUEST_WORKSPACE);
        if rel.is_empty() || rel == "." {
            base.to_string()
        } else {
            format!("{base}/{rel}")
        }
    }

    fn refuse(&mut self, operation: &str, path: String, reason: &str) {
        self.refusals.push(FsRefusal {
            operation: operation.to_string(),
            path,
            reason: reason.to_string(),
        });
    }

    /// Records a refusal when wasmtime-wasi (or the OS) said no for a reason of policy.
    fn note<T>(&mut self, r: &FsResult<T>, operation: &str, path: String, writes: bool) {
        if let Err(e) = r
            && let Some(code) = e.downcast_ref()
            && matches!(code, ErrorCode::NotPermitted | ErrorCode::Access)
        {
            let reason = if writes && self.mode == WorkspaceMode::Ro {
                "not permitted: the workspace is read-only"
            } else {
                "not permitted: the path leads outside the workspace, or the host refuses it"
            };
            self.refuse(operation, path, reason);
        }
    }
}

/// `HasData` for the wrapped `wasi:filesystem/types`.
pub struct WorkspaceFs;

impl HasData for WorkspaceFs {
    type Data<'a> = FsView<'a>;
}

/// wasmtime-wasi's view plus this call's filesystem state.
pub struct FsView<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub state: &'a mut FsState,
}

fn trap(e: super::limits::LimitExceeded) -> FsError {
    FsError::trap(e)
}

impl types::Host for FsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDirectoryEntryStream for FsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.inner.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

impl HostDescriptor for FsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        self.inner.sync_data(fd).await
    }

    async fn get_flags(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<types::Descriptor>) -> FsResult<DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_size(
        &mut self,
        fd: Resource<types::Descriptor>,
        size: types::Filesize,
    ) -> FsResult<()> {
        // Growing a file counts as writing the bytes it gains.
        let current = self
            .inner
            .stat(Resource::new_borrow(fd.rep()))
            .await
            .map(|s| s.size)
            .unwrap_or(size);
        let grow = size.saturating_sub(current);
        self.state
            .budget
            .take(LimitedResource::WorkspaceBytes, grow)
            .map_err(trap)?;
        let path = self.state.path_of(&fd, "");
        let r = self.inner.set_size(fd, size).await;
        if r.is_err() {
            self.state
                .budget
                .release(LimitedResource::WorkspaceBytes, grow);
        }
        self.state.note(&r, "set-size", path, true);
        r
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        let len = buf.len() as u64;
        self.state
            .budget
            .take(LimitedResource::WorkspaceBytes, len)
            .map_err(trap)?;
        let path = self.state.path_of(&fd, "");
        let r = self.inner.write(fd, buf, offset).await;
        let unused = match &r {
            Ok(n) => len.saturating_sub(*n),
            Err(_) => len,
        };
        self.state
            .budget
            .release(LimitedResource::WorkspaceBytes, unused);
        self.state.note(&r, "write", path, true);
        r
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        self.inner.sync(fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.state
            .budget
            .take(LimitedResource::FilesCreated, 1)
            .map_err(trap)?;
        let guest = self.state.path_of(&fd, &path);
        let r = self.inner.create_directory_at(fd, path).await;
        if r.is_err() {
            self.state.budget.release(LimitedResource::FilesCreated, 1);
        }
        self.state.note(&r, "create-directory", guest, true);
        r
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        self.inner.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        let guest = self.state.path_of(&fd, &path);
        let r = self.inner.stat_at(fd, path_flags, path).await;
        self.state.note(&r, "stat", guest, false);
        r
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &path);
        let r = self
            .inner
            .set_times_at(fd, path_flags, path, atim, mtim)
            .await;
        self.state.note(&r, "set-times", guest, true);
        r
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        _old_path_flags: types::PathFlags,
        old_path: String,
        _new_descriptor: Resource<types::Descriptor>,
        _new_path: String,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &old_path);
        self.state.refuse("link", guest, LINKS_REFUSED);
        Err(ErrorCode::NotPermitted.into())
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        let guest = self.state.path_of(&fd, &path);
        let writes = oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
            || flags.contains(types::DescriptorFlags::WRITE);
        // Look before opening: `open` of a FIFO blocks until a writer appears (forever, on a
        // thread no deadline can reach), and a socket or device is not the guest's to use.
        // `stat` never blocks. (A host process swapping the file between the two calls is
        // outside the threat model: only the host can make such files.)
        let existed = match self
            .inner
            .stat_at(Resource::new_borrow(fd.rep()), path_flags, path.clone())
            .await
        {
            Ok(stat) => {
                let what = match stat.type_ {
                    DescriptorType::RegularFile | DescriptorType::Directory => None,
                    // Without SYMLINK_FOLLOW the open itself refuses a link (ELOOP).
                    DescriptorType::SymbolicLink => None,
                    DescriptorType::Fifo => Some("a named pipe (FIFO)"),
                    DescriptorType::Socket => Some("a socket"),
                    DescriptorType::CharacterDevice => Some("a character device"),
                    DescriptorType::BlockDevice => Some("a block device"),
                    // wasmtime-wasi reports FIFOs and sockets as `unknown`.
                    DescriptorType::Unknown => Some("a named pipe, socket or other special file"),
                };
                if let Some(what) = what {
                    let reason = format!(
                        "{what} is not a regular file or directory; only those can be opened"
                    );
                    self.state.refuse("open", guest, &reason);
                    return Err(ErrorCode::Access.into());
                }
                true
            }
            Err(_) => false,
        };
        let creates = !existed && oflags.contains(types::OpenFlags::CREATE);
        self.state
            .budget
            .take(LimitedResource::OpenFiles, 1)
            .map_err(trap)?;
        if creates && let Err(e) = self.state.budget.take(LimitedResource::FilesCreated, 1) {
            self.state.budget.release(LimitedResource::OpenFiles, 1);
            return Err(trap(e));
        }
        let r = self
            .inner
            .open_at(fd, path_flags, path, oflags, flags)
            .await;
        match &r {
            Ok(new) => {
                self.state.open.insert(new.rep());
                self.state.paths.insert(new.rep(), guest);
            }
            Err(_) => {
                self.state.budget.release(LimitedResource::OpenFiles, 1);
                if creates {
                    self.state.budget.release(LimitedResource::FilesCreated, 1);
                }
                self.state.note(&r, "open", guest, writes);
            }
        }
        r
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        let rep = fd.rep();
        if self.state.open.remove(&rep) {
            self.state.budget.release(LimitedResource::OpenFiles, 1);
        }
        self.state.paths.remove(&rep);
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        self.inner.readlink_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &path);
        let r = self.inner.remove_directory_at(fd, path).await;
        self.state.note(&r, "remove-directory", guest, true);
        r
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &old_path);
        let r = self.inner.rename_at(fd, old_path, new_fd, new_path).await;
        self.state.note(&r, "rename", guest, true);
        r
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        _src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &dest_path);
        self.state.refuse("symlink", guest, LINKS_REFUSED);
        Err(ErrorCode::NotPermitted.into())
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let guest = self.state.path_of(&fd, &path);
        let r = self.inner.unlink_file_at(fd, path).await;
        self.state.note(&r, "unlink", guest, true);
        r
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<wasmtime_wasi::p2::DynInputStream>> {
        self.inner.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let path = self.state.path_of(&fd, "");
        let r = self.inner.write_via_stream(fd, offset);
        self.state.note(&r, "write", path, true);
        self.counted(r?)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let path = self.state.path_of(&fd, "");
        let r = self.inner.append_via_stream(fd);
        self.state.note(&r, "write", path, true);
        self.counted(r?)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash_at(fd, path_flags, path).await
    }
}

impl FsView<'_> {
    /// Replaces a file's output stream in the table by one that counts what goes through it.
    fn counted(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.inner.table.delete(stream)?;
        let counted: DynOutputStream = Box::new(CountedStream {
            inner,
            budget: self.state.budget.clone(),
        });
        Ok(self.inner.table.push(counted)?)
    }
}

/// A workspace file's output stream whose bytes count against `limits.max_write`.
struct CountedStream {
    inner: DynOutputStream,
    budget: CallBudget,
}

impl CountedStream {
    fn charge(&self, n: usize) -> Result<(), StreamError> {
        self.budget
            .take(LimitedResource::WorkspaceBytes, n as u64)
            .map_err(|e| StreamError::Trap(e.into()))
    }
}

#[async_trait::async_trait]
impl OutputStream for CountedStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    fn write_zeroes(&mut self, nelem: usize) -> Result<(), StreamError> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[async_trait::async_trait]
impl Pollable for CountedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}
