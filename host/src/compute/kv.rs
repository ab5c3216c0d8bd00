//! A sequence's KV cache: f16 keys and values per layer and position, as
//! llama.cpp stores them. Charged to its tenant's KV-token budget for its full
//! capacity; the memory itself grows as positions are filled.
//!
//! The host-side store is one anonymous mapping of the full capacity, made
//! with the cache: the kernel hands out zeroed pages as positions are written,
//! so an unfilled cache costs address space only, growing never copies, and
//! freeing returns the pages at once instead of leaving holes in the
//! allocator's heap between tenants. Where the kernel refuses the mapping
//! (strict overcommit), the allocation fails with a quota error for that
//! tenant alone. The CUDA backend makes its caches with device storage
//! instead (`KvStorage::Device`), and no host mapping at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use memmap2::MmapMut;

use super::ComputeError;
use super::budget::Charge;

pub struct KvCache {
    layers: u32,
    width: usize,
    capacity: u32,
    storage: KvStorage,
    /// The `Backend::name` of the backend that made it.
    backend: &'static str,
    /// Positions written so far, the most over all layers (host storage).
    filled: usize,
    /// The backend's count of host bytes its caches hold.
    meter: Arc<AtomicU64>,
    _charge: Charge,
}

/// Where a cache's keys and values live; the backend that runs its steps
/// made it (`Backend::new_kv`).
pub enum KvStorage {
    /// Per layer, its keys then its values, each `capacity x width` f16, in
    /// one anonymous mapping (the CPU backend).
    Host(MmapMut),
    /// Device stores, which a device backend makes at the first step and grows.
    Device(Option<DeviceKv>),
}

/// A cache's keys and values in a device backend's memory: the device
/// addresses of its first `positions` positions (`[position][layer][width]`
/// f16 each), and the allocation that holds them, which its backend frees
/// when it is dropped. Nothing reads the allocation back.
pub struct DeviceKv {
    pub keys: u64,
    pub values: u64,
    pub positions: usize,
    pub allocation: Box<dyn Send + Sync>,
}

impl KvCache {
    /// Bytes a cache of this shape may grow to.
    pub fn bytes_for(layers: u32, width: u32, capacity: u32) -> u64 {
        // Saturating: the sizes come from a guest, and a size past any
        // address space then fails to map instead of wrapping.
        [layers as u64, width as u64, capacity as u64, size_of::<f16>() as u64]
            .into_iter()
            .fold(2u64, u64::saturating_mul)
    }

    /// A cache in host memory, for the CPU backend; `meter` counts the bytes
    /// its positions take as they are written.
    pub fn host(
        layers: u32,
        width: u32,
        capacity: u32,
        charge: Charge,
        meter: Arc<AtomicU64>,
    ) -> Result<Self, ComputeError> {
        let bytes = Self::bytes_for(layers, width, capacity);
        let store = usize::try_from(bytes)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))
            .and_then(map_store)
            .map_err(|e| {
                ComputeError::QuotaExceeded(format!("the host cannot map a KV cache of {bytes} bytes: {e}"))
            })?;
        let storage = KvStorage::Host(store);
        Ok(Self::with((layers, width, capacity), storage, "cpu", charge, meter))
    }

    /// A cache whose storage `backend` makes on its device.
    pub fn device(backend: &'static str, layers: u32, width: u32, capacity: u32, charge: Charge) -> Self {
        let storage = KvStorage::Device(None);
        Self::with((layers, width, capacity), storage, backend, charge, Arc::default())
    }

    fn with(
        (layers, width, capacity): (u32, u32, u32),
        storage: KvStorage,
        backend: &'static str,
        charge: Charge,
        meter: Arc<AtomicU64>,
    ) -> Self {
        Self {
            layers,
            width: width as usize,
            capacity,
            storage,
            backend,
            filled: 0,
            meter,
            _charge: charge,
        }
    }

    pub fn storage_mut(&mut self) -> &mut KvStorage {
        &mut self.storage
    }

    /// The name of the backend whose storage this is (as `Backend::name`).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn host_store(&self) -> &MmapMut {
        match &self.storage {
            KvStorage::Host(store) => store,
            KvStorage::Device(_) => panic!("a device KV cache read as a host one"),
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

    /// Keys and values of `layer` for its first `positions` positions, to be
    /// written. Panics past the capacity, which every step is checked
    /// against, and on device storage, which the scheduler never hands the
    /// CPU backend (`check`).
    pub fn layer_mut(&mut self, layer: usize, positions: usize) -> (&mut [f16], &mut [f16]) {
        assert!(positions <= self.capacity as usize, "KV positions past the capacity");
        if positions > self.filled {
            let before = self.resident_bytes();
            self.filled = positions;
            self.meter
                .fetch_add((self.resident_bytes() - before) as u64, Ordering::Relaxed);
        }
        let plane = self.capacity as usize * self.width;
        let len = positions * self.width;
        let KvStorage::Host(store) = &mut self.storage else {
            panic!("a device KV cache written as a host one");
        };
        let halves = halves_mut(store);
        let (keys, values) = halves[2 * layer * plane..(2 * layer + 2) * plane].split_at_mut(plane);
        (&mut keys[..len], &mut values[..len])
    }

    /// Keys and values of `layer` for the first `positions` positions, which
    /// `layer_mut` has filled.
    pub fn layer(&self, layer: usize, positions: usize) -> (&[f16], &[f16]) {
        assert!(positions <= self.filled, "KV positions not yet written");
        let plane = self.capacity as usize * self.width;
        let len = positions * self.width;
        let keys = &halves(self.host_store())[2 * layer * plane..];
        (&keys[..len], &keys[plane..plane + len])
    }

    /// Bytes of the positions written (the pages they touched, to a page).
    pub fn resident_bytes(&self) -> usize {
        Self::bytes_for(self.layers, self.width as u32, self.filled as u32) as usize
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.meter.fetch_sub(self.resident_bytes() as u64, Ordering::Relaxed);
    }
}

fn map_store(bytes: usize) -> std::io::Result<MmapMut> {
    let store = MmapMut::map_anon(bytes)?;
    // A tenant's cache holds what its prompts became: keep it out of core
    // dumps. This also marks it `dd` in /proc/PID/smaps, which tells KV caches
    // from the guests' memories in the memory benchmark.
    #[cfg(target_os = "linux")]
    if let Err(e) = store.advise(memmap2::Advice::DontDump) {
        tracing::debug!(error = %e, "KV cache left in core dumps");
    }
    Ok(store)
}

// SAFETY (both): `f16` is a `u16` with every bit pattern valid, and a mapping
// starts on a page, so the whole of it is f16s with no bytes left over.
fn halves(store: &MmapMut) -> &[f16] {
    unsafe { store.align_to::<f16>().1 }
}

fn halves_mut(store: &mut MmapMut) -> &mut [f16] {
    unsafe { store.align_to_mut::<f16>().1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::Budget;

    fn cache(layers: u32, width: u32, capacity: u32) -> KvCache {
        let charge = Budget::unlimited("test").charge(capacity as u64).expect("unlimited");
        KvCache::host(layers, width, capacity, charge, Arc::default()).expect("a small mapping")
    }

    #[test]
    fn layers_keep_their_own_positions_as_the_cache_grows() {
        let mut kv = cache(3, 4, 8);
        assert_eq!(kv.resident_bytes(), 0, "nothing written, nothing held");
        for layer in 0..3 {
            let (k, v) = kv.layer_mut(layer, 2);
            k.fill(f16::from_f32(layer as f32));
            v.fill(f16::from_f32(-(layer as f32)));
        }
        assert_eq!(kv.resident_bytes(), 2 * 3 * 4 * 2 * 2);
        let (k, v) = kv.layer_mut(1, 5);
        assert_eq!(k.len(), 20);
        assert!(
            k[8..].iter().chain(&v[8..]).all(|x| *x == f16::ZERO),
            "new positions start at zero"
        );
        k[8..].fill(f16::ONE);
        for layer in 0..3 {
            let (k, v) = kv.layer(layer, 2);
            assert!(k.iter().all(|x| x.to_f32() == layer as f32), "layer {layer} keys");
            assert!(v.iter().all(|x| x.to_f32() == -(layer as f32)), "layer {layer} values");
        }
        let (k, _) = kv.layer(1, 5);
        assert!(k[8..].iter().all(|x| *x == f16::ONE));
        assert_eq!(kv.resident_bytes(), 5 * 3 * 4 * 2 * 2);
    }

    #[test]
    fn a_cache_past_any_address_space_is_a_quota_error() {
        let charge = Budget::unlimited("test").charge(1).expect("unlimited");
        match KvCache::host(u32::MAX, u32::MAX, u32::MAX, charge, Arc::default()) {
            Err(ComputeError::QuotaExceeded(m)) => assert!(m.contains("cannot map"), "{m}"),
            Err(e) => panic!("another error: {e:?}"),
            Ok(_) => panic!("mapped"),
        }
    }

    #[test]
    #[should_panic(expected = "past the capacity")]
    fn writing_past_the_capacity_is_refused() {
        cache(1, 4, 8).layer_mut(0, 9);
    }
}
