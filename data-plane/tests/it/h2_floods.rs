//! HTTP/2 abuse, written frame by frame (no client library would send these): rapid reset,
//! a CONTINUATION flood and a SETTINGS flood. Each must cost the gateway a bounded amount —
//! a GOAWAY and a closed connection, or a stalled reader — while other clients are served.

use std::time::Duration;

use pavilion_data::{Config, DataPlane};
use pavilion_tests::client::HttpClient;
use pavilion_tests::raw::{Action, RawUpstream};
use pavilion_tests::snapshot::catch_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET /` for authority `a.test`, HPACK-encoded: indexed `:method GET`, `:scheme http`,
/// `:path /`, and `:authority` as a literal without indexing.
fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 6];
    block.extend_from_slice(b"a.test");
    block
}

/// The frame types in what the server wrote.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or_default();
    }
    types
}

async fn gateway() -> (DataPlane, RawUpstream) {
    let upstream = RawUpstream::start(|_, _| {
        Action::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "shop/all", &upstream.url()))
        .await
        .unwrap();
    (dp, upstream)
}

/// Reads everything the server writes until it closes (at most `limit`).
fn read_all(
    mut read: tokio::net::tcp::OwnedReadHalf,
    limit: Duration,
) -> tokio::task::JoinHandle<(Vec<u8>, bool)> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let closed = tokio::time::timeout(limit, read.read_to_end(&mut out))
            .await
            .is_ok();
        (out, closed)
    })
}

/// Writes `piece` over and over, up to `total` bytes; stops when the connection is closed
/// or a write stalls for `stall` (no longer read). The bytes written.
async fn flood(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    piece: &[u8],
    total: usize,
    stall: Duration,
) -> usize {
    let mut written = 0;
    while written < total {
        match tokio::time::timeout(stall, write.write_all(piece)).await {
            Ok(Ok(())) => written += piece.len(),
            _ => break,
        }
    }
    written
}

async fn still_serves(dp: &DataPlane) {
    let reply = HttpClient::http1()
        .get(&format!("http://{}/", dp.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "other clients are served");
}

#[tokio::test]
async fn rapid_reset_gets_a_goaway_and_reaches_the_upstream_a_bounded_number_of_times() {
    let (dp, upstream) = gateway().await;
    let stream = TcpStream::connect(dp.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let answer = read_all(read, Duration::from_secs(20));
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    write.write_all(&opening).await.unwrap();
    // 10 000 requests, each cancelled as soon as it is sent (CVE-2023-44487).
    const STREAMS: u32 = 10_000;
    let mut sent = 0;
    for batch in 0..STREAMS / 100 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            let id = 2 * (batch * 100 + i) + 1;
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block()));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if write.write_all(&bytes).await.is_err() {
            break;
        }
        sent += 100;
    }
    let (bytes, closed) = answer.await.unwrap();
    assert!(closed, "the gateway closes the connection");
    assert!(
        frame_types(&bytes).contains(&GOAWAY),
        "with a GOAWAY first: {:?}",
        frame_types(&bytes)
    );
    let reached = upstream.requests.lock().unwrap().len();
    eprintln!(
        "rapid reset: {sent} streams sent, {reached} reached the upstream, server wrote {:?}…",
        &frame_types(&bytes)[..frame_types(&bytes).len().min(8)]
    );
    assert!(
        reached < 1000,
        "{reached} of the {sent} cancelled requests reached the upstream"
    );
    still_serves(&dp).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_long_before_it_ends() {
    let (dp, upstream) = gateway().await;
    let stream = TcpStream::connect(dp.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let answer = read_all(read, Duration::from_secs(20));
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of repeated `:method GET` (CVE-2024-27316 and kin).
    opening.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
    write.write_all(&opening).await.unwrap();
    const FLOOD: usize = 64 << 20;
    let piece = frame(CONTINUATION, 0, 1, &[0x82; 16 * 1024]);
    let written = flood(&mut write, &piece, FLOOD, Duration::from_secs(10)).await;
    eprintln!("CONTINUATION flood: {written} bytes written before the gateway stopped it");
    assert!(
        written < FLOOD,
        "the gateway read all {FLOOD} bytes of one header block"
    );
    let (bytes, closed) = answer.await.unwrap();
    assert!(closed, "the gateway closes the connection");
    let types = frame_types(&bytes);
    assert!(
        !types.contains(&HEADERS),
        "no response to the flood: {types:?}"
    );
    assert!(upstream.requests.lock().unwrap().is_empty());
    still_serves(&dp).await;
}

#[tokio::test]
async fn a_settings_flood_from_a_client_that_never_reads_is_not_buffered() {
    let (dp, _upstream) = gateway().await;
    let stream = TcpStream::connect(dp.addr).await.unwrap();
    // Never read: every SETTINGS asks for an acknowledgement the client will not take.
    let (_read, mut write) = stream.into_split();
    write.write_all(PREFACE).await.unwrap();
    // SETTINGS_ENABLE_PUSH = 0, over and over.
    let one = frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
    const FLOOD: usize = 256 << 20;
    let written = flood(&mut write, &batch, FLOOD, Duration::from_secs(5)).await;
    eprintln!("SETTINGS flood: {written} bytes written before the gateway stopped reading");
    // Had the gateway read it all, it would hold 17 million unsent acknowledgements.
    assert!(
        written < FLOOD,
        "the gateway read {written} bytes of SETTINGS it could not acknowledge"
    );
    still_serves(&dp).await;
}
