//! A sequence's KV cache: f16 keys and values per layer and position, as
//! llama.cpp stores them. Charged to its tenant's KV-token budget for its full
//! capacity; the memory itself grows as positions are filled.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;

use super::budget::Charge;

pub struct KvCache {
    layers: u32,
    width: usize,
    capacity: u32,
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    /// Where a GPU backend keeps this cache's keys and values instead.
    device: Option<Box<dyn Any + Send + Sync>>,
    _charge: Charge,
}

impl KvCache {
    /// Bytes a cache of this shape may grow to.
    pub fn bytes_for(layers: u32, width: u32, capacity: u32) -> u64 {
        2 * layers as u64 * width as u64 * capacity as u64 * size_of::<f16>() as u64
    }

    pub fn new(layers: u32, width: u32, capacity: u32, charge: Charge) -> Self {
        let empty = || (0..layers).map(|_| Vec::new()).collect();
        Self {
            layers,
            width: width as usize,
            capacity,
            keys: empty(),
            values: empty(),
            device: None,
            _charge: charge,
        }
    }

    pub fn layers(&self) -> u32 {
        self.layers
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Keys and values of `layer`, grown to hold `positions` positions.
    pub fn layer_mut(&mut self, layer: usize, positions: usize) -> (&mut [f16], &mut [f16]) {
        let len = positions * self.width;
        for store in [&mut self.keys[layer], &mut self.values[layer]] {
            if store.len() < len {
                let before = store.capacity();
                store.resize(len, f16::ZERO);
                let grown = (store.capacity() - before) * size_of::<f16>();
                RESIDENT_BYTES.fetch_add(grown as u64, Ordering::Relaxed);
            }
        }
        (&mut self.keys[layer][..len], &mut self.values[layer][..len])
    }

    /// Keys and values of `layer` for the first `positions` positions, which
    /// `layer_mut` has filled.
    pub fn layer(&self, layer: usize, positions: usize) -> (&[f16], &[f16]) {
        let len = positions * self.width;
        (&self.keys[layer][..len], &self.values[layer][..len])
    }

    /// The backend's device-side storage for this cache, if it made one; it
    /// is freed with the cache.
    pub fn device_slot(&mut self) -> &mut Option<Box<dyn Any + Send + Sync>> {
        &mut self.device
    }

    /// Bytes actually allocated.
    pub fn resident_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * size_of::<f16>())
            .sum()
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        RESIDENT_BYTES.fetch_sub(self.resident_bytes() as u64, Ordering::Relaxed);
    }
}

/// Bytes held by every KV cache of the process.
static RESIDENT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes of KV cache memory in use, process-wide.
pub fn resident_bytes_in_use() -> u64 {
    RESIDENT_BYTES.load(Ordering::Relaxed)
}
