//! Two routes claiming the same host and the same match: the older one serves it (it comes
//! first in the snapshot, and position is the matcher's last tie-breaker); the younger is
//! told, so nobody wonders why its match never applies.

use std::collections::HashMap;

use pavilion_crds::FieldError;
use pavilion_proto as proto;

use super::memo::RouteShape;

/// Returns `(position of the younger route, warning)` for every shadowed match.
pub(super) fn find(routes: &[&RouteShape]) -> Vec<(usize, FieldError)> {
    // Keyed by reference into the routes: a key string per match was 10 000 formatted
    // strings per compile.
    let mut owners: HashMap<MatchKey<'_>, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(routes.len(), Default::default());
    let mut warnings = Vec::new();
    let implicit = [proto::Match {
        path: Some(proto::PathMatch {
            r#type: proto::PathMatchType::Prefix as i32,
            value: "/".into(),
            ignore_case: false,
        }),
        ..Default::default()
    }];
    let any = ["*".to_owned()];
    for (position, route) in routes.iter().enumerate() {
        let hosts = if route.hosts.is_empty() {
            &any[..]
        } else {
            &route.hosts[..]
        };
        for (r, rule_matches) in route.rules.iter().enumerate() {
            let matches = if rule_matches.is_empty() {
                &implicit[..]
            } else {
                &rule_matches[..]
            };
            for (m, matcher) in matches.iter().enumerate() {
                for host in hosts {
                    match owners.get(&match_key(host, matcher)) {
                        Some(&owner) if owner != position => {
                            let older = routes[owner];
                            let field = if rule_matches.is_empty() {
                                format!("spec.rules[{r}]")
                            } else {
                                format!("spec.rules[{r}].matches[{m}]")
                            };
                            warnings.push((
                                position,
                                FieldError {
                                    field,
                                    message: format!(
                                        "host {host}: {} is already served by the older Route {}/{}; this match never applies there",
                                        describe(matcher),
                                        older.namespace,
                                        older.name
                                    ),
                                },
                            ));
                        }
                        Some(_) => {}
                        None => {
                            owners.insert(match_key(host, matcher), position);
                        }
                    }
                }
            }
        }
    }
    warnings
}

/// What makes two matches the same: host, path (type, value, case), methods, headers.
#[derive(PartialEq, Eq, Hash)]
struct MatchKey<'a> {
    host: &'a str,
    path: (i32, &'a str, bool),
    methods: &'a [String],
    headers: Vec<(&'a str, &'a str)>,
}

fn match_key<'a>(host: &'a str, m: &'a proto::Match) -> MatchKey<'a> {
    MatchKey {
        host,
        path: m.path.as_ref().map_or((0, "", false), |p| {
            (p.r#type, p.value.as_str(), p.ignore_case)
        }),
        methods: &m.methods,
        headers: m
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect(),
    }
}

fn describe(m: &proto::Match) -> String {
    let path = m.path.clone().unwrap_or_default();
    let kind = match path.r#type() {
        proto::PathMatchType::Exact => "Exact",
        proto::PathMatchType::Prefix => "PathPrefix",
        proto::PathMatchType::RegularExpression => "RegularExpression",
    };
    let mut text = format!("{kind} {}", path.value);
    if !m.methods.is_empty() {
        text.push_str(&format!(" {}", m.methods.join("|")));
    }
    for h in &m.headers {
        text.push_str(&format!(" {}: {}", h.name, h.value));
    }
    text
}
