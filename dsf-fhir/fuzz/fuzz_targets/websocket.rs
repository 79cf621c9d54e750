//! Arbitrary bytes as the frames a websocket client sends to `/fhir/ws` after the handshake:
//! the session answers or closes, never panics, and ends once the client has gone.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    fixture.runtime.block_on(async {
        let (mut client, server_end) = tokio::io::duplex(256 * 1024);
        let session = tokio::spawn(
            fixture
                .server
                .clone()
                .websocket_over(server_end, fixture.local.clone()),
        );
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends when its client has gone")
            .expect("the session does not panic");
    });
});
