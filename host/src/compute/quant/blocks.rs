//! ggml's block layouts (`ggml-common.h`) as `#[repr(C)]` structs. Every
//! field is bytes (an f16 is `Half`), so a block has alignment 1 and any bit
//! pattern is a valid block: a weight row of the mapped file reads as a slice
//! of blocks wherever it starts (`blocks`).

use half::f16;

use crate::compute::gguf::GgmlType;

/// An f16 as it is stored: two little-endian bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
pub struct Half(pub [u8; 2]);

impl Half {
    pub fn get(self) -> f32 {
        f16::from_le_bytes(self.0).to_f32()
    }
}

/// Q4_0: `d`, then 32 4-bit quants (value `j` the low nibble of `qs[j]`,
/// value `j + 16` its high nibble), each `d * (q - 8)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: Half,
    pub qs: [u8; 16],
}

/// Q4_1: Q4_0's quants without the offset, `d * q + m`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: Half,
    pub m: Half,
    pub qs: [u8; 16],
}

/// Q5_0: Q4_0's nibbles with a fifth bit per value in `qh` (bit `j` for value
/// `j`), each `d * (q - 16)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: Half,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_1: Q5_0's quants without the offset, `d * q + m`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: Half,
    pub m: Half,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q8_0: `d * q` for 32 signed bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: Half,
    pub qs: [i8; 32],
}

/// Q2_K: per group of 16 a 4-bit scale (low nibble) and min (high nibble);
/// 2-bit quants; the super-block's `d` and `dmin` last.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: Half,
    pub dmin: Half,
}

/// Q3_K: the high bit of each quant in `hmask`, the low two in `qs`, 16
/// 6-bit scales packed in 12 bytes, `d` last.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: Half,
}

/// Q4_K: `d`, `dmin`, 8 6-bit scales and mins packed in 12 bytes, 4-bit quants.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: Half,
    pub dmin: Half,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q5_K: Q4_K with a fifth bit per value in `qh`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: Half,
    pub dmin: Half,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: the low four bits of each quant in `ql`, the high two in `qh`, 16
/// signed 8-bit group scales, `d` last.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: Half,
}

/// The 5-bit quants of a Q5 block: the nibbles with bit `j` of `qh` above value `j`.
pub fn fives(qh: [u8; 4], qs: &[u8; 16]) -> [u32; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u32; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = (b & 0x0F) as u32 | (((qh >> j) << 4) & 0x10);
        q[j + 16] = (b >> 4) as u32 | ((qh >> (j + 12)) & 0x10);
    }
    q
}

/// A block layout of a weight type.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs of byte fields only (alignment 1,
/// no padding, every bit pattern valid) and `TYPE.block_bytes()` long.
pub unsafe trait Block: Copy {
    const TYPE: GgmlType;
}

macro_rules! layouts {
    ($($block:ident = $ty:ident),* $(,)?) => {$(
        // SAFETY: byte fields only; the size is pinned below.
        unsafe impl Block for $block {
            const TYPE: GgmlType = GgmlType::$ty;
        }
        const _: () = assert!(size_of::<$block>() == GgmlType::$ty.block_bytes());
        const _: () = assert!(align_of::<$block>() == 1);
    )*};
}

layouts!(
    BlockQ4_0 = Q4_0,
    BlockQ4_1 = Q4_1,
    BlockQ5_0 = Q5_0,
    BlockQ5_1 = Q5_1,
    BlockQ8_0 = Q8_0,
    BlockQ2K = Q2K,
    BlockQ3K = Q3K,
    BlockQ4K = Q4K,
    BlockQ5K = Q5K,
    BlockQ6K = Q6K,
);

/// The whole blocks of `row`. Panics unless `row` is whole blocks (every row
/// of a tensor the graph compiler accepted is).
pub fn blocks<B: Block>(row: &[u8]) -> &[B] {
    let size = size_of::<B>();
    assert!(
        row.len().is_multiple_of(size),
        "a {} row of {} bytes",
        B::TYPE,
        row.len()
    );
    // SAFETY: `Block` types have alignment 1 and accept any bytes; the
    // slice covers exactly `row`.
    unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<B>(), row.len() / size) }
}

/// One block of `bytes` (exactly its size).
pub fn block<B: Block>(bytes: &[u8]) -> &B {
    let all = blocks::<B>(bytes);
    assert_eq!(all.len(), 1, "one {} block", B::TYPE);
    &all[0]
}
