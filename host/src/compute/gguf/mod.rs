//! A hardened GGUF v2/v3 reader over a memory map. It bounds every length, count
//! and offset by the file, so a malformed file is an error, never a panic or a
//! huge allocation. Tensor data stays in the mapping; nothing is copied.

mod types;
pub mod writer;

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

pub use types::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
const MAX_STRING: u64 = 64 << 20;
const MAX_ARRAY: u64 = 1 << 28;
const MAX_DIMS: u32 = 4;
const MAX_COUNT: u64 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("gguf: cannot open `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("gguf: not a GGUF file (bad magic)")]
    Magic,
    #[error("gguf: version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("gguf: truncated at byte {0}")]
    Truncated(usize),
    #[error("gguf: {0}")]
    Invalid(String),
}

/// A metadata value. Integer and float widths are widened; arrays keep one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Array(Array),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    Uints(Vec<u64>),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
    Texts(Vec<String>),
    /// Arrays of arrays are skipped; the count of elements is kept.
    Nested(u64),
}

#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorEntry {
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    pub fn rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
}

/// An open GGUF file: its header parsed, its data mapped.
pub struct GgufFile {
    map: Mmap,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorEntry>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and realm never writes model files; a
        // file truncated underneath a running process is outside what realm guards.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(map)
    }

    fn parse(map: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader { bytes: &map, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(GgufError::Magic);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv.min(1024) as usize);
        for _ in 0..n_kv {
            let key = r.string()?;
            let value_type = r.u32()?;
            metadata.push((key, r.value(value_type)?));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::Uint(a))) if *a > 0 && a.is_power_of_two() => *a,
            Some((_, v)) => {
                return Err(GgufError::Invalid(format!(
                    "`{ALIGNMENT_KEY}` {v:?} is not a power of two"
                )));
            }
        };
        let mut infos = Vec::with_capacity(n_tensors.min(4096) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let type_id = r.u32()?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| GgufError::Invalid(format!("tensor `{name}` has unknown type {type_id}")))?;
            let offset = r.u64()?;
            infos.push((name, dims, ggml_type, offset));
        }
        let data_start = r.pos.next_multiple_of(alignment as usize);
        let tensors = infos
            .into_iter()
            .map(|(name, dims, ggml_type, offset)| tensor_entry(name, dims, ggml_type, offset, data_start, map.len()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            map,
            version,
            metadata,
            tensors,
        })
    }

    /// The bytes of a tensor (in the mapping).
    pub fn data(&self, tensor: &TensorEntry) -> &[u8] {
        &self.map[tensor.offset..tensor.offset + tensor.size]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn mapped_bytes(&self) -> usize {
        self.map.len()
    }
}

fn tensor_entry(
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    data_start: usize,
    file_len: usize,
) -> Result<TensorEntry, GgufError> {
    let invalid = |why: &str| GgufError::Invalid(format!("tensor `{name}` {why}"));
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid("is too large"))?;
    if dims.contains(&0) {
        return Err(invalid("has a zero dimension"));
    }
    let row_bytes = ggml_type
        .row_bytes(dims[0] as usize)
        .ok_or_else(|| invalid("has a row length that is not whole blocks"))?;
    let size = (elements / dims[0])
        .checked_mul(row_bytes as u64)
        .ok_or_else(|| invalid("is too large"))?;
    let start = (data_start as u64)
        .checked_add(offset)
        .ok_or_else(|| invalid("has a bad offset"))?;
    let end = start.checked_add(size).ok_or_else(|| invalid("has a bad offset"))?;
    if end > file_len as u64 {
        return Err(invalid("extends past the end of the file"));
    }
    Ok(TensorEntry {
        name,
        dims,
        ggml_type,
        offset: start as usize,
        size: size as usize,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(GgufError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > MAX_COUNT {
            return Err(GgufError::Invalid(format!("{what} {n} is implausible")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::Invalid(format!("string of {len} bytes")));
        }
        Ok(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
    }

    fn scalar(&mut self, value_type: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            0 => Value::Uint(self.array::<1>()?[0] as u64),
            1 => Value::Int(self.array::<1>()?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.array()?) as u64),
            3 => Value::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => Value::Float(f32::from_le_bytes(self.array()?) as f64),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Text(self.string()?),
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::Invalid(format!("unknown value type {other}"))),
        })
    }

    fn value(&mut self, value_type: u32) -> Result<Value, GgufError> {
        if value_type != 9 {
            return self.scalar(value_type);
        }
        let element_type = self.u32()?;
        let len = self.u64()?;
        if len > MAX_ARRAY {
            return Err(GgufError::Invalid(format!("array of {len} elements")));
        }
        // Every element takes at least one byte: a length beyond the file is bogus.
        if len as usize > self.bytes.len() - self.pos {
            return Err(GgufError::Truncated(self.pos));
        }
        if element_type == 9 {
            for _ in 0..len {
                self.value_skipping(9)?;
            }
            return Ok(Value::Array(Array::Nested(len)));
        }
        let items = (0..len)
            .map(|_| self.scalar(element_type))
            .collect::<Result<Vec<_>, _>>()?;
        let array = match element_type {
            0 | 2 | 4 | 10 => Array::Uints(
                items
                    .into_iter()
                    .map(|v| if let Value::Uint(u) = v { u } else { 0 })
                    .collect(),
            ),
            1 | 3 | 5 | 11 => Array::Ints(
                items
                    .into_iter()
                    .map(|v| if let Value::Int(i) = v { i } else { 0 })
                    .collect(),
            ),
            6 | 12 => Array::Floats(
                items
                    .into_iter()
                    .map(|v| if let Value::Float(f) = v { f } else { 0.0 })
                    .collect(),
            ),
            7 => Array::Bools(items.into_iter().map(|v| matches!(v, Value::Bool(true))).collect()),
            _ => Array::Texts(
                items
                    .into_iter()
                    .map(|v| if let Value::Text(s) = v { s } else { String::new() })
                    .collect(),
            ),
        };
        Ok(Value::Array(array))
    }

    fn value_skipping(&mut self, value_type: u32) -> Result<(), GgufError> {
        if value_type == 9 {
            let element_type = self.u32()?;
            let len = self.u64()?;
            if len > MAX_ARRAY || len as usize > self.bytes.len() - self.pos {
                return Err(GgufError::Truncated(self.pos));
            }
            for _ in 0..len {
                self.value_skipping(element_type)?;
            }
            return Ok(());
        }
        self.scalar(value_type).map(drop)
    }
}

#[cfg(test)]
mod tests;
