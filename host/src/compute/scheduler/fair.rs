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
    /// `(candidate index, tokens)`. A step runs `min(remaining, max_tokens)`
    /// tokens, the chunk it would run alone, so that its rows (and the kernels
    /// they go through) do not depend on its company. Single-token (decode)
    /// steps always fit; a longer chunk joins while the batch holds fewer than
    /// `max_tokens` tokens, and the first one always does, so a prompt runs
    /// beside the decode steps without holding them back for long.
    pub fn select(
        &mut self,
        candidates: &[Candidate<'_>],
        max_sequences: usize,
        max_tokens: usize,
    ) -> Vec<(usize, usize)> {
        let floor = self.served.values().copied().fold(f64::INFINITY, f64::min);
        let floor = if floor.is_finite() { floor } else { 0.0 };
        for c in candidates {
            // A newcomer starts level with the least served tenant: no credit
            // for the time it was away.
            self.served.entry(c.tenant.clone()).or_insert(floor);
        }
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let (mut tokens, mut chunks) = (0, 0);
        let mut left: Vec<usize> = (0..candidates.len()).collect();
        while taken.len() < max_sequences && !left.is_empty() {
            let at = self.least_served(candidates, &left);
            let i = left.remove(at);
            let chunk = candidates[i].remaining.min(max_tokens.max(1));
            if chunk > 1 && chunks > 0 && tokens + chunk > max_tokens {
                continue;
            }
            chunks += usize::from(chunk > 1);
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
        let mut taken = Shares::default().select(&c, 8, 64);
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
            for (i, _) in shares.select(&c, 4, 64) {
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
            let taken = shares.select(&c, 8, 64);
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
        let mut taken = Shares::default().select(&c, 8, 64);
        taken.sort();
        assert_eq!(taken, vec![(0, 64), (1, 1), (2, 1)], "the chunk it would run alone");
        let two = [step(&t[0], 1, 500), step(&t[1], 1, 40), step(&t[2], 1, 1)];
        let mut taken = Shares::default().select(&two, 8, 64);
        taken.sort();
        assert_eq!(
            taken,
            vec![(0, 64), (2, 1)],
            "a second chunk waits for a batch with room"
        );
    }

    #[test]
    fn a_newcomer_gets_no_credit_for_its_absence() {
        let t = tenants(&["old", "new"]);
        let mut shares = Shares::default();
        let old = [step(&t[0], 1, 1)];
        for _ in 0..10 {
            shares.select(&old, 1, 1);
        }
        let both = [step(&t[0], 1, 1), step(&t[1], 1, 1)];
        let mut firsts = Vec::new();
        for _ in 0..4 {
            firsts.push(shares.select(&both, 1, 1)[0].0);
        }
        assert_eq!(firsts, vec![0, 1, 0, 1], "they alternate at once");
    }
}
