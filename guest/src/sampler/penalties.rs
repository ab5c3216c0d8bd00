//! Repetition, presence and frequency penalties over the latest generated
//! tokens, as llama.cpp's penalties sampler applies them.

use std::collections::{HashMap, VecDeque};

use crate::Sampling;
use crate::compute::Candidate;

pub struct Penalties {
    repeat: f32,
    presence: f32,
    frequency: f32,
    /// The window; 0 keeps every token.
    last_n: usize,
    history: VecDeque<u32>,
    counts: HashMap<u32, u32>,
}

impl Penalties {
    pub fn new(params: &Sampling) -> Self {
        Self {
            repeat: params.repeat_penalty,
            presence: params.presence_penalty,
            frequency: params.frequency_penalty,
            last_n: params.penalty_last_n as usize,
            history: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    pub fn active(&self) -> bool {
        self.repeat != 1.0 || self.presence != 0.0 || self.frequency != 0.0
    }

    pub fn accept(&mut self, token: u32) {
        if !self.active() {
            return;
        }
        self.history.push_back(token);
        *self.counts.entry(token).or_default() += 1;
        if self.last_n > 0
            && self.history.len() > self.last_n
            && let Some(old) = self.history.pop_front()
            && let Some(count) = self.counts.get_mut(&old)
        {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&old);
            }
        }
    }

    pub fn apply(&self, candidates: &mut [Candidate]) {
        if !self.active() || self.counts.is_empty() {
            return;
        }
        for c in candidates.iter_mut() {
            let Some(&count) = self.counts.get(&c.id) else { continue };
            if c.logit <= 0.0 {
                c.logit *= self.repeat;
            } else {
                c.logit /= self.repeat;
            }
            c.logit -= count as f32 * self.frequency + self.presence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::tests::params;

    fn candidates() -> Vec<Candidate> {
        [(0, 2.0), (1, -1.0), (2, 1.0)]
            .into_iter()
            .map(|(id, logit)| Candidate { id, logit })
            .collect()
    }

    #[test]
    fn repeat_penalty_pushes_seen_tokens_towards_unlikely() {
        let mut p = params(0.0, 0);
        p.repeat_penalty = 2.0;
        let mut penalties = Penalties::new(&p);
        penalties.accept(0);
        penalties.accept(1);
        let mut c = candidates();
        penalties.apply(&mut c);
        assert_eq!((c[0].logit, c[1].logit, c[2].logit), (1.0, -2.0, 1.0));
    }

    #[test]
    fn presence_counts_once_and_frequency_per_occurrence_within_the_window() {
        let mut p = params(0.0, 0);
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
        p.penalty_last_n = 3;
        let mut penalties = Penalties::new(&p);
        for t in [2, 0, 0, 0] {
            penalties.accept(t);
        }
        let mut c = candidates();
        penalties.apply(&mut c);
        assert_eq!(c[0].logit, 2.0 - 3.0 * 0.25 - 0.5, "token 0 three times in the window");
        assert_eq!(c[2].logit, 1.0, "token 2 left the window");
    }
}
