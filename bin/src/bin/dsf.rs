//! The dsf-rs developer CLI: development certificates and a local multi-organisation network
//! on loopback.

use clap::{Parser, Subcommand};
use dsf_bin::dev_network::{DevNetwork, DevNetworkSettings, NetworkDescription, Topology};
use dsf_bin::{init_logging_at, shutdown_signal};
use dsf_core::DevPki;
use dsf_fhir::FhirClient;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "dsf-rs developer tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development helpers (never for production)
    #[command(subcommand)]
    Dev(Dev),
}

#[derive(Subcommand)]
enum Dev {
    /// Generate a dev CA and server and client certificates for organisations and users
    Certs {
        #[arg(long, default_value = "dev-certs")]
        out: PathBuf,
        /// Organisation identifiers (each gets server.crt and client.crt)
        #[arg(long = "org", required = true)]
        orgs: Vec<String>,
        /// Local user names (each gets <name>.crt)
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// Run a local network of DSF organisations on loopback (a FHIR server and a BPE each, in
    /// this process; the BPEs run the plugin files ping-pong, hello-world and allow-list),
    /// with generated certificates; pings from the first organisation to all others once it
    /// runs
    Up {
        #[arg(long, default_value = "dev-network")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        organizations: usize,
        #[arg(long, default_value_t = 8001)]
        base_port: u16,
        #[arg(long, value_enum, default_value_t = Topology::Mesh)]
        topology: Topology,
        /// FHIR servers on PostgreSQL at this URL (a schema per organisation) instead of SQLite
        #[arg(long)]
        postgres: Option<String>,
        /// How long a ping waits for a pong (ISO 8601; the ping-pong plugin's
        /// DEV_DSF_BPE_PING_PONG_TIMEOUT)
        #[arg(long, default_value = "PT20S")]
        pong_timeout: String,
        /// The plugin directory every BPE runs (default: <dir>/process, linking the reference
        /// plugin files dsf-process-ping-pong, -hello-world and -allow-list found next to
        /// this executable, as `cargo build --release --bins` leaves them)
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Check connectivity, ping from every organisation to all it may reach, check every
        /// status, print the result and exit (non-zero if anything is wrong)
        #[arg(long)]
        smoke: bool,
        /// Status ports on loopback (liveness, readiness, Prometheus metrics): organisation
        /// i's FHIR server at this port + 2i, its BPE at + 2i + 1 (listed in network.json)
        #[arg(long)]
        status_base_port: Option<u16>,
    },
    /// Start a ping on a running dev network and print each target's status
    Ping {
        #[arg(long, default_value = "dev-network")]
        dir: PathBuf,
        /// The pinging organisation (identifier or index in network.json; default the first)
        #[arg(long)]
        from: Option<String>,
        /// Organisations to ping (identifiers); all it may reach when absent
        #[arg(long = "to")]
        to: Vec<String>,
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
}

/// What `dsf dev up` was asked for.
struct UpOptions {
    dir: PathBuf,
    count: usize,
    base_port: u16,
    topology: Topology,
    postgres: Option<String>,
    pong_timeout: String,
    plugins: Option<PathBuf>,
    smoke: bool,
    status_base_port: Option<u16>,
}

async fn up(options: UpOptions) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let UpOptions {
        dir,
        count,
        base_port,
        topology,
        postgres,
        pong_timeout: pong_timeout_text,
        plugins,
        smoke,
        status_base_port,
    } = options;
    let pong_timeout = pong_timeout(&pong_timeout_text)?;
    let plugin_directory = match plugins {
        Some(plugins) => plugins,
        None => {
            let plugins = dir.join("process");
            let files = dsf_bin::reference_plugin_files()
                .map_err(|e| format!("{e} (or pass --plugins DIR)"))?;
            dsf_bin::plugin_directory(&plugins, &files)?;
            plugins
        }
    };
    let started = std::time::Instant::now();
    let network = DevNetwork::start(DevNetworkSettings {
        dir: dir.clone(),
        organizations: count,
        base_port,
        topology,
        postgres,
        plugin_directory: plugin_directory.clone(),
        plugin_config: vec![(
            dsf_plugin_ping_pong::PONG_TIMEOUT_PROPERTY.to_owned(),
            pong_timeout_text.clone(),
        )],
        status_base_port,
    })
    .await?;
    let description = network.description(&dir);
    std::fs::write(
        dir.join("network.json"),
        serde_json::to_string_pretty(&description)?,
    )?;
    println!(
        "DSF dev network: {count} organisations ({}), each a FHIR server and a BPE, running after {} ms",
        description.topology,
        started.elapsed().as_millis()
    );
    if let Some(bpe) = network.bpes.first() {
        println!("Plugin files ({}):", plugin_directory.display());
        for file in &bpe.report().plugin_files {
            if let Ok(processes) = &file.outcome {
                println!(
                    "  {}  {}: {}",
                    file.file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    file.plugin.as_deref().unwrap_or_default(),
                    processes.join(", ")
                );
            }
        }
    }
    for o in &description.organizations {
        println!("  {}  {}", o.identifier, o.fhir_base_url);
    }
    println!(
        "Description (URLs, certificates): {}",
        dir.join("network.json").display()
    );
    println!(
        "Start a ping:  {} dev ping --dir {} [--from <org>] [--to <org> …]",
        std::env::current_exe()
            .map(|e| e.display().to_string())
            .unwrap_or_else(|_| "dsf".into()),
        dir.display()
    );
    if let Some(first) = description.organizations.first() {
        println!(
            "See results:   curl --cacert {} --cert {} --key {} -H 'Accept: application/fhir+json' '{}/Task?_sort=-_lastUpdated&_count=5'",
            description.ca_certificate.display(),
            first.client_certificate.display(),
            first.client_key.display(),
            first.fhir_base_url
        );
    }
    let wait = pong_timeout * 2 + std::time::Duration::from_secs(30);
    let result = if smoke {
        match check(&network).await {
            Ok(()) => smoke_pings(&network, wait).await,
            Err(e) => Err(e),
        }
    } else {
        if count > 1 {
            let from = &network.organizations[0];
            match dsf_bin::ping::ping(&network.client(0)?, &from.identifier, &[], wait).await {
                Ok(outcome) => print_outcome(&from.identifier, &outcome),
                Err(e) => eprintln!("first ping failed: {}", dsf_core::ErrorChain(e.as_ref())),
            }
        }
        println!("Running; Ctrl-C stops the network.");
        shutdown_signal().await;
        Ok(())
    };
    network.stop().await;
    result
}

fn pong_timeout(text: &str) -> Result<std::time::Duration, String> {
    dsf_bin::iso_duration(text, "--pong-timeout")
}

fn print_outcome(from: &str, outcome: &dsf_bin::ping::PingOutcome) {
    println!(
        "ping from {from} (Task/{}): {} after {} ms",
        outcome.task_id,
        outcome.task_status,
        outcome.elapsed.as_millis()
    );
    for s in &outcome.statuses {
        println!(
            "  {:<24} {:<14}{}",
            s.organization,
            s.status,
            s.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
}

/// A ping from every organisation: every organisation it may reach answers (`pong-received`),
/// and it pings no one else.
async fn smoke_pings(
    network: &DevNetwork,
    wait: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (orgs, topology) = (&network.organizations, network.topology);
    let mut failures = 0;
    for (i, org) in orgs.iter().enumerate() {
        let outcome = dsf_bin::ping::ping(&network.client(i)?, &org.identifier, &[], wait).await?;
        print_outcome(&org.identifier, &outcome);
        let mut expected: Vec<&str> = orgs
            .iter()
            .enumerate()
            .filter(|(j, _)| topology.allows(i, *j))
            .map(|(_, o)| o.identifier.as_str())
            .collect();
        expected.sort_unstable();
        let mut answered: Vec<&str> = outcome
            .statuses
            .iter()
            .filter(|s| s.status == dsf_plugin_ping_pong::STATUS_PONG_RECEIVED)
            .map(|s| s.organization.as_str())
            .collect();
        answered.sort_unstable();
        let ok = outcome.task_status == "completed"
            && answered == expected
            && outcome.statuses.len() == expected.len();
        if !ok {
            failures += 1;
            println!("FAIL {}: expected pongs from {expected:?}", org.identifier);
        }
    }
    if failures > 0 {
        return Err(format!("{failures} pings had wrong statuses").into());
    }
    println!(
        "all {} pings answered by every organisation allowed",
        orgs.len()
    );
    Ok(())
}

/// `dsf dev ping`: a ping on a running network described by `<dir>/network.json`.
async fn ping_command(
    dir: PathBuf,
    from: Option<String>,
    to: Vec<String>,
    timeout: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let network: NetworkDescription =
        serde_json::from_slice(&std::fs::read(dir.join("network.json"))?)?;
    let pick = |wanted: &str| {
        wanted
            .parse::<usize>()
            .ok()
            .and_then(|i| network.organizations.get(i))
            .or_else(|| {
                network
                    .organizations
                    .iter()
                    .find(|o| o.identifier == wanted)
            })
    };
    let origin = match &from {
        Some(wanted) => {
            pick(wanted).ok_or_else(|| format!("no organisation '{wanted}' in network.json"))?
        }
        None => network
            .organizations
            .first()
            .ok_or("network.json lists no organisation")?,
    };
    let mut endpoints = Vec::new();
    for wanted in &to {
        let target =
            pick(wanted).ok_or_else(|| format!("no organisation '{wanted}' in network.json"))?;
        endpoints.push(dsf_fhir::server::endpoint_identifier(&target.fhir_base_url));
    }
    let tls = dsf_core::TlsFiles {
        certificate: origin.client_certificate.clone(),
        private_key: origin.client_key.clone(),
        trusted_cas: network.ca_certificate.clone(),
    }
    .client_config()?;
    let client = FhirClient::new(&origin.fhir_base_url, Arc::new(tls))?;
    let outcome = dsf_bin::ping::ping(&client, &origin.identifier, &endpoints, timeout).await?;
    print_outcome(&origin.identifier, &outcome);
    if outcome
        .statuses
        .iter()
        .all(|s| s.status == dsf_plugin_ping_pong::STATUS_PONG_RECEIVED)
    {
        Ok(())
    } else {
        Err("not every target answered".into())
    }
}

/// Every organisation's client against every server: allowed ones read metadata and create a
/// Task; others are refused.
async fn check(network: &DevNetwork) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (pki, orgs, topology) = (&network.pki, &network.organizations, network.topology);
    let mut failures = 0;
    for (i, caller) in orgs.iter().enumerate() {
        let tls = Arc::new(pki.client_config(&caller.client)?);
        for (j, server) in orgs.iter().enumerate() {
            let client = FhirClient::new(&server.base_url, tls.clone())?;
            let expected = if i == j || topology.allows(j, i) {
                200
            } else {
                401
            };
            let status = client
                .json(http::Method::GET, "metadata", None)
                .await?
                .status
                .as_u16();
            let ok = status == expected;
            failures += usize::from(!ok);
            println!(
                "{} {} -> {}: metadata {status} (expected {expected})",
                if ok { "ok  " } else { "FAIL" },
                caller.identifier,
                server.identifier
            );
        }
    }
    // What each organisation's BPE will do first: bind to its own server's Task subscription.
    for org in orgs {
        let client = FhirClient::new(&org.base_url, Arc::new(pki.client_config(&org.client)?))?;
        let bound = async {
            let id = client.find_subscription("Task?status=requested").await?;
            client
                .subscribe(&id, None, dsf_fhir::client::SubscriptionSettings::default())
                .await
        }
        .await;
        let ok = bound.as_ref().is_ok_and(|s| s.status().connected);
        failures += usize::from(!ok);
        println!(
            "{} {}: websocket bound to Task?status=requested{}",
            if ok { "ok  " } else { "FAIL" },
            org.identifier,
            bound
                .err()
                .map(|e| format!(" ({})", dsf_core::ErrorChain(&e)))
                .unwrap_or_default()
        );
    }
    if failures > 0 {
        return Err(format!("{failures} checks failed").into());
    }
    println!("all {} checks passed", orgs.len() * orgs.len() + orgs.len());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), dsf_bin::Failure> {
    init_logging_at("warn");
    Ok(run(Cli::parse().command).await?)
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match command {
        Command::Dev(Dev::Certs { out, orgs, users }) => {
            std::fs::create_dir_all(&out)?;
            let pki = DevPki::generate("dsf-rs dev CA")?;
            pki.write_ca(&out)?;
            for org in &orgs {
                let written = dsf_bin::dev_network::write_certificates(&pki, &out, org)?;
                println!("{org}: client thumbprint {}", written.client.thumbprint());
            }
            for user in &users {
                let cert = pki.issue_client(user)?;
                cert.write(&out, user)?;
                println!("{user}: thumbprint {}", cert.thumbprint());
            }
            println!("written to {}", out.display());
            Ok(())
        }
        Command::Dev(Dev::Up {
            dir,
            organizations,
            base_port,
            topology,
            postgres,
            pong_timeout,
            plugins,
            smoke,
            status_base_port,
        }) => {
            up(UpOptions {
                dir,
                count: organizations,
                base_port,
                topology,
                postgres,
                pong_timeout,
                plugins,
                smoke,
                status_base_port,
            })
            .await
        }
        Command::Dev(Dev::Ping {
            dir,
            from,
            to,
            timeout_seconds,
        }) => {
            ping_command(
                dir,
                from,
                to,
                std::time::Duration::from_secs(timeout_seconds),
            )
            .await
        }
    }
}
