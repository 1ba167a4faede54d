//! The seed corpus of the `gguf_read` fuzz target (fuzz/seeds/gguf_read): a tiny but complete
//! Llama model in F32, Q8_0 and Q4_1, and a file with a metadata value of every type (nested
//! arrays included). Kept current by this test: each seed must be what the writer produces
//! today and must read back. `SANDGRAPH_WRITE_FUZZ_SEEDS=1` rewrites them.

use std::path::{Path, PathBuf};

use sandgraph_inference::gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/gguf_read")
}

fn tiny(ty: GgmlType) -> Vec<u8> {
    let mut spec = TinySpec::new(3, ty);
    spec.n_layers = 1;
    spec.dim = 32;
    spec.n_heads = 2;
    spec.n_kv_heads = 1;
    spec.ffn_dim = 32;
    spec.context_length = 16;
    spec.n_merges = 4;
    tiny_model_bytes(&spec)
}

fn every_value_type() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("u8", Value::U8(255))
        .meta("i8", Value::I8(-128))
        .meta("u16", Value::U16(65535))
        .meta("i16", Value::I16(-1))
        .meta("u32", Value::U32(7))
        .meta("i32", Value::I32(-7))
        .meta("f32", Value::F32(0.5))
        .meta("bool", Value::Bool(true))
        .meta("string", Value::String("llama".into()))
        .meta("u64", Value::U64(u64::MAX))
        .meta("i64", Value::I64(i64::MIN))
        .meta("f64", Value::F64(-2.25))
        .meta(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::String, vec![Value::String("a".into())]),
                    Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
                ],
            ),
        );
    w.to_bytes()
}

#[test]
fn every_gguf_read_seed_is_current_and_reads_back() {
    let dir = seeds_dir();
    let write = std::env::var_os("SANDGRAPH_WRITE_FUZZ_SEEDS").is_some();
    let seeds = [
        ("tiny_f32.gguf", tiny(GgmlType::F32)),
        ("tiny_q8_0.gguf", tiny(GgmlType::Q8_0)),
        ("tiny_q4_1.gguf", tiny(GgmlType::Q4_1)),
        ("every_value_type.gguf", every_value_type()),
    ];
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with SANDGRAPH_WRITE_FUZZ_SEEDS=1 to write the seeds",
                path.display()
            )
        });
        assert!(
            stored == bytes,
            "{} differs from what the writer produces today; rewrite the seeds with \
             SANDGRAPH_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
        let file = GgufFile::from_bytes(stored).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!file.metadata().is_empty(), "{name}");
    }
}
