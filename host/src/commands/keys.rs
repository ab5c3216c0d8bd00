//! `realm-host keys hash`: the line a tenants file stores for an API key.

use std::io::BufRead;

use anyhow::bail;
use clap::Subcommand;

use crate::tenants::keys::KeyHash;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print the hash of an API key, for `api_keys` in the tenants file. Reads
    /// the key from the first line of stdin when it is not given (keeping it
    /// out of the shell's history).
    Hash { key: Option<String> },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Hash { key } => {
            let key = match key {
                Some(key) => key,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if key.is_empty() {
                bail!("the key is empty");
            }
            println!("{}", KeyHash::of(&key));
            Ok(())
        }
    }
}
