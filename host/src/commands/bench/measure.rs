//! The measurements themselves. Each tenant is driven on one thread, as the
//! server's per-instance worker drives it; nothing here is simulated.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Bench;
use super::report::{
    Boundary, FirstTokenRow, Instantiation, Memory, MemoryRow, ModelSummary, Resident, SpeedRow, Stats, TenantsRow,
};
use super::tenant::{Generation, Tenant, prompt_of, random_tokens};
use crate::compute::KvCache;
use crate::compute::gguf::{GgufFile, Value};
use crate::runtime::profile::StepProfile;
use crate::runtime::wit::{Constraint, ModelInfo};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A tenant with its realm of the benchmarked model.
fn open_tenant(bench: &Bench, context_length: u32) -> anyhow::Result<Tenant> {
    let (mut tenant, _) = Tenant::instantiate(&bench.runtime, &bench.settings)?;
    tenant.open(&bench.model, context_length)?;
    Ok(tenant)
}

/// This process's resident memory, once glibc has returned the free heap it
/// keeps (`main.rs` raises its trim threshold): what the process holds, not
/// what earlier measurements happened to leave behind.
pub fn resident() -> anyhow::Result<Resident> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        let kib = line[name.len() + 1..].trim().trim_end_matches("kB").trim();
        kib.parse().with_context(|| format!("{name}: `{kib}`"))
    };
    Ok(Resident {
        vm_rss_kib: field("VmRSS")?,
        rss_anon_kib: field("RssAnon")?,
        rss_file_kib: field("RssFile")?,
        rss_shmem_kib: field("RssShmem")?,
        guest_pools_kib: guest_pools_kib(),
    })
}

/// Resident KiB of the pooling allocator's reservation for the instances'
/// linear memories: a contiguous run of mappings spanning at least 64 GiB (4 GiB
/// per memory slot; nothing else in the process reserves that much), counting
/// its anonymous pages and its memfd-backed memory images, but not the KV
/// caches that may sit right against it (marked `dd`, out of core dumps). 0
/// where /proc/self/smaps cannot be read.
fn guest_pools_kib() -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    // (start, end, whether guest memory can live there, resident KiB), in address order.
    let mut maps: Vec<(u64, u64, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            // `start-end perms offset dev inode [path]`
            let rest: Vec<&str> = fields.collect();
            let anonymous = rest.len() == 4 && rest[3] == "0";
            let memfd = rest.get(4).is_some_and(|path| path.starts_with("/memfd:"));
            maps.push((start, end, anonymous || memfd, 0));
        } else if first == "VmFlags:"
            && fields.any(|flag| flag == "dd")
            && let Some(last) = maps.last_mut()
        {
            last.2 = false;
        } else if first == "Rss:"
            && let Some(kib) = fields.next().and_then(|v| v.parse::<u64>().ok())
            && let Some(last) = maps.last_mut()
        {
            last.3 = kib;
        }
    }
    const POOL: u64 = 64 << 30;
    let (mut total, mut run_start, mut run_end, mut run_rss) = (0, 0, 0, 0);
    for &(start, end, guest, rss) in &maps {
        if start != run_end {
            if run_end - run_start >= POOL {
                total += run_rss;
            }
            (run_start, run_rss) = (start, 0);
        }
        run_end = end;
        if guest {
            run_rss += rss;
        }
    }
    if run_end - run_start >= POOL {
        total += run_rss;
    }
    total
}

/// Bytes of an f16 KV cache of `positions` positions for the model's shape, as
/// the GGUF states it (`{arch}.block_count`, KV heads and head dimensions).
fn kv_bytes(gguf: &GgufFile, positions: u32) -> anyhow::Result<u64> {
    let uint = |key: &str| match gguf.get(key) {
        Some(Value::Uint(v)) => Some(*v),
        Some(Value::Int(v)) => u64::try_from(*v).ok(),
        Some(Value::Array(crate::compute::gguf::Array::Uints(v))) => v.iter().copied().max(),
        _ => None,
    };
    let arch = match gguf.get("general.architecture") {
        Some(Value::Text(arch)) => arch.clone(),
        _ => anyhow::bail!("the model has no general.architecture"),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let layers = uint(&key("block_count")).context("no block_count")?;
    let heads = uint(&key("attention.head_count")).context("no attention.head_count")?;
    let kv_heads = uint(&key("attention.head_count_kv")).unwrap_or(heads);
    let embedding = uint(&key("embedding_length")).context("no embedding_length")?;
    let head_dim = uint(&key("attention.key_length")).unwrap_or(embedding / heads.max(1));
    let width = kv_heads * head_dim;
    Ok(KvCache::bytes_for(layers as u32, width as u32, positions))
}

/// Resident memory with 0, then each of `counts` tenants, each holding its own
/// instance, realm and a generation that has filled `positions` KV positions.
pub fn memory(bench: &Bench, counts: &[usize], positions: u32) -> anyhow::Result<Memory> {
    anyhow::ensure!(positions >= 2, "--memory-ctx must be at least 2");
    let baseline = resident()?;
    let mut tenants: Vec<(Tenant, Generation)> = Vec::new();
    let mut rows = Vec::new();
    let mut prompt = None;
    for &count in counts {
        while tenants.len() < count {
            eprintln!("memory: tenant {}/{count}", tenants.len() + 1);
            // A prompt of `positions` tokens fills as many KV positions; the
            // context holds one more, for the token it samples.
            let mut tenant = open_tenant(bench, positions + 1)?;
            if prompt.is_none() {
                prompt = Some(prompt_of(&mut tenant, positions as usize)?);
            }
            let text = prompt.as_deref().unwrap_or_default();
            let (generation, _) = tenant.complete(text, 1)?;
            let usage = tenant.next(&generation)?.0.context("no first token")?.usage;
            anyhow::ensure!(
                usage.prompt_tokens == positions,
                "filled {} positions, not {positions}",
                usage.prompt_tokens
            );
            tenants.push((tenant, generation));
        }
        rows.push(MemoryRow {
            tenants: count,
            resident: resident()?,
        });
    }
    let gguf = GgufFile::open(&bench.model_path).context("reading the model's shape")?;
    let kv_bytes_per_tenant = kv_bytes(&gguf, positions)?;
    for (mut tenant, generation) in tenants {
        tenant.release(generation)?;
    }
    Ok(Memory {
        positions,
        baseline,
        rows,
        kv_bytes_per_tenant,
    })
}

/// Instantiation of fresh instances, and realm constructors in fresh instances.
pub fn instantiation(bench: &Bench, instances: usize, constructions: usize) -> anyhow::Result<Instantiation> {
    let mut instance_us = None;
    if instances > 0 {
        eprintln!("instantiation: {instances} instances");
        // One untimed instance first: the pool's first use of a slot.
        drop(Tenant::instantiate(&bench.runtime, &bench.settings)?);
        let mut samples = Vec::with_capacity(instances);
        for _ in 0..instances {
            let (tenant, took) = Tenant::instantiate(&bench.runtime, &bench.settings)?;
            samples.push(took.as_secs_f64() * 1e6);
            drop(tenant);
        }
        instance_us = Some(Stats::of(&samples));
    }
    let (mut realm_first_ms, mut realm_ms) = (None, None);
    if constructions > 0 {
        eprintln!("instantiation: {constructions} realm constructors");
        let context = bench.settings.context_length;
        // The first realm maps the file; it stays mapped while this one lives,
        // as it does in a server where some tenant uses the model.
        let (mut first, _) = Tenant::instantiate(&bench.runtime, &bench.settings)?;
        realm_first_ms = Some(ms(first.open(&bench.model, context)?));
        let mut samples = Vec::with_capacity(constructions);
        for _ in 0..constructions {
            let (mut tenant, _) = Tenant::instantiate(&bench.runtime, &bench.settings)?;
            samples.push(ms(tenant.open(&bench.model, context)?));
        }
        realm_ms = Some(Stats::of(&samples));
    }
    Ok(Instantiation {
        instance_us,
        realm_first_ms,
        realm_ms,
    })
}

pub struct Speed {
    pub info: ModelSummary,
    pub rows: Vec<SpeedRow>,
    pub first_token: Vec<FirstTokenRow>,
    pub boundary: Option<Boundary>,
}

fn summary(bench: &Bench, info: &ModelInfo) -> ModelSummary {
    ModelSummary {
        architecture: info.architecture.clone(),
        name: info.name.clone(),
        vocab_size: info.vocab_size,
        file_bytes: std::fs::metadata(&bench.model_path).map_or(0, |m| m.len()),
    }
}

/// Prefill of `n` tokens from an empty cache (`pp n`), first tokens of
/// `n`-token prompts, and `n` sequential decode steps (`tg n`), on one tenant.
pub fn speed(
    bench: &Bench,
    prompts: &[u32],
    (gens, temperatures, constraints): (&[u32], &[f32], &[Option<Constraint>]),
    first_tokens: &[u32],
    repetitions: usize,
) -> anyhow::Result<Speed> {
    let mut tenant = open_tenant(bench, bench.settings.context_length)?;
    let info = tenant.info()?;
    let mut rows = Vec::new();
    let mut first_token = Vec::new();

    // Warm-up, as llama-bench does: one short prefill and a few decode steps.
    tenant.evaluate(&random_tokens(&info, 16))?;
    decode(&mut tenant, 4)?;

    for &n in prompts {
        let tokens = random_tokens(&info, n as usize);
        let mut samples = Vec::with_capacity(repetitions);
        for r in 0..repetitions {
            eprintln!("pp{n}: run {}/{repetitions}", r + 1);
            let timed = tenant.evaluate(&tokens)?;
            samples.push(n as f64 / timed.wall.as_secs_f64());
        }
        rows.push(SpeedRow {
            test: format!("pp{n}"),
            tokens: n,
            tokens_per_s: Stats::of(&samples),
        });
    }
    let mut steps = StepProfile::default();
    let mut decode_wall = Duration::ZERO;
    let decodes = constraints.iter().flat_map(|c| {
        gens.iter()
            .flat_map(move |&n| temperatures.iter().map(move |&t| (n, t, c)))
    });
    for (n, temperature, constraint) in decodes {
        tenant.temperature = temperature;
        tenant.constraint = constraint.clone();
        let mut test = match temperature {
            0.0 => format!("tg{n}"),
            t => format!("tg{n} T={t}"),
        };
        if constraint.is_some() {
            test.push_str(" json");
        }
        let mut samples = Vec::with_capacity(repetitions);
        for r in 0..repetitions {
            eprintln!("{test}: run {}/{repetitions}", r + 1);
            let (wall, profile, tokens) = decode(&mut tenant, n)?;
            samples.push(tokens as f64 / wall.as_secs_f64());
            decode_wall += wall;
            steps = StepProfile {
                steps: steps.steps + profile.steps,
                host_ns: steps.host_ns + profile.host_ns,
                kernel_ns: steps.kernel_ns + profile.kernel_ns,
            };
        }
        rows.push(SpeedRow {
            test,
            tokens: n,
            tokens_per_s: Stats::of(&samples),
        });
    }
    tenant.temperature = 0.0;
    tenant.constraint = None;
    for &n in first_tokens {
        let prompt = prompt_of(&mut tenant, n as usize)?;
        let mut samples = Vec::with_capacity(repetitions);
        for r in 0..repetitions {
            eprintln!("first token after {n} prompt tokens: run {}/{repetitions}", r + 1);
            let (generation, started) = tenant.complete(&prompt, 1)?;
            let (chunk, first) = tenant.next(&generation)?;
            let usage = chunk.context("no first token")?.usage;
            anyhow::ensure!(usage.prompt_tokens == n, "the prompt is {} tokens", usage.prompt_tokens);
            tenant.release(generation)?;
            samples.push(ms(started.wall + first.wall));
        }
        first_token.push(FirstTokenRow {
            prompt_tokens: n,
            ms: Stats::of(&samples),
        });
    }
    let boundary = (steps.steps > 0).then(|| {
        let per = |ns: f64| ns / 1e3 / steps.steps as f64;
        let total = decode_wall.as_nanos() as f64;
        Boundary {
            tokens: steps.steps,
            total_us: per(total),
            guest_us: per(total - steps.host_ns as f64),
            host_glue_us: per((steps.host_ns - steps.kernel_ns) as f64),
            kernels_us: per(steps.kernel_ns as f64),
        }
    });
    Ok(Speed {
        info: summary(bench, &info),
        rows,
        first_token,
        boundary,
    })
}

/// The tokens after the first of an `n + 1`-token generation from a
/// one-word prompt: their total wall time in `generation.next`, what the
/// `graph.run` calls inside spent, and their count (`n`, in fewer steps
/// where a constraint forced tokens).
fn decode(tenant: &mut Tenant, n: u32) -> anyhow::Result<(Duration, StepProfile, u32)> {
    // The shortest prompt: a single word (and BOS where the model adds one).
    let (generation, _) = tenant.complete("Once", n + 1)?;
    let first = tenant.next(&generation)?.0.context("no first token")?;
    let mut tokens = 0;
    let mut wall = Duration::ZERO;
    let mut steps = StepProfile::default();
    let mut done = first.finish.is_some();
    while !done {
        let (chunk, timed) = tenant.next(&generation)?;
        let chunk = chunk.context("the generation ended early")?;
        done = chunk.finish.is_some();
        anyhow::ensure!(
            !done || chunk.usage.completion_tokens == n + 1,
            "the generation ended after {} tokens (a --json-schema must allow longer output)",
            chunk.usage.completion_tokens
        );
        tokens += chunk.tokens.len() as u32;
        anyhow::ensure!(
            timed.steps.steps == 1,
            "a decode step ran {} graph steps",
            timed.steps.steps
        );
        wall += timed.wall;
        steps = StepProfile {
            steps: steps.steps + 1,
            host_ns: steps.host_ns + timed.steps.host_ns,
            kernel_ns: steps.kernel_ns + timed.steps.kernel_ns,
        };
    }
    tenant.release(generation)?;
    anyhow::ensure!(tokens > 0, "the first step took all {} tokens", n + 1);
    Ok((wall, steps, tokens))
}

/// What one concurrent tenant measured.
struct Trace {
    first_token: Duration,
    /// Times between consecutive chunks of the decode phase (a chunk is
    /// one token, or more where a constraint forced some).
    gaps: Vec<Duration>,
    /// Tokens of the decode phase.
    tokens: usize,
    finished: Instant,
}

/// `n` tenants, each on its own thread with its own instance and realm: all
/// prefill `prompt` tokens, wait for each other, then decode `steps` tokens
/// each, concurrently, their steps batched as the server batches them.
pub fn concurrent(
    bench: &Bench,
    n: usize,
    (prompt_tokens, steps): (u32, u32),
    temperature: f32,
    constraint: Option<&Constraint>,
) -> anyhow::Result<TenantsRow> {
    let json = if constraint.is_some() {
        ", constrained to the schema"
    } else {
        ""
    };
    eprintln!("tenants: {n} concurrent generations at temperature {temperature}{json}");
    let context = bench.settings.context_length;
    anyhow::ensure!(
        prompt_tokens + steps < context,
        "--tenant-prompt + --tenant-gen must fit --ctx-size"
    );
    // This tenant keeps the model mapped, so no worker's first token includes mapping it.
    let mut holder = open_tenant(bench, context)?;
    let prompt = Arc::new(prompt_of(&mut holder, prompt_tokens as usize)?);
    let barrier = Arc::new(Barrier::new(n + 1));
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let runtime = bench.runtime.clone();
            let settings = bench.settings.clone();
            let model = bench.model.clone();
            let (prompt, barrier) = (prompt.clone(), barrier.clone());
            let constraint = constraint.cloned();
            std::thread::Builder::new()
                .name(format!("bench-tenant-{i}"))
                .spawn(move || -> anyhow::Result<Trace> {
                    let prepared = (|| {
                        let (mut tenant, _) = Tenant::instantiate(&runtime, &settings)?;
                        tenant.temperature = temperature;
                        tenant.constraint = constraint;
                        tenant.open(&model, context)?;
                        let (generation, started) = tenant.complete(&prompt, steps + 1)?;
                        let (chunk, first) = tenant.next(&generation)?;
                        let chunk = chunk.context("no first token")?;
                        anyhow::ensure!(chunk.finish.is_none(), "the first step took all {} tokens", steps + 1);
                        anyhow::Ok((tenant, generation, started.wall + first.wall))
                    })();
                    // Every thread reaches the barrier, failed or not.
                    barrier.wait();
                    let (mut tenant, generation, first_token) = prepared?;
                    tenant.set_stepping(true);
                    let mut gaps = Vec::with_capacity(steps as usize);
                    let mut tokens = 0;
                    let mut last = Instant::now();
                    let mut done = false;
                    while !done {
                        let chunk = tenant.next(&generation)?.0.context("the generation ended early")?;
                        done = chunk.finish.is_some();
                        anyhow::ensure!(
                            !done || chunk.usage.completion_tokens == steps + 1,
                            "the generation ended after {} tokens (a --json-schema must allow longer output)",
                            chunk.usage.completion_tokens
                        );
                        tokens += chunk.tokens.len();
                        let now = Instant::now();
                        gaps.push(now - last);
                        last = now;
                    }
                    tenant.set_stepping(false);
                    tenant.release(generation)?;
                    Ok(Trace {
                        first_token,
                        gaps,
                        tokens,
                        finished: last,
                    })
                })
        })
        .collect::<Result<_, _>>()?;
    barrier.wait();
    let started = Instant::now();
    let scheduler = &bench.settings.compute.shared.scheduler;
    let before = scheduler.totals();
    let mut traces = Vec::with_capacity(n);
    for worker in workers {
        let trace = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a tenant thread panicked"))??;
        traces.push(trace);
    }
    let after = scheduler.totals();
    let batches = (after.batches - before.batches).max(1) as f64;
    let mean_batch = (after.sequences - before.sequences) as f64 / batches;
    let step_ms = ms(after.running - before.running) / batches;
    let gather_ms = ms(after.gathering - before.gathering) / batches;
    drop(holder);
    let finished = traces.iter().map(|t| t.finished).max().unwrap_or(started);
    let tokens: usize = traces.iter().map(|t| t.tokens).sum();
    let gaps: Vec<f64> = traces.iter().flat_map(|t| t.gaps.iter().map(|&g| ms(g))).collect();
    let firsts: Vec<f64> = traces.iter().map(|t| ms(t.first_token)).collect();
    Ok(TenantsRow {
        tenants: n,
        temperature,
        constrained: constraint.is_some(),
        prompt_tokens,
        decode_steps: steps,
        aggregate_tokens_per_s: tokens as f64 / (finished - started).as_secs_f64(),
        itl_ms: Stats::of(&gaps),
        first_token_ms: Stats::of(&firsts),
        mean_batch,
        step_ms,
        gather_ms,
    })
}
