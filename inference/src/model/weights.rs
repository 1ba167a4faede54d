//! Typed references to a llama model's tensors, each checked against the configuration.

use super::{LlamaConfig, ModelError};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};

/// A weight matrix (or vector) in the file: `rows` rows of `cols` values of type `ty`.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub(crate) info: TensorInfo,
}

impl TensorRef {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: TensorRef,
    pub wq: TensorRef,
    pub wk: TensorRef,
    pub wv: TensorRef,
    pub wo: TensorRef,
    pub ffn_norm: TensorRef,
    pub w_gate: TensorRef,
    pub w_up: TensorRef,
    pub w_down: TensorRef,
}

#[derive(Clone, Debug)]
pub struct LlamaWeights {
    pub token_embd: TensorRef,
    pub output_norm: TensorRef,
    /// The output projection; the token embedding itself when embeddings are tied.
    pub output: TensorRef,
    pub tied_output: bool,
    pub layers: Vec<LayerWeights>,
}

fn get(f: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<TensorRef, ModelError> {
    let t = f
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    let expected: Vec<u64> = if rows == 1 {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    if t.dims != expected {
        return Err(ModelError::BadTensorShape {
            name: name.into(),
            expected,
            found: t.dims.clone(),
        });
    }
    Ok(TensorRef {
        name: name.into(),
        ty: t.ty,
        rows,
        cols,
        info: t.clone(),
    })
}

impl LlamaWeights {
    pub fn from_gguf(f: &GgufFile, c: &LlamaConfig) -> Result<LlamaWeights, ModelError> {
        let token_embd = get(f, "token_embd.weight", c.dim, c.vocab_size)?;
        let output_norm = get(f, "output_norm.weight", c.dim, 1)?;
        let (output, tied_output) = if f.tensor("output.weight").is_some() {
            (get(f, "output.weight", c.dim, c.vocab_size)?, false)
        } else {
            (token_embd.clone(), true)
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: get(f, &n("attn_norm"), c.dim, 1)?,
                wq: get(f, &n("attn_q"), c.dim, c.q_dim())?,
                wk: get(f, &n("attn_k"), c.dim, c.kv_dim())?,
                wv: get(f, &n("attn_v"), c.dim, c.kv_dim())?,
                wo: get(f, &n("attn_output"), c.q_dim(), c.dim)?,
                ffn_norm: get(f, &n("ffn_norm"), c.dim, 1)?,
                w_gate: get(f, &n("ffn_gate"), c.dim, c.ffn_dim)?,
                w_up: get(f, &n("ffn_up"), c.dim, c.ffn_dim)?,
                w_down: get(f, &n("ffn_down"), c.ffn_dim, c.dim)?,
            });
        }
        Ok(LlamaWeights {
            token_embd,
            output_norm,
            output,
            tied_output,
            layers,
        })
    }
}
