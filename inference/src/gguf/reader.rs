//! The GGUF reader: parses header, metadata and tensor table with checked arithmetic, then
//! hands out tensor bytes as slices of the (memory-mapped) file.

use std::collections::HashMap;
use std::path::Path;

use super::{GgmlType, GgufError, Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DEPTH: usize = 3;
const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor of the file: its validated shape, type and place in the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), `dims[1]` the row count.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (dims[0]) and number of rows (product of the other dims).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0] as usize;
        (self.n_elements() as usize / cols, cols)
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A parsed GGUF file. Tensor data stays in the file's bytes; nothing is copied.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and validates a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the model file
        // not being truncated by another process while it is in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mapped(map))
    }

    /// Validates a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let buf: &[u8] = match &storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        };
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each KV needs >= 8 (key len) + 4 (type) + 1 bytes; each tensor info >= 24 bytes.
        c.check_count(n_kv, 13, "metadata entry")?;
        let mut metadata = Vec::new();
        let mut index = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty_at = c.pos;
            let ty_id = c.u32("metadata value type")?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| {
                let _ = ty_at;
                GgufError::UnknownValueType {
                    key: key.clone(),
                    id: ty_id,
                }
            })?;
            let value = c.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::Metadata {
                    key: "general.alignment".into(),
                    problem: format!("expected an unsigned integer, found {:?}", v.value_type()),
                })?;
                if a == 0 || !a.is_power_of_two() || a > 65536 {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        c.check_count(n_tensors, 24, "tensor")?;
        let mut raw = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::BadDimCount { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dimension")?);
            }
            let ty_id = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, ty_id, offset));
        }
        let data_start = (c.pos as u64)
            .checked_next_multiple_of(alignment)
            .filter(|&s| s <= buf.len() as u64)
            .ok_or(GgufError::Truncated {
                what: "padding before the tensor data".into(),
                offset: c.pos as u64,
                needed: alignment,
                available: (buf.len() - c.pos) as u64,
            })?;
        let data_len = buf.len() as u64 - data_start;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::new();
        for (name, dims, ty_id, offset) in raw {
            let n = dims
                .iter()
                .try_fold(
                    1u64,
                    |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
                )
                .filter(|&n| n <= (1u64 << 48))
                .ok_or_else(|| GgufError::BadShape {
                    name: name.clone(),
                    dims: dims.clone(),
                })?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnsupportedTensorType {
                name: name.clone(),
                id: ty_id,
            })?;
            let block = ty.block_size();
            if dims[0] % block as u64 != 0 {
                return Err(GgufError::NotBlockMultiple {
                    name,
                    ty,
                    ne0: dims[0],
                    block,
                });
            }
            if offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    name,
                    offset,
                    alignment,
                });
            }
            // n <= 2^48 and type_size <= 34, so this cannot overflow.
            let size = n / block as u64 * ty.type_size() as u64;
            let end = offset.checked_add(size).filter(|&e| e <= data_len);
            let Some(_) = end else {
                return Err(GgufError::OutOfRange {
                    name,
                    start: offset,
                    end: offset.saturating_add(size),
                    len: data_len,
                });
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.size > b.offset {
                return Err(GgufError::Overlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
        Ok(GgufFile {
            storage,
            version,
            alignment,
            metadata,
            index,
            tensors,
            tensor_index,
            data_start: data_start as usize,
        })
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (its range was validated when the file was parsed).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.bytes()[start..start + t.size as usize]
    }

    /// Total size of the file in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Typed metadata getters with errors naming the key.
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: "missing; the file is not a complete model of a supported architecture".into(),
        })
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: format!("expected a non-negative integer, found {v:?}"),
        })
    }

    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: format!("expected a number, found {v:?}"),
        })
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: format!("expected a string, found {:?}", v.value_type()),
        })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.into(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count whose minimal encoding could not fit in the rest of the file, so a
    /// hostile count never drives an allocation or a long loop.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                what: what.into(),
                count,
                offset: self.pos as u64,
            }),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(&format!("{what} length"))?;
        let at = self.pos as u64;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::BadUtf8 {
                what: what.into(),
                offset: at,
            })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("value of '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what())?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what())?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => {
                let b = self.array::<1>(&what())?[0];
                if b > 1 {
                    return Err(GgufError::Metadata {
                        key: key.into(),
                        problem: format!("boolean byte is {b}, expected 0 or 1"),
                    });
                }
                Value::Bool(b == 1)
            }
            ValueType::String => Value::String(self.string(&format!("string value of '{key}'"))?),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(GgufError::TooDeep {
                        key: key.into(),
                        max: MAX_DEPTH,
                    });
                }
                let id = self.u32(&format!("array element type of '{key}'"))?;
                let elem = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.into(),
                    id,
                })?;
                let count = self.u64(&format!("array length of '{key}'"))?;
                self.check_count(count, elem.min_size(), &format!("array '{key}' element"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}
