//! A realm engine that misbehaves when asked to, so tests can prove that one
//! instance's failure leaves the host and every other instance serving. The
//! model name picks the behaviour:
//! - `trap`: the constructor panics (a wasm trap);
//! - `loop`: the constructor never returns (the epoch deadline must stop it);
//! - `memory-bomb`: the constructor allocates until the memory limit traps it;
//! - `trap-midway`: completions trap at their second chunk;
//! - anything else: a working realm whose completions yield `ok` once.

mod bindings {
    wit_bindgen::generate!({ world: "realm", path: "../../../wit" });
}

use std::cell::Cell;

use bindings::exports::realm::engine::engine::{
    ChatRequest, Chunk, CompletionRequest, Error, FinishReason, Generation as GenerationHandle, GuestGeneration,
    GuestRealm, Message, ModelInfo, RealmConfig, Usage,
};

pub struct Realm {
    model: String,
    context_length: u32,
}

impl GuestRealm for Realm {
    fn new(config: RealmConfig) -> Result<Self, Error> {
        match config.model.as_str() {
            "trap" => panic!("asked to trap"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => Ok(Self {
                model: config.model,
                context_length: config.context_length,
            }),
        }
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            architecture: "test".into(),
            name: self.model.clone(),
            vocab_size: 1,
            context_length: self.context_length,
            trained_context_length: self.context_length,
            bos: None,
            eos: None,
        }
    }

    fn tokenize(&self, _text: String, _add_special: bool, _parse_special: bool) -> Result<Vec<u32>, Error> {
        Ok(vec![0])
    }

    fn detokenize(&self, _tokens: Vec<u32>) -> Result<String, Error> {
        Ok("ok".into())
    }

    fn evaluate(&self, _tokens: Vec<u32>) -> Result<Vec<f32>, Error> {
        Ok(vec![0.0])
    }

    fn render_chat(&self, _messages: Vec<Message>, _add_generation_prompt: bool) -> Result<String, Error> {
        Ok(String::new())
    }

    fn chat(&self, _request: ChatRequest) -> Result<GenerationHandle, Error> {
        Ok(GenerationHandle::new(Generation {
            trap_midway: self.model == "trap-midway",
            chunks: Cell::new(0),
        }))
    }

    fn complete(&self, _request: CompletionRequest) -> Result<GenerationHandle, Error> {
        Ok(GenerationHandle::new(Generation {
            trap_midway: self.model == "trap-midway",
            chunks: Cell::new(0),
        }))
    }
}

pub struct Generation {
    trap_midway: bool,
    chunks: Cell<u32>,
}

impl GuestGeneration for Generation {
    fn next(&self) -> Result<Option<Chunk>, Error> {
        let n = self.chunks.get() + 1;
        self.chunks.set(n);
        if self.trap_midway && n == 2 {
            panic!("asked to trap midway");
        }
        let last = !self.trap_midway || n >= 3;
        if n > 1 && !self.trap_midway {
            return Ok(None);
        }
        Ok(Some(Chunk {
            text: "ok".into(),
            tokens: vec![0],
            logprobs: Vec::new(),
            tool_calls: Vec::new(),
            finish: last.then_some(FinishReason::Stop),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: n,
            },
        }))
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    struct Component;

    impl crate::bindings::exports::realm::engine::engine::Guest for Component {
        type Realm = crate::Realm;
        type Generation = crate::Generation;
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}
