//! realm-host: serves realm engine components to many tenants.

use std::process::ExitCode;

use clap::Parser;
use realm_host::commands;

fn main() -> ExitCode {
    keep_freed_memory();
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

/// A step's values come and go every step (16 decode rows of gemma3's logits
/// alone are 16 MiB, twice). glibc maps such buffers and unmaps them when
/// freed, or gives the top of its heap back to the kernel, so every step
/// faulted their pages in again and had the kernel zero them: 10 to 25% of a
/// 16-tenant CPU decode step. Buffers up to 32 MiB (glibc's most) now come
/// from the heap, and up to 256 MiB of free heap is kept (setting either
/// turns off glibc's own adjustment, so both are set).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
