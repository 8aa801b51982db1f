//! `onramp-bench`: load scenarios run against a real `onramp serve`, one
//! subcommand per scenario. Each run starts its own server on a fresh data
//! directory, prepares its credentials before the clock starts, and prints a
//! table (or, with `--json`, one JSON object) of the figures it measured.

mod est;
mod https;
mod mqtt;
mod ocsp;
mod onboard;
mod report;
mod revocation;
mod rollout;
mod rotate;
mod server;
mod shadow_bench;
mod sys;

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
    /// MQTT connection set-up: TCP, mutual TLS, CONNECT/CONNACK and
    /// DISCONNECT, Onramp and Mosquitto side by side.
    MqttConnect(mqtt::connect::ConnectArgs),
    /// MQTT idle connections: how many each broker holds and the memory
    /// each takes, Onramp and Mosquitto side by side.
    MqttIdle(mqtt::idle::IdleArgs),
    /// MQTT fan-in: many publishers, one subscriber, QoS 0 and 1, Onramp and
    /// Mosquitto side by side.
    MqttFanin(mqtt::fanin::FaninArgs),
    /// MQTT connection churn soak: clients connect (a new client id each
    /// time), publish at QoS 1 and disconnect for a long time; the broker's
    /// RSS after warm-up against its RSS at the end.
    MqttChurn(mqtt::churn::ChurnArgs),
    /// Holds connections for `mqtt-idle` (started by it).
    #[command(hide = true)]
    MqttIdleWorker(mqtt::idle::WorkerArgs),
    /// Device shadows: MQTT shadow updates per second, and the time a
    /// desired-state change made over REST takes to reach the device.
    Shadow(shadow_bench::ShadowArgs),
    /// Fleet provisioning by claim: devices connect with a shared claim
    /// certificate, get a certificate (CreateKeysAndCertificate or
    /// CreateCertificateFromCsr), register a thing and connect as it.
    Onboard(onboard::OnboardArgs),
    /// Revocation reaches live connections: devices stay connected over
    /// MQTT while an operator revokes (or suspends) some of them; the time
    /// from each API answer to the server closing that connection.
    Revocation(revocation::RevocationArgs),
    /// AWS IoT Jobs over MQTT: one job to every device as fast as the
    /// server takes the executions' updates, then a job paced by
    /// `maximumPerMinute`, its releases counted per minute.
    Rollout(rollout::RolloutArgs),
    /// Certificate rotation over MQTT: every connected device asks for a
    /// new certificate at once and reconnects with it.
    Rotate(rotate::RotateArgs),
    /// The OCSP responder: many relying parties asking about one certificate.
    Ocsp(ocsp::OcspArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Est(args) => est::run(args).await,
        Command::MqttConnect(args) => mqtt::connect::run(args).await,
        Command::MqttIdle(args) => mqtt::idle::run(args).await,
        Command::MqttFanin(args) => mqtt::fanin::run(args).await,
        Command::MqttChurn(args) => mqtt::churn::run(args).await,
        Command::Shadow(args) => shadow_bench::run(args).await,
        Command::Onboard(args) => onboard::run(args).await,
        Command::Revocation(args) => revocation::run(args).await,
        Command::Rollout(args) => rollout::run(args).await,
        Command::Rotate(args) => rotate::run(args).await,
        Command::Ocsp(args) => ocsp::run(args).await,
        Command::MqttIdleWorker(args) => {
            return match mqtt::idle::worker(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("onramp-bench mqtt-idle-worker: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
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
