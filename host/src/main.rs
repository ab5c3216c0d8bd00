//! realm-host: serves realm engine components to many tenants.

use std::process::ExitCode;

use clap::Parser;
use realm_host::commands;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    commands::init_logging(&cli);
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
