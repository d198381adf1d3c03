//! A rule's transforms, compiled once per snapshot: the path the backend is asked for (a
//! replaced prefix or a regular-expression rewrite), the `Host` it gets, and header edits
//! on the way there and back.

use http::{HeaderMap, HeaderName, HeaderValue};
use pavilion_proto as proto;
use regex::Regex;

/// Header edits in the order they apply: remove, set, add.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderEdits {
    fn new(edits: &proto::HeaderEdits) -> Result<Self, String> {
        let name =
            |n: &str| HeaderName::try_from(n).map_err(|_| format!("`{n}` is not a header name"));
        let pairs = |list: &[proto::HeaderPair]| {
            list.iter()
                .map(|p| {
                    let value = HeaderValue::try_from(p.value.as_str())
                        .map_err(|_| format!("the value of `{}` is not a header value", p.name))?;
                    Ok((name(&p.name)?, value))
                })
                .collect::<Result<Box<[_]>, String>>()
        };
        Ok(Self {
            remove: edits
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: pairs(&edits.set)?,
            add: pairs(&edits.add)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

enum PathRewrite {
    None,
    /// The rule's prefixes (normalised, no trailing slash; ignore-case ones lower-case)
    /// and what replaces the one that matched.
    Prefix {
        prefixes: Box<[(Box<str>, bool)]>,
        to: Box<str>,
    },
    Regex {
        regex: Regex,
        substitution: Box<str>,
    },
}

pub struct Transform {
    path: PathRewrite,
    /// The `Host` sent upstream instead of the client's.
    pub host: Option<HeaderValue>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

impl Transform {
    /// `None` when the rule transforms nothing.
    pub fn new(rule: &proto::Rule) -> Result<Option<Self>, String> {
        let empty = proto::HeaderEdits::default();
        let request_headers = HeaderEdits::new(rule.request_headers.as_ref().unwrap_or(&empty))?;
        let response_headers = HeaderEdits::new(rule.response_headers.as_ref().unwrap_or(&empty))?;
        let rewrite = rule.rewrite.clone().unwrap_or_default();
        let path = if !rewrite.path_prefix.is_empty() {
            let prefixes = rule
                .matches
                .iter()
                .map(|m| match &m.path {
                    None => Ok(("".into(), false)),
                    Some(p) if p.r#type == proto::PathMatchType::Prefix as i32 => {
                        Ok((p.value.trim_end_matches('/').into(), p.ignore_case))
                    }
                    Some(_) => {
                        Err("rewrite.pathPrefix needs every match to be a PathPrefix".to_owned())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            PathRewrite::Prefix {
                // A rule without matches matches every path: prefix `/`.
                prefixes: if prefixes.is_empty() {
                    Box::new([("".into(), false)])
                } else {
                    prefixes.into()
                },
                to: rewrite.path_prefix.trim_end_matches('/').into(),
            }
        } else if !rewrite.path_regex.is_empty() {
            PathRewrite::Regex {
                regex: Regex::new(&rewrite.path_regex)
                    .map_err(|e| format!("rewrite.pathRegex: {e}"))?,
                substitution: rewrite.path_substitution.as_str().into(),
            }
        } else {
            PathRewrite::None
        };
        let host = (!rewrite.host.is_empty())
            .then(|| HeaderValue::try_from(rewrite.host.as_str()))
            .transpose()
            .map_err(|_| format!("rewrite.host `{}` is not a header value", rewrite.host))?;
        if matches!(path, PathRewrite::None)
            && host.is_none()
            && request_headers.is_empty()
            && response_headers.is_empty()
        {
            return Ok(None);
        }
        Ok(Some(Self {
            path,
            host,
            request_headers,
            response_headers,
        }))
    }

    /// The path the backend is asked for, when the rule rewrites `path` (normalised,
    /// without query); `Err` when a regular-expression rewrite made something that is not
    /// an absolute path.
    pub fn path(&self, path: &str) -> Option<Result<String, ()>> {
        match &self.path {
            PathRewrite::None => None,
            PathRewrite::Prefix { prefixes, to } => {
                // The longest prefix the path has at a segment boundary.
                let matched = prefixes
                    .iter()
                    .filter(|(prefix, ignore_case)| {
                        let head = path.get(..prefix.len());
                        let fits = match head {
                            Some(head) if *ignore_case => head.eq_ignore_ascii_case(prefix),
                            Some(head) => head == &**prefix,
                            None => false,
                        };
                        fits && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
                    })
                    .map(|(prefix, _)| prefix.len())
                    .max()?;
                let rest = &path[matched..];
                let mut rewritten = String::with_capacity(to.len() + rest.len() + 1);
                rewritten.push_str(to);
                rewritten.push_str(rest);
                if rewritten.is_empty() {
                    rewritten.push('/');
                }
                Some(Ok(rewritten))
            }
            PathRewrite::Regex {
                regex,
                substitution,
            } => {
                let rewritten = regex.replace(path, &**substitution);
                let valid = rewritten.starts_with('/')
                    && http::uri::PathAndQuery::try_from(&*rewritten)
                        .is_ok_and(|pq| pq.query().is_none());
                Some(if valid {
                    Ok(rewritten.into_owned())
                } else {
                    Err(())
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefixes: &[&str], rewrite: proto::Rewrite) -> proto::Rule {
        proto::Rule {
            matches: prefixes
                .iter()
                .map(|p| proto::Match {
                    path: Some(proto::PathMatch {
                        r#type: proto::PathMatchType::Prefix as i32,
                        value: p.to_string(),
                        ignore_case: false,
                    }),
                    ..Default::default()
                })
                .collect(),
            rewrite: Some(rewrite),
            ..Default::default()
        }
    }

    fn prefix(to: &str) -> proto::Rewrite {
        proto::Rewrite {
            path_prefix: to.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_matched_prefix_is_replaced_at_a_segment_boundary() {
        let t = Transform::new(&rule(&["/api", "/api/v1"], prefix("/v2")))
            .unwrap()
            .unwrap();
        assert_eq!(t.path("/api/orders/7"), Some(Ok("/v2/orders/7".into())));
        assert_eq!(t.path("/api"), Some(Ok("/v2".into())));
        assert_eq!(
            t.path("/api/v1/x"),
            Some(Ok("/v2/x".into())),
            "the longest prefix"
        );
        assert_eq!(t.path("/apix"), None);
        let root = Transform::new(&rule(&["/api"], prefix("/")))
            .unwrap()
            .unwrap();
        assert_eq!(root.path("/api/orders"), Some(Ok("/orders".into())));
        assert_eq!(root.path("/api"), Some(Ok("/".into())));
        let everything = Transform::new(&rule(&["/"], prefix("/base")))
            .unwrap()
            .unwrap();
        assert_eq!(everything.path("/a/b"), Some(Ok("/base/a/b".into())));
    }

    #[test]
    fn a_regex_rewrite_must_leave_an_absolute_path() {
        let rewrite = |pattern: &str, substitution: &str| proto::Rewrite {
            path_regex: pattern.into(),
            path_substitution: substitution.into(),
            ..Default::default()
        };
        let t = Transform::new(&rule(&[], rewrite("^/users/([0-9]+)$", "/u/$1")))
            .unwrap()
            .unwrap();
        assert_eq!(t.path("/users/42"), Some(Ok("/u/42".into())));
        assert_eq!(
            t.path("/users/x"),
            Some(Ok("/users/x".into())),
            "no match: unchanged"
        );
        let bad = Transform::new(&rule(&[], rewrite("^/a", "/b?x=1")))
            .unwrap()
            .unwrap();
        assert_eq!(
            bad.path("/a"),
            Some(Err(())),
            "a query smuggled in is refused"
        );
        assert!(
            Transform::new(&rule(&[], proto::Rewrite::default()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn edits_remove_then_set_then_add() {
        let edits = HeaderEdits::new(&proto::HeaderEdits {
            remove: vec!["x-drop".into()],
            set: vec![proto::HeaderPair {
                name: "x-set".into(),
                value: "new".into(),
            }],
            add: vec![proto::HeaderPair {
                name: "x-set".into(),
                value: "more".into(),
            }],
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("old"));
        edits.apply(&mut headers);
        assert!(!headers.contains_key("x-drop"));
        let values: Vec<_> = headers.get_all("x-set").iter().collect();
        assert_eq!(values, ["new", "more"]);
    }
}
