//! Two routes claiming the same host and the same match: the older one serves it (it comes
//! first in the snapshot, and position is the matcher's last tie-breaker); the younger is
//! told, so nobody wonders why its match never applies.

use std::collections::HashMap;

use pavilion_crds::FieldError;
use pavilion_proto as proto;

/// Returns `(position of the younger route, warning)` for every shadowed match.
pub(super) fn find(routes: &[proto::Route]) -> Vec<(usize, FieldError)> {
    let mut owners: HashMap<String, usize> = HashMap::new();
    let mut warnings = Vec::new();
    for (position, route) in routes.iter().enumerate() {
        let hosts: Vec<&str> = if route.hosts.is_empty() {
            vec!["*"]
        } else {
            route.hosts.iter().map(String::as_str).collect()
        };
        for (r, rule) in route.rules.iter().enumerate() {
            let implicit = [proto::Match {
                path: Some(proto::PathMatch {
                    r#type: proto::PathMatchType::Prefix as i32,
                    value: "/".into(),
                    ignore_case: false,
                }),
                ..Default::default()
            }];
            let matches = if rule.matches.is_empty() {
                &implicit[..]
            } else {
                &rule.matches[..]
            };
            for (m, matcher) in matches.iter().enumerate() {
                for host in &hosts {
                    let key = match_key(host, matcher);
                    match owners.get(&key) {
                        Some(&owner) if owner != position => {
                            let older = &routes[owner];
                            let field = if rule.matches.is_empty() {
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
                            owners.insert(key, position);
                        }
                    }
                }
            }
        }
    }
    warnings
}

fn match_key(host: &str, m: &proto::Match) -> String {
    let path = m.path.clone().unwrap_or_default();
    let headers: Vec<String> = m
        .headers
        .iter()
        .map(|h| format!("{}={}", h.name, h.value))
        .collect();
    format!(
        "{host}\0{}\0{}\0{}\0{}\0{}",
        path.r#type,
        path.value,
        path.ignore_case,
        m.methods.join(","),
        headers.join("\0")
    )
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
