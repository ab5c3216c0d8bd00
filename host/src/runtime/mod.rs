//! The wasmtime runtime: one `Engine`, the component compiled once (and cached
//! on disk), pre-instantiated with the pooling allocator; one `Store` per tenant
//! instance, run by its own worker thread.

mod compute_host;
pub mod engine;
pub mod instance;
pub mod profile;
pub mod state;
pub mod wit;

pub use engine::Runtime;
pub use instance::{Failure, GenerationEvent, InstanceHandle, InstanceSettings};
pub use state::{InstanceCounters, ServerContext, TenantCompute};
