//! What stays on the device between steps: model weights, shared by every
//! sequence that reads the same mapped file, and each sequence's KV cache.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, result};

use super::driver;
use super::kernels::Ptr;
use crate::compute::graph::{CompiledGraph, TensorId};
use crate::compute::kv::{DeviceKv, KvStorage};
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

/// The allocation behind a cache's `DeviceKv`: its keys and values, which
/// `kv_stores` grows by doubling.
struct DeviceStores {
    stores: Option<KvStores>,
    retired: Arc<Retired>,
}

/// Keys and values, held until freed (the step reads them by address).
struct KvStores([CudaSlice<u16>; 2]);

/// A cache is dropped on whichever thread drops its realm, maybe while the
/// backend captures a step as a graph on the stream that a free would go to.
/// A free from another thread would join that graph (to free the memory
/// again at every replay) or break the capture, so its stores are retired
/// and freed by the next step.
impl Drop for DeviceStores {
    fn drop(&mut self) {
        if let Some(stores) = self.stores.take() {
            self.retired.lock().push(stores);
        }
    }
}

/// Device KV stores of dropped caches, waiting for the backend's next step.
#[derive(Default)]
pub struct Retired(Mutex<Vec<KvStores>>);

impl Retired {
    fn lock(&self) -> MutexGuard<'_, Vec<KvStores>> {
        // A panic while pushing leaves a valid list.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frees what was retired; called with the backend's lock held and its
    /// context bound, between steps.
    pub fn free(&self) {
        let stores = std::mem::take(&mut *self.lock());
        drop(stores);
    }
}

/// What is still retired when the backend and every cache are gone.
impl Drop for Retired {
    fn drop(&mut self) {
        if let Some(any) = self.lock().first() {
            let _ = any.0[0].context().bind_to_thread();
        }
    }
}

/// Positions a device KV cache starts with.
const FIRST_POSITIONS: usize = 256;

/// The device stores of `cache`, grown to hold `needed` positions; stores it
/// outgrows are retired to `retired`.
pub fn kv_stores(
    s: &Arc<CudaStream>,
    retired: &Arc<Retired>,
    cache: &mut KvCache,
    needed: usize,
) -> Result<(Ptr, Ptr), ComputeError> {
    let per_position = cache.layers() as usize * cache.width();
    let capacity = cache.capacity() as usize;
    let KvStorage::Device(slot) = cache.storage_mut() else {
        return Err(ComputeError::Internal(
            "the KV cache holds another backend's storage".into(),
        ));
    };
    let have = slot.as_ref().map_or(0, |kv| kv.positions);
    if have < needed {
        let positions = needed.max(2 * have).max(FIRST_POSITIONS).min(capacity);
        let len = positions * per_position;
        // SAFETY: positions past those written are never read (attention
        // stops at each row's own position).
        let (keys, values) = unsafe {
            (
                s.alloc::<u16>(len).map_err(driver)?,
                s.alloc::<u16>(len).map_err(driver)?,
            )
        };
        let grown = DeviceKv {
            keys: ptr(&keys, s),
            values: ptr(&values, s),
            positions,
            allocation: Box::new(DeviceStores {
                stores: Some(KvStores([keys, values])),
                retired: retired.clone(),
            }),
        };
        if let Some(old) = slot.as_ref() {
            let bytes = old.positions * per_position * size_of::<u16>();
            // SAFETY: both stores hold at least the old positions; the old
            // ones are freed, on this stream, after the copies (retired).
            unsafe {
                result::memcpy_dtod_async(grown.keys, old.keys, bytes, s.cu_stream()).map_err(driver)?;
                result::memcpy_dtod_async(grown.values, old.values, bytes, s.cu_stream()).map_err(driver)?;
            }
        }
        *slot = Some(grown);
    }
    let kv = slot
        .as_ref()
        .ok_or_else(|| ComputeError::Internal("the device KV cache has no stores".into()))?;
    Ok((kv.keys, kv.values))
}

pub fn ptr<T>(slice: &CudaSlice<T>, s: &Arc<CudaStream>) -> Ptr {
    let (p, _sync) = slice.device_ptr(s);
    p
}
