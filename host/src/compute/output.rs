//! What a step returns for each sequence: all of its last position's
//! logits, or only the top k of them.

/// What a step returns for its last position.
#[derive(Clone, Copy, Debug)]
pub enum OutputKind {
    Logits,
    TopK(usize),
}

#[derive(Clone, Debug)]
pub enum StepOutput {
    Logits(Vec<f32>),
    /// (token id, logit), logit descending, id ascending among equals.
    TopK(Vec<(u32, f32)>),
}

#[cfg(test)]
impl StepOutput {
    /// The logits of a step that asked for them.
    pub fn logits(self) -> Vec<f32> {
        match self {
            StepOutput::Logits(l) => l,
            StepOutput::TopK(_) => panic!("the step returned top-k, not logits"),
        }
    }
}

/// Shapes a step's output row as the guest asked.
pub fn shape_output(logits: &[f32], kind: OutputKind) -> StepOutput {
    match kind {
        OutputKind::Logits => StepOutput::Logits(logits.to_vec()),
        OutputKind::TopK(k) => StepOutput::TopK(top_k(logits, k)),
    }
}

/// The k up to which `top_k` scans once instead of selecting.
const SCANNED_K: usize = 256;

/// The `k` largest logits, descending; the lower id first among equals.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k <= SCANNED_K {
        // One pass keeping the best k in order: past the first k values,
        // almost every value loses its one comparison with the k-th.
        // Chunks of 16 where no value beats the k-th go by in one vector
        // comparison of `total_cmp`'s integer keys; a later id never wins a tie.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (c, chunk) in logits.chunks(16).enumerate() {
            if best.len() == k && chunk.len() == 16 {
                let kth = total_order_key(best[k - 1].1);
                if !chunk.iter().fold(false, |any, &l| any | (total_order_key(l) > kth)) {
                    continue;
                }
            }
            for (i, &l) in chunk.iter().enumerate() {
                let candidate = ((c * 16 + i) as u32, l);
                if best.len() == k && order(&candidate, &best[k - 1]).is_ge() {
                    continue;
                }
                let at = best.partition_point(|b| order(b, &candidate).is_lt());
                best.insert(at, candidate);
                best.truncate(k);
            }
        }
        return best;
    }
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_unstable_by(order);
    all
}

/// `f32::total_cmp`'s order as a signed integer: negative values' magnitude
/// bits flipped, so that integer comparison is the total order.
#[inline(always)]
fn total_order_key(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_orders_by_logit_then_id() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(super::top_k(&logits, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(super::top_k(&logits, 1), vec![(1, 3.0)]);
        assert_eq!(super::top_k(&logits, 9).len(), 5);
    }

    #[test]
    fn the_scan_and_the_selection_agree() {
        // Few distinct values: ties everywhere, broken by the lower id.
        let logits: Vec<f32> = (0..5000u32).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        for k in [1, 2, 40, 256, 257, 1000] {
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            assert_eq!(super::top_k(&logits, k), all, "k {k}");
        }
    }

    #[test]
    fn the_chunk_filter_keeps_total_cmp_order() {
        let mut s = 0x9e37_79b9_u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        let logits: Vec<f32> = (0..4099)
            .map(|i| match i % 97 {
                0..7 => specials[i % 97],
                _ => f32::from_bits(next()),
            })
            .collect();
        for _ in 0..1000 {
            let (a, b) = (f32::from_bits(next()), f32::from_bits(next()));
            assert_eq!(
                super::total_order_key(a).cmp(&super::total_order_key(b)),
                a.total_cmp(&b)
            );
        }
        for k in [1, 3, 40, 256] {
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            let got = super::top_k(&logits, k);
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| (i, l.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&all), "k {k}");
        }
    }
}
