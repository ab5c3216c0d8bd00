//! Sampling in llama.cpp's default order: logit bias, penalties, then either
//! the argmax (greedy) or top-k, top-p, min-p, temperature and a draw from a
//! seeded ChaCha8 stream. The draw itself is `realm_sampling`'s, the same
//! code the host runs: without bias or penalties the host draws the token
//! where the logits are (`StepOutputKind::Sample`, with this stream's
//! value), else the guest draws it here from the changed logits; either way
//! a seed picks the same tokens.

pub mod logprobs;
mod penalties;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::compute::{Candidate, SampleParams, StepOutput, StepOutputKind};
use crate::{Error, Sampling};
use penalties::Penalties;

pub struct Sampler {
    params: Sampling,
    penalties: Penalties,
    rng: ChaCha8Rng,
    /// The draw of the step under way, once `output_kind` has taken it.
    draw: Option<f32>,
}

impl Sampler {
    pub fn new(params: Sampling, vocab_size: u32) -> Result<Self, Error> {
        let invalid = |field: &str, rule: &str| Err(Error::InvalidRequest(format!("`{field}` must be {rule}")));
        if !params.temperature.is_finite() || params.temperature < 0.0 {
            return invalid("temperature", "a finite number >= 0");
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return invalid("top_p", "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&params.min_p) {
            return invalid("min_p", "in [0, 1]");
        }
        if !(params.repeat_penalty.is_finite() && params.repeat_penalty > 0.0) {
            return invalid("repeat_penalty", "a finite number > 0");
        }
        if !(-2.0..=2.0).contains(&params.presence_penalty) {
            return invalid("presence_penalty", "in [-2, 2]");
        }
        if !(-2.0..=2.0).contains(&params.frequency_penalty) {
            return invalid("frequency_penalty", "in [-2, 2]");
        }
        if let Some((id, _)) = params.logit_bias.iter().find(|(id, _)| *id >= vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "`logit_bias`: token {id} is outside the vocabulary of {vocab_size}"
            )));
        }
        if let Some((id, _)) = params.logit_bias.iter().find(|(_, bias)| !bias.is_finite()) {
            return Err(Error::InvalidRequest(format!(
                "`logit_bias`: the bias of token {id} is not a finite number"
            )));
        }
        let seed = params.seed.unwrap_or_else(entropy_seed);
        let penalties = Penalties::new(&params);
        Ok(Self {
            params,
            penalties,
            rng: ChaCha8Rng::seed_from_u64(seed),
            draw: None,
        })
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// The least the host must return for this sampler to decide: biases and
    /// penalties need every logit; otherwise the top one (greedy), or the
    /// token the host draws with this step's value of the seeded stream.
    pub fn output_kind(&mut self) -> StepOutputKind {
        if !self.params.logit_bias.is_empty() || self.penalties.active() {
            return StepOutputKind::Logits;
        }
        if self.is_greedy() {
            return StepOutputKind::TopK(1);
        }
        let draw = self.take_draw();
        self.draw = Some(draw);
        let chain = self.chain(draw);
        StepOutputKind::Sample(SampleParams {
            temperature: chain.temperature,
            top_k: chain.top_k,
            top_p: chain.top_p,
            min_p: chain.min_p,
            draw: chain.draw,
        })
    }

    /// The next uniform value in [0, 1), 24 bits of the stream.
    fn take_draw(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    fn chain(&self, draw: f32) -> realm_sampling::SampleParams {
        realm_sampling::SampleParams {
            temperature: self.params.temperature,
            top_k: self.params.top_k,
            top_p: self.params.top_p,
            min_p: self.params.min_p,
            draw,
        }
    }

    /// Records a generated token (for the penalties).
    pub fn accept(&mut self, token: u32) {
        self.penalties.accept(token);
    }

    /// The step's token, from what the host returned for `output_kind`
    /// (or all logits, when log-probabilities were asked for), among the
    /// `allowed` tokens (a constraint's bitset) when given. The host applies
    /// that mask itself to top-k and draws; logits arrive unmasked.
    pub fn sample(&mut self, output: &StepOutput, allowed: Option<&[u32]>) -> Option<u32> {
        let draw = self.draw.take();
        let mut candidates = match output {
            StepOutput::Sampled(chosen) => return Some(chosen.id),
            StepOutput::Logits(logits) => logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| Candidate { id: id as u32, logit })
                .collect(),
            StepOutput::TopK(candidates) => candidates.clone(),
        };
        if !self.params.logit_bias.is_empty() {
            for &(id, bias) in &self.params.logit_bias {
                if let Some(c) = candidates.get_mut(id as usize).filter(|c| c.id == id) {
                    c.logit += bias;
                }
            }
        }
        self.penalties.apply(&mut candidates);
        if let Some(allowed) = allowed {
            candidates.retain(|c| crate::constraint::allows(allowed, c.id));
        }
        if self.is_greedy() {
            return argmax(&candidates);
        }
        let draw = draw.unwrap_or_else(|| self.take_draw());
        // A dense row, token i at i, as the host holds it (a top-k list is
        // its own row, mapped back).
        let logits: Vec<f32> = candidates.iter().map(|c| c.logit).collect();
        let (at, _) = realm_sampling::sample(&logits, &self.chain(draw))?;
        candidates.get(at as usize).map(|c| c.id)
    }
}

/// The highest logit, the lowest id among equals.
fn argmax(candidates: &[Candidate]) -> Option<u32> {
    candidates
        .iter()
        .fold(None::<&Candidate>, |best, c| match best {
            Some(b) if b.logit > c.logit || (b.logit == c.logit && b.id < c.id) => Some(b),
            _ => Some(c),
        })
        .map(|c| c.id)
}

/// A seed from the host's entropy (WASI random, through std's hasher keys).
fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn params(temperature: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
        }
    }

    fn logits() -> StepOutput {
        StepOutput::Logits(vec![0.5, 2.0, 1.9, -1.0, 2.0])
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1), 5).expect("valid");
        assert_eq!(s.sample(&logits(), None), Some(1));
    }

    #[test]
    fn same_seed_same_draws_and_other_seeds_differ() {
        let draws = |seed| {
            let mut s = Sampler::new(params(1.5, seed), 5).expect("valid");
            (0..64)
                .map(|_| s.sample(&logits(), None).expect("token"))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut p = params(5.0, 3);
        p.top_k = 1;
        let mut s = Sampler::new(p, 5).expect("valid");
        assert!((0..32).all(|_| s.sample(&logits(), None) == Some(1)));
    }

    #[test]
    fn logit_bias_can_ban_and_force_tokens() {
        let mut p = params(0.0, 0);
        p.logit_bias = vec![(1, -100.0), (4, -100.0)];
        let mut s = Sampler::new(p.clone(), 5).expect("valid");
        assert!(matches!(s.output_kind(), StepOutputKind::Logits));
        assert_eq!(s.sample(&logits(), None), Some(2));
        p.logit_bias = vec![(3, 10.0)];
        assert_eq!(Sampler::new(p, 5).expect("valid").sample(&logits(), None), Some(3));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampler::new(params(-1.0, 0), 5).is_err());
        let mut p = params(1.0, 0);
        p.top_p = 0.0;
        assert!(Sampler::new(p, 5).is_err());
        let mut p = params(1.0, 0);
        p.logit_bias = vec![(5, 1.0)];
        assert!(Sampler::new(p, 5).is_err(), "token 5 is outside a vocabulary of 5");
        let mut p = params(1.0, 0);
        p.presence_penalty = 3.0;
        assert!(Sampler::new(p, 5).is_err());
    }
}
