//! The results of a bench run, as markdown tables or one JSON object.

use std::fmt::Write;

use serde::Serialize;

use super::Bench;

/// Samples of one figure and their summary (nearest-rank percentiles).
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: f64,
    pub samples: usize,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            median: percentile(&sorted, 50.0),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            p99: percentile(&sorted, 99.0),
            samples: sorted.len(),
        }
    }
}

/// The nearest-rank percentile of sorted samples; the median of an even count
/// is the mean of the middle two.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if p == 50.0 && n.is_multiple_of(2) {
        return (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
    }
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub architecture: String,
    pub name: String,
    pub vocab_size: u32,
    pub file_bytes: u64,
}

/// A prefill (`pp N`) or decode (`tg N`) test, in tokens per second.
#[derive(Debug, Serialize)]
pub struct SpeedRow {
    pub test: String,
    pub tokens: u32,
    pub tokens_per_s: Stats,
}

/// A completion request's time to its first token, in milliseconds.
#[derive(Debug, Serialize)]
pub struct FirstTokenRow {
    pub prompt_tokens: u32,
    pub ms: Stats,
}

#[derive(Debug, Serialize)]
pub struct Instantiation {
    /// A new store and component instance from the pre-instantiated component, µs.
    pub instance_us: Option<Stats>,
    /// The first realm constructor of the process: maps and indexes the GGUF, ms.
    pub realm_first_ms: Option<f64>,
    /// Later realm constructors (the file already mapped), each in a fresh instance, ms.
    pub realm_ms: Option<Stats>,
}

/// Resident memory of the process, from /proc/self/status, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Resident {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
    /// The part of VmRSS in the pooling allocator's slots: the guests' linear memories.
    pub guest_pools_kib: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryRow {
    pub tenants: usize,
    pub resident: Resident,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    /// Positions each tenant's generation has filled.
    pub positions: u32,
    /// The process before any tenant: runtime, compiled component, thread pools.
    pub baseline: Resident,
    pub rows: Vec<MemoryRow>,
    /// The f16 KV cache of `positions` positions, from the model's shape.
    pub kv_bytes_per_tenant: u64,
}

/// Where a decode token's time goes, per token, in microseconds.
#[derive(Debug, Serialize)]
pub struct Boundary {
    pub tokens: u64,
    /// The whole guest call `generation.next`.
    pub total_us: f64,
    /// Inside the guest: wasm code, and lifting and lowering across the boundary.
    pub guest_us: f64,
    /// Inside the host function `graph.run`, outside the executor.
    pub host_glue_us: f64,
    /// Inside the backend's executor (kernels and top-k).
    pub kernels_us: f64,
}

#[derive(Debug, Serialize)]
pub struct TenantsRow {
    pub tenants: usize,
    /// The sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Every generation was constrained to `--json-schema`.
    pub constrained: bool,
    pub prompt_tokens: u32,
    pub decode_steps: u32,
    /// Decode tokens of all tenants over the time from the common start of the
    /// decode phase to the last tenant's last token.
    pub aggregate_tokens_per_s: f64,
    /// Inter-token latency of every decode step of every tenant, ms.
    pub itl_ms: Stats,
    /// Each tenant's time to first token (its prefill, run concurrently), ms.
    pub first_token_ms: Stats,
    /// Sequences per batched step during the decode phase, on average.
    pub mean_batch: f64,
    /// A batched step's time in the backend, and the time its lane spent
    /// gathering it (waiting for the guests' next steps), ms on average.
    pub step_ms: f64,
    pub gather_ms: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub cpu: String,
    pub info: Option<ModelSummary>,
    pub speed: Vec<SpeedRow>,
    pub first_token: Vec<FirstTokenRow>,
    pub instantiation: Option<Instantiation>,
    pub memory: Option<Memory>,
    pub boundary: Option<Boundary>,
    pub tenants: Vec<TenantsRow>,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    pub fn new(bench: &Bench, device: &str, threads: usize) -> anyhow::Result<Self> {
        Ok(Self {
            model: bench.model.clone(),
            device: device.to_string(),
            threads,
            cpu: cpu_model(),
            info: None,
            speed: Vec::new(),
            first_token: Vec::new(),
            instantiation: None,
            memory: None,
            boundary: None,
            tenants: Vec::new(),
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## realm-host bench: {}, {} x {} threads ({})\n",
            self.model, self.device, self.threads, self.cpu
        );
        if let Some(info) = &self.info {
            let _ = writeln!(
                out,
                "model: {} `{}`, vocabulary {}, file {:.1} MiB\n",
                info.architecture,
                info.name,
                info.vocab_size,
                info.file_bytes as f64 / MIB
            );
        }
        if !self.speed.is_empty() || !self.first_token.is_empty() {
            let _ = writeln!(out, "| test | median | min | max | unit | runs |");
            let _ = writeln!(out, "|---|---:|---:|---:|---|---:|");
            for row in &self.speed {
                let s = &row.tokens_per_s;
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {:.2} | {:.2} | tokens/s | {} |",
                    row.test, s.median, s.min, s.max, s.samples
                );
            }
            for row in &self.first_token {
                let s = &row.ms;
                let _ = writeln!(
                    out,
                    "| first token, {}-token prompt | {:.1} | {:.1} | {:.1} | ms | {} |",
                    row.prompt_tokens, s.median, s.min, s.max, s.samples
                );
            }
            out.push('\n');
        }
        if let Some(inst) = &self.instantiation {
            let _ = writeln!(out, "| instantiation | median | min | max | unit | runs |");
            let _ = writeln!(out, "|---|---:|---:|---:|---|---:|");
            if let Some(s) = &inst.instance_us {
                let _ = writeln!(
                    out,
                    "| new tenant instance (store + instantiate) | {:.1} | {:.1} | {:.1} | µs | {} |",
                    s.median, s.min, s.max, s.samples
                );
            }
            if let Some(first) = inst.realm_first_ms {
                let _ = writeln!(
                    out,
                    "| first realm constructor (maps the file) | {first:.2} | | | ms | 1 |"
                );
            }
            if let Some(s) = &inst.realm_ms {
                let _ = writeln!(
                    out,
                    "| realm constructor (model open + tokenizer + graph) | {:.2} | {:.2} | {:.2} | ms | {} |",
                    s.median, s.min, s.max, s.samples
                );
            }
            out.push('\n');
        }
        if let Some(mem) = &self.memory {
            let _ = writeln!(
                out,
                "| tenants ({} positions each) | VmRSS MiB | RssAnon MiB | RssFile MiB | guest memories MiB | × 1 tenant |",
                mem.positions
            );
            let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
            let b = &mem.baseline;
            let _ = writeln!(
                out,
                "| 0 (runtime only) | {:.1} | {:.1} | {:.1} | {:.1} | |",
                mib(b.vm_rss_kib),
                mib(b.rss_anon_kib),
                mib(b.rss_file_kib),
                mib(b.guest_pools_kib)
            );
            let one = mem.rows.first().map(|r| r.resident.vm_rss_kib);
            for row in &mem.rows {
                let r = &row.resident;
                let ratio = one.map_or(f64::NAN, |one| r.vm_rss_kib as f64 / one as f64);
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
                    row.tenants,
                    mib(r.vm_rss_kib),
                    mib(r.rss_anon_kib),
                    mib(r.rss_file_kib),
                    mib(r.guest_pools_kib),
                    ratio
                );
            }
            if let (Some(first), Some(last)) = (mem.rows.first(), mem.rows.last())
                && last.tenants > first.tenants
            {
                let extra = (last.tenants - first.tenants) as f64;
                let per =
                    |f: fn(&Resident) -> u64| (f(&last.resident) as f64 - f(&first.resident) as f64) / extra / 1024.0;
                let _ = writeln!(
                    out,
                    "\neach further tenant: {:.1} MiB resident ({:.1} MiB anonymous, {:.1} MiB file, \
                     {:.1} MiB of it guest memory); its KV cache of {} positions is {:.1} MiB",
                    per(|r| r.vm_rss_kib),
                    per(|r| r.rss_anon_kib),
                    per(|r| r.rss_file_kib),
                    per(|r| r.guest_pools_kib),
                    mem.positions,
                    mem.kv_bytes_per_tenant as f64 / MIB
                );
            }
            out.push('\n');
        }
        if let Some(b) = &self.boundary {
            let share = |us: f64| 100.0 * us / b.total_us;
            let _ = writeln!(out, "| per decode token ({} tokens) | µs | share |", b.tokens);
            let _ = writeln!(out, "|---|---:|---:|");
            let _ = writeln!(out, "| generation.next (whole guest call) | {:.1} | 100% |", b.total_us);
            let _ = writeln!(
                out,
                "| guest: wasm + lifting/lowering | {:.1} | {:.1}% |",
                b.guest_us,
                share(b.guest_us)
            );
            let _ = writeln!(
                out,
                "| host graph.run outside the executor | {:.1} | {:.1}% |",
                b.host_glue_us,
                share(b.host_glue_us)
            );
            let _ = writeln!(
                out,
                "| executor: kernels + top-k | {:.1} | {:.1}% |",
                b.kernels_us,
                share(b.kernels_us)
            );
            out.push('\n');
        }
        if !self.tenants.is_empty() {
            let _ = writeln!(
                out,
                "| tenants | T | json | prompt | decode | aggregate decode tokens/s | per tenant tokens/s | ITL p50 ms | ITL p99 ms | first token p50 ms | mean batch | step ms | gather ms |"
            );
            let _ = writeln!(
                out,
                "|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in &self.tenants {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} | {:.1} | {:.2} | {:.2} |",
                    row.tenants,
                    row.temperature,
                    if row.constrained { "yes" } else { "no" },
                    row.prompt_tokens,
                    row.decode_steps,
                    row.aggregate_tokens_per_s,
                    row.aggregate_tokens_per_s / row.tenants as f64,
                    row.itl_ms.median,
                    row.itl_ms.p99,
                    row.first_token_ms.median,
                    row.mean_batch,
                    row.step_ms,
                    row.gather_ms
                );
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Stats, percentile};

    #[test]
    fn percentiles_are_nearest_rank_and_the_median_of_an_even_count_is_a_mean() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 50.0), 2.5);
        assert_eq!(percentile(&sorted, 99.0), 4.0);
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.samples), (2.0, 1.0, 3.0, 3));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Stats::of(&hundred).p99, 99.0);
    }
}
