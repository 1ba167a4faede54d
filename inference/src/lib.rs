//! Sandgraph inference: GGUF Llama-family models on wgpu compute shaders and on the CPU.
