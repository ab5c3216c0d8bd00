//! `realm-host tokenize`: the token ids of a text, as the engine's tokenizer
//! makes them (BOS as the model says, special tokens parsed), like llama-tokenize.

use clap::Args;

use super::EngineArgs;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// A model name in the models directory, or a path to a `.gguf` file.
    #[arg(long)]
    model: String,
    /// Print one JSON array of ids on the last line instead of `id -> 'piece'` lines.
    #[arg(long)]
    json: bool,
    /// Do not add BOS/EOS.
    #[arg(long)]
    no_bos: bool,
    /// Treat special-token text as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// The text.
    text: String,
}

pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let instance = args.engine.local_instance(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let ids = runtime
        .block_on(instance.tokenize(&args.model, &args.text, !args.no_bos, !args.no_parse_special))
        .map_err(|e| anyhow::anyhow!("model `{}`: {e}", args.model))?;
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            println!("{id}");
        }
    }
    Ok(())
}
