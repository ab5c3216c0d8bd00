//! The llama architecture (SmolLM2, TinyLlama and other Llama-style models):
//! pre-norm blocks of grouped-query attention with adjacent-pair RoPE and a
//! SwiGLU feed-forward network.

use super::graph::{AttentionShape, GraphBuilder};
use super::{Hyperparameters, TensorNames};
use crate::Error;
use crate::compute::{Op, RopeStyle};
use crate::metadata::{Metadata, keys};

pub fn hyperparameters(meta: &Metadata) -> Result<Hyperparameters, Error> {
    let n_embd = meta.arch_u32(keys::EMBEDDING_LENGTH)?;
    let n_head = meta.arch_u32(keys::HEAD_COUNT)?;
    if n_head == 0 || n_embd % n_head != 0 {
        return Err(Error::UnsupportedModel(format!(
            "{n_head} heads do not divide {n_embd}"
        )));
    }
    let head_dim = meta.arch_u32_or(keys::KEY_LENGTH, n_embd / n_head)?;
    Ok(Hyperparameters {
        n_layer: meta.arch_u32(keys::BLOCK_COUNT)?,
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

pub fn graph(hp: &Hyperparameters, names: &TensorNames) -> Vec<Op> {
    let shape = AttentionShape {
        n_head: hp.n_head,
        n_kv_head: hp.n_kv_head,
        head_dim: hp.head_dim,
        rotary_dims: hp.rotary_dims,
        rope_base: hp.rope_base,
        rope_style: RopeStyle::Normal,
        window: 0,
    };
    let mut g = GraphBuilder::default();
    let mut x = g.embed(TensorNames::TOKEN_EMBEDDING);
    for layer in 0..hp.n_layer {
        let prefix = format!("blk.{layer}");
        let h = g.rms_norm(x, &format!("{prefix}.attn_norm.weight"), hp.rms_eps);
        let attended = g.self_attention(h, &prefix, layer, &shape);
        x = g.add(x, attended);
        let h = g.rms_norm(x, &format!("{prefix}.ffn_norm.weight"), hp.rms_eps);
        let ffn = g.swiglu_ffn(h, &prefix);
        x = g.add(x, ffn);
    }
    let last = g.last_row(x);
    let normed = g.rms_norm(last, TensorNames::OUTPUT_NORM, hp.rms_eps);
    g.matmul(normed, names.output());
    g.finish()
}
