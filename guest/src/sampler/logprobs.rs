//! Log-probabilities of a step's logits as the model computed them, for
//! requests that ask for them (OpenAI's `logprobs`).

use crate::tokenizer::Tokenizer;
use crate::{Error, StepLogprobs, TokenLogprob};

/// Most alternatives a request may ask for per token (OpenAI's limit).
pub const MOST_TOP_LOGPROBS: u32 = 20;

pub fn check(asked: Option<u32>) -> Result<(), Error> {
    match asked {
        Some(n) if n > MOST_TOP_LOGPROBS => Err(Error::InvalidRequest(format!(
            "at most {MOST_TOP_LOGPROBS} log-probabilities per token, not {n}"
        ))),
        _ => Ok(()),
    }
}

/// The log-probability given to what has none (a banned or non-finite
/// logit), as OpenAI does: JSON has no infinities.
pub const FLOOR: f32 = -9999.0;

/// The log-softmax of one step's logits: each logit less the log of the sum
/// of every finite logit's exponential, summed in f64 after the largest is
/// taken out.
pub struct LogSoftmax {
    log_total: f64,
}

impl LogSoftmax {
    pub fn of(logits: &[f32]) -> Self {
        let finite = || logits.iter().copied().filter(|l| l.is_finite());
        let max = finite().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = finite().map(|l| f64::from(l - max).exp()).sum();
        Self {
            log_total: f64::from(max) + total.ln(),
        }
    }

    pub fn at(&self, logit: f32) -> f32 {
        let logprob = (f64::from(logit) - self.log_total) as f32;
        if logprob.is_finite() { logprob.max(FLOOR) } else { FLOOR }
    }
}

/// The ids of the `n` largest logits, largest first, the lower id first among
/// equals; NaN ranks lowest.
pub fn top_ids(logits: &[f32], n: usize) -> Vec<u32> {
    let before = |a: (f32, u32), b: (f32, u32)| a.0.total_cmp(&b.0).reverse().then(a.1.cmp(&b.1)).is_lt();
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    for (id, &logit) in logits.iter().enumerate() {
        let rank = if logit.is_nan() { f32::NEG_INFINITY } else { logit };
        let entry = (rank, id as u32);
        if top.len() == n && top.last().is_none_or(|&last| !before(entry, last)) {
            continue;
        }
        let at = top.partition_point(|&t| before(t, entry));
        top.insert(at, entry);
        top.truncate(n);
    }
    top.into_iter().map(|(_, id)| id).collect()
}

/// `chosen`'s log-probability among `logits`, and the `n` most likely tokens'.
/// The chosen token's bytes are what it adds to the reply (nothing, for a
/// control token); the alternatives show control tokens' text.
pub fn step(logits: &[f32], chosen: u32, n: u32, tokenizer: &Tokenizer) -> StepLogprobs {
    let softmax = LogSoftmax::of(logits);
    let entry = |token: u32, special: bool| TokenLogprob {
        token,
        bytes: tokenizer.piece(token, special),
        logprob: softmax.at(logits.get(token as usize).copied().unwrap_or(f32::NAN)),
    };
    StepLogprobs {
        chosen: entry(chosen, false),
        top: top_ids(logits, n as usize)
            .into_iter()
            .map(|t| entry(t, true))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_survives_large_logits() {
        let logits = [1000.0f32, 999.0, 990.0, -5.0];
        let s = LogSoftmax::of(&logits);
        let total: f64 = logits.iter().map(|&l| f64::from(s.at(l)).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        let expected = -(1.0f64 + (-1.0f64).exp() + (-10.0f64).exp()).ln();
        assert!((f64::from(s.at(1000.0)) - expected).abs() < 1e-6);
    }

    #[test]
    fn non_finite_logits_get_the_floor_and_leave_the_others_whole() {
        let logits = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0, f32::INFINITY];
        let s = LogSoftmax::of(&logits);
        assert!((s.at(0.0) - (-(2.0f32).ln())).abs() < 1e-6);
        assert_eq!(
            [s.at(f32::NAN), s.at(f32::NEG_INFINITY), s.at(f32::INFINITY)],
            [FLOOR; 3]
        );
        assert_eq!(LogSoftmax::of(&[f32::NAN]).at(1.0), FLOOR);
    }

    #[test]
    fn top_ids_are_the_largest_in_order_with_ties_by_id() {
        let logits = [0.5, 2.0, 1.9, -1.0, 2.0, f32::NEG_INFINITY, f32::NAN];
        assert_eq!(top_ids(&logits, 3), vec![1, 4, 2]);
        assert_eq!(top_ids(&logits, 0), Vec::<u32>::new());
        assert_eq!(top_ids(&logits, 10), vec![1, 4, 2, 0, 3, 5, 6]);
        assert_eq!(top_ids(&[], 2), Vec::<u32>::new());
    }

    #[test]
    fn more_than_twenty_alternatives_are_refused() {
        assert!(check(Some(21)).is_err());
        assert!(check(Some(20)).is_ok() && check(None).is_ok());
    }
}
