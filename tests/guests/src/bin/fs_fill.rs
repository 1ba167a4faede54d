//! Writes input `bytes` bytes into `/workspace/<name>` in chunks of input `chunk`, by input
//! `how`: `stream` (write), `at` (positional writes), `grow` (set_len). Stops at the first error.
use sandgraph_hostile_guests::*;
use std::io::Write;
use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("fs_fill")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let name = field(&input, "name").unwrap_or_else(|| "fill.bin".into());
        let total = num(&input, "bytes").unwrap_or(200 << 20);
        let chunk = num(&input, "chunk").unwrap_or(1 << 20) as usize;
        let how = field(&input, "how").unwrap_or_else(|| "stream".into());
        let path = format!("/workspace/{name}");
        let mut f = std::fs::File::create(&path)
            .map_err(|e| ToolError::Failed(format!("create {path}: {e}")))?;
        let raw = workspace_dir()
            .ok_or(ToolError::Failed("no /workspace preopen".into()))?
            .open_at(
                PathFlags::empty(),
                &name,
                OpenFlags::empty(),
                DescriptorFlags::WRITE,
            )
            .map_err(|e| ToolError::Failed(format!("open {path}: {e:?}")))?;
        let buf = vec![b'f'; chunk];
        let mut written = 0u64;
        while written < total {
            let r = match how.as_str() {
                "at" => raw
                    .write(&buf, written)
                    .map_err(|e| std::io::Error::other(format!("{e:?}"))),
                "grow" => f.set_len(written + chunk as u64).map(|()| chunk as u64),
                _ => f.write(&buf).map(|n| n as u64),
            };
            match r {
                Ok(n) => written += n,
                Err(e) => return Err(ToolError::Failed(format!("after {written} bytes: {e}"))),
            }
        }
        Ok(format!("{{\"written\":{written}}}"))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
