//! Loopback load runs of dsf-rs, the `dsf-bench` binary's scenarios. Each run starts what it
//! measures in this process (or the release binaries next to this executable) on loopback with
//! generated certificates, and reports every figure against a baseline measured in the same
//! run, because the machines these run on are noisy. docs/performance.md lists the commands
//! and the latest figures.
//!
//! It uses the library crates' public APIs and `dsf-bin`'s start-up helpers only; no scenario
//! reads or writes a store's tables.
//!
//! # Where things are
//!
//! - [`measure`]: closed-loop workers, scenarios taking turns, throughput and latency.
//! - [`server`]: the in-process FHIR server the REST scenarios load ([`server::BenchServer`]).
//! - [`baseline`]: raw database inserts and point selects in tables of the bench's own.
//! - [`load`]: create, read and search against their baselines (`--load-only`).
//! - [`websocket`]: Subscription delivery latency and what Subscriptions cost writes
//!   (`--websocket-only`).
//! - [`hostile`]: reads under a connection flood and hostile allow-listed clients, and the
//!   memory of oversized requests (`--hostile-only`).
//! - [`bpe`]: ping/pong round trips between two BPEs, plugin files against linked plugins, a
//!   service-task chain, and `dsf-bpe`'s start-up and memory (`--bpe-only`).
//! - [`observed`]: reads of two `dsf-fhir-server` processes, audit log and metrics off and on
//!   (`--observed-only`), or both off as the control (`--observed-control`).
//! - [`replicas`]: BPE round trips with their state on PostgreSQL, two BPEs sharing it, and
//!   the fail-over time when one is killed (`--replicas-only`).
//! - [`network`]: a dev network's ping to 10 and 50 organisations (`--network-only`).
//! - [`stored`]: create, read and the BPE's searches on an empty store and on one holding
//!   many Tasks (`--stored N`).
//! - [`startup`]: `dsf-fhir-server`'s start-up time and idle memory.

pub mod baseline;
pub mod bpe;
pub mod hostile;
pub mod load;
pub mod measure;
pub mod network;
pub mod observed;
pub mod replicas;
pub mod server;
pub mod startup;
pub mod stored;
pub mod websocket;
