//! realm's sampler chain, shared by the engine component and the host: the
//! host draws a step's token where the logits are (no vocabulary-sized row
//! crosses into the guest), the guest draws it itself when it must change
//! the logits first (logit bias, penalties), and both pick the same token
//! for the same logits and draw.
//!
//! The chain is llama.cpp's default order: top-k, then top-p and min-p on the
//! probabilities at temperature 1, then a draw at the request's temperature
//! with a uniform value from the guest's seeded stream. Candidates are
//! ordered by logit, descending, the lower id first among equals; a
//! normaliser sums its set in id order, a cumulative sum goes in candidate
//! order. Only the prefix of that order that the cuts and the draw reach is
//! sorted (the top 64, then eight times more, as far as needed). The
//! exponential is `exp` below and the sums run in eight fixed lanes: plain
//! f32 arithmetic, so the guest (wasm) and the host (native) get the same
//! bits, and the host's compiler turns the passes over the vocabulary into
//! vector code.

/// How a token is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Greater than 0 (greedy asks for the top token instead).
    pub temperature: f32,
    /// Keep the `top_k` likeliest tokens; 0 keeps all.
    pub top_k: u32,
    /// In (0, 1]; 1 is off.
    pub top_p: f32,
    /// In [0, 1]; 0 is off.
    pub min_p: f32,
    /// The uniform value in [0, 1) that picks the token.
    pub draw: f32,
}

/// The token `params` picks from `logits` (token `i` has `logits[i]`), and
/// its logit; None for an empty row.
pub fn sample(logits: &[f32], params: &SampleParams) -> Option<(u32, f32)> {
    let mut order = Order::new(logits, params.top_k as usize);
    let (_, max) = order.at(0)?;
    let set = order.len();
    let mut keep = set;
    if params.top_p < 1.0 || params.min_p > 0.0 {
        let scale = 1.0 / order.sum_in_id_order(|l| exp(l - max));
        if params.min_p > 0.0 {
            // The top token's probability is exp(0) * scale.
            let floor = scale * params.min_p;
            keep = keep.min(order.count(|l| exp(l - max) * scale >= floor).max(1));
        }
        if params.top_p < 1.0 {
            order.cover(params.top_p / scale, |l| exp(l - max), max);
            let mut cumulative = 0.0;
            let mut i = 0;
            while let Some((_, l)) = order.at(i) {
                cumulative += exp(l - max) * scale;
                i += 1;
                if cumulative >= params.top_p {
                    break;
                }
            }
            keep = keep.min(i);
        }
    }
    let inv_t = 1.0 / params.temperature;
    let weight = |l: f32| exp((l - max) * inv_t);
    let total = if keep == set {
        order.sum_in_id_order(weight)
    } else {
        // The kept candidates are a prefix of the order: every logit above
        // the last kept one, and its equals up to its id. Their logits in
        // id order, by one pass rather than a sort of the prefix by id.
        let (last_id, last) = order.at(keep - 1)?;
        let cut = descending_key(last);
        let logits: Vec<f32> = (logits.iter().enumerate())
            .filter(|&(id, &l)| {
                let key = descending_key(l);
                key < cut || (key == cut && id as u32 <= last_id)
            })
            .map(|(_, &l)| l)
            .collect();
        lane_sum(&logits, weight)
    };
    if keep == set {
        order.cover(params.draw * total, weight, max);
    }
    let mut cumulative = 0.0;
    let mut last = None;
    for i in 0..keep {
        let Some((id, l)) = order.at(i) else { break };
        cumulative += weight(l) / total;
        last = Some((id, l));
        if params.draw < cumulative {
            break;
        }
    }
    last
}

/// e^x to about 3 ulp for x in [-87, 88], and e^-87 below: 2^n times a
/// degree-6 polynomial in r = x - n ln 2, |r| <= ln 2 / 2. Written by hand,
/// rather than `libm::expf` or the platform's `expf`, because it is
/// branch-free f32 arithmetic (no fused operations, which Rust never
/// introduces): bit-identical on every target and vectorised by the
/// compiler, where a library call per logit is not.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer (ties to even), which is
    // then the low bits of the sum's own bits.
    const ROUND: f32 = 12_582_912.0;
    // Not `clamp`: this keeps the min and max the vector code needs (and a
    // NaN turns into -87, whose weight is nil).
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n, built from n's bits: no float-to-integer conversion.
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    p * two_n
}

/// `f(x)` summed over `xs` in eight lanes (element i into lane i % 8), the
/// lanes added in a fixed tree at the end. On x86 CPUs with AVX2 the same
/// operations run eight lanes to an instruction (the same bits: no fused
/// operations either way).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { lane_sum_avx2(xs, f) };
    }
    lane_sum_portable(xs, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_sum_avx2(xs: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f32 {
    lane_sum_portable(xs, f)
}

#[inline(always)]
fn lane_sum_portable(xs: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        let chunk: &[f32; 8] = chunk.try_into().unwrap_or(&[0.0; 8]);
        let values: [f32; 8] = std::array::from_fn(|i| f(chunk[i]));
        for (lane, v) in lanes.iter_mut().zip(values) {
            *lane += v;
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(rest) {
        *lane += f(x);
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// The `k` largest logits as (token, logit), descending; the lower id first
/// among equals (`f32::total_cmp`'s order).
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
    // The k-th best key; then every candidate at least as good, in id
    // order, sorted (ties stay in id order) and cut at k.
    let mut keys: Vec<u32> = logits.iter().map(|&l| descending_key(l)).collect();
    let kth = *keys.select_nth_unstable(k - 1).1;
    let at_least: Vec<(u32, f32)> = (logits.iter().enumerate())
        .filter(|&(_, &l)| descending_key(l) <= kth)
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let mut best = sort_by_logit(at_least);
    best.truncate(k);
    best
}

/// `pairs` (token, logit), given in id order, in the candidates' order:
/// the logit descending, the lower id first among equals. A stable radix
/// sort on `descending_key`, three passes of 11 bits (a pass whose digit all
/// keys share is skipped): a top-p cut of a flat distribution sorts tens of
/// thousands of candidates per token, where a comparison sort took
/// milliseconds. The order is total, so this is the order any sort gives.
fn sort_by_logit(pairs: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "pairs in id order");
    const BITS: u32 = 11;
    const RADIX: usize = 1 << BITS;
    if pairs.len() <= 64 {
        let mut pairs = pairs;
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        return pairs;
    }
    let mut items: Vec<(u32, (u32, f32))> = pairs.into_iter().map(|p| (descending_key(p.1), p)).collect();
    let mut spare = items.clone();
    for shift in [0, BITS, 2 * BITS] {
        let digit = |key: u32| ((key >> shift) as usize) & (RADIX - 1);
        let mut counts = vec![0usize; RADIX];
        for &(key, _) in &items {
            counts[digit(key)] += 1;
        }
        if counts[digit(items[0].0)] == items.len() {
            continue;
        }
        let mut start = 0;
        for count in counts.iter_mut() {
            (*count, start) = (start, start + *count);
        }
        for &item in &items {
            let at = &mut counts[digit(item.0)];
            spare[*at] = item;
            *at += 1;
        }
        std::mem::swap(&mut items, &mut spare);
    }
    items.into_iter().map(|(_, p)| p).collect()
}

/// A key whose unsigned order is the logits' descending `total_cmp` order.
#[inline(always)]
fn descending_key(x: f32) -> u32 {
    !((total_order_key(x) as u32) ^ 0x8000_0000)
}

/// The k up to which `top_k` scans once instead of selecting.
const SCANNED_K: usize = 256;

/// `f32::total_cmp`'s order as a signed integer: negative values' magnitude
/// bits flipped, so that integer comparison is the total order.
#[inline(always)]
fn total_order_key(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The candidates in order, sorted only as far as they are read.
struct Order<'a> {
    logits: &'a [f32],
    /// The top-k cut, where there is one: then `sorted` is the whole set.
    limit: Option<usize>,
    sorted: Vec<(u32, f32)>,
}

/// Candidates sorted at first.
const FIRST_SORTED: usize = 64;

impl<'a> Order<'a> {
    fn new(logits: &'a [f32], top_k: usize) -> Self {
        let limit = (top_k > 0 && top_k < logits.len()).then_some(top_k);
        let sorted = limit.map_or_else(Vec::new, |k| self::top_k(logits, k));
        Self { logits, limit, sorted }
    }

    fn len(&self) -> usize {
        self.limit.unwrap_or(self.logits.len())
    }

    /// Candidate `i`, sorting further when `i` is past what is sorted.
    fn at(&mut self, i: usize) -> Option<(u32, f32)> {
        if i >= self.len() {
            return None;
        }
        if i >= self.sorted.len() {
            let k = (self.sorted.len() * 8).max(FIRST_SORTED).max(i + 1).min(self.len());
            self.sorted = top_k(self.logits, k);
        }
        self.sorted.get(i).copied()
    }

    /// Sorts at least the candidates whose weights `w` (increasing with the
    /// logit; the largest logit is `max`) add up to `mass`, so that a walk to
    /// that mass seldom sorts again: a count of the logits in buckets of
    /// 1/32 below `max`, each bucket's mass taken as its count times the
    /// weight of its lowest logit (at most its true mass), then a sort of the
    /// buckets that reach `mass`, instead of sorts of ever longer prefixes.
    fn cover(&mut self, mass: f32, w: impl Fn(f32) -> f32, max: f32) {
        if self.limit.is_some() {
            return; // The whole set is sorted already.
        }
        let have: f32 = self.sorted.iter().map(|&(_, l)| w(l)).sum();
        if have >= mass {
            return;
        }
        const PER_UNIT: f32 = 32.0;
        const BUCKETS: usize = 1024;
        let bucket = |l: f32| (((max - l) * PER_UNIT) as usize).min(BUCKETS - 1);
        let mut counts = vec![0u32; BUCKETS];
        for &l in self.logits {
            counts[bucket(l)] += 1;
        }
        let mut below = 0.0;
        let last = (0..BUCKETS - 1)
            .position(|b| {
                below += counts[b] as f32 * w(max - (b + 1) as f32 / PER_UNIT);
                below >= mass
            })
            .unwrap_or(BUCKETS - 1);
        // Whole buckets: every logit at or above some value, a prefix of the order.
        let prefix: Vec<(u32, f32)> = (self.logits.iter().enumerate())
            .filter(|&(_, &l)| bucket(l) <= last)
            .map(|(id, &l)| (id as u32, l))
            .collect();
        if prefix.len() > self.sorted.len() {
            self.sorted = sort_by_logit(prefix);
        }
    }

    /// `f(logit)` summed over the set, in id order.
    fn sum_in_id_order(&self, f: impl Fn(f32) -> f32 + Copy) -> f32 {
        match self.limit {
            Some(_) => {
                let mut by_id = self.sorted.clone();
                by_id.sort_unstable_by_key(|&(id, _)| id);
                let logits: Vec<f32> = by_id.iter().map(|&(_, l)| l).collect();
                lane_sum(&logits, f)
            }
            None => lane_sum(self.logits, f),
        }
    }

    /// How many of the set `keep` holds for.
    fn count(&self, keep: impl Fn(f32) -> bool) -> usize {
        match self.limit {
            Some(_) => self.sorted.iter().filter(|&&(_, l)| keep(l)).count(),
            None => self.logits.iter().map(|&l| keep(l) as usize).sum(),
        }
    }
}

#[cfg(test)]
mod tests;
