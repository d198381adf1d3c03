//! Request smuggling, one row per trick: every request that could be framed two ways is
//! refused, or re-framed so that the upstream sees exactly the one request the gateway
//! decided on — never a second request hidden in the first one's body. The upstream is a
//! raw recorder, so what crossed the wire is what is asserted.

use pavilion_data::{Config, DataPlane};
use pavilion_tests::raw::{self, Action, RawUpstream};
use pavilion_tests::snapshot::catch_all;

/// The tricks read one way and forwarded re-framed (RFC 9112 §6.1: with both fields,
/// Transfer-Encoding decides and the connection closes after the response; bare LF is
/// read as a line end and the upstream gets CRLF); every other one is refused with 400.
const REFRAMED: [&str; 3] = ["CL and TE", "TE and CL", "bare LF line endings"];

/// The request hidden in the body of each trick.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nhost: site.test\r\n\r\n";

/// `(name, raw request)`: the head up to its fields, then what each trick appends.
fn tricks() -> Vec<(&'static str, String)> {
    let head = "POST /upload HTTP/1.1\r\nhost: site.test\r\n";
    let hidden_len = HIDDEN.len();
    let chunked_hidden = format!("0\r\n\r\n{HIDDEN}");
    vec![
        // CL.TE: the gateway must not take Content-Length while the upstream takes chunked.
        (
            "CL and TE",
            format!(
                "{head}content-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{chunked_hidden}",
                chunked_hidden.len()
            ),
        ),
        // TE.CL: the reverse order of the same two fields.
        (
            "TE and CL",
            format!(
                "{head}transfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n{chunked_hidden}"
            ),
        ),
        (
            "two different Content-Length",
            format!("{head}content-length: 0\r\ncontent-length: {hidden_len}\r\n\r\n{HIDDEN}"),
        ),
        (
            "a Content-Length list",
            format!("{head}content-length: 0, {hidden_len}\r\n\r\n{HIDDEN}"),
        ),
        (
            "a signed Content-Length",
            format!("{head}content-length: +{hidden_len}\r\n\r\n{HIDDEN}"),
        ),
        (
            "a hexadecimal Content-Length",
            format!("{head}content-length: 0x{hidden_len:x}\r\n\r\n{HIDDEN}"),
        ),
        (
            "a space inside Content-Length",
            format!("{head}content-length: 0 {hidden_len}\r\n\r\n{HIDDEN}"),
        ),
        (
            "whitespace before the colon",
            format!("{head}content-length : {hidden_len}\r\n\r\n{HIDDEN}"),
        ),
        (
            "Transfer-Encoding chunked, identity",
            format!("{head}transfer-encoding: chunked, identity\r\n\r\n{chunked_hidden}"),
        ),
        (
            "Transfer-Encoding identity",
            format!("{head}transfer-encoding: identity\r\ncontent-length: 0\r\n\r\n{HIDDEN}"),
        ),
        (
            "Transfer-Encoding xchunked",
            format!("{head}transfer-encoding: xchunked\r\n\r\n{chunked_hidden}"),
        ),
        (
            "Transfer-Encoding with a vertical tab",
            format!("{head}transfer-encoding: chunked\x0b\r\n\r\n{chunked_hidden}"),
        ),
        (
            "Transfer-Encoding twice",
            format!(
                "{head}transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n{chunked_hidden}"
            ),
        ),
        (
            "Transfer-Encoding folded (obs-fold)",
            format!("{head}transfer-encoding:\r\n chunked\r\n\r\n{chunked_hidden}"),
        ),
        (
            "another field folded (obs-fold)",
            format!("{head}x-note: a\r\n b\r\ncontent-length: 0\r\n\r\n{HIDDEN}"),
        ),
        (
            "chunked in HTTP/1.0",
            format!(
                "POST /upload HTTP/1.0\r\nhost: site.test\r\ntransfer-encoding: chunked\r\n\r\n{chunked_hidden}"
            ),
        ),
        (
            "a negative chunk size",
            format!("{head}transfer-encoding: chunked\r\n\r\n-1\r\n{HIDDEN}0\r\n\r\n"),
        ),
        (
            "a 0x chunk size",
            format!("{head}transfer-encoding: chunked\r\n\r\n0x2c\r\n{HIDDEN}\r\n0\r\n\r\n"),
        ),
        (
            "an overflowing chunk size",
            format!(
                "{head}transfer-encoding: chunked\r\n\r\n10000000000000000{hidden_len:x}\r\n{HIDDEN}\r\n0\r\n\r\n"
            ),
        ),
        (
            "a chunk extension with a bare LF",
            format!("{head}transfer-encoding: chunked\r\n\r\n2;x\n\r\nab\r\n0\r\n\r\n{HIDDEN}"),
        ),
        (
            "chunk data longer than its size",
            format!("{head}transfer-encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n{HIDDEN}"),
        ),
        (
            "bare LF line endings",
            format!(
                "POST /upload HTTP/1.1\nhost: site.test\ncontent-length: {hidden_len}\n\n{HIDDEN}"
            ),
        ),
        (
            "a NUL in a field value",
            format!("{head}x-note: a\0b\r\ncontent-length: 0\r\n\r\n{HIDDEN}"),
        ),
    ]
}

/// Writes `request` and reads the answer until the gateway closes the connection or has
/// been silent for a second (an accepted request leaves a kept-alive connection open;
/// closing our side instead would make the gateway drop a request it had accepted).
async fn send(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut buf)).await
    {
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn gateway(upstream: &RawUpstream) -> DataPlane {
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "shop/all", &upstream.url()))
        .await
        .unwrap();
    dp
}

#[tokio::test]
async fn no_request_is_read_two_ways() {
    let upstream = RawUpstream::start(|_, _| {
        Action::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let dp = gateway(&upstream).await;
    let mut refused = 0;
    for (name, request) in tricks() {
        let before = upstream.requests.lock().unwrap().len();
        let answer = send(dp.addr, request.as_bytes()).await;
        let received: Vec<String> = upstream.requests_text()[before..].to_vec();
        let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        eprintln!("{name:40} → {status} ({} forwarded)", received.len());
        // Whatever the gateway answered, the hidden request never reached the upstream as
        // a request of its own…
        assert!(
            received.iter().all(|r| !r.starts_with("GET /smuggled")),
            "{name}: the upstream got a smuggled request: {received:?}"
        );
        // …nor did more than the one request the client sent.
        assert!(received.len() <= 1, "{name}: {received:?}");
        assert_eq!(
            status == 200,
            REFRAMED.contains(&name),
            "{name}: answered {status}: {answer}"
        );
        match status {
            400..=499 => {
                refused += 1;
                assert!(
                    received.is_empty(),
                    "{name}: refused ({status}) but forwarded: {received:?}"
                );
            }
            200 => {
                // Accepted: then it was re-framed, and the upstream's copy carries its
                // length in exactly one way.
                let forwarded = &received[0].to_ascii_lowercase();
                let framings = forwarded.matches("content-length:").count()
                    + forwarded.matches("transfer-encoding:").count();
                assert!(framings <= 1, "{name}: forwarded as {forwarded:?}");
            }
            0 => assert!(
                received.is_empty(),
                "{name}: dropped without an answer but forwarded: {received:?}"
            ),
            other => panic!("{name}: unexpected {other}: {answer}"),
        }
    }
    assert_eq!(refused, tricks().len() - REFRAMED.len());
}

/// A request that was accepted as chunked reaches the upstream with its body and nothing
/// after it: the bytes after the last chunk are the next request on the client connection,
/// judged on their own (and here routed like any other).
#[tokio::test]
async fn a_pipelined_request_after_a_chunked_body_is_a_request_of_its_own() {
    let upstream = RawUpstream::start(|_, _| {
        Action::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let dp = gateway(&upstream).await;
    let request = "POST /upload HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n";
    let answer = raw::exchange(dp.addr, request.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    let received = upstream.requests_text();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received[0].starts_with("POST /upload HTTP/1.1\r\n"));
    assert!(
        received[0].ends_with("3\r\nabc\r\n0\r\n\r\n"),
        "{:?}",
        received[0]
    );
    assert!(received[1].starts_with("GET /next HTTP/1.1\r\n"));
    assert_eq!(
        answer.matches("x-request-id").count(),
        2,
        "each got its own request id: {answer}"
    );
}
