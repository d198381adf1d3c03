//! Request paths as the matcher sees them: dot segments removed (RFC 3986 §5.2.4), also
//! when percent-encoded or followed by `;parameters`, so `/public/../admin` cannot reach a
//! route for `/admin` through a route for `/public` — and the upstream receives the same
//! path that was matched. A dot segment hidden behind an encoded or backslash separator
//! (`/public/..%2Fadmin`) cannot be resolved without guessing how the upstream decodes,
//! so such a path is refused.

use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The request target does not start with `/`.
    NotAPath,
    /// `..` or `.` next to `%2F`, `%5C` or `\`.
    HiddenDotSegment,
}

/// The normalised path, borrowed when nothing had to change.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    let suspicious = path.contains("/.") || path.bytes().any(|b| matches!(b, b'%' | b'\\' | b';'));
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut changed = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match dot_segment(segment) {
            Some(1) => {
                trailing_slash = true;
                changed = true;
            }
            Some(_) => {
                segments.pop();
                trailing_slash = true;
                changed = true;
            }
            None => segments.push(segment),
        }
    }
    if segments
        .iter()
        .any(|segment| hidden_pieces(segment).any(|piece| dot_segment(piece).is_some()))
    {
        return Err(PathError::HiddenDotSegment);
    }
    if !changed {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// `Some(1)` for `.`, `Some(2)` for `..`, in any mix of literal and `%2e`/`%2E` dots, and
/// with any `;parameters` (which some servers strip before resolving).
fn dot_segment(segment: &str) -> Option<u8> {
    let mut rest = segment.split(';').next().unwrap_or_default().as_bytes();
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

/// The pieces of a segment between separators an upstream might decode into `/`:
/// `%2F`, `%5C` and `\`.
fn hidden_pieces(segment: &str) -> impl Iterator<Item = &str> {
    let bytes = segment.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            let width = if bytes[i] == b'\\' {
                1
            } else if i + 2 < bytes.len()
                && bytes[i] == b'%'
                && (bytes[i + 1] == b'2' && bytes[i + 2].eq_ignore_ascii_case(&b'f')
                    || bytes[i + 1] == b'5' && bytes[i + 2].eq_ignore_ascii_case(&b'c'))
            {
                3
            } else {
                0
            };
            if width > 0 {
                let piece = &segment[start..i];
                i += width;
                start = i;
                return Some(piece);
            }
            i += 1;
        }
        done = true;
        Some(&segment[start..])
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    use super::PathError;

    #[test]
    fn plain_paths_are_borrowed_untouched() {
        for path in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c.d",
            "/a..b",
            "/%20x",
            "/repo/a%2Fb",
            "/a;v=1/b",
        ] {
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
            ("/public/..;jsessionid=1/admin", "/admin"),
            ("/a/.;x/b", "/a/b"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn non_paths_are_refused() {
        assert_eq!(normalize("*"), Err(PathError::NotAPath));
        assert_eq!(normalize("a/b"), Err(PathError::NotAPath));
        assert_eq!(normalize(""), Err(PathError::NotAPath));
    }

    #[test]
    fn dot_segments_behind_encoded_separators_are_refused() {
        for path in [
            "/public/..%2Finternal/x",
            "/public/..%2finternal",
            "/public/%2e%2e%5Cinternal",
            "/public/..\\internal",
            "/public/x%2F..%2F..%2Fadmin",
            "/a/.%2Fb",
        ] {
            assert_eq!(normalize(path), Err(PathError::HiddenDotSegment), "{path}");
        }
    }
}
