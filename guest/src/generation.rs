//! The generation loop: prefill in chunks, then one token per step, with the
//! sequence's KV cache and position bookkeeping kept here in the guest.

use std::cell::RefCell;
use std::rc::Rc;

use crate::bindings::exports::realm::engine::engine::GuestGeneration;
use crate::compute::{KvCache, StepOutput, StepOutputKind};
use crate::realm::{Model, from_compute};
use crate::sampler::{Sampler, logprobs};
use crate::{Chunk, CompletionRequest, Error, FinishReason, Usage};

/// Prompt tokens per prefill step.
const PREFILL_CHUNK: usize = 512;

pub struct Generation {
    state: RefCell<State>,
}

struct State {
    model: Rc<Model>,
    cache: KvCache,
    sampler: Sampler,
    /// Tokens to feed at the next step (the prompt, then each sampled token).
    pending: Vec<u32>,
    /// Positions already in the KV cache.
    position: u32,
    prompt_tokens: u32,
    completion_tokens: u32,
    max_tokens: u32,
    ignore_eos: bool,
    /// Alternatives per token when log-probabilities were asked for.
    logprobs: Option<u32>,
    /// Bytes of a UTF-8 character split across tokens.
    partial_utf8: Vec<u8>,
    stops: StopMatcher,
    finished: bool,
}

impl Generation {
    pub fn start(model: Rc<Model>, prompt: Vec<u32>, request: CompletionRequest) -> Result<Self, Error> {
        let context = model.info.context_length;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if prompt.len() >= context as usize {
            return Err(Error::InvalidRequest(format!(
                "the prompt is {} tokens; the context holds {context} (prompt and completion)",
                prompt.len()
            )));
        }
        let sampler = Sampler::new(request.sampling, model.tokenizer.vocab_size())?;
        let stops = StopMatcher::new(request.stop)?;
        logprobs::check(request.logprobs)?;
        let hp = &model.hyperparameters;
        // The cache holds what this request can reach, so a tenant's KV-token
        // limit counts real demand rather than whole contexts.
        let reach = match request.max_tokens {
            0 => context,
            max => (prompt.len() as u32).saturating_add(max).min(context),
        };
        let cache = KvCache::allocate(hp.n_layer, hp.kv_width(), reach).map_err(from_compute)?;
        let state = State {
            prompt_tokens: prompt.len() as u32,
            pending: prompt,
            model,
            cache,
            sampler,
            position: 0,
            completion_tokens: 0,
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            logprobs: request.logprobs,
            partial_utf8: Vec::new(),
            stops,
            finished: false,
        };
        Ok(Self {
            state: RefCell::new(state),
        })
    }
}

impl GuestGeneration for Generation {
    fn next(&self) -> Result<Option<Chunk>, Error> {
        let mut state = self.state.borrow_mut();
        if state.finished {
            return Ok(None);
        }
        let result = state.step();
        if result.is_err() {
            state.finished = true;
        }
        result.map(Some)
    }
}

impl State {
    fn step(&mut self) -> Result<Chunk, Error> {
        // Log-probabilities need every logit.
        let kind = match self.logprobs {
            Some(_) => StepOutputKind::Logits,
            None => self.sampler.output_kind(),
        };
        // Every chunk but the last of a long prompt only fills the cache.
        while self.pending.len() > PREFILL_CHUNK {
            let chunk: Vec<u32> = self.pending.drain(..PREFILL_CHUNK).collect();
            self.run(&chunk, StepOutputKind::TopK(1))?;
        }
        let tokens = std::mem::take(&mut self.pending);
        let output = self.run(&tokens, kind)?;
        let token = self
            .sampler
            .sample(&output)
            .ok_or_else(|| Error::Internal("the step returned no candidates".into()))?;
        self.completion_tokens += 1;
        self.sampler.accept(token);

        let tokenizer = &self.model.tokenizer;
        let mut finish = None;
        let mut logprobs = Vec::new();
        if !self.ignore_eos && tokenizer.is_end_of_generation(token) {
            finish = Some(FinishReason::Stop);
        } else {
            self.partial_utf8.extend(tokenizer.piece(token, false));
            self.pending.push(token);
            if let (Some(n), StepOutput::Logits(logits)) = (self.logprobs, &output) {
                logprobs.push(logprobs::step(logits, token, n, tokenizer));
            }
        }
        let full = self.position + 1 >= self.model.info.context_length;
        if finish.is_none() && (self.completion_tokens == self.max_tokens || full) {
            finish = Some(FinishReason::Length);
        }
        let complete = if finish.is_some() {
            String::from_utf8_lossy(&std::mem::take(&mut self.partial_utf8)).into_owned()
        } else {
            take_complete_utf8(&mut self.partial_utf8)
        };
        let text = match self.stops.push(&complete) {
            Matched::Stop(before) => {
                finish = Some(FinishReason::Stop);
                before
            }
            Matched::Pending(ready) if finish.is_some() => ready + &self.stops.flush(),
            Matched::Pending(ready) => ready,
        };
        self.finished = finish.is_some();
        Ok(Chunk {
            text,
            tokens: vec![token],
            logprobs,
            finish,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
            },
        })
    }

    fn run(&mut self, tokens: &[u32], kind: StepOutputKind) -> Result<StepOutput, Error> {
        let output = self
            .model
            .graph
            .run(&self.cache, tokens, self.position, kind)
            .map_err(from_compute)?;
        self.position += tokens.len() as u32;
        Ok(output)
    }
}

/// Stop strings, matched across token boundaries: text that could still be the
/// start of a stop string is held back until it cannot.
struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

enum Matched {
    /// A stop string was found: the text before it, and the generation ends.
    Stop(String),
    /// Text that can be emitted now.
    Pending(String),
}

/// Most stop strings per request, and their longest length in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

impl StopMatcher {
    fn new(stops: Vec<String>) -> Result<Self, Error> {
        if stops.len() > MAX_STOPS {
            return Err(Error::InvalidRequest(format!(
                "at most {MAX_STOPS} stop strings, not {}",
                stops.len()
            )));
        }
        if stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(Error::InvalidRequest(format!(
                "stop strings must be 1 to {MAX_STOP_BYTES} bytes"
            )));
        }
        Ok(Self {
            stops,
            held: String::new(),
        })
    }

    fn push(&mut self, text: &str) -> Matched {
        self.held.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Matched::Stop(before);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(self.held.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && self.held.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let ready = self.held.len() - keep;
        let rest = self.held.split_off(ready);
        Matched::Pending(std::mem::replace(&mut self.held, rest))
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The logits after `tokens` in a fresh, temporary sequence.
pub fn evaluate(model: &Model, tokens: &[u32]) -> Result<Vec<f32>, Error> {
    if tokens.is_empty() || tokens.len() > model.info.context_length as usize {
        return Err(Error::InvalidRequest(format!(
            "evaluate takes 1 to {} tokens, not {}",
            model.info.context_length,
            tokens.len()
        )));
    }
    let hp = &model.hyperparameters;
    let cache = KvCache::allocate(hp.n_layer, hp.kv_width(), tokens.len() as u32).map_err(from_compute)?;
    let mut start = 0;
    let mut output = None;
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        let kind = if start + chunk.len() == tokens.len() {
            StepOutputKind::Logits
        } else {
            StepOutputKind::TopK(1)
        };
        output = Some(
            model
                .graph
                .run(&cache, chunk, start as u32, kind)
                .map_err(from_compute)?,
        );
        start += chunk.len();
    }
    match output {
        Some(StepOutput::Logits(logits)) => Ok(logits),
        _ => Err(Error::Internal("the last step returned no logits".into())),
    }
}

/// Removes and returns the longest valid UTF-8 prefix, keeping an incomplete
/// trailing character for the next token. Invalid bytes become U+FFFD.
fn take_complete_utf8(buffer: &mut Vec<u8>) -> String {
    let keep_from = match std::str::from_utf8(buffer) {
        Ok(_) => buffer.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buffer.len(),
    };
    let rest = buffer.split_off(keep_from);
    let text = String::from_utf8_lossy(buffer).into_owned();
    *buffer = rest;
    text
}

#[cfg(test)]
mod tests {
    use super::{Matched, StopMatcher, take_complete_utf8};

    fn texts(m: Matched) -> (bool, String) {
        match m {
            Matched::Stop(t) => (true, t),
            Matched::Pending(t) => (false, t),
        }
    }

    #[test]
    fn stop_strings_match_across_pieces_and_are_never_emitted() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into(), "END".into()]).expect("valid");
        assert_eq!(texts(m.push("Hello")), (false, "Hello".into()));
        assert_eq!(
            texts(m.push(" world\n")),
            (false, " world".into()),
            "a newline may start a stop"
        );
        assert_eq!(texts(m.push("\nUs")), (false, String::new()));
        assert_eq!(texts(m.push("er: hi")), (true, String::new()));
        let mut m = StopMatcher::new(vec!["END".into()]).expect("valid");
        assert_eq!(texts(m.push("the EN")), (false, "the ".into()));
        assert_eq!(texts(m.push("D of it")), (true, "".into()));
        let mut m = StopMatcher::new(vec!["END".into()]).expect("valid");
        assert_eq!(texts(m.push("E")), (false, "".into()));
        assert_eq!(
            texts(m.push("x")),
            (false, "Ex".into()),
            "held text is released once it cannot match"
        );
        assert!(StopMatcher::new(vec![String::new()]).is_err());
    }

    #[test]
    fn incomplete_characters_wait_for_their_next_bytes() {
        let euro = "€".as_bytes();
        let mut buffer = vec![b'a', euro[0], euro[1]];
        assert_eq!(take_complete_utf8(&mut buffer), "a");
        buffer.push(euro[2]);
        assert_eq!(take_complete_utf8(&mut buffer), "€");
        assert!(buffer.is_empty());
    }
}
