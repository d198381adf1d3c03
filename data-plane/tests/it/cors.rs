//! CORS in front of a real upstream: preflights answered by the gateway (found by the
//! method they ask about, never reaching the upstream), refused ones as 403 naming the
//! policy, actual responses with the headers for allowed origins only and `Vary: Origin`.

use bytes::Bytes;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::Upstream;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};

async fn gateway(upstream: &Upstream) -> DataPlane {
    let mut rule = prefix_rule("/orders", &[(&upstream.url(), 1)]);
    rule.matches[0].methods = vec!["GET".into(), "PUT".into()];
    rule.cors = Some(proto::Cors {
        policy: "shop/orders-cors".into(),
        allow_origins: vec!["https://app.test".into(), "https://*.shop.test".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["content-type".into(), "x-tenant-id".into()],
        expose_headers: vec!["x-upstream".into()],
        allow_credentials: true,
        max_age_seconds: 600,
    });
    let plain = prefix_rule("/plain", &[(&upstream.url(), 1)]);
    let mut denied = prefix_rule("/denied", &[(&upstream.url(), 1)]);
    denied.ip_deny = vec!["127.0.0.0/8".into()];
    denied.cors = rule.cors.clone();
    // Needs an API key: preflights carry no credentials, so the gateway answers them before
    // authentication runs.
    let mut secured = prefix_rule("/secured", &[(&upstream.url(), 1)]);
    secured.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    secured.cors = rule.cors.clone();
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![rule, plain, denied, secured],
        )],
    ))
    .await
    .unwrap();
    dp
}

async fn send(dp: &DataPlane, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{}{path}", dp.addr);
    HttpClient::http1()
        .call(method, &url, headers, Bytes::new())
        .await
        .unwrap()
}

fn preflight<'a>(origin: &'a str, method: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", "content-type"),
    ]
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_and_refusals_name_the_policy() {
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = gateway(&upstream).await;

    // Allowed: 204 from the gateway (the rule matches GET/PUT only; the preflight is found
    // by the method it asks about), the upstream never sees it.
    let reply = send(
        &dp,
        "OPTIONS",
        "/orders/1",
        &preflight("https://app.test", "PUT"),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert!(
        reply.header("x-upstream").is_none(),
        "the upstream answered a preflight"
    );
    let vary: Vec<&str> = reply
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(vary.contains(&"Origin"), "{vary:?}");

    // Before authentication: a preflight to a rule that needs a credential is answered; the
    // actual request without one is refused — with CORS headers, so the page can read why.
    let reply = send(
        &dp,
        "OPTIONS",
        "/secured/1",
        &preflight("https://app.test", "GET"),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    let reply = send(&dp, "GET", "/secured/1", &[("origin", "https://app.test")]).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.test")
    );

    // A wildcard origin.
    let reply = send(
        &dp,
        "OPTIONS",
        "/orders/1",
        &preflight("https://eu.shop.test", "GET"),
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://eu.shop.test")
    );

    // Refused: origin, method, header — 403 in the envelope, no CORS headers.
    for (headers, why) in [
        (
            preflight("https://evil.test", "GET"),
            "the origin is not allowed",
        ),
        (
            // No rule serves DELETE here: a policy never approves a method for a rule it
            // does not reach.
            preflight("https://app.test", "DELETE"),
            "no rule serves DELETE /orders/1",
        ),
        (
            vec![
                ("origin", "https://app.test"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
            "request header authorization is not allowed",
        ),
    ] {
        let reply = send(&dp, "OPTIONS", "/orders/1", &headers).await;
        assert_eq!(reply.status, 403, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["error"]["code"], "cors_forbidden");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("shop/orders-cors") && message.contains(why),
            "{message}"
        );
        assert!(reply.header("access-control-allow-origin").is_none());
    }
}

#[tokio::test]
async fn actual_responses_carry_cors_headers_for_allowed_origins_only() {
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = gateway(&upstream).await;

    let reply = send(&dp, "GET", "/orders/1", &[("origin", "https://app.test")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream"), Some("u1"));
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        reply.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(reply.header("vary"), Some("Origin"));

    let stranger = send(&dp, "GET", "/orders/1", &[("origin", "https://evil.test")]).await;
    assert_eq!(stranger.status, 200);
    assert!(stranger.header("access-control-allow-origin").is_none());
    assert_eq!(stranger.header("vary"), Some("Origin"));

    // The gateway's own refusals on the rule carry them, so the page can read why.
    let refused = send(&dp, "GET", "/denied", &[("origin", "https://app.test")]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "ip_denied");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.test")
    );

    // A method no rule serves: a 404 that no policy reaches, so no CORS headers.
    let refused = send(
        &dp,
        "DELETE",
        "/orders/1",
        &[("origin", "https://app.test")],
    )
    .await;
    assert_eq!(refused.status, 404);
    assert!(refused.header("access-control-allow-origin").is_none());

    // A rule without a policy: nothing added, and OPTIONS is an ordinary request.
    let plain = send(&dp, "GET", "/plain", &[("origin", "https://app.test")]).await;
    assert!(plain.header("access-control-allow-origin").is_none());
    assert!(plain.header("vary").is_none());
    let options = send(
        &dp,
        "OPTIONS",
        "/plain",
        &preflight("https://app.test", "GET"),
    )
    .await;
    assert_eq!(
        options.header("x-upstream"),
        Some("u1"),
        "forwarded like any request"
    );
}

/// A page on one origin (`http://127.0.0.1:PAGE`) whose script calls the gateway on another
/// (`http://127.0.0.1:GATEWAY`), loaded by headless Chromium: what the page could read is
/// what the policy allows, as a browser enforces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_sees_what_the_policy_allows() {
    let upstream = Upstream::start("u1").await.unwrap();
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let policy = |name: &str, origin: &str, credentials: bool| proto::Cors {
        policy: format!("shop/{name}"),
        allow_origins: vec![origin.to_owned()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["content-type".into(), "x-tenant-id".into()],
        expose_headers: vec!["x-upstream".into()],
        allow_credentials: credentials,
        max_age_seconds: 0,
    };
    let with = |prefix: &str, cors: proto::Cors| {
        let mut rule = prefix_rule(prefix, &[(&upstream.url(), 1)]);
        rule.cors = Some(cors);
        rule
    };
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/api",
            &[],
            vec![
                with("/orders", policy("orders", &page_origin, true)),
                with("/public", policy("public", &page_origin, false)),
                with(
                    "/elsewhere",
                    policy("elsewhere", "https://other.test", true),
                ),
            ],
        )],
    ))
    .await
    .unwrap();

    let gateway = format!("http://{}", dp.addr);
    let page = format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const gw = "{gateway}";
async function probe(name, path, init) {{
  try {{
    const r = await fetch(gw + path, init);
    await r.text();
    return [name, {{ status: r.status, upstream: r.headers.get("x-upstream") }}];
  }} catch (e) {{
    return [name, {{ blocked: e.name }}];
  }}
}}
(async () => {{
  const results = await Promise.all([
    probe("simple", "/orders/1"),
    probe("preflighted", "/orders/1", {{ method: "PUT", headers: {{ "content-type": "application/json", "x-tenant-id": "acme" }}, body: "{{}}" }}),
    probe("credentials", "/orders/1", {{ credentials: "include" }}),
    probe("method_refused", "/orders/1", {{ method: "DELETE" }}),
    probe("header_refused", "/orders/1", {{ headers: {{ "x-secret": "1" }} }}),
    probe("origin_refused", "/elsewhere/1"),
    probe("public", "/public/1"),
    probe("public_with_credentials", "/public/1", {{ credentials: "include" }}),
  ]);
  document.getElementById("out").textContent = JSON.stringify(Object.fromEntries(results));
}})();
</script></body></html>"#
    );
    let app = axum::Router::new().route(
        "/page.html",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move { axum::serve(page_listener, app).await });

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{page_origin}/page.html");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&url)
            .output()
            .expect("chromium runs (Debian: chromium)")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let json = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_default()
        .replace("&quot;", "\"");
    let seen: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|_| {
        panic!(
            "the page did not finish: {dom}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let read = |name: &str| {
        (
            seen[name]["status"].as_u64(),
            seen[name]["upstream"].as_str(),
        )
    };
    assert_eq!(read("simple"), (Some(200), Some("u1")), "{seen}");
    assert_eq!(read("preflighted"), (Some(200), Some("u1")), "{seen}");
    assert_eq!(read("credentials"), (Some(200), Some("u1")), "{seen}");
    assert_eq!(read("public"), (Some(200), Some("u1")), "{seen}");
    for refused in [
        "method_refused",
        "header_refused",
        "origin_refused",
        "public_with_credentials",
    ] {
        assert_eq!(seen[refused]["blocked"], "TypeError", "{refused}: {seen}");
    }
    dp.stop().await;
}
