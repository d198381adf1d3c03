use http::{HeaderMap, HeaderValue, Method};
use pavilion_proto as proto;

use super::{RequestFacts, RouteError, Router};

/// Routes as `(name, hosts, rules)`, each rule a list of matches; route `r` has slot `r`.
struct Fixture {
    router: Router,
    /// `name#rule` of every rule.
    labels: std::collections::HashMap<super::RuleId, String>,
}

fn path(kind: proto::PathMatchType, value: &str) -> Option<proto::PathMatch> {
    Some(proto::PathMatch {
        r#type: kind as i32,
        value: value.into(),
        ignore_case: false,
    })
}

fn exact(value: &str) -> proto::Match {
    proto::Match {
        path: path(proto::PathMatchType::Exact, value),
        ..Default::default()
    }
}

fn prefix(value: &str) -> proto::Match {
    proto::Match {
        path: path(proto::PathMatchType::Prefix, value),
        ..Default::default()
    }
}

fn regex(value: &str) -> proto::Match {
    proto::Match {
        path: path(proto::PathMatchType::RegularExpression, value),
        ..Default::default()
    }
}

fn with_methods(mut m: proto::Match, methods: &[&str]) -> proto::Match {
    m.methods = methods.iter().map(|s| s.to_string()).collect();
    m
}

fn with_header(mut m: proto::Match, name: &str, value: &str) -> proto::Match {
    m.headers.push(proto::HeaderMatch {
        name: name.into(),
        value: value.into(),
    });
    m
}

/// `(name, hosts, rules)`, each rule a list of matches.
type RouteSpec<'a> = (&'a str, &'a [&'a str], Vec<Vec<proto::Match>>);

fn build(routes: &[RouteSpec<'_>]) -> Result<Fixture, RouteError> {
    let mut labels = std::collections::HashMap::new();
    let protos: Vec<proto::Route> = routes
        .iter()
        .zip(0..)
        .map(|((name, hosts, rules), slot)| {
            for r in 0..rules.len() {
                let id = super::RuleId {
                    route: slot,
                    rule: r as u32,
                };
                labels.insert(id, format!("{name}#{r}"));
            }
            proto::Route {
                namespace: "ns".into(),
                name: name.to_string(),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                rules: rules
                    .iter()
                    .map(|matches| proto::Rule {
                        matches: matches.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    Ok(Fixture {
        router: Router::build(&protos)?,
        labels,
    })
}

impl Fixture {
    fn find_with(
        &self,
        host: Option<&str>,
        method: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&str> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let facts = RequestFacts {
            host,
            path,
            method: &method,
            headers,
        };
        let found = self.router.find(&facts);
        // `explain`'s list agrees with the matcher: its first candidate that holds wins.
        let first_holding = self
            .router
            .candidates(&facts)
            .into_iter()
            .find(|(_, holds)| *holds)
            .map(|(id, _)| id);
        assert_eq!(first_holding, found, "candidates disagree for {path}");
        found.map(|id| self.labels[&id].as_str())
    }

    fn find(&self, host: Option<&str>, method: &str, path: &str) -> Option<&str> {
        self.find_with(host, method, path, &HeaderMap::new())
    }
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let f = build(&[
        ("any", &[], vec![vec![prefix("/")]]),
        ("wild", &["*.example.com"], vec![vec![prefix("/")]]),
        (
            "deeper-wild",
            &["*.eu.example.com"],
            vec![vec![prefix("/")]],
        ),
        ("exact", &["api.example.com"], vec![vec![prefix("/")]]),
    ])
    .unwrap();
    assert_eq!(f.find(Some("api.example.com"), "GET", "/"), Some("exact#0"));
    assert_eq!(f.find(Some("www.example.com"), "GET", "/"), Some("wild#0"));
    assert_eq!(f.find(Some("a.b.example.com"), "GET", "/"), Some("wild#0"));
    assert_eq!(
        f.find(Some("x.eu.example.com"), "GET", "/"),
        Some("deeper-wild#0")
    );
    assert_eq!(
        f.find(Some("example.com"), "GET", "/"),
        Some("any#0"),
        "a wildcard needs a label in front"
    );
    assert_eq!(f.find(Some("other.org"), "GET", "/"), Some("any#0"));
    assert_eq!(f.find(None, "GET", "/"), Some("any#0"));
}

#[test]
fn a_host_without_a_matching_path_falls_through_to_less_specific_hosts() {
    let f = build(&[
        ("wild", &["*.example.com"], vec![vec![prefix("/")]]),
        ("exact", &["api.example.com"], vec![vec![exact("/only")]]),
    ])
    .unwrap();
    assert_eq!(
        f.find(Some("api.example.com"), "GET", "/only"),
        Some("exact#0")
    );
    assert_eq!(
        f.find(Some("api.example.com"), "GET", "/other"),
        Some("wild#0")
    );
    assert_eq!(f.find(Some("api.other.com"), "GET", "/other"), None);
}

#[test]
fn exact_path_beats_longer_prefix_beats_shorter_beats_regex() {
    let f = build(&[
        ("regex", &[], vec![vec![regex("/a.*")]]),
        ("short", &[], vec![vec![prefix("/a")]]),
        ("long", &[], vec![vec![prefix("/a/b/")]]),
        ("exact", &[], vec![vec![exact("/a/b")]]),
    ])
    .unwrap();
    assert_eq!(f.find(None, "GET", "/a/b"), Some("exact#0"));
    assert_eq!(f.find(None, "GET", "/a/b/"), Some("long#0"));
    assert_eq!(f.find(None, "GET", "/a/b/c"), Some("long#0"));
    assert_eq!(f.find(None, "GET", "/a/x"), Some("short#0"));
    assert_eq!(f.find(None, "GET", "/a"), Some("short#0"));
    assert_eq!(
        f.find(None, "GET", "/ab"),
        Some("regex#0"),
        "prefixes match whole segments only"
    );
    assert_eq!(f.find(None, "GET", "/b"), None);
}

#[test]
fn regexes_match_the_whole_path() {
    let f = build(&[("r", &[], vec![vec![regex("/v[0-9]+")]])]).unwrap();
    assert_eq!(f.find(None, "GET", "/v12"), Some("r#0"));
    assert_eq!(f.find(None, "GET", "/v1/x"), None);
    assert_eq!(f.find(None, "GET", "/x/v1"), None);
}

#[test]
fn more_conditions_win_then_older_routes() {
    let f = build(&[
        ("plain", &[], vec![vec![prefix("/api")]]),
        (
            "get",
            &[],
            vec![vec![with_methods(prefix("/api"), &["GET"])]],
        ),
        (
            "get-v2",
            &[],
            vec![vec![with_header(
                with_methods(prefix("/api"), &["GET"]),
                "x-version",
                "2",
            )]],
        ),
        ("plain-younger", &[], vec![vec![prefix("/api")]]),
    ])
    .unwrap();
    let mut v2 = HeaderMap::new();
    v2.insert("x-version", HeaderValue::from_static("2"));
    assert_eq!(f.find_with(None, "GET", "/api/x", &v2), Some("get-v2#0"));
    assert_eq!(f.find(None, "GET", "/api/x"), Some("get#0"));
    assert_eq!(
        f.find(None, "POST", "/api/x"),
        Some("plain#0"),
        "the older of two equal routes wins"
    );
}

#[test]
fn header_conditions_accept_any_of_repeated_values() {
    let f = build(&[(
        "h",
        &[],
        vec![vec![with_header(exact("/"), "x-team", "blue")]],
    )])
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.append("x-team", HeaderValue::from_static("red"));
    assert_eq!(f.find_with(None, "GET", "/", &headers), None);
    headers.append("x-team", HeaderValue::from_static("blue"));
    assert_eq!(f.find_with(None, "GET", "/", &headers), Some("h#0"));
}

#[test]
fn rules_without_matches_match_everything_and_rules_keep_their_order() {
    let f = build(&[("r", &["a.com"], vec![vec![exact("/x")], vec![]])]).unwrap();
    assert_eq!(f.find(Some("a.com"), "GET", "/x"), Some("r#0"));
    assert_eq!(
        f.find(Some("a.com"), "DELETE", "/anything/else"),
        Some("r#1")
    );
}

#[test]
fn a_regex_cannot_escape_its_anchors() {
    assert!(build(&[("r", &[], vec![vec![regex("/admin)|(/x")]])]).is_err());
}

#[test]
fn invalid_regex_is_refused_with_the_route_named() {
    let Err(error) = build(&[("bad", &[], vec![vec![regex("/(")]])]) else {
        panic!("an invalid regex must not build")
    };
    assert!(
        error
            .to_string()
            .starts_with("route ns/bad: rule 0: invalid regular expression"),
        "{error}"
    );
}

fn ignoring_case(mut m: proto::Match) -> proto::Match {
    if let Some(path) = &mut m.path {
        path.ignore_case = true;
    }
    m
}

#[test]
fn paths_are_case_sensitive_unless_a_match_ignores_case() {
    let f = build(&[
        ("public", &[], vec![vec![prefix("/")]]),
        ("admin", &[], vec![vec![ignoring_case(prefix("/Admin"))]]),
        ("exact", &[], vec![vec![exact("/Login")]]),
    ])
    .unwrap();
    for path in ["/admin/x", "/ADMIN/x", "/aDmIn", "/Admin"] {
        assert_eq!(f.find(None, "GET", path), Some("admin#0"), "{path}");
    }
    assert_eq!(f.find(None, "GET", "/Login"), Some("exact#0"));
    assert_eq!(
        f.find(None, "GET", "/login"),
        Some("public#0"),
        "case-sensitive"
    );
    let f = build(&[(
        "any-case",
        &[],
        vec![vec![ignoring_case(regex("/files/[a-z]+"))]],
    )])
    .unwrap();
    assert_eq!(f.find(None, "GET", "/FILES/Report"), Some("any-case#0"));
}

#[test]
fn an_exact_case_entry_and_an_ignore_case_entry_of_one_key_keep_their_precedence() {
    let f = build(&[
        ("older", &[], vec![vec![ignoring_case(prefix("/api"))]]),
        ("younger", &[], vec![vec![prefix("/API")]]),
    ])
    .unwrap();
    assert_eq!(f.find(None, "GET", "/API/x"), Some("older#0"), "older wins");
    assert_eq!(f.find(None, "GET", "/Api/x"), Some("older#0"));
    let f = build(&[
        ("older", &[], vec![vec![prefix("/API")]]),
        (
            "younger",
            &[],
            vec![vec![with_methods(ignoring_case(prefix("/api")), &["GET"])]],
        ),
    ])
    .unwrap();
    assert_eq!(
        f.find(None, "GET", "/API/x"),
        Some("younger#0"),
        "more conditions win"
    );
    assert_eq!(f.find(None, "POST", "/API/x"), Some("older#0"));
}

#[test]
fn route_values_are_normalised_like_request_paths() {
    let f = build(&[(
        "admin",
        &[],
        vec![vec![prefix("/%61dmin"), exact("/caf%c3%a9")]],
    )])
    .unwrap();
    assert_eq!(f.find(None, "GET", "/admin/x"), Some("admin#0"));
    assert_eq!(f.find(None, "GET", "/caf%C3%A9"), Some("admin#0"));
}

/// A patched router finds what one built from scratch finds, through a few hundred random
/// edits (routes added, removed and replaced, on exact, wildcard and any hosts, with
/// overlapping paths so that precedence decides).
#[test]
fn a_patched_router_matches_like_a_new_one() {
    use super::RouteMatches;
    let hosts = ["a.test", "b.test", "*.test", "x.b.test"];
    let paths = ["/", "/v", "/v/w", "/z"];
    // A small deterministic generator (xorshift): the same edits on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let make = |id: usize, next: &mut dyn FnMut(usize) -> usize| {
        let route_hosts: Vec<String> = match next(4) {
            0 => vec![],
            1 => vec![hosts[next(4)].into(), hosts[next(4)].into()],
            _ => vec![hosts[next(4)].into()],
        };
        let mut m = if next(3) == 0 {
            exact(paths[next(4)])
        } else {
            prefix(paths[next(4)])
        };
        if next(4) == 0 {
            m = with_methods(m, &["POST"]);
        }
        let route = proto::Route {
            namespace: "ns".into(),
            name: format!("r{id}"),
            hosts: route_hosts,
            rules: vec![proto::Rule {
                matches: vec![m],
                ..Default::default()
            }],
            ..Default::default()
        };
        (id, RouteMatches::new(&route).unwrap())
    };
    // In order: (name id, matches, slot).
    let mut routes: Vec<(usize, std::sync::Arc<RouteMatches>, u32)> = Vec::new();
    let mut ids = 0;
    let mut router = Router::default();
    let mut first = true;
    for _ in 0..300 {
        let mut changed: Vec<std::sync::Arc<RouteMatches>> = Vec::new();
        let edit = if routes.len() < 3 { 0 } else { next(3) };
        let used: std::collections::HashSet<u32> = routes.iter().map(|r| r.2).collect();
        let free_slot = (0..).find(|s| !used.contains(s)).unwrap();
        match edit {
            0 => {
                ids += 1;
                let (id, matches) = make(ids, &mut next);
                let matches = std::sync::Arc::new(matches);
                changed.push(matches.clone());
                let at = next(routes.len() + 1);
                routes.insert(at, (id, matches, free_slot));
            }
            1 => {
                let (_, gone, _) = routes.remove(next(routes.len()));
                changed.push(gone);
            }
            _ => {
                let at = next(routes.len());
                let (id, old, _) = routes.remove(at);
                let (_, matches) = make(id, &mut next);
                let matches = std::sync::Arc::new(matches);
                changed.push(old);
                changed.push(matches.clone());
                routes.insert(at, (id, matches, free_slot));
            }
        }
        let placed: Vec<(&RouteMatches, u32)> = routes.iter().map(|(_, m, s)| (&**m, *s)).collect();
        let changed: Vec<&RouteMatches> = changed.iter().map(|m| &**m).collect();
        let patched = if first {
            Router::assemble(&placed).unwrap()
        } else {
            router.patch(&placed, &changed).unwrap()
        };
        first = false;
        let fresh = Router::assemble(&placed).unwrap();
        for host in [
            "a.test",
            "b.test",
            "c.test",
            "x.b.test",
            "y.x.b.test",
            "other",
        ] {
            for path in ["/", "/v", "/v/w", "/v/w/q", "/z", "/q"] {
                for method in [Method::GET, Method::POST] {
                    let facts = RequestFacts {
                        host: Some(host),
                        path,
                        method: &method,
                        headers: &HeaderMap::new(),
                    };
                    assert_eq!(
                        patched.find(&facts),
                        fresh.find(&facts),
                        "{method} {host}{path}"
                    );
                }
            }
        }
        router = patched;
    }
}
