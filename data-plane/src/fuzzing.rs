//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test. Each takes
//! arbitrary bytes, runs the real code on them and checks what must hold whatever they
//! are — beyond "no panic". Not an API.

use bytes::BytesMut;
use http::Method;

use crate::path::{EscapedSlashes, normalize};
use crate::pipeline::Shared;
use crate::pipeline::explain::{Described, explain, offline_parts};
use crate::runtime::Runtime;

/// The inline HTTP/1.1 client's response-head parser and chunk-size reader: bytes in,
/// an error or a head out, and a head's framing never ambiguous.
pub fn response_head(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = BytesMut::from(data);
        let Some((status, headers)) =
            crate::upstream::h1::parse_response_for_fuzzing(&mut buf, &method)
        else {
            continue;
        };
        assert!(buf.len() <= data.len());
        assert!(!status.is_informational(), "interim responses are skipped");
        if method == Method::HEAD || status.as_u16() == 204 || status.as_u16() == 304 {
            continue; // no body: nothing to frame
        }
        // A body was framed only where the head allows exactly one reading.
        let lengths: Vec<Option<u64>> = headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|part| part.trim().parse().ok())
            .collect();
        assert!(lengths.iter().all(Option::is_some), "{lengths:?}");
        assert!(
            !headers.contains_key(http::header::TRANSFER_ENCODING) || lengths.is_empty(),
            "Content-Length with Transfer-Encoding accepted"
        );
        assert!(
            lengths.windows(2).all(|pair| pair[0] == pair[1]),
            "conflicting Content-Length values accepted: {lengths:?}"
        );
    }
    for line in data.split(|&b| b == b'\n') {
        crate::upstream::h1::chunk_size_for_fuzzing(line);
    }
}

/// A normalised path is final: normalising it again changes nothing, so an upstream that
/// normalises too reads the path the matcher read. Its key has no dot segment and no
/// empty segment left.
pub fn path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let path = path.split('?').next().unwrap_or_default();
    for slashes in [
        EscapedSlashes::Reject,
        EscapedSlashes::Unescape,
        EscapedSlashes::Keep,
    ] {
        let Ok(once) = normalize(path, slashes) else {
            continue;
        };
        let again = normalize(&once.path, slashes)
            .unwrap_or_else(|e| panic!("{path:?} → {:?} is refused: {e:?}", once.path));
        assert_eq!(again.path, once.path, "normalising {path:?} twice");
        assert_eq!(again.key(), once.key(), "the key of {path:?}");
        let key = once.key();
        assert!(key.starts_with('/'), "{key:?}");
        assert!(!key.contains("//"), "{path:?} → {key:?}");
        for segment in key.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} → {key:?}");
        }
    }
}

/// Requests against a fixed snapshot through the request path's own phases (admission,
/// normalisation, routing, CORS, IP lists, authentication, tenancy, authorization), as
/// `explain` runs them: nothing is sent anywhere.
pub struct RequestHarness {
    shared: Shared,
    runtime: Runtime,
    executor: tokio::runtime::Runtime,
    signing_key: jsonwebtoken::EncodingKey,
}

/// Methods the first byte picks from (the last is not a standard one).
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "BREW",
];

impl RequestHarness {
    /// `snapshot` must build; `signing_pem` is the private key (PKCS#8 P-256) whose public
    /// half a JWT provider of the snapshot trusts with kid `fuzz`.
    pub fn new(snapshot: &pavilion_proto::Snapshot, signing_pem: &str) -> Self {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (shared, runtime) = {
            let _entered = executor.enter();
            offline_parts(snapshot).expect("the snapshot builds")
        };
        Self {
            shared,
            runtime,
            executor,
            signing_key: jsonwebtoken::EncodingKey::from_ec_pem(signing_pem.as_bytes())
                .expect("a P-256 key"),
        }
    }

    /// `data`: a method byte, then lines — the target, the `Host`, then `name: value`
    /// header fields.
    pub fn request(&self, data: &[u8]) {
        let Some((&method, rest)) = data.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        let mut lines = text.split('\n');
        let url = lines.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        if let Some(host) = lines.next() {
            headers.push(("host".to_owned(), host.to_owned()));
        }
        headers.extend(lines.filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.to_owned(), value.trim_start().to_owned()))
        }));
        self.explain(Described {
            method: METHODS[usize::from(method) % METHODS.len()].to_owned(),
            url,
            headers,
            client: None,
        });
    }

    /// `data`: a mode byte, then the credential. Mode 0: claims (JSON) signed by the
    /// trusted key, so they meet every check a real token's do; 1: a raw bearer token;
    /// 2: an API key; 3: a cookie header. Sent to the JWT route of the snapshot.
    pub fn credentials(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest).into_owned();
        let (name, value) = match mode % 4 {
            0 => {
                let Ok(claims) = serde_json::from_str::<serde_json::Value>(&text) else {
                    return;
                };
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some("fuzz".into());
                let Ok(token) = jsonwebtoken::encode(&header, &claims, &self.signing_key) else {
                    return;
                };
                ("authorization", format!("Bearer {token}"))
            }
            1 => ("authorization", format!("Bearer {text}")),
            2 => ("x-api-key", text),
            _ => ("cookie", text),
        };
        self.explain(Described {
            method: "GET".into(),
            url: "http://jwt.fuzz/private/x".into(),
            headers: vec![("x-variant".into(), "b".into()), (name.into(), value)],
            client: None,
        });
    }

    fn explain(&self, described: Described) {
        let Ok(report) = self
            .executor
            .block_on(explain(&self.shared, &self.runtime, &described))
        else {
            return;
        };
        // A refusal names its code and a reason; a pass names where it would go.
        match (report.outcome.status, report.outcome.code) {
            (Some(status), Some(code)) => {
                assert!(status >= 400, "{report:?}");
                assert!(!code.is_empty() && !report.outcome.message.is_empty());
            }
            (Some(204), None) => {}
            (None, None) => assert!(!report.outcome.message.is_empty()),
            other => panic!("an outcome without a reason: {other:?} in {report:?}"),
        }
    }
}
