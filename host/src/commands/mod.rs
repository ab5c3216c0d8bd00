//! The command line: `serve`, the one-shot `run`, `bench`, `tokenize` and
//! `models`, and `keys` for the tenants file.

mod bench;
mod keys;
mod run;
mod serve;
mod tokenize;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::compute::{self, BatchPolicy, Budget, Device, ModelCatalog, Scheduler};
use crate::runtime::{InstanceHandle, InstanceSettings, Runtime, ServerContext, TenantCompute};

#[derive(Parser)]
#[command(
    name = "realm-host",
    version,
    about = "Multi-tenant LLM inference: realm engine components on shared weights"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(serve::ServeArgs),
    /// Complete one prompt and stream the text to stdout.
    Run(run::RunArgs),
    /// Measure prefill and decode speed, instantiation, memory and concurrency.
    Bench(bench::BenchArgs),
    /// Print the token ids of a text.
    Tokenize(tokenize::TokenizeArgs),
    /// API keys for the tenants file.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// List the models in the models directory.
    Models {
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
    },
}

/// Options every command that runs the engine shares.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// The engine component (realm.wasm).
    #[arg(long)]
    component: PathBuf,
    /// Where model names are looked up (`NAME` is `DIR/NAME.gguf`).
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// CPU threads for the compute backend; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Positions per sequence (prompt and completion), capped at the model's.
    #[arg(long, default_value_t = 4096)]
    ctx_size: u32,
    /// Linear memory limit of each engine instance, in MiB.
    #[arg(long, default_value_t = 2048)]
    guest_memory_mib: usize,
    /// The longest one call into the engine may run (a prefill chunk, a decode
    /// step, loading a model) before the instance is interrupted and replaced.
    #[arg(long, default_value_t = 300_000)]
    call_deadline_ms: u64,
    /// Sequences per batched step (steps of the same model from every tenant
    /// run as one batch); 1 runs each step alone.
    #[arg(long, default_value_t = BatchPolicy::default().max_sequences)]
    max_batch: usize,
    /// Tokens per batched step: longer prompts run in chunks of what is left
    /// beside the decode steps.
    #[arg(long, default_value_t = BatchPolicy::default().max_tokens)]
    max_batch_tokens: usize,
    /// Prompt tokens per chunk while other sequences' decode steps share the
    /// batch: each of their tokens waits for at most this much prefill.
    #[arg(long, default_value_t = BatchPolicy::default().prefill_beside_decode)]
    max_prefill_beside_decode: usize,
    /// The longest a step waits for other tenants' steps to join its batch, in
    /// milliseconds (a lone sequence never waits).
    #[arg(long, default_value_t = BatchPolicy::default().wait.as_secs_f64() * 1000.0)]
    batch_wait_ms: f64,
}

impl EngineArgs {
    /// The runtime and a single local tenant's instance, as the one-shot commands use them.
    fn local_instance(&self, allow_paths: bool) -> anyhow::Result<InstanceHandle> {
        let runtime = Runtime::load(&self.component)?;
        let shared = self.server_context()?;
        let settings = self.local_settings(shared, allow_paths);
        // The worker runs on the engine executor; this only awaits its start.
        let starter = tokio::runtime::Builder::new_current_thread().build()?;
        starter.block_on(InstanceHandle::spawn(runtime, settings))
    }

    fn call_deadline(&self) -> Duration {
        Duration::from_millis(self.call_deadline_ms)
    }

    fn batch_policy(&self) -> anyhow::Result<BatchPolicy> {
        anyhow::ensure!(self.max_batch >= 1, "--max-batch must be at least 1");
        anyhow::ensure!(self.max_batch_tokens >= 1, "--max-batch-tokens must be at least 1");
        anyhow::ensure!(
            self.max_prefill_beside_decode >= 1,
            "--max-prefill-beside-decode must be at least 1"
        );
        anyhow::ensure!(
            self.batch_wait_ms.is_finite() && (0.0..=1000.0).contains(&self.batch_wait_ms),
            "--batch-wait-ms must be between 0 and 1000"
        );
        Ok(BatchPolicy {
            max_sequences: self.max_batch,
            max_tokens: self.max_batch_tokens,
            prefill_beside_decode: self.max_prefill_beside_decode,
            wait: Duration::from_secs_f64(self.batch_wait_ms / 1000.0),
        })
    }

    fn server_context(&self) -> anyhow::Result<Arc<ServerContext>> {
        let policy = self.batch_policy()?;
        let backend = compute::start_backend(self.device, self.threads)?;
        tracing::info!(backend = backend.name(), ?policy, "compute backend ready");
        ServerContext::new(Scheduler::new(backend, policy))
    }

    fn local_settings(&self, shared: Arc<ServerContext>, allow_paths: bool) -> InstanceSettings {
        InstanceSettings {
            compute: TenantCompute {
                tenant: "local".into(),
                shared,
                catalog: ModelCatalog {
                    dir: self.models_dir.clone(),
                    allow_paths,
                },
                allowed_models: None,
                kv_tokens: Budget::unlimited("the KV tokens of tenant `local`"),
                batch_weight: 1,
            },
            guest_memory: self.guest_memory_mib << 20,
            context_length: self.ctx_size,
            call_deadline: self.call_deadline(),
        }
    }
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,realm_host=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Tokenize(args) => tokenize::tokenize(args),
        Command::Keys(command) => keys::keys(command),
        Command::Models { models_dir } => {
            let catalog = ModelCatalog {
                dir: models_dir,
                allow_paths: false,
            };
            for name in catalog.list() {
                println!("{name}");
            }
            Ok(())
        }
    }
}
