//! The route matcher, built once per snapshot.
//!
//! Precedence (API.md), highest first — the first candidate whose conditions hold wins:
//! 1. host: exact host, then wildcard hosts from the longest suffix, then routes for any host;
//! 2. path: `Exact`, then `PathPrefix` from the longest prefix, then `RegularExpression`;
//! 3. more conditions (each header match, and a method list, count one) first;
//! 4. older route first (the snapshot's order), then rule and match order.
//!
//! A request walks at most `labels(host) + 2` host tables; in each, one hash lookup for the
//! exact path, one per path segment for prefixes, and one `RegexSet` pass only if the
//! table has regexes. Nothing is allocated on the way.

mod table;

use foldhash::fast::RandomState;
use http::{HeaderMap, Method};
use pavilion_proto as proto;
use std::collections::HashMap;

use table::{Candidate, Conditions, PathTable, PathTableBuilder};

/// Index of a rule in the runtime's rule list.
pub type RuleId = u32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route {route}: rule {rule}: {message}")]
    Invalid {
        route: String,
        rule: usize,
        message: String,
    },
    #[error("the path regular expressions of one host are too large together: {0}")]
    RegexSet(String),
}

/// Host → path tables.
#[derive(Default)]
pub struct Router {
    exact: HashMap<Box<str>, PathTable, RandomState>,
    /// Keyed by the suffix with its leading dot: `*.example.com` → `.example.com`.
    wildcard: HashMap<Box<str>, PathTable, RandomState>,
    any: PathTable,
}

/// What one request offers to the matcher.
pub struct RequestFacts<'a> {
    /// Lower-case host without port.
    pub host: Option<&'a str>,
    /// Normalised path, without query.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl Router {
    /// Builds the matcher. `rule_ids[r][k]` is the id of rule `k` of route `r`.
    pub fn build(routes: &[proto::Route], rule_ids: &[Vec<RuleId>]) -> Result<Router, RouteError> {
        let mut exact: HashMap<Box<str>, PathTableBuilder, RandomState> =
            HashMap::with_capacity_and_hasher(routes.len(), RandomState::default());
        let mut wildcard: HashMap<Box<str>, PathTableBuilder, RandomState> = HashMap::default();
        let mut any = PathTableBuilder::default();
        for (position, route) in routes.iter().enumerate() {
            for (rule_index, rule) in route.rules.iter().enumerate() {
                let invalid = |message: String| RouteError::Invalid {
                    route: format!("{}/{}", route.namespace, route.name),
                    rule: rule_index,
                    message,
                };
                let default_match = [proto::Match::default()];
                let matches = if rule.matches.is_empty() {
                    &default_match[..]
                } else {
                    &rule.matches[..]
                };
                for (match_index, m) in matches.iter().enumerate() {
                    let candidate = Candidate {
                        conditions: Conditions::new(m).map_err(invalid)?,
                        rule: rule_ids[position][rule_index],
                        order: (position as u32, rule_index as u32, match_index as u32),
                        ignore_case: false,
                    };
                    let path = m.path.clone().unwrap_or(proto::PathMatch {
                        r#type: proto::PathMatchType::Prefix as i32,
                        value: "/".into(),
                        ignore_case: false,
                    });
                    if route.hosts.is_empty() {
                        any.add(&path, candidate.clone()).map_err(invalid)?;
                    }
                    for host in &route.hosts {
                        let host = host.to_ascii_lowercase();
                        let table = match host.strip_prefix('*') {
                            Some(suffix) => wildcard.entry(suffix.into()).or_default(),
                            None => exact.entry(host.into()).or_default(),
                        };
                        table.add(&path, candidate.clone()).map_err(invalid)?;
                    }
                }
            }
        }
        let finish =
            |tables: HashMap<Box<str>, PathTableBuilder, RandomState>| -> Result<_, RouteError> {
                tables
                    .into_iter()
                    .map(|(host, table)| Ok((host, table.build()?)))
                    .collect::<Result<HashMap<_, _, RandomState>, _>>()
            };
        Ok(Router {
            exact: finish(exact)?,
            wildcard: finish(wildcard)?,
            any: any.build()?,
        })
    }

    /// The rule serving this request, if any.
    pub fn find(&self, request: &RequestFacts<'_>) -> Option<RuleId> {
        if let Some(host) = request.host {
            if let Some(rule) = self.exact.get(host).and_then(|t| t.find(request)) {
                return Some(rule);
            }
            if !self.wildcard.is_empty() {
                // ".b.example.com", then ".example.com", then ".com".
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    let suffix = &rest[dot..];
                    if let Some(rule) = self.wildcard.get(suffix).and_then(|t| t.find(request)) {
                        return Some(rule);
                    }
                    rest = &rest[dot + 1..];
                }
            }
        }
        self.any.find(request)
    }

    /// Every rule whose host and path match the request, in precedence order, each with
    /// whether its method and header conditions hold: the first that holds is what
    /// [`find`](Self::find) returns. For `explain`; allocates, so never on the request path.
    pub fn candidates(&self, request: &RequestFacts<'_>) -> Vec<(RuleId, bool)> {
        let mut found = Vec::new();
        if let Some(host) = request.host {
            if let Some(table) = self.exact.get(host) {
                table.candidates(request, &mut found);
            }
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                if let Some(table) = self.wildcard.get(&rest[dot..]) {
                    table.candidates(request, &mut found);
                }
                rest = &rest[dot + 1..];
            }
        }
        self.any.candidates(request, &mut found);
        found
    }
}

#[cfg(test)]
mod tests;
