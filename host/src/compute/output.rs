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

/// Shapes a step's output row as the guest asked.
pub fn shape_output(logits: &[f32], kind: OutputKind) -> StepOutput {
    match kind {
        OutputKind::Logits => StepOutput::Logits(logits.to_vec()),
        OutputKind::TopK(k) => StepOutput::TopK(top_k(logits, k)),
        OutputKind::Sample(params) => match realm_sampling::sample(logits, &params) {
            Some((id, logit)) => StepOutput::Sampled(id, logit),
            None => StepOutput::TopK(Vec::new()),
        },
    }
}
