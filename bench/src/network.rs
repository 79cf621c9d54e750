//! Load run of a dev network: a ping from one organisation to 10 and to 50 others (mesh,
//! loopback), the time until every pong is recorded, the network's start-up time and the
//! resident memory per organisation (FHIR server and BPE each, all in this process).

use dsf_bin::dev_network::{DevNetwork, DevNetworkSettings, Topology};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One network size's figures.
pub struct NetworkRun {
    /// How many organisations the first one pinged.
    pub others: usize,
    /// From starting the network until `DevNetwork::start` returned.
    pub startup: Duration,
    /// Time from creating the start Task until it is completed with every status.
    pub ping: Duration,
    /// Targets whose pong came back.
    pub answered: usize,
    /// Resident memory added by the network, per organisation.
    pub rss_per_organization_kib: u64,
}

/// What the network run measured.
pub struct NetworkReport {
    /// One run per network size.
    pub runs: Vec<NetworkRun>,
}

impl NetworkReport {
    /// The report as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| organisations pinged | pongs received | ping until every pong recorded | network start-up | resident memory per organisation |\n|---|---|---|---|---|\n",
        );
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {:.0} ms | {:.0} ms | {:.1} MiB |\n",
                r.others,
                r.answered,
                r.ping.as_secs_f64() * 1000.0,
                r.startup.as_secs_f64() * 1000.0,
                r.rss_per_organization_kib as f64 / 1024.0
            ));
        }
        out
    }
}

fn rss_kib() -> u64 {
    dsf_bin::proc_status_kib("self", "VmRSS:").unwrap_or(0)
}

/// One network per entry of `others` (pinged organisations; the network has one more).
pub async fn run(others: &[usize], base_port: u16) -> Result<NetworkReport, BoxError> {
    let mut runs = Vec::new();
    for (round, &count) in others.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!(
            "dsf-network-bench-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let plugins = dir.join("process");
        dsf_bin::plugin_directory(&plugins, &dsf_bin::reference_plugin_files()?)?;
        let before = rss_kib();
        let started = Instant::now();
        let network = DevNetwork::start(DevNetworkSettings {
            dir: dir.clone(),
            organizations: count + 1,
            base_port: base_port + (round as u16) * 200,
            topology: Topology::Mesh,
            postgres: None,
            plugin_directory: plugins,
            plugin_config: Vec::new(),
            status_base_port: None,
        })
        .await?;
        let startup = started.elapsed();
        let outcome = dsf_bin::ping::ping(
            &network.client(0)?,
            &network.organizations[0].identifier,
            &[],
            Duration::from_secs(120),
        )
        .await?;
        let answered = outcome
            .statuses
            .iter()
            .filter(|s| s.status == dsf_plugin_ping_pong::STATUS_PONG_RECEIVED)
            .count();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib().saturating_sub(before);
        runs.push(NetworkRun {
            others: count,
            startup,
            ping: outcome.elapsed,
            answered,
            rss_per_organization_kib: rss / (count as u64 + 1),
        });
        network.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(NetworkReport { runs })
}
