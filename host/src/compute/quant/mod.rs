//! Quantization formats, shared by every backend: ggml's block layouts
//! (`blocks`), their reference dequantization (`reference`, `kquants`) and
//! the q8 blocks activations are quantized to for integer dot products
//! (`q8`). Nothing here depends on a backend; only `gguf`'s type ids.

pub mod blocks;
pub mod kquants;
pub mod q8;
pub mod reference;
#[cfg(test)]
pub mod testing;

use crate::compute::gguf::GgmlType;

/// Values per block of the 32-value types (Q4_0 to Q8_0).
pub const QK: usize = 32;
/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// Groups of 16 values per super-block.
pub const GROUPS: usize = QK_K / 16;

/// Every type realm computes with: those `VecDotType::of` knows.
pub const TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Whether `ty` is a K-quant (super-blocks of 256, Q8_K activations).
pub fn is_k_quant(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Whether `ty` is a 32-value block type with a reference here.
pub fn is_block32(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    )
}

/// How a dot product with weights of `ty` takes its activations (ggml's
/// `vec_dot_type`): the same on every backend, so their results agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VecDotType {
    F32,
    F16,
    Bf16,
    /// 32-value q8 blocks (`q8::BlockQ8`).
    Q8,
    /// 256-value q8 blocks (`q8::BlockQ8K`).
    Q8K,
}

impl VecDotType {
    /// None for a type with no reference here.
    pub fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::F32 => Self::F32,
            GgmlType::F16 => Self::F16,
            GgmlType::Bf16 => Self::Bf16,
            _ if is_k_quant(ty) => Self::Q8K,
            _ if is_block32(ty) => Self::Q8,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_are_those_with_a_vec_dot_type() {
        for id in 0..64 {
            if let Some(ty) = GgmlType::from_id(id) {
                assert_eq!(TYPES.contains(&ty), VecDotType::of(ty).is_some(), "{ty}");
            }
        }
    }
}
