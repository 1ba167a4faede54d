//! GGUF writer, used to build test models and hostile files. It writes exactly what it is
//! given (shapes are not checked against data), so tests can produce invalid files on purpose.

use super::{GgmlType, Value};

/// A tensor to write. `offset` overrides the computed data offset (for hostile-file tests).
#[derive(Clone, Debug)]
pub struct WriterTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty_id: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

impl WriterTensor {
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ty: GgmlType, data: Vec<u8>) -> Self {
        WriterTensor {
            name: name.into(),
            dims,
            ty_id: ty.id(),
            data,
            offset: None,
        }
    }
}

/// Builds a GGUF v2/v3 image in memory.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<WriterTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    pub fn tensor(&mut self, t: WriterTensor) -> &mut Self {
        self.tensors.push(t);
        self
    }

    /// Serializes header, metadata, tensor table, then the aligned tensor data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            write_value(&mut out, v);
        }
        let align = self.alignment.max(1) as usize;
        let mut offsets = Vec::new();
        let mut cursor = 0usize;
        for t in &self.tensors {
            offsets.push(cursor);
            cursor = (cursor + t.data.len()).next_multiple_of(align);
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty_id.to_le_bytes());
            out.extend_from_slice(&t.offset.unwrap_or(off as u64).to_le_bytes());
        }
        let data_start = out.len().next_multiple_of(align);
        out.resize(data_start, 0);
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out.resize(data_start + cursor, 0);
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_str(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                write_value(out, i);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
