//! `onramp-bench`: load scenarios run against a real `onramp serve`, one
//! subcommand per scenario. Each run starts its own server on a fresh data
//! directory, prepares its credentials before the clock starts, and prints a
//! table (or, with `--json`, one JSON object) of the figures it measured.

mod est;
mod https;
mod report;
mod server;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "onramp-bench",
    version,
    about = "Load scenarios against a real Onramp server"
)]
struct Cli {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// EST token enrolment: every enrolment is a fresh TCP and TLS connection
    /// and one `POST /.well-known/est/simpleenroll`.
    Est(est::EstArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Est(args) => est::run(args).await,
    };
    match result.and_then(|report| report.print(cli.json).map(|()| report.failed)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("onramp-bench: {failed} operations failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("onramp-bench: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
