//! WebSocket tunnels, with tokio-tungstenite at both ends: the client speaks through the
//! data plane to a real WebSocket server that echoes, closes with codes of its own, and
//! records the upgrade requests it saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::HeaderMap;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::Upstream;
use pavilion_tests::snapshot::{api_key, prefix_rule, route, snapshot};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Room for the 16 MiB message at both ends (tungstenite's default frame limit is 16 MiB).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// A WebSocket server on loopback: echoes text and binary messages, answers `close-4001`
/// by closing with code 4001, refuses upgrades to `/refuse` with 403, and keeps the
/// headers of every upgrade request it accepted.
struct WsUpstream {
    url: String,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl WsUpstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let callback = move |request: &tungstenite::handshake::server::Request,
                                         response| {
                        if request.uri().path() == "/refuse" {
                            let mut refusal = http::Response::new(Some("go away".to_owned()));
                            *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                            return Err(refusal);
                        }
                        recorder.lock().unwrap().push(request.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                        stream,
                        callback,
                        Some(config()),
                    )
                    .await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if matches!(&message, Message::Text(t) if t.as_str() == "close-4001") {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::from(4001),
                                    reason: Utf8Bytes::from_static("server done"),
                                }))
                                .await;
                        } else if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

fn ws_rule(prefix: &str, backend: &str, idle_ms: u64) -> proto::Rule {
    let mut rule = prefix_rule(prefix, &[(backend, 1)]);
    rule.websocket = Some(proto::WebSocket {
        idle_timeout_ms: idle_ms,
    });
    rule
}

async fn data_plane(rules: Vec<proto::Rule>) -> DataPlane {
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("chat/rooms", &[], rules)]))
        .await
        .unwrap();
    dp
}

async fn connect(
    dp: &DataPlane,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut request = format!("ws://{}{path}", dp.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async_with_config(request, Some(config()), true)
        .await
        .map(|(ws, _)| ws)
}

/// The next message within 10 s.
async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message arrives")
        .expect("the connection is open")
        .expect("the connection works")
}

/// The HTTP refusal of a handshake: status and JSON body.
fn refusal(error: tungstenite::Error) -> (u16, serde_json::Value) {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn messages_of_every_kind_cross_the_tunnel() {
    let upstream = WsUpstream::start().await;
    let dp = data_plane(vec![ws_rule("/", &upstream.url, 60_000)]).await;
    let mut ws = connect(&dp, "/rooms/1", &[])
        .await
        .expect("the upgrade succeeds");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    // A message in three fragments is reassembled by the server, not by the gateway.
    for (payload, opcode, last) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(payload, opcode, last)))
            .await
            .unwrap();
    }
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));

    // The server's pong answers the client's ping, payload intact.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // 16 MiB one way and back.
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(echoed) => assert!(echoed == big, "the 16 MiB message came back intact"),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // The client's close code reaches the server, whose close answer comes back.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: Utf8Bytes::from_static("bye"),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::from(4000)),
        other => panic!("expected the echoed close, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the tunnel closes")
            .is_none_or(|r| r.is_err()),
        "nothing follows the close"
    );

    // The server's own close code reaches the client.
    let mut ws = connect(&dp, "/rooms/2", &[]).await.unwrap();
    ws.send(Message::text("close-4001")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::from(4001));
            assert_eq!(frame.reason.as_str(), "server done");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the server's close closes the client's connection")
            .is_none_or(|r| r.is_err()),
        "nothing follows the server's close"
    );

    // What the server saw: the gateway's hop, not the client's.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first["upgrade"], "websocket");
    assert!(first.contains_key("x-request-id"));
    assert!(first.contains_key("x-forwarded-for"));
    assert!(first.contains_key("sec-websocket-key"));
    pavilion_tests::eventually(
        "closed tunnels are counted",
        Duration::from_secs(5),
        || async {
            pavilion_tests::metrics(dp.admin_addr)
                .await
                .contains("pavilion_websockets_closed_total{reason=\"closed\"}")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn authentication_and_rate_limits_decide_at_the_upgrade() {
    let upstream = WsUpstream::start().await;
    let mut guarded = ws_rule("/", &upstream.url, 60_000);
    guarded.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    guarded.rate_limits = vec![proto::RateLimit {
        policy: "chat/upgrades".into(),
        key: vec!["apiKey".into()],
        requests: 1,
        period_ms: 3_600_000,
        burst: 1,
        ..Default::default()
    }];
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    let mut snap = snapshot("v1", vec![route("chat/rooms", &[], vec![guarded])]);
    snap.api_keys = vec![api_key("chat", "alice-key", "pvk_alice", &["read"], 0)];
    dp.apply(snap).await.unwrap();

    let (status, body) = refusal(connect(&dp, "/rooms/1", &[]).await.unwrap_err());
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    assert!(
        upstream.seen().is_empty(),
        "a refused upgrade never reaches the server"
    );

    let mut ws = connect(&dp, "/rooms/1", &[("x-api-key", "pvk_alice")])
        .await
        .expect("a key opens the tunnel");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    assert_eq!(upstream.seen()[0]["x-auth-key-id"], "alice-key");
    assert!(
        !upstream.seen()[0].contains_key("x-api-key"),
        "the key itself stays at the gateway"
    );

    // One upgrade per hour: the second is refused, the first tunnel carries on.
    let (status, body) = refusal(
        connect(&dp, "/rooms/1", &[("x-api-key", "pvk_alice")])
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
}

#[tokio::test]
async fn a_new_snapshot_leaves_an_open_tunnel_alone() {
    let upstream = WsUpstream::start().await;
    let dp = data_plane(vec![ws_rule("/", &upstream.url, 60_000)]).await;
    let mut ws = connect(&dp, "/rooms/1", &[]).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("before"));

    // The route is gone from the next snapshot: new upgrades find nothing, the open tunnel
    // keeps working.
    dp.apply(snapshot("v2", vec![])).await.unwrap();
    let (status, _) = refusal(connect(&dp, "/rooms/1", &[]).await.unwrap_err());
    assert_eq!(status, 404);
    for i in 0..10 {
        let text = format!("after {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(text));
    }
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_the_idle_timeout() {
    let upstream = WsUpstream::start().await;
    let dp = data_plane(vec![ws_rule("/", &upstream.url, 300)]).await;
    let mut ws = connect(&dp, "/rooms/1", &[]).await.unwrap();
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::text("tick")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("tick"));
    }
    // Silence closes it.
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the gateway closes the silent tunnel");
    assert!(
        ended.as_ref().is_none_or(|r| r.is_err()),
        "the tunnel ended without a message: {ended:?}"
    );
    pavilion_tests::eventually(
        "the idle close is counted",
        Duration::from_secs(5),
        || async {
            pavilion_tests::metrics(dp.admin_addr)
                .await
                .contains("pavilion_websockets_closed_total{reason=\"idle\"} 1")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn upgrades_the_rule_does_not_tunnel_are_plain_requests() {
    // A rule without `websocket`: the upgrade is removed, the upstream answers normally.
    let plain = Upstream::start("plain").await.unwrap();
    let upstream = WsUpstream::start().await;
    let dp = data_plane(vec![
        prefix_rule("/plain", &[(&plain.url(), 1)]),
        ws_rule("/", &upstream.url, 60_000),
    ])
    .await;
    let answer = pavilion_tests::raw::exchange(
        dp.addr,
        b"GET /plain HTTP/1.1\r\nhost: a\r\nconnection: upgrade, close\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.contains("\"plain\""), "{answer}");
    assert!(
        !body.to_ascii_lowercase().contains("\"upgrade\""),
        "the upgrade was removed: {answer}"
    );

    // The server refusing the upgrade: its answer is the client's.
    let (status, _) = refusal(connect(&dp, "/refuse", &[]).await.unwrap_err());
    assert_eq!(status, 403);

    // Not GET: not an upgrade, whatever the headers say.
    let answer = pavilion_tests::raw::exchange(
        dp.addr,
        b"POST /plain HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
