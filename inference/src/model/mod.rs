//! The Llama-family model definition shared by every backend: hyper-parameters read from GGUF
//! metadata and typed, shape-checked references to the weight tensors (which stay quantized
//! in the memory-mapped file).

mod config;
mod weights;

pub use config::LlamaConfig;
pub use weights::{LayerWeights, LlamaWeights, TensorRef};

use std::path::Path;
use std::sync::Arc;

use crate::gguf::{GgufError, GgufFile};

/// Why a GGUF file is not a usable model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("model architecture '{0}' is not supported; this engine runs 'llama' models")]
    UnsupportedArch(String),
    #[error("model has no tensor '{0}'; the file is incomplete or not a llama model")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?} from the model metadata")]
    BadTensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("model metadata '{key}': {problem}")]
    BadConfig { key: String, problem: String },
}

/// A loaded model: configuration, weight references, and the file that owns the bytes.
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    pub file: Arc<GgufFile>,
}

impl LlamaModel {
    /// Memory-maps, validates and interprets a GGUF llama model.
    pub fn load(path: impl AsRef<Path>) -> Result<LlamaModel, ModelError> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    pub fn from_gguf(file: GgufFile) -> Result<LlamaModel, ModelError> {
        let config = LlamaConfig::from_gguf(&file)?;
        let weights = LlamaWeights::from_gguf(&file, &config)?;
        Ok(LlamaModel {
            config,
            weights,
            file: Arc::new(file),
        })
    }

    /// Raw (still quantized) bytes of a weight tensor.
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        self.file.tensor_data(&t.info)
    }

    /// Dequantizes a whole tensor to f32 (for norms, tests and reference code).
    pub fn dequantize(&self, t: &TensorRef) -> Vec<f32> {
        let mut out = vec![0.0f32; t.rows * t.cols];
        let row_bytes = t.ty.row_bytes(t.cols);
        for (r, o) in out.chunks_exact_mut(t.cols).enumerate() {
            let b = &self.bytes(t)[r * row_bytes..(r + 1) * row_bytes];
            crate::gguf::dequantize_row(t.ty, b, o).expect("shape validated at load");
        }
        out
    }
}
