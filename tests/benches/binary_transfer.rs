//! A large Binary uploaded raw to the FHIR server and downloaded raw, against a plain TLS copy
//! of the same bytes over loopback and a plain write of them to a file on the same disk (what
//! an upload must at least do) in the same run, with the process's resident memory sampled
//! throughout. The server runs on SQLite in a file; the clients stream (the upload
//! is generated as it is sent, the download counted and dropped), so that what the process
//! grows by is the server's doing. Each round measures the baselines right before the
//! Binary, and the median of the rounds' ratios is reported: the TLS copy alone varies by
//! half from one run to the next on a shared machine.
//!
//! `cargo bench -p dsf-tests --bench binary_transfer` (1 GiB, 3 rounds;
//! `DSF_BENCH_BINARY_MIB` and `DSF_BENCH_BINARY_ROUNDS` set others).

use bytes::Bytes;
use dsf_core::DevPki;
use dsf_fhir::store::SqliteBackend;
use dsf_tests::fixtures::{tag_all, with_tags};
use dsf_tests::TestServer;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CHUNK: usize = 64 * 1024;

/// `size` bytes of a repeating pattern, made as they are sent.
struct Generated {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let length = (self.remaining as usize).min(CHUNK);
        self.remaining -= length as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..length)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The highest resident size seen since the last [`Sampler::reset`].
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(resident_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler { peak, stop }
    }

    /// Starts a new measurement; returns the resident size now.
    fn reset(&self) -> u64 {
        let now = resident_bytes();
        self.peak.store(now, Ordering::Relaxed);
        now
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn tls_connect(
    connector: &TlsConnector,
    port: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS")
}

/// Writes `size` bytes of the pattern.
async fn send(stream: &mut (impl tokio::io::AsyncWrite + Unpin), size: u64) {
    let chunk = vec![7u8; CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).await.expect("write");
        sent += n as u64;
    }
    stream.flush().await.expect("flush");
}

/// Reads `size` bytes and drops them.
async fn receive(stream: &mut (impl tokio::io::AsyncRead + Unpin), size: u64) {
    let mut buffer = vec![0u8; CHUNK];
    let mut received = 0u64;
    while received < size {
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "the other side stopped early");
        received += n as u64;
    }
}

/// Plain TLS over loopback, no HTTP: `size` bytes one way, then the other.
async fn tls_copy(acceptor: TlsAcceptor, connector: TlsConnector, size: u64) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("TLS");
        receive(&mut tls, size).await;
        tls.write_all(b"k").await.expect("ack");
        tls.flush().await.expect("flush");
        send(&mut tls, size).await;
    });
    let mut tls = tls_connect(&connector, port).await;
    let start = Instant::now();
    send(&mut tls, size).await;
    let mut ack = [0u8; 1];
    tls.read_exact(&mut ack).await.expect("ack");
    let up = start.elapsed().as_secs_f64();
    let start = Instant::now();
    receive(&mut tls, size).await;
    let down = start.elapsed().as_secs_f64();
    server.await.expect("copy server");
    (up, down)
}

/// `size` bytes written to a file in `dir` and synced: the disk's part of an upload.
fn file_write(dir: &std::path::Path, size: u64) -> f64 {
    use std::io::Write;
    let path = dir.join("plain-write");
    let chunk = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut file = std::fs::File::create(&path).expect("file");
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(CHUNK as u64) as usize;
        file.write_all(&chunk[..n]).expect("write");
        written += n as u64;
    }
    file.sync_all().expect("sync");
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    seconds
}

type Sender = hyper::client::conn::http1::SendRequest<Generated>;

async fn http_connection(connector: &TlsConnector, port: u16) -> Sender {
    let tls = tls_connect(connector, port).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender
}

fn main() {
    let mib: u64 = std::env::var("DSF_BENCH_BINARY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib * 1024 * 1024;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(size));
}

async fn run(size: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(SqliteBackend::open(&dir.path().join("fhir.sqlite")).expect("SQLite"));
    let pki = DevPki::generate("dsf-rs bench CA").expect("CA");
    let copy_server_cert = pki.issue_server("localhost").expect("cert");
    let client_cert = pki.issue_client("copy-client").expect("cert");
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(&copy_server_cert).expect("TLS")));
    let copy_connector =
        TlsConnector::from(Arc::new(pki.client_config(&client_cert).expect("TLS")));
    let server = TestServer::start_on(backend, pki, |config| {
        config.max_binary_bytes = size;
    })
    .await;
    let connector = TlsConnector::from(Arc::new(
        server
            .pki
            .client_config(&server.local_cert)
            .expect("client TLS"),
    ));
    let context = server
        .local
        .create(&with_tags(
            json!({"resourceType": "DocumentReference", "status": "current",
                "content": [{"attachment": {"url": "Binary/x"}}]}),
            tag_all(),
        ))
        .await
        .expect("DocumentReference");
    let context = format!("DocumentReference/{}", context["id"].as_str().expect("id"));
    let sampler = Sampler::start();
    let setup = Setup {
        acceptor,
        copy_connector,
        connector,
        port: server.port,
        context,
        dir: dir.path().to_owned(),
    };
    let rounds: usize = std::env::var("DSF_BENCH_BINARY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mib = size as f64 / (1024.0 * 1024.0);
    let rate = |seconds: f64| mib / seconds;
    println!("binary transfer of {mib:.0} MiB over loopback (SQLite in a file), {rounds} rounds");
    println!("  MiB/s: TLS copy up / down, file write (synced), Binary upload / download; ratios");
    let mut measured = Vec::new();
    for number in 1..=rounds {
        let round = round(&setup, &sampler, size).await;
        println!(
            "  round {number}: {:6.0} / {:6.0}, {:6.0}, {:6.0} / {:6.0}; up {:.2}x of the copy, \
             {:.2}x of the file write, down {:.2}x of the copy",
            rate(round.copy_up),
            rate(round.copy_down),
            rate(round.disk),
            rate(round.upload),
            rate(round.download),
            round.copy_up / round.upload,
            round.disk / round.upload,
            round.copy_down / round.download,
        );
        measured.push(round);
    }
    let median = |ratio: fn(&Round) -> f64| {
        let mut values: Vec<f64> = measured.iter().map(ratio).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "  median ratio to the copy   up {:5.2}x   down {:5.2}x",
        median(|r| r.copy_up / r.upload),
        median(|r| r.copy_down / r.download)
    );
    println!(
        "  median upload to file write  {:5.2}x",
        median(|r| r.disk / r.upload)
    );
    let mib_of = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "  largest resident memory growth: upload {:.1} MiB, download {:.1} MiB",
        mib_of(measured.iter().map(|r| r.upload_growth).max().unwrap_or(0)),
        mib_of(
            measured
                .iter()
                .map(|r| r.download_growth)
                .max()
                .unwrap_or(0)
        )
    );
}

/// What each round uses.
struct Setup {
    acceptor: TlsAcceptor,
    copy_connector: TlsConnector,
    connector: TlsConnector,
    port: u16,
    context: String,
    dir: std::path::PathBuf,
}

/// One round's seconds and memory growth.
struct Round {
    copy_up: f64,
    copy_down: f64,
    disk: f64,
    upload: f64,
    download: f64,
    upload_growth: u64,
    download_growth: u64,
}

/// The baselines and the Binary's way up and down, one after the other, so that each ratio
/// compares measurements taken moments apart.
async fn round(setup: &Setup, sampler: &Sampler, size: u64) -> Round {
    let (copy_up, copy_down) =
        tls_copy(setup.acceptor.clone(), setup.copy_connector.clone(), size).await;
    let disk = file_write(&setup.dir, size);

    let before_upload = sampler.reset();
    let mut sender = http_connection(&setup.connector, setup.port).await;
    let request = http::Request::post("/fhir/Binary")
        .header("host", format!("localhost:{}", setup.port))
        .header("content-type", "application/octet-stream")
        .header("x-security-context", &setup.context)
        .header("accept", "application/fhir+json")
        .header("content-length", size.to_string())
        .body(Generated {
            chunk: Bytes::from(vec![7u8; CHUNK]),
            remaining: size,
        })
        .expect("request");
    let start = Instant::now();
    let response = sender.send_request(request).await.expect("upload");
    let status = response.status();
    let body = response.into_body().collect().await.expect("answer");
    let upload = start.elapsed().as_secs_f64();
    assert_eq!(status, 201, "{:?}", body.to_bytes());
    let created: serde_json::Value = serde_json::from_slice(&body.to_bytes()).expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    let upload_growth = sampler.peak().saturating_sub(before_upload);

    let before_download = sampler.reset();
    let request = http::Request::get(format!("/fhir/Binary/{id}"))
        .header("host", format!("localhost:{}", setup.port))
        .header("accept", "*/*")
        .body(Generated {
            chunk: Bytes::new(),
            remaining: 0,
        })
        .expect("request");
    let start = Instant::now();
    let mut response = sender.send_request(request).await.expect("download");
    assert_eq!(response.status(), 200);
    let mut received = 0u64;
    while let Some(frame) = response.body_mut().frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            received += data.len() as u64;
        }
    }
    let download = start.elapsed().as_secs_f64();
    assert_eq!(received, size);
    let download_growth = sampler.peak().saturating_sub(before_download);
    Round {
        copy_up,
        copy_down,
        disk,
        upload,
        download,
        upload_growth,
        download_growth,
    }
}
