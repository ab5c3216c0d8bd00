//! What a step returns for each sequence: all of its last position's
//! logits, only the top k of them, or a token drawn from them.

pub use realm_sampling::{SampleParams, top_k};

/// What a step returns for its last position.
#[derive(Clone, Copy, Debug)]
pub enum OutputKind {
    Logits,
    TopK(usize),
    /// One token drawn by `realm_sampling::sample`.
    Sample(SampleParams),
}

#[derive(Clone, Debug)]
pub enum StepOutput {
    Logits(Vec<f32>),
    /// (token id, logit), logit descending, id ascending among equals.
    TopK(Vec<(u32, f32)>),
    /// The drawn (token id, logit).
    Sampled(u32, f32),
}

#[cfg(test)]
impl StepOutput {
    /// The logits of a step that asked for them.
    pub fn logits(self) -> Vec<f32> {
        match self {
            StepOutput::Logits(l) => l,
            StepOutput::TopK(_) | StepOutput::Sampled(..) => panic!("the step returned no logits"),
        }
    }
}

/// Shapes a step's output row as the guest asked, choosing among the
/// `allowed` tokens only when given (a bitset: token `i` is bit `i % 32` of
/// word `i / 32`). Logits are never masked.
pub fn shape_output(logits: &[f32], kind: OutputKind, allowed: Option<&[u32]>) -> StepOutput {
    let Some(allowed) = allowed.filter(|_| !matches!(kind, OutputKind::Logits)) else {
        return shape_row(logits, kind);
    };
    // The allowed tokens as a row of their own, in id order, so that ties
    // still go to the lowest id; then mapped back. The row lives in a
    // buffer kept per thread: a fresh vocabulary-sized one would be mapped
    // and faulted in on every step.
    thread_local! {
        static SCRATCH: std::cell::RefCell<(Vec<u32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with_borrow_mut(|(ids, row)| {
        allowed_row(logits, allowed, ids, row);
        match shape_row(row, kind) {
            StepOutput::TopK(top) => StepOutput::TopK(top.into_iter().map(|(at, l)| (ids[at as usize], l)).collect()),
            StepOutput::Sampled(at, logit) => StepOutput::Sampled(ids[at as usize], logit),
            StepOutput::Logits(_) => unreachable!("logits are shaped above"),
        }
    })
}

fn shape_row(logits: &[f32], kind: OutputKind) -> StepOutput {
    match kind {
        OutputKind::Logits => StepOutput::Logits(logits.to_vec()),
        OutputKind::TopK(k) => StepOutput::TopK(top_k(logits, k)),
        OutputKind::Sample(params) => match realm_sampling::sample(logits, &params) {
            Some((id, logit)) => StepOutput::Sampled(id, logit),
            None => StepOutput::TopK(Vec::new()),
        },
    }
}

/// The ids the bitset allows within `logits`, and their logits, into `ids`
/// and `row`.
fn allowed_row(logits: &[f32], allowed: &[u32], ids: &mut Vec<u32>, row: &mut Vec<f32>) {
    let n = logits.len().min(allowed.len() * 32);
    // Branch-free compaction: every token is written at the end of the
    // lists, which grow only by the allowed ones (a mask inside a JSON
    // string allows all but a few tokens of each word, where a loop over set
    // bits would branch once per token).
    ids.resize(n + 1, 0);
    row.resize(n + 1, 0.0);
    let mut len = 0;
    for (w, &word) in allowed.iter().enumerate() {
        let base = w * 32;
        if word == 0 || base >= n {
            continue;
        }
        let end = (base + 32).min(n);
        if word == u32::MAX && end == base + 32 {
            ids[len..len + 32]
                .iter_mut()
                .zip(base as u32..)
                .for_each(|(d, id)| *d = id);
            row[len..len + 32].copy_from_slice(&logits[base..end]);
            len += 32;
            continue;
        }
        for (bit, &logit) in logits[base..end].iter().enumerate() {
            ids[len] = (base + bit) as u32;
            row[len] = logit;
            len += (word >> bit & 1) as usize;
        }
    }
    ids.truncate(len);
    row.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(ids: &[u32]) -> Vec<u32> {
        let mut words = vec![0u32; 3];
        for &id in ids {
            words[id as usize / 32] |= 1 << (id % 32);
        }
        words
    }

    #[test]
    fn a_mask_confines_top_k_and_draws_to_its_tokens() {
        let mut logits: Vec<f32> = (0..70).map(|i| i as f32 / 10.0).collect();
        logits[40] = 1.0; // ties with token 10
        let allowed = mask(&[3, 10, 33, 40, 65]);
        let top = |k| match shape_output(&logits, OutputKind::TopK(k), Some(&allowed)) {
            StepOutput::TopK(top) => top,
            other => panic!("{other:?}"),
        };
        assert_eq!(top(1), vec![(65, 6.5)]);
        assert_eq!(top(3), vec![(65, 6.5), (33, 3.3), (10, 1.0)]);
        assert_eq!(top(9).len(), 5, "no more than the mask allows");
        for draw in [0.0, 0.3, 0.6, 0.99] {
            let params = SampleParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                draw,
            };
            match shape_output(&logits, OutputKind::Sample(params), Some(&allowed)) {
                StepOutput::Sampled(id, logit) => {
                    assert!([3, 10, 33, 40, 65].contains(&id), "drew {id}");
                    assert_eq!(logit, logits[id as usize]);
                }
                other => panic!("{other:?}"),
            }
        }
        let beyond = mask(&[80]);
        assert!(matches!(
            shape_output(&logits, OutputKind::TopK(1), Some(&beyond)),
            StepOutput::TopK(t) if t.is_empty()
        ));
        assert!(matches!(
            shape_output(&logits, OutputKind::Logits, Some(&allowed)),
            StepOutput::Logits(l) if l.len() == 70
        ));
    }
}
