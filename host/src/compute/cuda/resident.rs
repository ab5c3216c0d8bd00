//! What stays on the device between steps: model weights, shared by every
//! sequence that reads the same mapped file, and each sequence's KV cache.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Weak};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::driver;
use super::kernels::Ptr;
use crate::compute::graph::{CompiledGraph, TensorId};
use crate::compute::weights::ModelFile;
use crate::compute::{ComputeError, KvCache};

/// Device copies of tensors, by model file and tensor index: as stored (for
/// matrix products) or as f32 (for norm weights and biases).
#[derive(Default)]
pub struct DeviceWeights {
    files: HashMap<usize, FileCopies>,
}

impl Drop for FileCopies {
    fn drop(&mut self) {
        if let Some(any) = self.stored.values().next() {
            let _ = any.context().bind_to_thread();
        }
    }
}

struct FileCopies {
    /// The mapped file these copies are of; a key (its address) is reused
    /// only after the file is gone, and then its copies are dropped.
    file: Weak<ModelFile>,
    stored: HashMap<usize, CudaSlice<u8>>,
    vectors: HashMap<usize, CudaSlice<f32>>,
}

impl DeviceWeights {
    fn copies(&mut self, model: &Arc<ModelFile>) -> &mut FileCopies {
        let key = Arc::as_ptr(model) as usize;
        let stale = self
            .files
            .get(&key)
            .is_some_and(|c| !c.file.upgrade().is_some_and(|f| Arc::ptr_eq(&f, model)));
        if stale || !self.files.contains_key(&key) {
            self.files.retain(|_, c| c.file.strong_count() > 0);
            self.files.insert(
                key,
                FileCopies {
                    file: Arc::downgrade(model),
                    stored: HashMap::new(),
                    vectors: HashMap::new(),
                },
            );
        }
        self.files.get_mut(&key).expect("inserted above")
    }

    /// The tensor in its stored type, copied to the device on first use.
    pub fn stored(&mut self, s: &Arc<CudaStream>, g: &CompiledGraph, id: TensorId) -> Result<Ptr, ComputeError> {
        let copies = self.copies(&g.model);
        let copy = match copies.stored.entry(id.0) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(s.clone_htod(g.model.data(g.tensor(id))).map_err(driver)?),
        };
        Ok(ptr(copy, s))
    }

    /// A 1-D tensor as f32, copied to the device on first use.
    pub fn vector(&mut self, s: &Arc<CudaStream>, g: &CompiledGraph, id: TensorId) -> Result<Ptr, ComputeError> {
        let copies = self.copies(&g.model);
        let copy = match copies.vectors.entry(id.0) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(s.clone_htod(&g.vector(id)).map_err(driver)?),
        };
        Ok(ptr(copy, s))
    }
}

/// Device buffers of finished values, by length, for the next values of that
/// length: a step's shapes repeat layer after layer and step after step, so
/// past the first steps no value costs a CUDA allocation. All work goes to one
/// stream, so a buffer is reused only after the work that read it.
#[derive(Default)]
pub struct BufferPool {
    free: HashMap<usize, Vec<CudaSlice<f32>>>,
    bytes: usize,
}

/// Bytes the pool keeps at most; beyond it, finished buffers are freed.
const POOL_BYTES: usize = 1 << 30;

impl BufferPool {
    pub fn take(&mut self, s: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<f32>, ComputeError> {
        if let Some(buf) = self.free.get_mut(&len).and_then(Vec::pop) {
            self.bytes -= len * size_of::<f32>();
            return Ok(buf);
        }
        // SAFETY: every kernel writes all of its output before anything reads it.
        unsafe { s.alloc::<f32>(len) }.map_err(driver)
    }

    pub fn give(&mut self, buf: CudaSlice<f32>) {
        let bytes = buf.len() * size_of::<f32>();
        if self.bytes + bytes <= POOL_BYTES {
            self.bytes += bytes;
            self.free.entry(buf.len()).or_default().push(buf);
        }
    }
}

/// A sequence's keys and values on the device, [position][layer][width] f16,
/// for the first `positions` positions; it grows by doubling.
struct DeviceKv {
    keys: CudaSlice<u16>,
    values: CudaSlice<u16>,
    positions: usize,
}

/// A cache is dropped on whichever thread drops its realm; CUDA frees need
/// the context current there.
impl Drop for DeviceKv {
    fn drop(&mut self) {
        let _ = self.keys.context().bind_to_thread();
    }
}

/// Positions a device KV cache starts with.
const FIRST_POSITIONS: usize = 256;

/// The device stores of `cache`, grown to hold `needed` positions.
pub fn kv_stores(s: &Arc<CudaStream>, cache: &mut KvCache, needed: usize) -> Result<(Ptr, Ptr), ComputeError> {
    let per_position = cache.layers() as usize * cache.width();
    let capacity = cache.capacity() as usize;
    let slot = cache.device_slot();
    let have = slot
        .as_ref()
        .and_then(|b| b.downcast_ref::<DeviceKv>())
        .map_or(0, |kv| kv.positions);
    if have < needed {
        let positions = needed.max(2 * have).max(FIRST_POSITIONS).min(capacity);
        let len = positions * per_position;
        // SAFETY: positions past those written are never read (attention
        // stops at each row's own position).
        let (mut keys, mut values) = unsafe {
            (
                s.alloc::<u16>(len).map_err(driver)?,
                s.alloc::<u16>(len).map_err(driver)?,
            )
        };
        if let Some(old) = slot.take().and_then(|b| b.downcast::<DeviceKv>().ok()) {
            let old_len = old.positions * per_position;
            s.memcpy_dtod(&old.keys, &mut keys.slice_mut(..old_len))
                .map_err(driver)?;
            s.memcpy_dtod(&old.values, &mut values.slice_mut(..old_len))
                .map_err(driver)?;
        }
        *slot = Some(Box::new(DeviceKv {
            keys,
            values,
            positions,
        }));
    }
    let kv = slot
        .as_ref()
        .and_then(|b| b.downcast_ref::<DeviceKv>())
        .ok_or_else(|| ComputeError::Internal("the KV cache holds another backend's storage".into()))?;
    Ok((ptr(&kv.keys, s), ptr(&kv.values, s)))
}

pub fn ptr<T>(slice: &CudaSlice<T>, s: &Arc<CudaStream>) -> Ptr {
    let (p, _sync) = slice.device_ptr(s);
    p
}
