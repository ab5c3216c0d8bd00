//! A small GGUF v3 writer: tests write tiny models with it, and benchmarks write
//! full-size models of a real model's shape with random weights.

use std::io::{self, Write};

use super::{Array, GgmlType, Value};

const ALIGNMENT: usize = 32;

pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn metadata(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor whose `data` is already in `ggml_type`'s layout.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, data));
        self
    }

    /// Adds an F32 tensor.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            put_value(&mut header, value);
        }
        let mut offset = 0usize;
        for (name, dims, ggml_type, data) in &self.tensors {
            put_string(&mut header, name);
            header.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&ggml_type.id().to_le_bytes());
            header.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(ALIGNMENT);
        }
        header.resize(header.len().next_multiple_of(ALIGNMENT), 0);
        out.write_all(&header)?;
        for (_, _, _, data) in &self.tensors {
            out.write_all(data)?;
            out.write_all(&vec![0; data.len().next_multiple_of(ALIGNMENT) - data.len()])?;
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id of a value (the widest of each kind).
fn type_id(value: &Value) -> u32 {
    match value {
        Value::Uint(_) => 10,
        Value::Int(_) => 11,
        Value::Float(_) => 12,
        Value::Bool(_) => 7,
        Value::Text(_) => 8,
        Value::Array(_) => 9,
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(&type_id(value).to_le_bytes());
    put_payload(out, value);
}

fn put_payload(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Uint(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Int(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::Text(s) => put_string(out, s),
        Value::Array(array) => {
            let items: Vec<Value> = match array {
                Array::Uints(v) => v.iter().map(|&x| Value::Uint(x)).collect(),
                Array::Ints(v) => v.iter().map(|&x| Value::Int(x)).collect(),
                Array::Floats(v) => v.iter().map(|&x| Value::Float(x)).collect(),
                Array::Bools(v) => v.iter().map(|&x| Value::Bool(x)).collect(),
                Array::Texts(v) => v.iter().map(|x| Value::Text(x.clone())).collect(),
                Array::Nested(_) => Vec::new(),
            };
            let element_type = items.first().map_or(10, type_id);
            out.extend_from_slice(&element_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in &items {
                put_payload(out, item);
            }
        }
    }
}
