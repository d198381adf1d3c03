//! CorsPolicies into the CORS settings of every rule of the routes they reach: a policy
//! targeting the route wins over one targeting its namespace; among policies of one
//! level, the oldest (creation time, then name).

use std::collections::HashMap;

use pavilion_crds::duration::parse_duration;
use pavilion_crds::{CorsPolicy, Resource};
use pavilion_proto as proto;

/// The compiled CORS settings of accepted policies, by what they target.
#[derive(Default)]
pub(super) struct Cors {
    namespaces: HashMap<String, proto::Cors>,
    routes: HashMap<(String, String), proto::Cors>,
}

impl Cors {
    /// Compiles accepted policies, whose targets the compiler has already checked.
    pub(super) fn new(policies: &[(&Resource, usize)]) -> Cors {
        let mut ordered: Vec<&CorsPolicy> = policies
            .iter()
            .filter_map(|(resource, _)| match resource {
                Resource::CorsPolicy(policy) => Some(policy),
                _ => None,
            })
            .collect();
        ordered.sort_by(|a, b| {
            let key = |p: &CorsPolicy| {
                (
                    p.metadata.creation_timestamp.clone(),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut cors = Cors::default();
        for policy in ordered {
            let namespace = policy
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| pavilion_crds::resource::DEFAULT_NAMESPACE.to_owned());
            let compiled = to_proto(policy, &namespace);
            let target = &policy.spec.target_ref;
            match target.kind.as_str() {
                "Namespace" => {
                    cors.namespaces.entry(namespace).or_insert(compiled);
                }
                "Route" => {
                    cors.routes
                        .entry((namespace, target.name.clone()))
                        .or_insert(compiled);
                }
                _ => {}
            }
        }
        cors
    }

    /// The settings of the route `namespace/name`: its own policy's, else its namespace's.
    pub(super) fn for_route(&self, namespace: &str, name: &str) -> Option<proto::Cors> {
        // Looked up only when some policy targets a route: the key is two copies.
        (!self.routes.is_empty())
            .then(|| self.routes.get(&(namespace.to_owned(), name.to_owned())))
            .flatten()
            .or_else(|| self.namespaces.get(namespace))
            .cloned()
    }
}

fn to_proto(policy: &CorsPolicy, namespace: &str) -> proto::Cors {
    let spec = &policy.spec;
    let lower = |list: &[String]| list.iter().map(|h| h.to_ascii_lowercase()).collect();
    proto::Cors {
        policy: format!(
            "{namespace}/{}",
            policy.metadata.name.as_deref().unwrap_or_default()
        ),
        allow_origins: spec
            .allow_origins
            .iter()
            .map(|o| o.to_ascii_lowercase())
            .collect(),
        allow_methods: spec
            .allow_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        allow_headers: lower(&spec.allow_headers),
        expose_headers: lower(&spec.expose_headers),
        allow_credentials: spec.allow_credentials,
        // Validated already: an unparsable value never reaches here.
        max_age_seconds: spec
            .max_age
            .as_deref()
            .and_then(|m| parse_duration(m).ok())
            .map_or(0, |d| d.as_secs()),
    }
}
