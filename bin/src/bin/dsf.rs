//! The dsf-rs developer CLI: development certificates and a local multi-organisation network
//! on loopback.

use clap::{Parser, Subcommand, ValueEnum};
use dsf_bin::{init_logging, shutdown_signal, start_fhir_server, FhirServerSettings};
use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirClient, ServerConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// Loopback load run: create, read and search against same-run baselines (raw inserts
    /// into the same database, a trivial hyper+rustls handler), plus start-up time and idle
    /// memory of dsf-fhir-server
    Bench {
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Also run against PostgreSQL at this URL
        #[arg(long)]
        postgres: Option<String>,
        /// Run only the websocket subscription scenarios
        #[arg(long)]
        websocket_only: bool,
        /// Run only the hostile load: reads with and without a connection flood and hostile
        /// clients, and the memory of oversized requests
        #[arg(long)]
        hostile_only: bool,
        /// Run only the BPE scenarios: ping/pong round trips between two organisations, a
        /// 10-service-task chain, and dsf-bpe's start-up time and idle memory
        #[arg(long)]
        bpe_only: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Topology {
    /// Every organisation allows every other one
    Mesh,
    /// The first organisation is the hub; the others allow only the hub
    Star,
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
    /// Run a local network of DSF FHIR servers on loopback with generated certificates
    Up {
        #[arg(long, default_value = "dev-network")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        organizations: usize,
        #[arg(long, default_value_t = 8001)]
        base_port: u16,
        #[arg(long, value_enum, default_value_t = Topology::Mesh)]
        topology: Topology,
        /// Check every organisation against every server, print the result and exit
        #[arg(long)]
        smoke: bool,
    },
}

fn write_org(
    pki: &DevPki,
    dir: &Path,
    identifier: &str,
) -> std::io::Result<(IssuedCert, IssuedCert)> {
    let org_dir = dir.join(identifier);
    std::fs::create_dir_all(&org_dir)?;
    let server = pki
        .issue_server("localhost")
        .map_err(std::io::Error::other)?;
    let client = pki
        .issue_client(identifier)
        .map_err(std::io::Error::other)?;
    server.write(&org_dir, "server")?;
    client.write(&org_dir, "client")?;
    Ok((server, client))
}

#[derive(Serialize)]
struct NetworkOrganization {
    identifier: String,
    fhir_base_url: String,
    client_certificate: PathBuf,
    client_key: PathBuf,
    thumbprint: String,
    allows: Vec<String>,
}

#[derive(Serialize)]
struct Network {
    ca_certificate: PathBuf,
    topology: &'static str,
    organizations: Vec<NetworkOrganization>,
}

struct Org {
    identifier: String,
    base_url: String,
    server: IssuedCert,
    client: IssuedCert,
}

fn allows(topology: Topology, index: usize, other: usize) -> bool {
    index != other && (topology == Topology::Mesh || index == 0 || other == 0)
}

async fn up(
    dir: PathBuf,
    count: usize,
    base_port: u16,
    topology: Topology,
    smoke: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if count == 0 {
        return Err("at least one organisation is needed".into());
    }
    std::fs::create_dir_all(&dir)?;
    let pki = DevPki::generate("dsf-rs dev network CA")?;
    pki.write_ca(&dir)?;
    let mut orgs = Vec::new();
    for i in 0..count {
        let identifier = format!("org-{}.dsf.test", (b'a' + (i % 26) as u8) as char);
        let (server, client) = write_org(&pki, &dir, &identifier)?;
        let base_url = format!("https://localhost:{}/fhir", base_port + i as u16);
        orgs.push(Org {
            identifier,
            base_url,
            server,
            client,
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        let peers = orgs
            .iter()
            .enumerate()
            .filter(|(j, _)| allows(topology, i, *j))
            .map(|(_, peer)| AllowListEntry {
                identifier: peer.identifier.clone(),
                name: peer.identifier.clone(),
                thumbprints: vec![peer.client.thumbprint()],
                base_url: peer.base_url.clone(),
            })
            .collect();
        let db = dir.join(&org.identifier).join("fhir.sqlite");
        let mut stop = stop_rx.clone();
        let settings = FhirServerSettings {
            config: ServerConfig::new(&org.base_url, &org.identifier),
            db_url: format!("sqlite:{}", db.display()),
            bind: ([127, 0, 0, 1], base_port + i as u16).into(),
            tls: pki.server_config(&org.server)?,
            local_thumbprints: vec![org.client.thumbprint()],
            peers,
            organization_name: org.identifier.clone(),
        };
        servers.push(
            start_fhir_server(settings, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?,
        );
    }
    let network = Network {
        ca_certificate: dir.join("ca.crt"),
        topology: if topology == Topology::Mesh {
            "mesh"
        } else {
            "star"
        },
        organizations: orgs
            .iter()
            .enumerate()
            .map(|(i, o)| NetworkOrganization {
                identifier: o.identifier.clone(),
                fhir_base_url: o.base_url.clone(),
                client_certificate: dir.join(&o.identifier).join("client.crt"),
                client_key: dir.join(&o.identifier).join("client.key"),
                thumbprint: o.client.thumbprint().to_string(),
                allows: orgs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| allows(topology, i, *j))
                    .map(|(_, p)| p.identifier.clone())
                    .collect(),
            })
            .collect(),
    };
    std::fs::write(
        dir.join("network.json"),
        serde_json::to_string_pretty(&network)?,
    )?;
    println!(
        "DSF dev network: {} organisations ({}), description in {}",
        count,
        network.topology,
        dir.join("network.json").display()
    );
    for o in &network.organizations {
        println!("  {}  {}", o.identifier, o.fhir_base_url);
    }
    if let Some(first) = network.organizations.first() {
        println!(
            "try: curl --cacert {} --cert {} --key {} -H 'Accept: application/fhir+json' {}/metadata",
            network.ca_certificate.display(),
            first.client_certificate.display(),
            first.client_key.display(),
            first.fhir_base_url
        );
    }
    println!("The BPE and the ping-pong plugin are not part of dsf-rs yet; the network runs FHIR servers only.");
    let result = if smoke {
        check(&pki, &orgs, topology).await
    } else {
        shutdown_signal().await;
        Ok(())
    };
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    result
}

/// Every organisation's client against every server: allowed ones read metadata and create a
/// Task; others are refused.
async fn check(
    pki: &DevPki,
    orgs: &[Org],
    topology: Topology,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut failures = 0;
    for (i, caller) in orgs.iter().enumerate() {
        let tls = Arc::new(pki.client_config(&caller.client)?);
        for (j, server) in orgs.iter().enumerate() {
            let client = FhirClient::new(&server.base_url, tls.clone())?;
            let expected = if i == j || allows(topology, j, i) {
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
            bound.err().map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    if failures > 0 {
        return Err(format!("{failures} checks failed").into());
    }
    println!("all {} checks passed", orgs.len() * orgs.len() + orgs.len());
    Ok(())
}

async fn hostile_bench(
    concurrency: usize,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let report = dsf_bin::hostile_load::run(dsf_bin::hostile_load::HostileSettings {
        concurrency: concurrency.min(4),
        duration: std::time::Duration::from_secs(seconds),
        idle_connections: 1_000,
        hostile_clients: 20,
    })
    .await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn bpe_bench(
    concurrency: usize,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let report = dsf_bin::bpe_load::run(dsf_bin::bpe_load::BpeLoadSettings {
        concurrency,
        duration: std::time::Duration::from_secs(seconds),
    })
    .await?;
    println!("{}", report.markdown());
    Ok(())
}

async fn bench(
    concurrency: usize,
    seconds: u64,
    postgres: Option<String>,
    websocket_only: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use dsf_bin::load::{run, startup_and_memory, LoadSettings};
    use dsf_bin::websocket_load::WebsocketSettings;
    let duration = std::time::Duration::from_secs(seconds);
    for backend in std::iter::once(None).chain(postgres.clone().map(Some)) {
        let websocket = dsf_bin::websocket_load::run(WebsocketSettings {
            rate: 1000,
            subscribers: 10,
            duration,
            concurrency,
            postgres: backend,
        })
        .await?;
        println!("{}", websocket.markdown());
    }
    if websocket_only {
        return Ok(());
    }
    println!(
        "{}",
        run(LoadSettings {
            concurrency,
            duration,
            postgres: None
        })
        .await?
        .markdown()
    );
    if let Some(url) = postgres {
        println!(
            "{}",
            run(LoadSettings {
                concurrency,
                duration,
                postgres: Some(url)
            })
            .await?
            .markdown()
        );
    }
    hostile_bench(concurrency, seconds).await?;
    bpe_bench(concurrency, seconds).await?;
    let server = std::env::current_exe()?.with_file_name("dsf-fhir-server");
    let (startup, rss_kib) = startup_and_memory(&server).await?;
    println!(
        "dsf-fhir-server ({}): start-up to first served request {:.0} ms; resident memory when idle {:.1} MiB",
        server.display(),
        startup.as_secs_f64() * 1000.0,
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    init_logging();
    match Cli::parse().command {
        Command::Dev(Dev::Certs { out, orgs, users }) => {
            std::fs::create_dir_all(&out)?;
            let pki = DevPki::generate("dsf-rs dev CA")?;
            pki.write_ca(&out)?;
            for org in &orgs {
                let (_, client) = write_org(&pki, &out, org)?;
                println!("{org}: client thumbprint {}", client.thumbprint());
            }
            for user in &users {
                let cert = pki.issue_client(user)?;
                cert.write(&out, user)?;
                println!("{user}: thumbprint {}", cert.thumbprint());
            }
            println!("written to {}", out.display());
            Ok(())
        }
        Command::Bench {
            concurrency,
            seconds,
            postgres,
            websocket_only,
            hostile_only,
            bpe_only,
        } => {
            if hostile_only {
                hostile_bench(concurrency, seconds).await
            } else if bpe_only {
                bpe_bench(concurrency, seconds).await
            } else {
                bench(concurrency, seconds, postgres, websocket_only).await
            }
        }
        Command::Dev(Dev::Up {
            dir,
            organizations,
            base_port,
            topology,
            smoke,
        }) => up(dir, organizations, base_port, topology, smoke).await,
    }
}
