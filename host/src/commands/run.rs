//! `realm-host run`: one completion, streamed to stdout as it is generated.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::EngineArgs;
use crate::runtime::wit::{CompletionRequest, Sampling};
use crate::runtime::{Failure, GenerationEvent};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A model name in the models directory, or a path to a `.gguf` file.
    #[arg(long)]
    model: String,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Nucleus sampling threshold; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Minimum probability relative to the top token; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Seed of the sampler (same seed, same output).
    #[arg(long)]
    seed: Option<u64>,
    /// Repetition penalty over the last `--penalty-last-n` tokens; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Presence penalty in [-2, 2]; 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Frequency penalty in [-2, 2]; 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Tokens the penalties look back over; 0 = all.
    #[arg(long, default_value_t = 64)]
    penalty_last_n: u32,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// The prompt.
    prompt: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let instance = args.engine.local_instance(true)?;
    let request = CompletionRequest {
        prompt: args.prompt,
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            seed: args.seed,
            repeat_penalty: args.repeat_penalty,
            presence_penalty: args.presence_penalty,
            frequency_penalty: args.frequency_penalty,
            penalty_last_n: args.penalty_last_n,
            logit_bias: Vec::new(),
        },
        ignore_eos: args.ignore_eos,
        stop: args.stop,
        logprobs: None,
        constraint: None,
    };
    let started = Instant::now();
    let mut events = instance.complete(&args.model, request);
    let mut stdout = std::io::stdout().lock();
    let mut first_token = None;
    let mut usage = None;
    while let Some(event) = events.blocking_recv() {
        match event {
            GenerationEvent::Chunk(chunk) => {
                first_token.get_or_insert_with(Instant::now);
                stdout.write_all(chunk.text.as_bytes()).context("writing to stdout")?;
                stdout.flush().context("writing to stdout")?;
                usage = Some(chunk.usage);
                if chunk.finish.is_some() {
                    break;
                }
            }
            GenerationEvent::Failed(failure @ Failure::Engine(_)) => anyhow::bail!("model `{}`: {failure}", args.model),
            GenerationEvent::Failed(failure) => anyhow::bail!("{failure}"),
        }
    }
    // The completion alone goes to stdout; the line break ends the terminal line.
    eprintln!();
    if let (Some(first), Some(usage)) = (first_token, usage) {
        let decode = first.elapsed().as_secs_f64();
        let decoded = usage.completion_tokens.saturating_sub(1);
        eprintln!(
            "prompt: {} tokens, first token after {:.0} ms; decode: {} tokens in {:.2} s ({:.1} tokens/s)",
            usage.prompt_tokens,
            (first - started).as_secs_f64() * 1e3,
            decoded,
            decode,
            decoded as f64 / decode.max(1e-9)
        );
    }
    Ok(())
}
