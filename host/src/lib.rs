//! realm-host as a library: the binary's commands, and what tests and
//! benchmarks drive directly (the runtime, compute backends, the GGUF writer).

pub mod api;
pub mod commands;
pub mod compute;
pub mod runtime;
pub mod tenants;
