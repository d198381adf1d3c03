//! A real OpenID provider for tests: the npm package `oidc-provider` (a certified OP,
//! installed by the test command into `~/.cache/pavilion/oidc`) on a free loopback port,
//! with one confidential client and its development login and consent pages — and a
//! browser-less user agent that follows the redirects, keeps the cookies and submits the
//! forms, as a person with a browser would.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const PROVIDER: &str = r#"
import Provider from 'oidc-provider';
const [port, redirect, verified] = process.argv.slice(2);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'pavilion',
    client_secret: 'pavilion-test-secret',
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.org`, email_verified: verified === 'true' };
      },
    };
  },
  cookies: { keys: ['pavilion-test-cookie-key'] },
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
"#;

pub const CLIENT_ID: &str = "pavilion";
pub const CLIENT_SECRET: &str = "pavilion-test-secret";

/// Where the test command installs `oidc-provider`.
pub fn install_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/pavilion/oidc")
}

pub struct OidcProvider {
    pub issuer: String,
    child: Child,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts the provider; its client may redirect to `redirect_uri` only; the accounts'
    /// e-mail addresses are `{login}@example.org`, verified when `verified`.
    pub fn start(redirect_uri: &str, verified: bool) -> Self {
        let dir = install_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: npm install --prefix {} oidc-provider@9 (scripts/test does)",
            dir.display()
        );
        let script = dir.join("provider.mjs");
        std::fs::write(&script, PROVIDER).expect("write the provider script");
        let port = crate::free_port();
        let mut child = Command::new("node")
            .arg(&script)
            .args([&port.to_string(), redirect_uri, &verified.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, "ready", "oidc-provider did not start");
        // Keep reading: the provider writes to stdout, and dies of a closed pipe otherwise.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self {
            issuer: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

/// Follows `url` as a browser would — redirects, cookies, and the login and consent forms
/// (logging in as `login`) — until a redirect to a URL starting with `stop_at`; that URL.
pub async fn sign_in_through(url: &str, login: &str, stop_at: &str) -> String {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut next = (http::Method::GET, url.to_owned(), None::<String>);
    for _ in 0..20 {
        let (method, target, form) = next.clone();
        let mut request = http::Request::builder().method(method).uri(&target);
        if !cookies.is_empty() {
            let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", jar.join("; "));
        }
        let body = match form {
            Some(form) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        let response = client
            .request(request.body(body).expect("a request"))
            .await
            .expect("the provider answers");
        for value in response.headers().get_all("set-cookie") {
            if let Some((pair, _)) = value.to_str().unwrap_or_default().split_once(';')
                && let Some((name, value)) = pair.split_once('=')
            {
                cookies.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let html =
            String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
                .into_owned();
        if let Some(location) = location.filter(|_| status.is_redirection()) {
            let absolute = absolute(&target, &location);
            if absolute.starts_with(stop_at) {
                return absolute;
            }
            next = (http::Method::GET, absolute, None);
            continue;
        }
        let (action, fields) =
            form_of(&html).unwrap_or_else(|| panic!("{status}: no form in {html}"));
        let encoded: Vec<String> = fields
            .into_iter()
            .map(|(name, value)| {
                let value = match name.as_str() {
                    "login" => login.to_owned(),
                    "password" => "any password".to_owned(),
                    _ => value,
                };
                format!("{}={}", encode(&name), encode(&value))
            })
            .collect();
        next = (
            http::Method::POST,
            absolute(&target, &action),
            Some(encoded.join("&")),
        );
    }
    panic!("no redirect to {stop_at} after 20 steps");
}

fn absolute(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

/// The first form's action and its named inputs with their values.
fn form_of(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let form = &html[start
        ..html[start..]
            .find("</form>")
            .map_or(html.len(), |e| start + e)];
    let action = attribute(form, "action")?;
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(at) = rest.find("<input") {
        let tag_end = rest[at..].find('>').map_or(rest.len(), |e| at + e);
        let tag = &rest[at..tag_end];
        if let Some(name) = attribute(tag, "name") {
            fields.push((name, attribute(tag, "value").unwrap_or_default()));
        }
        rest = &rest[tag_end..];
    }
    Some((action, fields))
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].replace("&amp;", "&"))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
