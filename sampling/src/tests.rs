use super::*;

fn xorshift(seed: u32) -> impl FnMut() -> u32 {
    let mut s = seed.max(1);
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    }
}

/// Logits with a few likely tokens over a long tail, and some ties.
fn logits(seed: u32, n: usize) -> Vec<f32> {
    let mut next = xorshift(seed);
    (0..n)
        .map(|i| match i % 997 {
            0 => 12.0,
            1 => 12.0,
            _ => (next() % 4000) as f32 / 400.0 - 2.0,
        })
        .collect()
}

/// The chain as written down in the crate's docs, with the whole order
/// sorted up front.
fn reference(logits: &[f32], p: &SampleParams) -> Option<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        all.truncate(p.top_k as usize);
    }
    let max = all.first()?.1;
    let by_id_sum = |set: &[(u32, f32)], f: &dyn Fn(f32) -> f32| {
        let mut s = set.to_vec();
        s.sort_by_key(|c| c.0);
        let mut lanes = [0.0f32; 8];
        for (i, c) in s.iter().enumerate() {
            lanes[i % 8] += f(c.1);
        }
        ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
    };
    let mut keep = all.len();
    if p.top_p < 1.0 || p.min_p > 0.0 {
        let scale = 1.0 / by_id_sum(&all, &|l| exp(l - max));
        if p.min_p > 0.0 {
            let floor = scale * p.min_p;
            let count = all.iter().filter(|c| exp(c.1 - max) * scale >= floor).count();
            keep = keep.min(count.max(1));
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, c) in all.iter().enumerate() {
                cumulative += exp(c.1 - max) * scale;
                if cumulative >= p.top_p {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
    }
    all.truncate(keep);
    let inv_t = 1.0 / p.temperature;
    let weight = |l: f32| exp((l - max) * inv_t);
    let total = by_id_sum(&all, &weight);
    let mut cumulative = 0.0;
    for c in &all {
        cumulative += weight(c.1) / total;
        if p.draw < cumulative {
            return Some(*c);
        }
    }
    all.last().copied()
}

#[test]
fn sorting_only_what_is_read_picks_what_the_whole_sort_picks() {
    let mut next = xorshift(99);
    for seed in 1..40 {
        let row = logits(seed, 5000 + seed as usize * 37);
        for (top_k, top_p, min_p, temperature) in [
            (0, 1.0, 0.0, 1.0),
            (0, 1.0, 0.0, 0.7),
            (0, 0.95, 0.0, 1.0),
            (0, 0.9, 0.05, 0.8),
            (40, 1.0, 0.0, 0.8),
            (40, 0.5, 0.0, 1.3),
            (0, 1.0, 0.1, 2.0),
            (3000, 0.999, 0.0, 1.0),
        ] {
            for _ in 0..20 {
                let draw = (next() >> 8) as f32 / (1u32 << 24) as f32;
                let p = SampleParams {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    draw,
                };
                let (got, want) = (sample(&row, &p), reference(&row, &p));
                let bits = |c: Option<(u32, f32)>| c.map(|(id, l)| (id, l.to_bits()));
                assert_eq!(bits(got), bits(want), "seed {seed} {p:?}");
            }
        }
    }
}

#[test]
fn draws_follow_the_distribution_at_the_temperature() {
    let row = [1.0f32, 3.0, 2.0, 0.5];
    for temperature in [0.5f32, 1.0, 1.7] {
        let n = 20_000;
        let mut counts = [0usize; 4];
        for i in 0..n {
            let p = SampleParams {
                temperature,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                draw: (i as f32 + 0.5) / n as f32,
            };
            counts[sample(&row, &p).expect("a token").0 as usize] += 1;
        }
        let z: f32 = row.iter().map(|l| (l / temperature).exp()).sum();
        for (id, &c) in counts.iter().enumerate() {
            let expected = (row[id] / temperature).exp() / z;
            let got = c as f32 / n as f32;
            assert!(
                (got - expected).abs() < 1e-3,
                "T {temperature} token {id}: {got} vs {expected}"
            );
        }
    }
}

#[test]
fn the_cuts_keep_the_likeliest_tokens() {
    let row = [1.0f32, 3.0, 2.0, 0.5, 3.0];
    let params = |top_k, top_p, min_p, draw| SampleParams {
        temperature: 1.0,
        top_k,
        top_p,
        min_p,
        draw,
    };
    // The lower id first among equals; a draw near 1 takes the last kept.
    assert_eq!(sample(&row, &params(0, 1.0, 0.0, 0.0)), Some((1, 3.0)));
    assert_eq!(sample(&row, &params(0, 1.0, 0.0, 0.999_999)), Some((3, 0.5)));
    assert_eq!(sample(&row, &params(2, 1.0, 0.0, 0.999_999)), Some((4, 3.0)));
    assert_eq!(sample(&row, &params(0, 0.1, 0.0, 0.999_999)), Some((1, 3.0)));
    // min-p keeps tokens at least that share of the top's probability:
    // e^-1 (2.0 against 3.0) is over 0.3 and under 0.5.
    assert_eq!(sample(&row, &params(0, 1.0, 0.3, 0.999_999)), Some((2, 2.0)));
    assert_eq!(sample(&row, &params(0, 1.0, 0.5, 0.999_999)), Some((4, 3.0)));
    assert_eq!(sample(&[], &params(0, 1.0, 0.0, 0.5)), None);
}

#[test]
fn top_k_orders_by_logit_then_id() {
    let logits = [0.5, 3.0, -1.0, 3.0, 2.0];
    assert_eq!(top_k(&logits, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
    assert_eq!(top_k(&logits, 1), vec![(1, 3.0)]);
    assert_eq!(top_k(&logits, 9).len(), 5);
}

#[test]
fn the_scan_and_the_selection_agree() {
    // Few distinct values: ties everywhere, broken by the lower id.
    let logits: Vec<f32> = (0..5000u32).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
    for k in [1, 2, 40, 256, 257, 1000] {
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        assert_eq!(top_k(&logits, k), all, "k {k}");
    }
}

#[test]
fn the_chunk_filter_keeps_total_cmp_order() {
    let mut next = xorshift(0x9e37_79b9);
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
        assert_eq!(total_order_key(a).cmp(&total_order_key(b)), a.total_cmp(&b));
    }
    // Up to 256 the scan; above, the selection and the radix sort.
    for k in [1, 3, 40, 256, 257, 3000, 4099] {
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| (i, l.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&top_k(&logits, k)), bits(&all), "k {k}");
    }
}

#[test]
fn the_radix_sort_is_the_comparison_sort() {
    let mut next = xorshift(17);
    for n in [0, 1, 64, 65, 1000, 20_000] {
        // Narrow ranges (shared high digits: skipped passes), ties, and any bits.
        for spread in [4u32, 4000, u32::MAX] {
            let pairs: Vec<(u32, f32)> = (0..n)
                .map(|i| {
                    let l = match spread {
                        u32::MAX => f32::from_bits(next()),
                        _ => (next() % spread) as f32 / 400.0 - 2.0,
                    };
                    (i, l)
                })
                .collect();
            let mut expected = pairs.clone();
            expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| (i, l.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&sort_by_logit(pairs)), bits(&expected), "n {n} spread {spread}");
        }
    }
}

#[test]
fn exp_is_within_a_few_ulp_of_the_library_exp() {
    let mut x = -87.0f32;
    let mut worst = 0u32;
    while x < 88.0 {
        let (got, want) = (exp(x), libm::expf(x));
        let ulps = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
        worst = worst.max(ulps);
        x += 0.0137;
    }
    assert!(worst <= 4, "{worst} ulp");
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37, "clamped at e^-87");
}

/// Timing, run by hand: `cargo test --release -p realm-sampling -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_sample_over_a_large_vocabulary() {
    let row = logits(5, 262_144);
    let mut next = xorshift(3);
    for (top_k, top_p) in [(0, 1.0), (0, 0.95), (40, 1.0)] {
        let started = std::time::Instant::now();
        let n = 200;
        for _ in 0..n {
            let draw = (next() >> 8) as f32 / (1u32 << 24) as f32;
            let p = SampleParams {
                temperature: 0.8,
                top_k,
                top_p,
                min_p: 0.0,
                draw,
            };
            std::hint::black_box(sample(&row, &p));
        }
        let per = started.elapsed().as_secs_f64() / n as f64 * 1e3;
        eprintln!("top_k {top_k} top_p {top_p}: {per:.3} ms per token");
    }
    let started = std::time::Instant::now();
    for _ in 0..200 {
        std::hint::black_box(top_k(&row, 1));
    }
    eprintln!("top_k(1): {:.3} ms", started.elapsed().as_secs_f64() / 200.0 * 1e3);
    let started = std::time::Instant::now();
    for _ in 0..200 {
        std::hint::black_box(lane_sum(&row, exp));
    }
    eprintln!("exp sum: {:.3} ms", started.elapsed().as_secs_f64() / 200.0 * 1e3);
}
