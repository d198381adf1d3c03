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
    /// Set by `add` from the path match: the path is compared in lower case.
    pub(super) ignore_case: bool,
}

impl Candidate {
    fn precedence(&self) -> (Reverse<usize>, (u32, u32, u32)) {
        (Reverse(self.conditions.weight()), self.order)
    }
}

fn sort(candidates: &mut [Candidate]) {
    candidates.sort_by_key(Candidate::precedence);
}

/// The first candidate (in precedence order) whose conditions hold and that `fits`.
fn first<'c>(
    candidates: &'c [Candidate],
    request: &RequestFacts<'_>,
    fits: impl Fn(&Candidate) -> bool,
) -> Option<&'c Candidate> {
    candidates
        .iter()
        .find(|c| fits(c) && c.conditions.hold(request.method, request.headers))
}

/// The better of two candidates for one key: as the path is, and in lower case for the
/// case-insensitive ones.
fn better<'c>(a: Option<&'c Candidate>, b: Option<&'c Candidate>) -> Option<RuleId> {
    match (a, b) {
        (Some(a), Some(b)) => Some(
            if b.precedence() < a.precedence() {
                b
            } else {
                a
            }
            .rule,
        ),
        (a, b) => a.or(b).map(|c| c.rule),
    }
}

#[derive(Default)]
pub(super) struct PathTableBuilder {
    exact: HashMap<Box<str>, Vec<Candidate>, RandomState>,
    prefix: HashMap<Box<str>, Vec<Candidate>, RandomState>,
    regex: Vec<(Regex, Candidate)>,
    ignore_case: bool,
}

/// A path match made ready for a table: the key of an exact or prefix match, or the
/// anchored regular expression.
pub(super) struct PathKey {
    kind: PathKind,
    ignore_case: bool,
}

enum PathKind {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl PathKey {
    pub(super) fn new(path: &proto::PathMatch) -> Result<Self, String> {
        let value = path.value.as_str();
        let kind = match path.r#type() {
            kind @ (proto::PathMatchType::Exact | proto::PathMatchType::Prefix) => {
                // Values are compared with normalised request paths: normalised the same
                // way here (`/%61dmin` is `/admin`), whatever produced the snapshot.
                let normal = crate::path::normalize(value, crate::path::EscapedSlashes::Keep)
                    .map_err(|e| format!("path `{value}`: {}", e.message()))?;
                let mut key = normal.key().to_owned();
                if path.ignore_case {
                    key.make_ascii_lowercase();
                }
                if kind == proto::PathMatchType::Exact {
                    PathKind::Exact(key.into())
                } else {
                    // The compiler already strips trailing slashes; snapshots from elsewhere may not.
                    let trimmed = key.trim_end_matches('/');
                    PathKind::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.into())
                }
            }
            proto::PathMatchType::RegularExpression => {
                // On its own first: `a)|(b` would otherwise escape the anchors below.
                RegexBuilder::new(value)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regular expression `{value}`: {e}"))?;
                // The flag inline, so that the set built from the patterns' text keeps it.
                let flags = if path.ignore_case { "(?i)" } else { "" };
                PathKind::Regex(
                    RegexBuilder::new(&format!("{flags}^(?:{value})$"))
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| format!("invalid regular expression `{value}`: {e}"))?,
                )
            }
        };
        Ok(Self {
            kind,
            ignore_case: path.ignore_case,
        })
    }
}

impl PathTableBuilder {
    pub(super) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.regex.is_empty()
    }

    pub(super) fn add(&mut self, path: &PathKey, mut candidate: Candidate) {
        candidate.ignore_case = path.ignore_case;
        self.ignore_case |= path.ignore_case;
        // Most paths have one candidate: a vector of one becomes its boxed slice without a
        // reallocation.
        let one = || Vec::with_capacity(1);
        let (map, key) = match &path.kind {
            PathKind::Exact(key) => (&mut self.exact, key),
            PathKind::Prefix(key) => (&mut self.prefix, key),
            PathKind::Regex(regex) => {
                self.regex.push((regex.clone(), candidate));
                return;
            }
        };
        match map.get_mut(key) {
            Some(candidates) => candidates.push(candidate),
            None => {
                let mut candidates = one();
                candidates.push(candidate);
                map.insert(key.clone(), candidates);
            }
        }
    }

    pub(super) fn build(self) -> Result<PathTable, RouteError> {
        let finish = |map: HashMap<Box<str>, Vec<Candidate>, RandomState>| {
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
            ignore_case: self.ignore_case,
        })
    }
}

#[derive(Default)]
pub(super) struct PathTable {
    exact: HashMap<Box<str>, Box<[Candidate]>, RandomState>,
    /// Keyed by prefix without trailing slash (`/` for the root).
    prefix: HashMap<Box<str>, Box<[Candidate]>, RandomState>,
    regex: Option<Regexes>,
    /// Whether some exact or prefix entry is case-insensitive (stored in lower case).
    ignore_case: bool,
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
        // Case-insensitive entries are kept in lower case; the path is lowered only when
        // there are such entries and it has upper case (same length, same boundaries).
        let lower = (self.ignore_case && path.bytes().any(|b| b.is_ascii_uppercase()))
            .then(|| path.to_ascii_lowercase());
        let lookup = |map: &HashMap<Box<str>, Box<[Candidate]>, RandomState>, end: usize| {
            let exact_case = map
                .get(&path[..end])
                .and_then(|c| first(c, request, |_| true));
            let any_case = lower.as_ref().and_then(|lower| {
                map.get(&lower[..end])
                    .and_then(|c| first(c, request, |c| c.ignore_case))
            });
            better(exact_case, any_case)
        };
        if let Some(rule) = lookup(&self.exact, path.len()) {
            return Some(rule);
        }
        if !self.prefix.is_empty() {
            // "/a/b/c", "/a/b", "/a", "/": every segment boundary, longest first.
            let mut end = path.len();
            loop {
                if let Some(rule) = lookup(&self.prefix, end.max(1)) {
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

impl PathTable {
    /// Appends the candidates whose path matches, in the order [`find`](Self::find) tries
    /// them, each with whether its conditions hold.
    pub(super) fn candidates(&self, request: &RequestFacts<'_>, found: &mut Vec<(RuleId, bool)>) {
        let path = request.path;
        let lower = path.to_ascii_lowercase();
        let holds = |c: &Candidate| c.conditions.hold(request.method, request.headers);
        let mut key = |map: &HashMap<Box<str>, Box<[Candidate]>, RandomState>, end: usize| {
            let mut matching: Vec<&Candidate> = map
                .get(&path[..end])
                .into_iter()
                .flatten()
                .chain(
                    map.get(&lower[..end])
                        .into_iter()
                        .flatten()
                        .filter(|c| c.ignore_case && lower[..end] != path[..end]),
                )
                .collect();
            matching.sort_by_key(|c| c.precedence());
            matching.dedup_by_key(|c| (c.rule, c.order));
            found.extend(matching.into_iter().map(|c| (c.rule, holds(c))));
        };
        key(&self.exact, path.len());
        if !self.prefix.is_empty() {
            let mut end = path.len();
            loop {
                key(&self.prefix, end.max(1));
                if end <= 1 {
                    break;
                }
                end = path[..end].rfind('/').unwrap_or(0);
            }
        }
        if let Some(regexes) = &self.regex {
            found.extend(
                regexes
                    .entries
                    .iter()
                    .filter(|(regex, _)| regex.is_match(path))
                    .map(|(_, c)| (c.rule, holds(c))),
            );
        }
    }
}
