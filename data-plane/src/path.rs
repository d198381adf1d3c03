//! Request paths as the matcher sees them: dot segments removed (RFC 3986 §5.2.4), also
//! when percent-encoded, so `/public/../admin` cannot reach a route for `/admin` through a
//! route for `/public` — and the upstream receives the same path that was matched.

use std::borrow::Cow;

/// The normalised path, or `None` when it cannot be a request path.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    if !path.contains("/.") && !path.contains("%2") {
        return Some(Cow::Borrowed(path));
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match dot_segment(segment) {
            Some(1) => trailing_slash = true,
            Some(_) => {
                segments.pop();
                trailing_slash = true;
            }
            None => segments.push(segment),
        }
    }
    if segments.is_empty() {
        return Some(Cow::Borrowed("/"));
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash {
        out.push('/');
    }
    if out == path {
        Some(Cow::Borrowed(path))
    } else {
        Some(Cow::Owned(out))
    }
}

/// `Some(1)` for `.`, `Some(2)` for `..`, in any mix of literal and `%2e`/`%2E` dots.
fn dot_segment(segment: &str) -> Option<u8> {
    let mut rest = segment.as_bytes();
    let mut dots = 0u8;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
        if dots > 2 {
            return None;
        }
    }
    (dots > 0).then_some(dots)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn plain_paths_are_borrowed_untouched() {
        for path in ["/", "/a/b", "/a/b/", "/a.b/c.d", "/a..b", "/%20x"] {
            let normalized = normalize(path).unwrap();
            assert!(
                matches!(normalized, std::borrow::Cow::Borrowed(_)),
                "{path}"
            );
            assert_eq!(normalized, path);
        }
    }

    #[test]
    fn dot_segments_are_resolved() {
        let cases = [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/a/...", "/a/..."),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn non_paths_are_refused() {
        assert_eq!(normalize("*"), None);
        assert_eq!(normalize("a/b"), None);
        assert_eq!(normalize(""), None);
    }
}
