//! `onramp`: the server (`onramp serve`) and the admin CLI.

mod cli;
mod cli_artifacts;
mod cli_provisioning;
mod config;
mod serve;
mod telemetry;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let args = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(args))
}
