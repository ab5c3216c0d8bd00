//! Compiles a step graph (`ops::Op`s) against one model file: tensor
//! names are resolved, shapes and types checked, and each value's last use is
//! recorded so the executor frees activations early. Done once per realm.

use std::sync::Arc;

use super::ComputeError;
use super::gguf::TensorEntry;
use super::ops::{AttentionOp, Op, RopeStyle};
use super::quant::{self, reference};
use super::weights::ModelFile;

/// A tensor of the model file, by index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorId(pub usize);

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Embed {
        table: TensorId,
    },
    RmsNorm {
        input: usize,
        weight: Option<TensorId>,
        eps: f32,
        group: usize,
    },
    Matmul {
        input: usize,
        weight: TensorId,
    },
    AddTensor {
        input: usize,
        tensor: TensorId,
    },
    Add(usize, usize),
    Mul(usize, usize),
    Scale(usize, f32),
    Rope {
        input: usize,
        head_dim: usize,
        rotary_dims: usize,
        base: f32,
        freq_scale: f32,
        style: RopeStyle,
    },
    Attention(Attention),
    Swiglu(usize, usize),
    Geglu(usize, usize),
    LastRow(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub window: usize,
}

/// The shape of a value: its row length, and whether it has one row per step
/// token or a single row.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shape {
    cols: usize,
    single_row: bool,
}

pub struct CompiledGraph {
    pub model: Arc<ModelFile>,
    pub nodes: Vec<Node>,
    /// For each value, the index of the last node that reads it.
    pub last_use: Vec<usize>,
    /// For each value, whether it holds one row per sequence (after `last-row`)
    /// rather than one per step token.
    pub single_row: Vec<bool>,
    /// Equal for graphs of equal ops on the same model file: the key under which
    /// the scheduler batches steps (`same_program` confirms it).
    pub fingerprint: u64,
    /// Length of the output row (the vocabulary, for a language model).
    pub output_len: usize,
    /// KV cache layers and width the graph needs.
    pub kv_layers: usize,
    pub kv_width: usize,
    /// Rows of the embedding table: the valid token ids.
    pub vocab: usize,
}

impl CompiledGraph {
    pub fn tensor(&self, id: TensorId) -> &TensorEntry {
        &self.model.gguf.tensors[id.0]
    }

    /// A 1-D tensor (a norm weight, a bias) as f32.
    pub fn vector(&self, id: TensorId) -> Vec<f32> {
        let t = self.tensor(id);
        let mut out = vec![0.0; t.row_len()];
        reference::dequantize_row(t.ggml_type, self.model.data(t), &mut out);
        out
    }

    /// The rows of embedding table `table` for `tokens`, as f32.
    pub fn token_rows(&self, table: TensorId, tokens: &[u32]) -> Vec<f32> {
        let t = self.tensor(table);
        let cols = t.row_len();
        let row_bytes = t.ggml_type.row_bytes(cols).unwrap_or(0);
        let all = self.model.data(t);
        let mut out = vec![0.0; tokens.len() * cols];
        for (row, &token) in out.chunks_exact_mut(cols).zip(tokens) {
            let at = token as usize * row_bytes;
            reference::dequantize_row(t.ggml_type, &all[at..at + row_bytes], row);
        }
        out
    }

    /// Whether steps of `self` and `other` can run as one batch: the same ops
    /// on the same mapped file.
    pub fn same_program(&self, other: &CompiledGraph) -> bool {
        Arc::ptr_eq(&self.model, &other.model) && self.nodes == other.nodes
    }

    pub fn compile(model: Arc<ModelFile>, ops: &[Op]) -> Result<Self, ComputeError> {
        let mut c = Compiler {
            model: &model,
            shapes: Vec::new(),
            nodes: Vec::new(),
            kv_layers: 0,
            kv_width: 0,
            vocab: 0,
        };
        for (i, op) in ops.iter().enumerate() {
            let (node, shape) = c
                .node(i, op)
                .map_err(|e| ComputeError::InvalidGraph(format!("op {i}: {e}")))?;
            c.nodes.push(node);
            c.shapes.push(shape);
        }
        let output = c
            .shapes
            .last()
            .ok_or_else(|| ComputeError::InvalidGraph("the graph is empty".into()))?;
        if !output.single_row {
            return Err(ComputeError::InvalidGraph(
                "the last op must produce a single row (use last-row)".into(),
            ));
        }
        if c.vocab == 0 {
            return Err(ComputeError::InvalidGraph("the graph has no embed op".into()));
        }
        let output_len = output.cols;
        let mut last_use = vec![0; c.nodes.len()];
        for (i, node) in c.nodes.iter().enumerate() {
            for input in inputs(node) {
                last_use[input] = i;
            }
        }
        let single_row = c.shapes.iter().map(|s| s.single_row).collect();
        let (kv_layers, kv_width, vocab, nodes) = (c.kv_layers, c.kv_width, c.vocab, c.nodes);
        let fingerprint = fingerprint(&model, &nodes);
        Ok(Self {
            model,
            nodes,
            last_use,
            single_row,
            fingerprint,
            output_len,
            kv_layers,
            kv_width,
            vocab,
        })
    }
}

/// A hash of the file's identity and the ops (their `Debug` form, since f32
/// fields have no `Hash`); computed once per compile.
fn fingerprint(model: &Arc<ModelFile>, nodes: &[Node]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (Arc::as_ptr(model) as usize).hash(&mut h);
    format!("{nodes:?}").hash(&mut h);
    h.finish()
}

/// The values a node reads.
pub fn inputs(node: &Node) -> Vec<usize> {
    match node {
        Node::Embed { .. } => vec![],
        Node::RmsNorm { input, .. }
        | Node::Matmul { input, .. }
        | Node::AddTensor { input, .. }
        | Node::Scale(input, _)
        | Node::Rope { input, .. }
        | Node::LastRow(input) => vec![*input],
        Node::Add(a, b) | Node::Mul(a, b) | Node::Swiglu(a, b) | Node::Geglu(a, b) => vec![*a, *b],
        Node::Attention(a) => vec![a.q, a.k, a.v],
    }
}

struct Compiler<'m> {
    model: &'m ModelFile,
    shapes: Vec<Shape>,
    nodes: Vec<Node>,
    kv_layers: usize,
    kv_width: usize,
    vocab: usize,
}

impl Compiler<'_> {
    fn value(&self, at: usize, id: u32) -> Result<(usize, Shape), String> {
        let id = id as usize;
        if id >= at {
            return Err(format!("value {id} is not produced before op {at}"));
        }
        Ok((id, self.shapes[id]))
    }

    fn tensor(&self, name: &str) -> Result<(TensorId, &TensorEntry), String> {
        let index = self
            .model
            .gguf
            .tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| format!("tensor `{name}` is not in the model file"))?;
        let tensor = &self.model.gguf.tensors[index];
        if quant::VecDotType::of(tensor.ggml_type).is_none() {
            return Err(format!(
                "tensor `{name}` has type {}, which realm does not compute with",
                tensor.ggml_type
            ));
        }
        Ok((TensorId(index), tensor))
    }

    fn vector(&self, name: &str, len: usize) -> Result<TensorId, String> {
        let (id, t) = self.tensor(name)?;
        if t.dims.len() != 1 || t.row_len() != len {
            return Err(format!("tensor `{name}` has dims {:?}, expected [{len}]", t.dims));
        }
        Ok(id)
    }

    fn node(&mut self, at: usize, op: &Op) -> Result<(Node, Shape), String> {
        let same = |a: Shape, b: Shape| -> Result<Shape, String> {
            if a != b {
                return Err(format!("operand shapes differ: {a:?} and {b:?}"));
            }
            Ok(a)
        };
        Ok(match op {
            Op::Embed(name) => {
                let (id, t) = self.tensor(name)?;
                if t.dims.len() != 2 {
                    return Err(format!("embedding `{name}` must be 2-D"));
                }
                let (vocab, cols) = (t.rows(), t.row_len());
                self.vocab = vocab;
                (
                    Node::Embed { table: id },
                    Shape {
                        cols,
                        single_row: false,
                    },
                )
            }
            Op::RmsNorm(n) => {
                let (input, shape) = self.value(at, n.input)?;
                let group = if n.group == 0 { shape.cols } else { n.group as usize };
                if shape.cols % group != 0 {
                    return Err(format!("group {group} does not divide rows of {}", shape.cols));
                }
                let weight = n.weight.as_deref().map(|w| self.vector(w, group)).transpose()?;
                (
                    Node::RmsNorm {
                        input,
                        weight,
                        eps: n.eps,
                        group,
                    },
                    shape,
                )
            }
            Op::Matmul(m) => {
                let (input, shape) = self.value(at, m.input)?;
                let (weight, t) = self.tensor(&m.weight)?;
                if t.dims.len() != 2 || t.row_len() != shape.cols {
                    return Err(format!(
                        "`{}` has dims {:?}; the input rows have {}",
                        m.weight, t.dims, shape.cols
                    ));
                }
                (
                    Node::Matmul { input, weight },
                    Shape {
                        cols: t.rows(),
                        ..shape
                    },
                )
            }
            Op::AddTensor((input, name)) => {
                let (input, shape) = self.value(at, *input)?;
                (
                    Node::AddTensor {
                        input,
                        tensor: self.vector(name, shape.cols)?,
                    },
                    shape,
                )
            }
            Op::Add((a, b)) | Op::Mul((a, b)) | Op::Swiglu((a, b)) | Op::Geglu((a, b)) => {
                let ((a, sa), (b, sb)) = (self.value(at, *a)?, self.value(at, *b)?);
                let node = match op {
                    Op::Add(_) => Node::Add(a, b),
                    Op::Mul(_) => Node::Mul(a, b),
                    Op::Swiglu(_) => Node::Swiglu(a, b),
                    _ => Node::Geglu(a, b),
                };
                (node, same(sa, sb)?)
            }
            Op::Scale((input, factor)) => {
                let (input, shape) = self.value(at, *input)?;
                (Node::Scale(input, *factor), shape)
            }
            Op::Rope(r) => {
                let (input, shape) = self.value(at, r.input)?;
                let (head_dim, rotary_dims) = (r.head_dim as usize, r.rotary_dims as usize);
                if head_dim == 0 || shape.cols % head_dim != 0 || rotary_dims > head_dim || rotary_dims % 2 != 0 {
                    return Err(format!(
                        "rope: head dim {head_dim} / rotary dims {rotary_dims} do not fit rows of {}",
                        shape.cols
                    ));
                }
                let node = Node::Rope {
                    input,
                    head_dim,
                    rotary_dims,
                    base: r.base,
                    freq_scale: r.freq_scale,
                    style: r.style,
                };
                (node, shape)
            }
            Op::Attention(a) => self.attention(at, a)?,
            Op::LastRow(input) => {
                let (input, shape) = self.value(at, *input)?;
                (
                    Node::LastRow(input),
                    Shape {
                        single_row: true,
                        ..shape
                    },
                )
            }
        })
    }

    fn attention(&mut self, at: usize, a: &AttentionOp) -> Result<(Node, Shape), String> {
        let ((q, sq), (k, sk), (v, sv)) = (self.value(at, a.q)?, self.value(at, a.k)?, self.value(at, a.v)?);
        let (n_head, n_kv_head, head_dim) = (a.n_head as usize, a.n_kv_head as usize, a.head_dim as usize);
        if n_head == 0 || n_kv_head == 0 || head_dim == 0 || n_head % n_kv_head != 0 {
            return Err(format!(
                "attention: {n_head} heads over {n_kv_head} kv heads of {head_dim}"
            ));
        }
        let kv_width = n_kv_head * head_dim;
        if sq.cols != n_head * head_dim
            || sk.cols != kv_width
            || sv.cols != kv_width
            || sq.single_row
            || sk.single_row
            || sv.single_row
        {
            return Err(format!(
                "attention: q/k/v shapes {sq:?} {sk:?} {sv:?} do not fit {n_head}x{head_dim} / {kv_width}"
            ));
        }
        if self.kv_width != 0 && self.kv_width != kv_width {
            return Err("attention: every layer must use the same kv width".into());
        }
        self.kv_width = kv_width;
        self.kv_layers = self.kv_layers.max(a.layer as usize + 1);
        let node = Node::Attention(Attention {
            q,
            k,
            v,
            layer: a.layer as usize,
            n_head,
            n_kv_head,
            head_dim,
            scale: a.scale,
            window: a.window as usize,
        });
        Ok((node, sq))
    }
}
