//! GGUF model files: a validating, memory-mapped reader, a writer (for test models), and the
//! ggml block types. Everything read from a file is checked against the file's length before
//! it is used, so a hostile or truncated file yields a `GgufError`, never a panic.

mod reader;
mod types;
mod writer;

pub use reader::{GgufFile, TensorInfo};
pub use types::{
    GgmlType, RowSizeError, dequantize_row, f16_to_f32, f32_to_f16, quantize_row, read_f16,
};
pub use writer::{GgufWriter, WriterTensor};

/// Metadata value types (ids are GGUF's `gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// Smallest encoded size of one value of this type (used to bound array counts).
    pub(crate) fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// Why a GGUF file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read model file: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0}; this loader reads versions 2 and 3")]
    UnsupportedVersion(u32),
    #[error(
        "GGUF file truncated: {what} at byte {offset} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("GGUF {what} at byte {offset} is not valid UTF-8")]
    BadUtf8 { what: String, offset: u64 },
    #[error(
        "GGUF {what} count {count} at byte {offset} is larger than the rest of the file could hold"
    )]
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
    },
    #[error("GGUF metadata '{key}' has unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },
    #[error("GGUF metadata '{key}' nests arrays deeper than {max} levels")]
    TooDeep { key: String, max: usize },
    #[error("GGUF metadata key '{0}' appears twice")]
    DuplicateKey(String),
    #[error("GGUF tensor '{0}' appears twice")]
    DuplicateTensor(String),
    #[error("general.alignment {0} must be a power of two between 1 and 65536")]
    BadAlignment(u64),
    #[error("tensor '{name}' has {n_dims} dimensions; GGUF tensors have 1 to 4")]
    BadDimCount { name: String, n_dims: u32 },
    #[error(
        "tensor '{name}' has shape {dims:?}: a dimension is zero or the element count overflows"
    )]
    BadShape { name: String, dims: Vec<u64> },
    #[error(
        "tensor '{name}' has type id {id}, which this loader cannot compute with (supported: F32, F16, Q4_0, Q4_1, Q8_0)"
    )]
    UnsupportedTensorType { name: String, id: u32 },
    #[error(
        "tensor '{name}' of type {ty} has rows of {ne0} values, not a multiple of the block size {block}"
    )]
    NotBlockMultiple {
        name: String,
        ty: GgmlType,
        ne0: u64,
        block: usize,
    },
    #[error(
        "tensor '{name}' data offset {offset} is not a multiple of the file alignment {alignment}"
    )]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor '{name}' data [{start}, {end}) lies outside the {len}-byte data section")]
    OutOfRange {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensors '{first}' and '{second}' overlap in the data section")]
    Overlap { first: String, second: String },
    #[error("GGUF metadata '{key}': {problem}")]
    Metadata { key: String, problem: String },
    #[error("GGUF file has no tensor named '{0}'")]
    MissingTensor(String),
}

#[cfg(test)]
mod tests;
