//! Sandgraph inference: GGUF Llama-family models on wgpu compute shaders and on the CPU.
//! `gguf` reads files, `tokenizer` maps text to ids, `model` describes the network,
//! `backend` runs it, and `generate` turns logits into text.

pub mod backend;
pub mod constrain;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod sampling;
pub mod server;
pub mod testutil;
pub mod tokenizer;
