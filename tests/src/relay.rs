//! A TCP relay on a loopback port in front of a server (PostgreSQL, a FHIR server), for tests
//! that watch or disturb the bytes between a client and that server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Which way bytes pass through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server.
    ToServer,
    /// From the server back to the client.
    ToClient,
}

/// What happens to bytes read from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written to the other side now.
    Pass,
    /// Kept back; asked again a little later.
    Hold,
    /// This direction of the connection ends; the bytes are dropped.
    Close,
}

/// What a test decides of the relay's connections and the bytes on them.
pub trait Tap: Send + Sync + 'static {
    /// A client connected: the tap of its connection, or `None` to refuse it.
    fn connection(&self) -> Option<Arc<dyn ConnectionTap>>;
}

/// What a test decides of one relayed connection.
pub trait ConnectionTap: Send + Sync + 'static {
    /// `bytes` were read going `direction`; asked again while it answers [`Verdict::Hold`].
    fn passing(&self, direction: Direction, bytes: &[u8]) -> Verdict;

    /// Nothing was read for a while: whether the direction stays open.
    fn idle(&self, _direction: Direction) -> bool {
        true
    }
}

/// A relay listening on a loopback port; it runs until the test's runtime ends.
pub struct TcpRelay {
    /// Where clients connect instead of the server.
    pub address: SocketAddr,
}

impl TcpRelay {
    /// Relays every connection made to a new loopback port to `target`, as `tap` decides.
    pub async fn start(target: SocketAddr, tap: Arc<dyn Tap>) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Some(connection) = tap.connection() else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(
                        client_read,
                        server_write,
                        Direction::ToServer,
                        connection.clone(),
                    ));
                    tokio::spawn(pump(
                        server_read,
                        client_write,
                        Direction::ToClient,
                        connection,
                    ));
                });
            }
        });
        TcpRelay { address }
    }
}

/// How long a read waits before the tap is asked whether an idle direction stays open, and
/// how long held bytes wait before it is asked again.
const POLL: Duration = Duration::from_millis(50);

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    tap: Arc<dyn ConnectionTap>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(POLL, from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) if tap.idle(direction) => continue,
            Err(_) => return,
        };
        loop {
            match tap.passing(direction, &buf[..n]) {
                Verdict::Pass => break,
                Verdict::Hold => tokio::time::sleep(POLL).await,
                Verdict::Close => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
