//! One host's path table: exact paths, segment prefixes and regular expressions, each
//! holding candidates in precedence order.

use std::cmp::Reverse;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pavilion_proto as proto;
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::{RequestFacts, RouteError, RuleId};

/// Compiled size limit of one path regex, as the control plane validates it.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Method and header conditions of one match.
#[derive(Clone, Debug)]
pub(super) struct Conditions {
    /// Empty: any method.
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl Conditions {
    pub(super) fn new(m: &proto::Match) -> Result<Self, String> {
        let methods = m
            .methods
            .iter()
            .map(|x| Method::from_bytes(x.as_bytes()).map_err(|_| format!("`{x}` is not a method")))
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("`{}` is not a header name", h.name))?;
                let value = HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("invalid value for header `{}`", h.name))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { methods, headers })
    }

    /// How specific the conditions are: each header counts one, a method list one.
    fn weight(&self) -> usize {
        self.headers.len() + usize::from(!self.methods.is_empty())
    }

    fn hold(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub(super) conditions: Conditions,
    pub(super) rule: RuleId,
    /// Route position, rule index, match index: the final tie-breakers.
    pub(super) order: (u32, u32, u32),
}

fn sort(candidates: &mut [Candidate]) {
    candidates.sort_by_key(|c| (Reverse(c.conditions.weight()), c.order));
}

fn first(candidates: &[Candidate], request: &RequestFacts<'_>) -> Option<RuleId> {
    candidates
        .iter()
        .find(|c| c.conditions.hold(request.method, request.headers))
        .map(|c| c.rule)
}

#[derive(Default)]
pub(super) struct PathTableBuilder {
    exact: HashMap<Box<str>, Vec<Candidate>>,
    prefix: HashMap<Box<str>, Vec<Candidate>>,
    regex: Vec<(Regex, Candidate)>,
}

impl PathTableBuilder {
    pub(super) fn add(
        &mut self,
        path: &proto::PathMatch,
        candidate: Candidate,
    ) -> Result<(), String> {
        let value = path.value.as_str();
        match path.r#type() {
            proto::PathMatchType::Exact => {
                self.exact.entry(value.into()).or_default().push(candidate)
            }
            proto::PathMatchType::Prefix => {
                // The compiler already strips trailing slashes; snapshots from elsewhere may not.
                let trimmed = value.trim_end_matches('/');
                let key = if trimmed.is_empty() { "/" } else { trimmed };
                self.prefix.entry(key.into()).or_default().push(candidate);
            }
            proto::PathMatchType::RegularExpression => {
                // On its own first: `a)|(b` would otherwise escape the anchors below.
                RegexBuilder::new(value)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regular expression `{value}`: {e}"))?;
                let regex = RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regular expression `{value}`: {e}"))?;
                self.regex.push((regex, candidate));
            }
        }
        Ok(())
    }

    pub(super) fn build(self) -> Result<PathTable, RouteError> {
        let finish = |map: HashMap<Box<str>, Vec<Candidate>>| {
            map.into_iter()
                .map(|(path, mut candidates)| {
                    sort(&mut candidates);
                    (path, candidates.into_boxed_slice())
                })
                .collect()
        };
        let regex = if self.regex.is_empty() {
            None
        } else {
            let mut entries = self.regex;
            entries.sort_by_key(|(_, c)| (Reverse(c.conditions.weight()), c.order));
            let set = RegexSetBuilder::new(entries.iter().map(|(r, _)| r.as_str()))
                .size_limit(REGEX_SIZE_LIMIT.saturating_mul(entries.len()))
                .build()
                .map_err(|e| RouteError::RegexSet(e.to_string()))?;
            Some(Regexes {
                set,
                entries: entries.into_boxed_slice(),
            })
        };
        Ok(PathTable {
            exact: finish(self.exact),
            prefix: finish(self.prefix),
            regex,
        })
    }
}

#[derive(Default)]
pub(super) struct PathTable {
    exact: HashMap<Box<str>, Box<[Candidate]>, RandomState>,
    /// Keyed by prefix without trailing slash (`/` for the root).
    prefix: HashMap<Box<str>, Box<[Candidate]>, RandomState>,
    regex: Option<Regexes>,
}

struct Regexes {
    /// All patterns at once: one pass tells whether any can match at all.
    set: RegexSet,
    /// In precedence order.
    entries: Box<[(Regex, Candidate)]>,
}

impl PathTable {
    pub(super) fn find(&self, request: &RequestFacts<'_>) -> Option<RuleId> {
        let path = request.path;
        if let Some(rule) = self.exact.get(path).and_then(|c| first(c, request)) {
            return Some(rule);
        }
        if !self.prefix.is_empty() {
            // "/a/b/c", "/a/b", "/a", "/": every segment boundary, longest first.
            let mut end = path.len();
            loop {
                let key = &path[..end.max(1)];
                if let Some(rule) = self.prefix.get(key).and_then(|c| first(c, request)) {
                    return Some(rule);
                }
                if end <= 1 {
                    break;
                }
                end = path[..end].rfind('/').unwrap_or(0);
            }
        }
        let regexes = self.regex.as_ref()?;
        if !regexes.set.is_match(path) {
            return None;
        }
        regexes
            .entries
            .iter()
            .find(|(regex, c)| {
                c.conditions.hold(request.method, request.headers) && regex.is_match(path)
            })
            .map(|(_, c)| c.rule)
    }
}
