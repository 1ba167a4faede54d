//! The GPU kernel variants with their fusions turned off (`SANDGRAPH_WGPU_NORM=separate`,
//! `SANDGRAPH_WGPU_ROPE=separate`, `SANDGRAPH_WGPU_SWIGLU=separate`): the configuration
//! `scripts/gpu-check.sh` measures as the same-run baseline must still compute the model. In a
//! binary of its own because it sets the environment the kernels read when a session opens.
//! Needs a wgpu adapter (lavapipe on CI).

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::backend::wgpu::{KernelVariant, WgpuBackend, WgpuOptions};
use sandgraph_inference::backend::{Backend, SeqChunk};
use sandgraph_inference::gguf::GgmlType;
use sandgraph_inference::testutil::{TestRng, TinySpec, tiny_model};

#[test]
fn gpu_kernels_without_fusions_match_cpu() {
    // SAFETY: the only test in this binary; it sets the variables before any thread reads them.
    unsafe {
        std::env::set_var("SANDGRAPH_WGPU_NORM", "separate");
        std::env::set_var("SANDGRAPH_WGPU_ROPE", "separate");
        std::env::set_var("SANDGRAPH_WGPU_SWIGLU", "separate");
    }
    let model = tiny_model(&TinySpec::new(30, GgmlType::Q4_1)).unwrap();
    let vocab = model.config.vocab_size;
    let opts = WgpuOptions {
        variant: Some(KernelVariant::TiledShared),
        ..WgpuOptions::default()
    };
    let mut g = WgpuBackend::new(&model, 2, 32, &opts).unwrap();
    let mut c = CpuBackend::new(&model, 2, 32).unwrap();
    let mut rng = TestRng::new(5);
    let prompt: Vec<u32> = (0..7).map(|_| rng.below(vocab) as u32).collect();
    let mut batch = vec![prompt.clone()];
    let mut pos = 0;
    for round in 0..3 {
        let chunk = SeqChunk {
            slot: 0,
            start_pos: pos,
            tokens: &batch[round],
        };
        g.forward(&[chunk]).unwrap();
        c.forward(&[chunk]).unwrap();
        let (gl, cl) = (g.logits().unwrap(), c.logits().unwrap());
        let spread = cl[0].iter().cloned().fold(f32::MIN, f32::max)
            - cl[0].iter().cloned().fold(f32::MAX, f32::min);
        let diff = gl[0]
            .iter()
            .zip(&cl[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 0.03 * spread,
            "round {round}: max diff {diff}, spread {spread}"
        );
        pos += batch[round].len();
        batch.push(vec![c.argmax().unwrap()[0]]);
    }
}
