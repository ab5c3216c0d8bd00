//! realm's inference engine, compiled to a wasm32-wasip2 component.
//!
//! Everything that defines a model's behaviour lives here: GGUF metadata
//! interpretation ([`metadata`]), architectures ([`models`]), tokenizers
//! ([`tokenizer`]), sampling ([`sampler`]) and the generation loop with its KV
//! bookkeeping ([`generation`]). The host's `compute` import executes each forward
//! step as one graph over shared weights.

mod bindings {
    wit_bindgen::generate!({
        world: "realm",
        path: "../wit",
    });
}

pub mod chat;
pub mod constraint;
pub mod generation;
pub mod metadata;
pub mod models;
pub mod realm;
pub mod sampler;
pub mod tokenizer;
pub mod tools;

pub use bindings::exports::realm::engine::engine::{
    ChatRequest, Chunk, CompletionRequest, Constraint, Error, FinishReason, Message, ModelInfo, RealmConfig, Sampling,
    StepLogprobs, TokenLogprob, Tool, ToolCall, ToolCallDelta, ToolChoice, Tools, Usage,
};
pub use bindings::realm::engine::compute;

/// The exported component. Exports exist only in the wasm build: natively the
/// engine is an ordinary library that unit tests link against.
#[cfg(target_arch = "wasm32")]
mod component {
    struct Component;

    impl crate::bindings::exports::realm::engine::engine::Guest for Component {
        type Realm = crate::realm::Realm;
        type Generation = crate::generation::Generation;
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}
