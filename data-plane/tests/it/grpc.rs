//! gRPC through the data plane with tonic at both ends (h2c): the four call kinds, status,
//! message and binary metadata intact in trailers, a stream that fails midway, deadlines
//! honoured and capped by the rule, the gateway's own refusals as gRPC statuses, and a
//! stream that outlives a snapshot deleting its route.

use std::time::{Duration, Instant};

use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::grpc::proto::EchoRequest;
use pavilion_tests::grpc::proto::echo_client::EchoClient;
use pavilion_tests::grpc::{DETAIL, EchoUpstream};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn grpc_rule(backend: &str, timeout_ms: u64) -> proto::Rule {
    let mut rule = prefix_rule("/pavilion.testing.v1.Echo", &[(backend, 1)]);
    rule.timeout_ms = timeout_ms;
    rule
}

async fn data_plane(rules: Vec<proto::Rule>) -> DataPlane {
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("rpc/echo", &[], rules)]))
        .await
        .unwrap();
    dp
}

async fn client(dp: &DataPlane) -> EchoClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", dp.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

/// A unary call by hand over h2c with this `grpc-timeout`: the reply's head and trailers
/// as the gateway sent them.
async fn raw_unary(
    dp: &DataPlane,
    timeout: &str,
    request: EchoRequest,
) -> pavilion_tests::client::Reply {
    use prost::Message;
    let message = request.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let request = http::Request::post(format!("http://{}/pavilion.testing.v1.Echo/Unary", dp.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    pavilion_tests::client::HttpClient::h2c()
        .send(request)
        .await
        .unwrap()
}

fn ask(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

/// A unary call with binary metadata, and one failing with `code`: status, message and
/// binary trailing metadata as the server sent them.
async fn unary_calls_keep_their_metadata(echo: &mut EchoClient<Channel>, code: Code) {
    let reply = echo.unary(ask("hello")).await.unwrap();
    let meta = reply.metadata().get_bin("x-meta-bin").unwrap();
    assert_eq!(meta.to_bytes().unwrap(), DETAIL);
    assert_eq!(reply.into_inner().message, "hello");
    let status = echo
        .unary(EchoRequest {
            fail_with: code as i32,
            ..ask("nope")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), code);
    assert_eq!(status.message(), "failed as asked: nope");
    let detail = status.metadata().get_bin("x-detail-bin").unwrap();
    assert_eq!(detail.to_bytes().unwrap(), DETAIL);
}

#[tokio::test]
async fn every_call_kind_with_trailers_intact() {
    let upstream = EchoUpstream::start().await;
    let dp = data_plane(vec![grpc_rule(&upstream.url(), 10_000)]).await;
    let mut echo = client(&dp).await;

    unary_calls_keep_their_metadata(&mut echo, Code::InvalidArgument).await;

    // Server streaming, and one that fails after three replies.
    let replies: Vec<_> = echo
        .server_stream(EchoRequest {
            count: 5,
            ..ask("tick")
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let indexes: Vec<u32> = replies.iter().map(|r| r.as_ref().unwrap().index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    let mut failing = echo
        .server_stream(EchoRequest {
            count: 10,
            fail_after: 3,
            ..ask("tick")
        })
        .await
        .unwrap()
        .into_inner();
    for expected in 0..3 {
        assert_eq!(failing.next().await.unwrap().unwrap().index, expected);
    }
    let failure = failing.next().await.unwrap().unwrap_err();
    assert_eq!(failure.code(), Code::Aborted);
    assert_eq!(failure.message(), "failed after 3");

    // Client streaming.
    let sent = tokio_stream::iter(["a", "b", "c"].map(ask));
    let summary = echo.client_stream(sent).await.unwrap().into_inner();
    assert_eq!((summary.message.as_str(), summary.index), ("a,b,c", 3));

    // Bidirectional, message by message: each answer arrives before the next is sent.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut answers = echo
        .bidi(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        sender.send(ask(&format!("m{i}"))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("an answer before the next message")
            .unwrap()
            .unwrap();
        assert_eq!(answer.message, format!("m{i}"));
    }
    drop(sender);
    assert!(
        answers.next().await.is_none(),
        "the client's end ends the call"
    );
}

#[tokio::test]
async fn deadlines_are_honoured_and_capped_by_the_rule() {
    let upstream = EchoUpstream::start().await;
    let dp = data_plane(vec![grpc_rule(&upstream.url(), 2_000)]).await;
    let mut echo = client(&dp).await;

    // The upstream gets the client's deadline, never more than the rule allows.
    let mut request = tonic::Request::new(ask("a"));
    request.set_timeout(Duration::from_secs(1));
    let seen = echo.unary(request).await.unwrap().into_inner().grpc_timeout;
    let millis: u64 = seen.trim_end_matches('m').parse().unwrap();
    assert!(
        (500..=1000).contains(&millis),
        "upstream saw grpc-timeout {seen}"
    );
    let mut request = tonic::Request::new(ask("a"));
    request.set_timeout(Duration::from_secs(60));
    let seen = echo.unary(request).await.unwrap().into_inner().grpc_timeout;
    let millis: u64 = seen.trim_end_matches('m').parse().unwrap();
    assert!(millis <= 2000, "capped by the rule's 2s: {seen}");

    // A slow answer past the client's deadline: DEADLINE_EXCEEDED from the gateway, at the
    // deadline. Sent by hand: tonic's own client would give up first at its deadline.
    let started = Instant::now();
    let reply = raw_unary(
        &dp,
        "300m",
        EchoRequest {
            delay_ms: 3_000,
            ..ask("slow")
        },
    )
    .await;
    assert_eq!(
        reply.header("grpc-status"),
        Some("4"),
        "{:?}",
        reply.headers
    );
    assert!(reply.header("grpc-message").unwrap().contains("300ms"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The deadline covers the whole call: a stream still running then is cut with
    // DEADLINE_EXCEEDED (the rule's own timeout ends at the head: streams outlive it).
    let mut request = tonic::Request::new(EchoRequest {
        count: 40,
        delay_ms: 100,
        ..ask("tick")
    });
    request.set_timeout(Duration::from_millis(700));
    let started = Instant::now();
    let mut stream = echo.server_stream(request).await.unwrap().into_inner();
    let mut received = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status after {received} replies"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("rpc/echo") && status.message().contains("700ms"),
        "{}",
        status.message()
    );
    assert!(
        (2..40).contains(&received),
        "{received} replies before the cut"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Without a client deadline, the rule's timeout decides, as a gRPC status.
    let status = echo
        .unary(EchoRequest {
            delay_ms: 5_000,
            ..ask("slower")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("rpc/echo"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_gateway_refuses_in_grpc_terms() {
    let upstream = EchoUpstream::start().await;
    let mut guarded = grpc_rule(&upstream.url(), 10_000);
    guarded.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    let dp = data_plane(vec![guarded]).await;
    let mut echo = client(&dp).await;
    let status = echo.unary(ask("who")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().is_empty());

    dp.apply(snapshot("v2", vec![])).await.unwrap();
    let status = echo.unary(ask("where")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_stream_outlives_a_snapshot_that_deletes_its_route() {
    let upstream = EchoUpstream::start().await;
    let dp = data_plane(vec![grpc_rule(&upstream.url(), 10_000)]).await;
    let mut echo = client(&dp).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut answers = echo
        .bidi(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender.send(ask("before")).await.unwrap();
    assert_eq!(answers.next().await.unwrap().unwrap().message, "before");
    dp.apply(snapshot("v2", vec![])).await.unwrap();
    for i in 0..5 {
        sender.send(ask(&format!("after {i}"))).await.unwrap();
        assert_eq!(
            answers.next().await.unwrap().unwrap().message,
            format!("after {i}")
        );
    }
    assert_eq!(
        echo.unary(ask("new call")).await.unwrap_err().code(),
        Code::Unimplemented,
        "new calls follow the new snapshot"
    );
}

/// A gRPC-Web call as a browser library sends it, over HTTP/1.1: the reply's frames split
/// into messages and the trailer block.
async fn grpc_web(
    dp: &DataPlane,
    method: &str,
    text: bool,
    request: EchoRequest,
    headers: &[(&str, &str)],
) -> (pavilion_tests::client::Reply, Vec<Vec<u8>>, String) {
    use base64::Engine;
    use prost::Message;
    let message = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (content_type, body) = if text {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&frame);
        ("application/grpc-web-text", encoded.into_bytes())
    } else {
        ("application/grpc-web+proto", frame)
    };
    let mut builder = http::Request::post(format!(
        "http://{}/pavilion.testing.v1.Echo/{method}",
        dp.addr
    ))
    .header("content-type", content_type)
    .header("accept", content_type)
    .header("x-grpc-web", "1");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let reply = pavilion_tests::client::HttpClient::http1()
        .send(
            builder
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut bytes = reply.body.to_vec();
    if text {
        // Padded base64 chunks, one after another.
        let mut decoded = Vec::new();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            if bytes[i] == b'=' {
                while i < bytes.len() && bytes[i] == b'=' {
                    i += 1;
                }
                decoded.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(&bytes[start..i])
                        .unwrap(),
                );
                start = i;
            } else {
                i += 1;
            }
        }
        let tail = &bytes[start..];
        decoded.extend(
            base64::engine::general_purpose::STANDARD
                .decode(tail)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes))),
        );
        bytes = decoded;
    }
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let length = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = rest[5..5 + length].to_vec();
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8(payload).unwrap();
        } else {
            messages.push(payload);
        }
        rest = &rest[5 + length..];
    }
    (reply, messages, trailers)
}

#[tokio::test]
async fn grpc_web_is_translated_for_browsers() {
    use prost::Message;
    let upstream = EchoUpstream::start().await;
    let mut guarded = grpc_rule(&upstream.url(), 10_000);
    guarded.matches[0].path.as_mut().unwrap().value =
        "/pavilion.testing.v1.Echo/ServerStream".into();
    guarded.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    let dp = data_plane(vec![guarded, grpc_rule(&upstream.url(), 10_000)]).await;

    for text in [false, true] {
        let (reply, messages, trailers) =
            grpc_web(&dp, "Unary", text, ask("from a browser"), &[]).await;
        assert_eq!(reply.status, 200);
        let expected = if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        assert_eq!(reply.header("content-type"), Some(expected), "text: {text}");
        assert_eq!(messages.len(), 1);
        let answer = pavilion_tests::grpc::proto::EchoReply::decode(&messages[0][..]).unwrap();
        assert_eq!(answer.message, "from a browser");
        assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

        let failing = EchoRequest {
            fail_with: Code::NotFound as i32,
            ..ask("gone")
        };
        let (reply, _, trailers) = grpc_web(&dp, "Unary", text, failing, &[]).await;
        assert_eq!(
            status_of(&reply, &trailers),
            ("5".into(), "failed%20as%20asked:%20gone".into()),
            "percent-encoded, as gRPC has it"
        );
    }

    // The gateway's refusal: a gRPC status in the head, under the gRPC-Web content type.
    let (reply, _, _) = grpc_web(&dp, "ServerStream", false, ask("x"), &[]).await;
    assert_eq!(
        reply.header("grpc-status"),
        Some("16"),
        "{:?}",
        reply.headers
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/grpc-web+proto")
    );
}

/// `grpc-status` and `grpc-message`: from the trailer frame, or from the head of a
/// trailers-only answer.
fn status_of(reply: &pavilion_tests::client::Reply, trailers: &str) -> (String, String) {
    let field = |name: &str| {
        trailers
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
            .map(|s| s.trim().to_owned())
            .or_else(|| reply.header(name).map(str::to_owned))
            .unwrap_or_default()
    };
    (field("grpc-status"), field("grpc-message"))
}

#[tokio::test]
async fn grpc_over_tls_h2_keeps_its_trailers() {
    let upstream = EchoUpstream::start().await;
    let ca = pavilion_tests::tls::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = ca.leaf_pem(&["grpc.example.com"]);
    let files = pavilion_data::tls::CertificateFiles {
        cert: dir.path().join("grpc.crt"),
        key: dir.path().join("grpc.key"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let mut config = Config::local();
    config.tls = Some(pavilion_data::tls::TlsOptions {
        certificates: vec![files],
        client_ca: None,
    });
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(snapshot(
        "v1",
        vec![route(
            "rpc/echo",
            &[],
            vec![grpc_rule(&upstream.url(), 10_000)],
        )],
    ))
    .await
    .unwrap();
    // tonic offers h2 by ALPN; the gateway terminates TLS and speaks h2c to the backend.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            ca.certificate_pem(),
        ))
        .domain_name("grpc.example.com");
    let channel = Channel::from_shared(format!("https://{}", dp.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut echo = EchoClient::new(channel);

    unary_calls_keep_their_metadata(&mut echo, Code::NotFound).await;
    let sent = tokio_stream::iter(["x", "y"].map(ask));
    let answers: Vec<String> = echo
        .bidi(sent)
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap().message)
        .collect()
        .await;
    assert_eq!(answers, ["x", "y"]);
}

/// A TCP relay in front of the echo server whose connections can all be cut at once: the
/// backend dies under an open stream.
struct Severable {
    url: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Severable {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("h2c://{}", listener.local_addr().unwrap());
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {
                            let _ = inbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        Self { url, cut }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

#[tokio::test]
async fn a_backend_dying_mid_stream_ends_the_call_with_a_status() {
    let upstream = EchoUpstream::start().await;
    let relay = Severable::start(upstream.addr).await;
    let dp = data_plane(vec![grpc_rule(&relay.url, 60_000)]).await;
    let mut echo = client(&dp).await;
    let mut stream = echo
        .server_stream(EchoRequest {
            count: 1_000,
            delay_ms: 50,
            ..ask("tick")
        })
        .await
        .unwrap()
        .into_inner();
    for expected in 0..3 {
        assert_eq!(stream.next().await.unwrap().unwrap().index, expected);
    }
    relay.cut();
    // The client learns at once that the call failed — an error, never a clean end that
    // would pass a truncated stream off as complete.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the call ends when its backend dies");
    let status = end.expect("an error status, not a clean end").unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Internal | Code::Unknown
        ),
        "{status:?}"
    );
    // The same client's next call on the same gateway connection still works.
    let relay_back = Severable::start(upstream.addr).await;
    dp.apply(snapshot(
        "v2",
        vec![route(
            "rpc/echo",
            &[],
            vec![grpc_rule(&relay_back.url, 60_000)],
        )],
    ))
    .await
    .unwrap();
    assert_eq!(
        echo.unary(ask("again")).await.unwrap().into_inner().message,
        "again"
    );
}
