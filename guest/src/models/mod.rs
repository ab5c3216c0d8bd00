//! Architectures: each file turns GGUF metadata into a forward-step graph over
//! the file's tensors, from the shared blocks in `graph.rs`.

mod gemma3;
mod graph;
mod llama;
mod qwen2;

use crate::Error;
use crate::compute::{Op, RopeStyle, TensorInfo};
use crate::metadata::{Metadata, keys};
use graph::AttentionShape;

/// The hyper-parameters every supported architecture reads.
#[derive(Clone, Debug)]
pub struct Hyperparameters {
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    pub rotary_dims: u32,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub trained_context: u32,
}

impl Hyperparameters {
    pub fn read(meta: &Metadata) -> Result<Self, Error> {
        let n_embd = meta.arch_u32(keys::EMBEDDING_LENGTH)?;
        let n_head = meta.arch_u32(keys::HEAD_COUNT)?;
        if n_head == 0 {
            return Err(Error::UnsupportedModel("the model has no attention heads".into()));
        }
        // The head size is explicit (gemma3: 4 heads of 256 over 640) or n_embd / n_head.
        let head_dim = meta.arch_u32_or(keys::KEY_LENGTH, n_embd / n_head)?;
        if head_dim == 0 {
            return Err(Error::UnsupportedModel(format!("{n_head} heads do not fit {n_embd}")));
        }
        let n_layer = meta.arch_u32(keys::BLOCK_COUNT)?;
        if n_layer == 0 {
            return Err(Error::UnsupportedModel("the model has no layers".into()));
        }
        Ok(Self {
            n_layer,
            n_embd,
            n_head,
            n_kv_head: meta.arch_u32_or(keys::HEAD_COUNT_KV, n_head)?,
            head_dim,
            rotary_dims: meta.arch_u32_or(keys::ROPE_DIMS, head_dim)?,
            rope_base: meta.arch_f32_or(keys::ROPE_BASE, 10_000.0)?,
            rms_eps: meta.arch_f32(keys::RMS_EPS)?,
            trained_context: meta.arch_u32(keys::CONTEXT_LENGTH)?,
        })
    }

    /// Values per position in one layer of the KV cache.
    pub fn kv_width(&self) -> u32 {
        self.n_kv_head * self.head_dim
    }

    /// The attention shape of a layer attending to the whole context.
    pub fn attention(&self, rope_style: RopeStyle) -> AttentionShape {
        AttentionShape {
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.head_dim,
            rotary_dims: self.rotary_dims,
            rope_base: self.rope_base,
            rope_style,
            window: 0,
        }
    }
}

/// Names of the tensors that are not per layer.
pub struct TensorNames {
    tied_output: bool,
}

impl TensorNames {
    pub const TOKEN_EMBEDDING: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";

    fn new(tensors: &[TensorInfo]) -> Self {
        Self {
            tied_output: !tensors.iter().any(|t| t.name == Self::OUTPUT),
        }
    }

    /// The output projection; models with tied embeddings reuse the embedding.
    pub fn output(&self) -> &'static str {
        if self.tied_output {
            Self::TOKEN_EMBEDDING
        } else {
            Self::OUTPUT
        }
    }
}

/// An architecture's hyper-parameters and its step graph.
pub struct Architecture {
    pub hyperparameters: Hyperparameters,
    pub graph: Vec<Op>,
}

pub fn load(meta: &Metadata, tensors: &[TensorInfo]) -> Result<Architecture, Error> {
    let names = TensorNames::new(tensors);
    let hyperparameters = Hyperparameters::read(meta)?;
    let graph = match meta.architecture() {
        "llama" => llama::graph(&hyperparameters, &names),
        "qwen2" => qwen2::graph(&hyperparameters, &names),
        "gemma3" => gemma3::graph(&hyperparameters, &names, &gemma3::Layers::read(meta, &hyperparameters)?),
        other => {
            return Err(Error::UnsupportedModel(format!(
                "architecture `{other}` is not supported (supported: llama, qwen2, gemma3)"
            )));
        }
    };
    Ok(Architecture { hyperparameters, graph })
}
