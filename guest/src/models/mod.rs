//! Architectures: each file turns GGUF metadata into hyper-parameters and a
//! forward-step graph over the file's tensors.

mod graph;
mod llama;

use crate::Error;
use crate::compute::{Op, TensorInfo};
use crate::metadata::Metadata;

/// The hyper-parameters every supported architecture needs.
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
    /// Values per position in one layer of the KV cache.
    pub fn kv_width(&self) -> u32 {
        self.n_kv_head * self.head_dim
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
    match meta.architecture() {
        "llama" => {
            let hyperparameters = llama::hyperparameters(meta)?;
            let graph = llama::graph(&hyperparameters, &names);
            Ok(Architecture { hyperparameters, graph })
        }
        other => Err(Error::UnsupportedModel(format!(
            "architecture `{other}` is not supported (supported: llama)"
        ))),
    }
}
