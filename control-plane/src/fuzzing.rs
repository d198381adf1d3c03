//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test: whatever the
//! bytes, reading and compiling them must end in findings, never a panic. Not an API.

use std::path::Path;
use std::sync::Arc;

use crate::compile::{CompileOptions, compile};
use crate::source::Item;
use crate::validate::judge;

/// Reads `data` as a resource file and compiles what it holds, alone and as the context
/// of itself (the admission webhook's and `validate`'s two ways of asking).
pub fn documents(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Arc::from(Path::new("fuzz.yaml"));
    let items: Vec<Item> = pavilion_crds::parse_documents(text)
        .into_iter()
        .map(|document| Item::from_document(&path, document))
        .collect();
    let compiled = compile(&items);
    assert_eq!(
        compiled.reports.len(),
        items.len(),
        "one report per document"
    );
    let findings = judge(items.clone(), &items, &CompileOptions::default());
    assert_eq!(findings.len(), items.len(), "findings for every document");
}

/// The public half of the ES256 key [`REQUEST_SIGNING_KEY`] signs with (test material,
/// used nowhere else).
pub const REQUEST_VERIFYING_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEyR+VqMb26PCgpu+ZyfzbayoI6JY5
wS2ssVjuj5Cj+bGqPlHdgt7gT/nXmif9DpQwnTxWF+OTJtMuW6qv0Ngjyw==
-----END PUBLIC KEY-----
";

/// Signs the fuzzed claims of the request target, so the claims reach every check a
/// real token's do (test material, used nowhere else).
pub const REQUEST_SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgl1MJhMvNFLKS51DK
28tyEdneg7U4Zj+QnP+R9W4MddihRANCAATJH5Woxvbo8KCm75nJ/NtrKgjoljnB
LayxWO6PkKP5sao+Ud2C3uBP+deaJ/0OlDCdPFYX45Mm0y5bqq/Q2CPL
-----END PRIVATE KEY-----
";

/// The configuration fuzzed requests meet: the examples (exact, prefix and regular
/// expression paths, hosts and wildcards, methods, API keys, tenancy and roles, policies)
/// plus a JWT route with claims-based rules, compiled into one snapshot.
pub fn request_snapshot() -> pavilion_proto::Snapshot {
    let jwt = format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: fuzz-jwt, namespace: shop }}
spec:
  hosts: [jwt.fuzz, '*.jwt.fuzz']
  rules:
    - matches:
        - path: {{ type: PathPrefix, value: /private, ignoreCase: true }}
          headers: [{{ name: x-variant, value: b }}]
        - path: {{ type: RegularExpression, value: '/v[0-9]+/(a|b)/.*' }}
      auth:
        jwt:
          - issuer: https://id.fuzz
            audiences: [fuzz]
            claimsToHeaders: [{{ claim: email, header: x-email }}]
            keys:
              - kid: fuzz
                publicKeyPem: |
{}
        allow: {{ claims: [{{ name: scope, values: [read] }}] }}
      tenancy: {{ required: false }}
      backends: [{{ url: 'http://127.0.0.1:9' }}]
    - matches: [{{ path: {{ type: Exact, value: /public }} }}]
      backends: [{{ url: 'http://127.0.0.1:9' }}]
",
        REQUEST_VERIFYING_KEY
            .lines()
            .map(|line| format!("                  {line}\n"))
            .collect::<String>()
    );
    let texts = [
        include_str!("../../examples/config/routes.yaml"),
        include_str!("../../examples/config/policies.yaml"),
        include_str!("../../examples/config/tenants.yaml"),
        &jwt,
    ];
    let path = Arc::from(Path::new("fuzz.yaml"));
    let items: Vec<Item> = texts
        .iter()
        .flat_map(|text| pavilion_crds::parse_documents(text))
        .map(|document| Item::from_document(&path, document))
        .collect();
    let compiled = compile(&items);
    let rejected: Vec<_> = compiled
        .reports
        .iter()
        .filter(|report| !matches!(report.outcome, crate::compile::Outcome::Accepted { .. }))
        .collect();
    assert!(
        rejected.is_empty(),
        "the fuzz configuration compiles: {rejected:?}"
    );
    compiled.full_snapshot()
}
