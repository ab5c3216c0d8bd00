//! Sampling: a chain of filters over candidates (top-k, top-p, min-p,
//! temperature) and a seeded draw, in llama.cpp's default order.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::compute::{Candidate, StepOutput, StepOutputKind};
use crate::{Error, Sampling};

pub struct Sampler {
    params: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: Sampling) -> Result<Self, Error> {
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
        let seed = params.seed.unwrap_or_else(entropy_seed);
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// The least the host must return for this sampler to decide.
    pub fn output_kind(&self) -> StepOutputKind {
        match (self.is_greedy(), self.params.top_k) {
            (true, _) => StepOutputKind::TopK(1),
            (false, 0) => StepOutputKind::Logits,
            (false, k) => StepOutputKind::TopK(k),
        }
    }

    pub fn sample(&mut self, output: StepOutput) -> Option<u32> {
        let mut candidates = match output {
            StepOutput::Logits(logits) => logits
                .into_iter()
                .enumerate()
                .map(|(id, logit)| Candidate { id: id as u32, logit })
                .collect(),
            StepOutput::TopK(candidates) => candidates,
        };
        if self.is_greedy() {
            return argmax(&candidates);
        }
        sort_descending(&mut candidates);
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k as usize);
        }
        let probs = softmax(&candidates, 1.0);
        let mut keep = candidates.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cumulative += p;
                if cumulative >= self.params.top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 && !probs.is_empty() {
            let floor = probs[0] * self.params.min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        candidates.truncate(keep);
        let probs = softmax(&candidates, self.params.temperature);
        let draw = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let mut cumulative = 0.0;
        for (candidate, p) in candidates.iter().zip(&probs) {
            cumulative += p;
            if draw < cumulative {
                return Some(candidate.id);
            }
        }
        candidates.last().map(|c| c.id)
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

fn sort_descending(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
}

fn softmax(candidates: &[Candidate], temperature: f32) -> Vec<f32> {
    let Some(max) = candidates.first().map(|c| c.logit) else {
        return Vec::new();
    };
    let exps: Vec<f32> = candidates
        .iter()
        .map(|c| ((c.logit - max) / temperature).exp())
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// A seed from the host's entropy (WASI random, through std's hasher keys).
fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
        }
    }

    fn logits() -> StepOutput {
        StepOutput::Logits(vec![0.5, 2.0, 1.9, -1.0, 2.0])
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1)).expect("valid");
        assert_eq!(s.sample(logits()), Some(1));
    }

    #[test]
    fn same_seed_same_draws_and_other_seeds_differ() {
        let draws = |seed| {
            let mut s = Sampler::new(params(1.5, seed)).expect("valid");
            (0..64).map(|_| s.sample(logits()).expect("token")).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut p = params(5.0, 3);
        p.top_k = 1;
        let mut s = Sampler::new(p).expect("valid");
        assert!((0..32).all(|_| s.sample(logits()) == Some(1)));
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampler::new(params(-1.0, 0)).is_err());
        let mut p = params(1.0, 0);
        p.top_p = 0.0;
        assert!(Sampler::new(p).is_err());
    }
}
