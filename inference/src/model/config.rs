//! Hyper-parameters of a llama model, read and sanity-checked from GGUF metadata.

use super::ModelError;
use crate::gguf::GgufFile;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    /// Embedding width.
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
}

impl LlamaConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn from_gguf(f: &GgufFile) -> Result<LlamaConfig, ModelError> {
        let arch = f.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArch(arch.to_owned()));
        }
        let int = |k: &str, max: u64| -> Result<usize, ModelError> {
            let key = format!("llama.{k}");
            let v = f.require_u64(&key)?;
            if v == 0 || v > max {
                return Err(ModelError::BadConfig {
                    key,
                    problem: format!("{v} is outside 1..={max}"),
                });
            }
            Ok(v as usize)
        };
        let n_layers = int("block_count", 1024)?;
        let dim = int("embedding_length", 1 << 16)?;
        let ffn_dim = int("feed_forward_length", 1 << 18)?;
        let n_heads = int("attention.head_count", 1024)?;
        let n_kv_heads = match f.get("llama.attention.head_count_kv") {
            Some(_) => int("attention.head_count_kv", 1024)?,
            None => n_heads,
        };
        let context_length = int("context_length", 1 << 24)?;
        if dim % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::BadConfig {
                key: "llama.attention.head_count".into(),
                problem: format!(
                    "{n_heads} query heads / {n_kv_heads} kv heads do not divide width {dim}"
                ),
            });
        }
        let head_dim = dim / n_heads;
        if let Some(v) = f.get("llama.rope.dimension_count")
            && v.as_u64() != Some(head_dim as u64)
        {
            {
                return Err(ModelError::BadConfig {
                    key: "llama.rope.dimension_count".into(),
                    problem: format!(
                        "{v:?} differs from the head size {head_dim}; partial RoPE is not supported"
                    ),
                });
            }
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::BadConfig {
                key: "llama.embedding_length".into(),
                problem: format!("head size {head_dim} is odd; RoPE needs pairs"),
            });
        }
        let rope_base = match f.get("llama.rope.freq_base") {
            Some(_) => f.require_f64("llama.rope.freq_base")? as f32,
            None => 10_000.0,
        };
        let norm_eps = f.require_f64("llama.attention.layer_norm_rms_epsilon")? as f32;
        let vocab = f
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        if vocab.dims.len() != 2 {
            return Err(ModelError::BadTensorShape {
                name: vocab.name.clone(),
                expected: vec![dim as u64, 0],
                found: vocab.dims.clone(),
            });
        }
        Ok(LlamaConfig {
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: vocab.dims[1] as usize,
            context_length,
            rope_base,
            norm_eps,
        })
    }
}
