//! Graph versions and uploaded tools, kept as keyed records in the journal's own store (sled
//! trees beside the journal, or PostgreSQL tables every replica shares) so they survive
//! restarts and are flushed with it. Graph versions are named by the digest of their
//! compiled form (the digest a run pins); tool bytes are stored once under their sha256.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};

const GRAPHS: &str = "api_graphs";
const TOOLS: &str = "api_tools";
const WASM: &str = "api_tool_wasm";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
}

/// One stored version of a graph.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GraphVersion {
    pub name: String,
    /// sha256 (hex) of the graph's canonical JSON: the digest its runs pin.
    pub version: String,
    pub created_ms: u64,
    /// The YAML exactly as submitted.
    pub source: String,
}

/// One uploaded tool (the latest upload under its name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolRecord {
    pub name: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub manifest: String,
    pub size: u64,
    pub created_ms: u64,
}

pub struct Store {
    journal: Arc<Journal>,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn graph_key(name: &str, version: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

impl Store {
    pub fn open(journal: Arc<Journal>) -> Store {
        Store { journal }
    }

    /// Stores `g` unless that exact version exists; returns whether it was new.
    pub fn put_graph(&self, g: &GraphVersion) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(g).expect("graph versions serialise");
        Ok(self
            .journal
            .kv_put_new(GRAPHS, &graph_key(&g.name, &g.version), &bytes)?)
    }

    /// Every version of `name`, oldest first.
    pub fn graph_versions(&self, name: &str) -> Result<Vec<GraphVersion>, StoreError> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for (_, v) in self.journal.kv_scan(GRAPHS, &prefix)? {
            out.push(decode::<GraphVersion>("graph version", &v)?);
        }
        out.sort_by(|a, b| (a.created_ms, &a.version).cmp(&(b.created_ms, &b.version)));
        Ok(out)
    }

    /// One version of `name`, or its latest when `version` is `None`.
    pub fn graph(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<GraphVersion>, StoreError> {
        match version {
            Some(v) => match self.journal.kv_get(GRAPHS, &graph_key(name, v))? {
                Some(bytes) => Ok(Some(decode("graph version", &bytes)?)),
                None => Ok(None),
            },
            None => Ok(self.graph_versions(name)?.pop()),
        }
    }

    /// The latest version of every graph, by name.
    pub fn graphs(&self) -> Result<Vec<(GraphVersion, usize)>, StoreError> {
        let mut out: Vec<(GraphVersion, usize)> = Vec::new();
        for (_, v) in self.journal.kv_scan(GRAPHS, b"")? {
            let g: GraphVersion = decode("graph version", &v)?;
            match out.last_mut() {
                Some((last, n)) if last.name == g.name => {
                    *n += 1;
                    if (g.created_ms, &g.version) > (last.created_ms, &last.version) {
                        *last = g;
                    }
                }
                _ => out.push((g, 1)),
            }
        }
        Ok(out)
    }

    pub fn put_tool(&self, t: &ToolRecord, wasm: &[u8]) -> Result<(), StoreError> {
        // The bytes first: a tool record never names bytes that are not stored.
        self.journal.kv_put(WASM, t.digest.as_bytes(), wasm)?;
        self.journal.kv_put(
            TOOLS,
            t.name.as_bytes(),
            &serde_json::to_vec(t).expect("tool records serialise"),
        )?;
        Ok(())
    }

    pub fn tool(&self, name: &str) -> Result<Option<ToolRecord>, StoreError> {
        match self.journal.kv_get(TOOLS, name.as_bytes())? {
            Some(v) => Ok(Some(decode("tool record", &v)?)),
            None => Ok(None),
        }
    }

    pub fn tools(&self) -> Result<Vec<ToolRecord>, StoreError> {
        let mut out = Vec::new();
        for (_, v) in self.journal.kv_scan(TOOLS, b"")? {
            out.push(decode("tool record", &v)?);
        }
        Ok(out)
    }

    pub fn tool_wasm(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        self.journal
            .kv_get(WASM, digest.as_bytes())?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("component {digest}"),
                reason: "its bytes are missing".into(),
            })
    }
}
