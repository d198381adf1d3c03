//! The route matcher, built once per snapshot — or, when a snapshot changes a few routes,
//! patched: only the host tables those routes are in are built again (see [`Router::patch`]).
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
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use table::{Candidate, Conditions, PathKey, PathTable, PathTableBuilder};

/// A rule: its route's slot in the runtime and its position in the route. Slots stay the
/// same while a route is unchanged, so tables a patch leaves alone still point right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    pub route: u32,
    pub rule: u32,
}

/// A patch that would build more tables than this builds all of them instead.
const MOST_TABLES_PATCHED: usize = 64;

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

/// Host → path tables, shared with the runtimes patched from this one.
#[derive(Default)]
pub struct Router {
    exact: HashMap<Arc<str>, Arc<PathTable>, RandomState>,
    /// Keyed by the suffix with its leading dot: `*.example.com` → `.example.com`.
    wildcard: HashMap<Arc<str>, Arc<PathTable>, RandomState>,
    any: Arc<PathTable>,
}

/// Which table of the router a route's matches go into.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum TableKey<'a> {
    Exact(&'a str),
    /// The suffix with its leading dot.
    Wildcard(&'a str),
    Any,
}

/// Builds every table.
fn finish(
    tables: HashMap<&str, PathTableBuilder, RandomState>,
) -> Result<HashMap<Arc<str>, Arc<PathTable>, RandomState>, RouteError> {
    let mut built = HashMap::with_capacity_and_hasher(tables.len(), RandomState::default());
    for (key, table) in tables {
        built.insert(key.into(), Arc::new(table.build()?));
    }
    Ok(built)
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

/// One route's part of the matcher — hosts in lower case, paths normalised, regexes and
/// conditions compiled — made once per route and kept while the route is unchanged, so a
/// new snapshot that leaves a route alone does not redo its work.
pub struct RouteMatches {
    /// Empty: any host.
    hosts: Box<[Arc<str>]>,
    entries: Box<[MatchEntry]>,
}

struct MatchEntry {
    rule: u32,
    index: u32,
    path: PathKey,
    conditions: Conditions,
}

impl RouteMatches {
    pub fn new(route: &proto::Route) -> Result<Self, RouteError> {
        let mut entries =
            Vec::with_capacity(route.rules.iter().map(|r| r.matches.len().max(1)).sum());
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
                let root = proto::PathMatch {
                    r#type: proto::PathMatchType::Prefix as i32,
                    value: "/".into(),
                    ignore_case: false,
                };
                entries.push(MatchEntry {
                    rule: rule_index as u32,
                    index: match_index as u32,
                    path: PathKey::new(m.path.as_ref().unwrap_or(&root)).map_err(invalid)?,
                    conditions: Conditions::new(m).map_err(invalid)?,
                });
            }
        }
        Ok(Self {
            hosts: route
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase().into())
                .collect(),
            entries: entries.into(),
        })
    }

    /// The tables the route's matches go into.
    fn tables(&self) -> impl Iterator<Item = TableKey<'_>> {
        let any = self.hosts.is_empty().then_some(TableKey::Any);
        self.hosts
            .iter()
            .map(|host| match host.strip_prefix('*') {
                Some(suffix) => TableKey::Wildcard(suffix),
                None => TableKey::Exact(host),
            })
            .chain(any)
    }

    /// Adds the route's candidates for `table` (one of [`tables`](Self::tables)).
    fn add_to(&self, builder: &mut PathTableBuilder, position: usize, route: u32) {
        for entry in &self.entries {
            builder.add(
                &entry.path,
                Candidate {
                    conditions: entry.conditions.clone(),
                    rule: RuleId {
                        route,
                        rule: entry.rule,
                    },
                    order: (position as u32, entry.rule, entry.index),
                    ignore_case: false,
                },
            );
        }
    }
}

impl Router {
    /// Builds the matcher over `routes`; route `r`'s slot is `r`.
    pub fn build(routes: &[proto::Route]) -> Result<Router, RouteError> {
        let matches = routes
            .iter()
            .map(RouteMatches::new)
            .collect::<Result<Vec<_>, _>>()?;
        let routes: Vec<(&RouteMatches, u32)> = matches.iter().zip(0..).collect();
        Router::assemble(&routes)
    }

    /// Builds the matcher from each route's matches and slot, in the snapshot's order (the
    /// position is the last tie-breaker).
    pub fn assemble(routes: &[(&RouteMatches, u32)]) -> Result<Router, RouteError> {
        let mut exact: HashMap<&str, PathTableBuilder, RandomState> =
            HashMap::with_capacity_and_hasher(routes.len(), RandomState::default());
        let mut wildcard: HashMap<&str, PathTableBuilder, RandomState> = HashMap::default();
        let mut any = PathTableBuilder::default();
        for (position, &(route, slot)) in routes.iter().enumerate() {
            for table in route.tables() {
                let builder = match table {
                    TableKey::Exact(host) => exact.entry(host).or_default(),
                    TableKey::Wildcard(suffix) => wildcard.entry(suffix).or_default(),
                    TableKey::Any => &mut any,
                };
                route.add_to(builder, position, slot);
            }
        }
        Ok(Router {
            exact: finish(exact)?,
            wildcard: finish(wildcard)?,
            any: Arc::new(any.build()?),
        })
    }

    /// The matcher over `routes` (as [`assemble`](Self::assemble) takes them), made from
    /// this one, which matched the same routes except `changed`: routes added, removed or
    /// replaced since (both versions of a replaced one). Only the tables those routes are
    /// in are built again; the rest are shared. Routes that stayed must keep their slots
    /// and their order.
    pub fn patch(
        &self,
        routes: &[(&RouteMatches, u32)],
        changed: &[&RouteMatches],
    ) -> Result<Router, RouteError> {
        let touched: HashSet<TableKey<'_>, RandomState> =
            changed.iter().flat_map(|route| route.tables()).collect();
        if touched.len() > MOST_TABLES_PATCHED {
            return Router::assemble(routes);
        }
        let mut builders: HashMap<TableKey<'_>, PathTableBuilder, RandomState> = touched
            .iter()
            .map(|&table| (table, PathTableBuilder::default()))
            .collect();
        for (position, &(route, slot)) in routes.iter().enumerate() {
            for table in route.tables() {
                if let Some(builder) = builders.get_mut(&table) {
                    route.add_to(builder, position, slot);
                }
            }
        }
        let mut exact = self.exact.clone();
        let mut wildcard = self.wildcard.clone();
        let mut any = self.any.clone();
        for (table, builder) in builders {
            let (tables, key) = match table {
                TableKey::Exact(host) => (&mut exact, host),
                TableKey::Wildcard(suffix) => (&mut wildcard, suffix),
                TableKey::Any => {
                    any = Arc::new(builder.build()?);
                    continue;
                }
            };
            if builder.is_empty() {
                tables.remove(key);
            } else {
                tables.insert(key.into(), Arc::new(builder.build()?));
            }
        }
        Ok(Router {
            exact,
            wildcard,
            any,
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
