//! A model file from anywhere: any bytes are a GGUF error or a file whose metadata and tensor
//! table can be walked and whose tensor data slices stay inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgraph_inference::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        for (key, value) in file.metadata() {
            let _ = (key.len(), value.value_type(), value.as_str(), value.as_u64());
        }
        for t in file.tensors() {
            let _ = (t.n_elements(), file.tensor_data(t).len());
        }
    }
});
