//! `dsf-bench`: the loopback load runs, each figure against a baseline measured in the same run.
//! With no scenario flag it runs them all (websocket, load, hostile, BPE, network, and
//! `dsf-fhir-server`'s start-up when the release binary is built).

use clap::Parser;
use dsf_bench::{bpe, hostile, load, network, observed, replicas, startup, stored, websocket};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    version,
    about = "dsf-rs loopback load runs against same-run baselines"
)]
#[command(group = clap::ArgGroup::new("scenario").multiple(false))]
struct Cli {
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds per scenario
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also run against PostgreSQL at this URL (load, websocket and stored runs)
    #[arg(long)]
    postgres: Option<String>,
    /// Only the websocket subscription scenarios
    #[arg(long, group = "scenario")]
    websocket_only: bool,
    /// Only the load run: create, read and search against their same-run baselines
    #[arg(long, group = "scenario")]
    load_only: bool,
    /// Only the audit log's and metrics' cost: reads of two dsf-fhir-server processes (the
    /// release binary next to this one), one with both off and one with both on, in turns
    #[arg(long, group = "scenario")]
    observed_only: bool,
    /// The observed run's control: the same two processes and turns with both servers off,
    /// to show what the set-up alone makes of the ratio
    #[arg(long, group = "scenario")]
    observed_control: bool,
    /// Only the hostile load: reads with and without a connection flood and hostile clients,
    /// and the memory of oversized requests
    #[arg(long, group = "scenario")]
    hostile_only: bool,
    /// Only the BPE scenarios: ping/pong round trips between two organisations, a
    /// 10-service-task chain, and dsf-bpe's start-up time and idle memory
    #[arg(long, group = "scenario")]
    bpe_only: bool,
    /// Only the network scenario: a ping from one organisation to 10 and to 50 others (mesh),
    /// start-up time and resident memory per organisation
    #[arg(long, group = "scenario")]
    network_only: bool,
    /// Only the replica scenario (needs --postgres): round trips with one BPE per
    /// organisation against two sharing a PostgreSQL state database, PostgreSQL's cost per
    /// round trip, and the fail-over time when one of two BPEs is killed
    #[arg(long, group = "scenario")]
    replicas_only: bool,
    /// Only the stored-scale scenario: create, read and the BPE's searches on an empty store
    /// and again after loading this many Tasks
    #[arg(long, group = "scenario")]
    stored: Option<usize>,
}

impl Cli {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// SQLite always, then PostgreSQL when a URL is given.
    fn backends(&self) -> impl Iterator<Item = Option<String>> {
        std::iter::once(None).chain(self.postgres.clone().map(Some))
    }
}

#[tokio::main]
async fn main() -> Result<(), dsf_bin::Failure> {
    dsf_bin::init_logging_at("warn");
    let cli = Cli::parse();
    if let Some(stored) = cli.stored {
        stored_runs(&cli, stored).await?;
    } else if cli.load_only {
        load_runs(&cli).await?;
    } else if cli.observed_only || cli.observed_control {
        observed_run(&cli).await?;
    } else if cli.websocket_only {
        websocket_runs(&cli).await?;
    } else if cli.hostile_only {
        hostile_run(&cli).await?;
    } else if cli.bpe_only {
        bpe_run(&cli).await?;
    } else if cli.network_only {
        network_run().await?;
    } else if cli.replicas_only {
        replicas_run(&cli).await?;
    } else {
        websocket_runs(&cli).await?;
        load_runs(&cli).await?;
        observed_run(&cli).await?;
        hostile_run(&cli).await?;
        bpe_run(&cli).await?;
        network_run().await?;
        replicas_run(&cli).await?;
        startup_run().await?;
    }
    Ok(())
}

async fn load_runs(cli: &Cli) -> Result<(), BoxError> {
    for postgres in cli.backends() {
        let report = load::run(load::LoadSettings {
            concurrency: cli.concurrency,
            duration: cli.duration(),
            postgres,
        })
        .await?;
        println!("{}", report.markdown());
    }
    Ok(())
}

async fn websocket_runs(cli: &Cli) -> Result<(), BoxError> {
    for postgres in cli.backends() {
        let report = websocket::run(websocket::WebsocketSettings {
            rate: 1000,
            subscribers: 10,
            duration: cli.duration(),
            concurrency: cli.concurrency,
            postgres,
        })
        .await?;
        println!("{}", report.markdown());
    }
    Ok(())
}

async fn stored_runs(cli: &Cli, stored: usize) -> Result<(), BoxError> {
    for postgres in cli.backends() {
        let report = stored::run(stored::StoredSettings {
            stored,
            concurrency: cli.concurrency,
            duration: cli.duration(),
            postgres,
        })
        .await?;
        println!("{}", report.markdown());
    }
    Ok(())
}

async fn hostile_run(cli: &Cli) -> Result<(), BoxError> {
    let report = hostile::run(hostile::HostileSettings {
        concurrency: cli.concurrency.min(4),
        duration: cli.duration(),
        idle_connections: 1_000,
        hostile_clients: 20,
    })
    .await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn bpe_run(cli: &Cli) -> Result<(), BoxError> {
    let report = bpe::run(bpe::BpeLoadSettings {
        concurrency: cli.concurrency,
        duration: cli.duration(),
    })
    .await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn replicas_run(cli: &Cli) -> Result<(), BoxError> {
    let Some(postgres) = cli.postgres.clone() else {
        println!(
            "replicas: skipped (give --postgres <url>: BPEs share a PostgreSQL state database)"
        );
        return Ok(());
    };
    let report = replicas::run(replicas::ReplicaSettings {
        concurrency: cli.concurrency,
        duration: cli.duration(),
        postgres,
    })
    .await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn network_run() -> Result<(), BoxError> {
    let report = network::run(&[10, 50], 19_001).await?;
    println!("{}", report.markdown());
    Ok(())
}

/// The release `dsf-fhir-server` next to this executable; `None`, having said that `what`
/// is skipped, when it is not built.
fn release_server(what: &str) -> Result<Option<std::path::PathBuf>, BoxError> {
    let server = std::env::current_exe()?.with_file_name("dsf-fhir-server");
    if server.exists() {
        return Ok(Some(server));
    }
    println!(
        "{what}: skipped (no {} yet; build it with `cargo build --release -p dsf-bin`)",
        server.display()
    );
    Ok(None)
}

async fn observed_run(cli: &Cli) -> Result<(), BoxError> {
    let Some(server) = release_server("audit log and metrics on against off")? else {
        return Ok(());
    };
    let sides = if cli.observed_control {
        observed::Sides::BothOff
    } else {
        observed::Sides::OffAndOn
    };
    let report = observed::run(&server, sides, cli.concurrency, cli.duration()).await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn startup_run() -> Result<(), BoxError> {
    let Some(server) = release_server("dsf-fhir-server start-up and memory")? else {
        return Ok(());
    };
    let (startup, rss_kib) = startup::startup_and_memory(&server).await?;
    println!(
        "dsf-fhir-server ({}): start-up to first served request {:.0} ms; resident memory when idle {:.1} MiB",
        server.display(),
        startup.as_secs_f64() * 1000.0,
        rss_kib as f64 / 1024.0
    );
    Ok(())
}
