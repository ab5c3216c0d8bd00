//! Which waiting steps a batch takes when not all of them fit: tenants share a
//! batch's sequences and tokens in proportion to their weights (weighted fair
//! queuing on the tokens each tenant has been served).

use std::collections::HashMap;
use std::sync::Arc;

/// A waiting step, as the selection sees it.
pub struct Candidate<'a> {
    pub tenant: &'a Arc<str>,
    pub weight: u32,
    /// Tokens the step still has to run.
    pub remaining: usize,
}

/// Per tenant, the tokens it has been served divided by its weight.
#[derive(Default)]
pub struct Shares {
    served: HashMap<Arc<str>, f64>,
}

impl Shares {
    /// Picks at most `max_sequences` candidates, in order of their tenant's
    /// served share (the least served first; arrival order among equals), as
    /// `(candidate index, tokens)`. Prompts take chunks of `chunk_rows` and
    /// at most `max_tokens` of them in all, or `beside_decode` when
    /// single-token (decode) steps are waiting, so that those wait for little
    /// prefill. Decode steps always fit; the first chunk always joins, a
    /// further one where it fits.
    pub fn select(
        &mut self,
        candidates: &[Candidate<'_>],
        max_sequences: usize,
        max_tokens: usize,
        beside_decode: usize,
    ) -> Vec<(usize, usize)> {
        let floor = self.served.values().copied().fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() { floor } else { 0.0 };
        for c in candidates {
            // A newcomer starts level with the least served tenant: no credit
            // for the time it was away.
            self.served.entry(c.tenant.clone()).or_insert(floor);
        }
        let decoding = candidates.iter().any(|c| c.remaining == 1);
        let cap = if decoding {
            beside_decode.min(max_tokens)
        } else {
            max_tokens
        };
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let (mut tokens, mut prompt_tokens, mut chunks) = (0, 0, 0);
        let mut left: Vec<usize> = (0..candidates.len()).collect();
        while taken.len() < max_sequences && !left.is_empty() {
            let at = self.least_served(candidates, &left);
            let i = left.remove(at);
            let chunk = chunk_rows(candidates[i].remaining, cap);
            let over = tokens + chunk > max_tokens || prompt_tokens + chunk > cap;
            if chunk > 1 && chunks > 0 && over {
                continue;
            }
            if chunk > 1 {
                chunks += 1;
                prompt_tokens += chunk;
            }
            tokens += chunk;
            self.charge(&candidates[i], chunk);
            taken.push((i, chunk));
        }
        taken
    }

    /// The position in `among` of the candidate whose tenant is least served.
    fn least_served(&self, candidates: &[Candidate<'_>], among: &[usize]) -> usize {
        let share = |i: usize| self.served[candidates[i].tenant];
        (0..among.len())
            .min_by(|&a, &b| share(among[a]).total_cmp(&share(among[b])).then(a.cmp(&b)))
            .expect("not empty")
    }

    fn charge(&mut self, c: &Candidate<'_>, tokens: usize) {
        if let Some(served) = self.served.get_mut(c.tenant) {
            *served += tokens as f64 / c.weight.max(1) as f64;
        }
    }
}

/// Prompt chunks other than a prompt's last are a multiple of this, and its
/// last is at least this long (unless the whole prompt is shorter).
pub const CHUNK_ALIGN: usize = 8;

/// The rows of a step's next chunk, with `remaining` rows left and room for
/// `cap`: all of them if they fit, else `cap` rounded down to a multiple of
/// `CHUNK_ALIGN` (at least that), or all of them if fewer than `CHUNK_ALIGN`
/// would be left (up to `CHUNK_ALIGN - 1` rows over `cap`). So however a
/// prompt is cut, every row takes the kernels it takes in one piece: the
/// K-quants' products change order at 4 rows (Q4_K's groups, which the
/// aligned cuts keep) and 8 rows (the tiled kernels, which every piece
/// reaches), attention at 2 rows; its results do not depend on its company.
pub fn chunk_rows(remaining: usize, cap: usize) -> usize {
    if remaining <= cap {
        return remaining;
    }
    let chunk = (cap / CHUNK_ALIGN * CHUNK_ALIGN).max(CHUNK_ALIGN);
    if remaining.saturating_sub(chunk) < CHUNK_ALIGN {
        remaining
    } else {
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|&n| Arc::from(n)).collect()
    }

    fn step(tenant: &Arc<str>, weight: u32, remaining: usize) -> Candidate<'_> {
        Candidate {
            tenant,
            weight,
            remaining,
        }
    }

    #[test]
    fn everyone_runs_when_all_fit() {
        let t = tenants(&["a", "b", "c"]);
        let c: Vec<Candidate> = t.iter().map(|tenant| step(tenant, 1, 1)).collect();
        let mut taken = Shares::default().select(&c, 8, 64, 64);
        taken.sort();
        assert_eq!(taken, vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn slots_follow_the_weights_when_full() {
        // Tenant a (weight 3) and b (weight 1) each have 8 decode steps waiting,
        // and a batch holds 4: over many batches a gets 3 slots for b's 1.
        let t = tenants(&["a", "b"]);
        let mut shares = Shares::default();
        let (mut a, mut b) = (0, 0);
        for _ in 0..100 {
            let c: Vec<Candidate> = (0..16)
                .map(|i| step(&t[i % 2], if i % 2 == 0 { 3 } else { 1 }, 1))
                .collect();
            for (i, _) in shares.select(&c, 4, 64, 64) {
                if i % 2 == 0 { a += 1 } else { b += 1 }
            }
        }
        assert_eq!((a, b), (300, 100));
    }

    #[test]
    fn a_flooding_tenant_cannot_crowd_out_a_quiet_one() {
        let t = tenants(&["flood", "quiet"]);
        let mut shares = Shares::default();
        let mut c: Vec<Candidate> = (0..50).map(|_| step(&t[0], 1, 1)).collect();
        c.push(step(&t[1], 1, 1));
        for _ in 0..20 {
            let taken = shares.select(&c, 8, 64, 64);
            assert!(
                taken.iter().any(|&(i, _)| i == 50),
                "the quiet tenant's step is in every batch"
            );
        }
    }

    #[test]
    fn a_long_prompt_runs_in_chunks_beside_decode_steps() {
        let t = tenants(&["a", "b", "c"]);
        let c = vec![step(&t[0], 1, 500), step(&t[1], 1, 1), step(&t[2], 1, 1)];
        let mut taken = Shares::default().select(&c, 8, 64, 64);
        taken.sort();
        assert_eq!(taken, vec![(0, 64), (1, 1), (2, 1)], "the chunk it would run alone");
        let two = [step(&t[0], 1, 500), step(&t[1], 1, 40), step(&t[2], 1, 1)];
        let mut taken = Shares::default().select(&two, 8, 64, 64);
        taken.sort();
        assert_eq!(
            taken,
            vec![(0, 64), (2, 1)],
            "a second chunk waits for a batch with room"
        );
    }

    #[test]
    fn prompts_take_smaller_chunks_while_decode_steps_wait() {
        let t = tenants(&["a", "b"]);
        let alone = [step(&t[0], 1, 500)];
        assert_eq!(Shares::default().select(&alone, 8, 256, 64), vec![(0, 256)]);
        let beside = [step(&t[0], 1, 500), step(&t[1], 1, 1), step(&t[0], 1, 300)];
        let mut taken = Shares::default().select(&beside, 8, 256, 64);
        taken.sort();
        assert_eq!(taken, vec![(0, 64), (1, 1)], "one chunk of 64 prompt tokens in all");
    }

    #[test]
    fn chunks_are_aligned_and_no_last_chunk_is_short() {
        assert_eq!(chunk_rows(5, 64), 5, "a short prompt in one piece");
        assert_eq!(chunk_rows(100, 64), 64);
        assert_eq!(chunk_rows(100, 37), 32, "rounded down to a multiple of 8");
        assert_eq!(chunk_rows(100, 3), 8, "at least 8");
        assert_eq!(chunk_rows(70, 64), 70, "6 left would be short: all of it");
        assert_eq!(chunk_rows(72, 64), 64, "8 left is enough");
        // Any cut of any prompt: aligned pieces, and a last piece of at least 8.
        for len in 1..300 {
            for cap in [1, 7, 8, 13, 64, 256] {
                let (mut left, mut pieces) = (len, Vec::new());
                while left > 0 {
                    let n = chunk_rows(left, cap);
                    pieces.push(n);
                    left -= n;
                }
                let (last, rest) = pieces.split_last().expect("a piece");
                assert!(rest.iter().all(|&n| n % CHUNK_ALIGN == 0), "{len} by {cap}: {pieces:?}");
                assert!(*last >= CHUNK_ALIGN.min(len), "{len} by {cap}: {pieces:?}");
            }
        }
    }

    #[test]
    fn a_newcomer_gets_no_credit_for_its_absence() {
        let t = tenants(&["old", "new"]);
        let mut shares = Shares::default();
        let old = [step(&t[0], 1, 1)];
        for _ in 0..10 {
            shares.select(&old, 1, 1, 1);
        }
        let both = [step(&t[0], 1, 1), step(&t[1], 1, 1)];
        let mut firsts = Vec::new();
        for _ in 0..4 {
            firsts.push(shares.select(&both, 1, 1, 1)[0].0);
        }
        assert_eq!(firsts, vec![0, 1, 0, 1], "they alternate at once");
    }
}
