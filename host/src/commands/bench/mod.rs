//! `realm-host bench`: prefill and decode speed with llama-bench's semantics,
//! time to first token, tenant instantiation and realm construction, resident
//! memory of 1 and many tenants, the boundary's share of a decode token, and
//! concurrent tenants. Every figure it prints is measured in this process.

mod measure;
mod report;
mod tenant;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::EngineArgs;
use crate::runtime::wit::Constraint;
use crate::runtime::{InstanceSettings, Runtime};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A model name in the models directory, or a path to a `.gguf` file.
    #[arg(long)]
    model: String,
    /// Prefill tests: tokens processed from an empty cache in one request
    /// (llama-bench's `-p`); 0 skips them.
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "128,512")]
    n_prompt: Vec<u32>,
    /// Decode tests: sequential one-token steps (llama-bench's `-n`); 0 skips them.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    n_gen: Vec<u32>,
    /// First-token tests: a completion request with a prompt of this many tokens,
    /// timed to its first token; 0 skips them.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    first_token: Vec<u32>,
    /// Runs of each prefill, decode and first-token test; the median is reported.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Fresh instances to time (instantiation from the pre-instantiated component); 0 skips.
    #[arg(long, default_value_t = 200)]
    instantiations: usize,
    /// Realm constructions (model open, metadata, tokenizer, graph) to time, each
    /// in a fresh instance; 0 skips.
    #[arg(long, default_value_t = 10)]
    constructions: usize,
    /// Tenant counts whose resident memory is measured, each tenant with its own
    /// instance, realm and a generation that has filled `--memory-ctx` positions; 0 skips.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    memory: Vec<usize>,
    /// Context (and positions filled) of each tenant in the memory test.
    #[arg(long, default_value_t = 512)]
    memory_ctx: u32,
    /// Concurrent tenants: each with its own instance and thread, one greedy
    /// generation of `--tenant-prompt` prompt tokens and `--tenant-gen` decode
    /// steps; e.g. `--tenants 1,4,16,64`. Off unless given.
    #[arg(long, value_delimiter = ',')]
    tenants: Vec<usize>,
    /// Prompt tokens of each concurrent tenant's generation.
    #[arg(long, default_value_t = 128)]
    tenant_prompt: u32,
    /// Decode steps of each concurrent tenant's generation (after its first token).
    #[arg(long, default_value_t = 128)]
    tenant_gen: u32,
    /// Sampling temperatures of the decode tests (`tg N`) and the tenants
    /// tests, each run at every one: 0 is greedy; above 0, top-k, top-p and
    /// min-p are off, as the OpenAI SDK sends it (the rows say `T=...`).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    temperature: Vec<f32>,
    /// A JSON Schema file: the decode and tenants tests run once more with
    /// every generation constrained to it (rows marked `json`). Its output
    /// must outlast the tests' steps (for example an array with `minItems`).
    #[arg(long)]
    json_schema: Option<PathBuf>,
    /// Print one JSON object instead of markdown tables.
    #[arg(long)]
    json: bool,
}

/// What every measurement needs.
pub(crate) struct Bench {
    pub runtime: Arc<Runtime>,
    pub settings: InstanceSettings,
    pub model: String,
    pub model_path: PathBuf,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.repetitions > 0, "--repetitions must be at least 1");
    anyhow::ensure!(
        args.temperature.iter().all(|t| t.is_finite() && *t >= 0.0),
        "--temperature takes finite values >= 0"
    );
    let schema = match &args.json_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(Constraint::JsonSchema(text))
        }
        None => None,
    };
    let constraints: Vec<Option<Constraint>> = std::iter::once(None).chain(schema.map(Some)).collect();
    let runtime = Runtime::load(&args.engine.component)?;
    let shared = args.engine.server_context()?;
    let device = shared.scheduler.backend().name();
    let settings = args.engine.local_settings(shared, true);
    let model_path = settings
        .compute
        .catalog
        .resolve(&args.model)
        .map_err(|e| anyhow::anyhow!("model `{}`: {e}", args.model))?;
    let bench = Bench {
        runtime,
        settings,
        model: args.model.clone(),
        model_path,
    };
    let threads = match args.engine.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut report = report::Report::new(&bench, device, threads)?;

    let nonzero = |v: &[u32]| v.iter().copied().filter(|&n| n > 0).collect::<Vec<_>>();
    let mut memory: Vec<usize> = args.memory.iter().copied().filter(|&n| n > 0).collect();
    memory.sort_unstable();
    memory.dedup();

    // Memory first, while the process holds nothing but the runtime.
    if !memory.is_empty() {
        report.memory = Some(measure::memory(&bench, &memory, args.memory_ctx)?);
    }
    if args.instantiations > 0 || args.constructions > 0 {
        report.instantiation = Some(measure::instantiation(&bench, args.instantiations, args.constructions)?);
    }
    let (prompts, gens, firsts) = (
        nonzero(&args.n_prompt),
        nonzero(&args.n_gen),
        nonzero(&args.first_token),
    );
    if !prompts.is_empty() || !gens.is_empty() || !firsts.is_empty() {
        let decodes = (&gens[..], &args.temperature[..], &constraints[..]);
        let speed = measure::speed(&bench, &prompts, decodes, &firsts, args.repetitions)?;
        report.info = Some(speed.info.clone());
        report.speed = speed.rows;
        report.first_token = speed.first_token;
        report.boundary = speed.boundary;
    }
    for constraint in &constraints {
        for &temperature in &args.temperature {
            for &n in args.tenants.iter().filter(|&&n| n > 0) {
                let steps = (args.tenant_prompt, args.tenant_gen);
                let row = measure::concurrent(&bench, n, steps, temperature, constraint.as_ref())?;
                report.tenants.push(row);
            }
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(())
}
