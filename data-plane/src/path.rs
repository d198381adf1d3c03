//! Request paths, normalised once before routing so that the gateway and the upstream can
//! never read one path two ways. The normalised path is what the matcher sees **and** what
//! the upstream receives:
//!
//! * percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`) and the
//!   remaining escapes upper-cased (RFC 3986 §6.2.2.1–2);
//! * repeated slashes are merged (`//admin` is `/admin`);
//! * dot segments are resolved (RFC 3986 §5.2.4), also when they carry `;parameters`;
//! * an encoded separator (`%2F`, `%5C`) or a backslash is refused by default, since
//!   upstreams disagree on whether it separates segments ([`EscapedSlashes`]);
//! * `%00` and escapes that are not UTF-8 (overlong forms such as `%C0%AF`) are refused.
//!
//! `;parameters` stay in the forwarded path but never decide the route: the matcher sees
//! `/admin;x/y` as `/admin/y`, as Tomcat, Jetty and Spring read it, so a server that strips
//! them and one that keeps them both get a request the `/admin` rule admitted.

use std::borrow::Cow;

/// What an encoded `/` or `\` (`%2F`, `%5C`, and a literal `\`) in a path means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EscapedSlashes {
    /// 400: upstreams differ in whether it separates segments (Envoy's `REJECT_REQUEST`).
    #[default]
    Reject,
    /// Decoded into `/` before matching and forwarding (Envoy's `UNESCAPE_AND_FORWARD`).
    Unescape,
    /// Kept as `%2F`/`%5C`, one segment with the rest: only for upstreams that never decode
    /// it into a separator (e.g. `/repos/a%2Fb` as one name). A dot segment next to one is
    /// still refused.
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    NotAPath,
    EncodedSeparator,
    HiddenDotSegment,
    BadEscape,
    Nul,
    NotUtf8,
}

impl PathError {
    /// Why the path is refused, for the 400's message.
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAPath => "the request target must be a path starting with '/'",
            PathError::EncodedSeparator => {
                "the path contains an encoded '/' or '\\' (%2F, %5C) or a backslash"
            }
            PathError::HiddenDotSegment => {
                "the path hides a dot segment behind an encoded separator"
            }
            PathError::BadEscape => "the path contains a '%' that does not start a valid escape",
            PathError::Nul => "the path contains an encoded NUL (%00)",
            PathError::NotUtf8 => "the path's percent-encoded bytes are not valid UTF-8",
        }
    }
}

/// A request path after normalisation.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// Forwarded upstream (and shown in errors); borrowed when nothing had to change.
    pub path: Cow<'a, str>,
    /// What the matcher sees when it differs from `path`: without `;parameters`.
    key: Option<String>,
}

impl NormalPath<'_> {
    /// The path the route matcher compares.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.path)
    }

    /// Whether normalisation changed the path (it must then be forwarded rewritten).
    pub fn changed(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }

    /// The path to forward when it differs from the request's.
    pub fn into_rewritten(self) -> Option<String> {
        match self.path {
            Cow::Owned(path) => Some(path),
            Cow::Borrowed(_) => None,
        }
    }
}

/// Normalises `path` (without its query).
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<NormalPath<'_>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    let plain = !path.contains("//")
        && !path.contains("/.")
        && !path.bytes().any(|b| matches!(b, b'%' | b'\\' | b';'));
    if plain {
        return Ok(NormalPath {
            path: Cow::Borrowed(path),
            key: None,
        });
    }
    let decoded = decode(path, slashes)?;
    let resolved = resolve(&decoded)?;
    let key = resolved
        .contains(';')
        .then(|| without_parameters(&resolved));
    Ok(NormalPath {
        path: if resolved == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(resolved)
        },
        key,
    })
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes unreserved escapes, upper-cases the rest, applies `slashes`, and checks that
/// every run of encoded non-ASCII bytes is UTF-8.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // Consecutive encoded bytes >= 0x80, checked as one UTF-8 sequence when the run ends.
    let mut high: Vec<u8> = Vec::new();
    let end_run = |high: &mut Vec<u8>| -> Result<(), PathError> {
        if !high.is_empty() {
            std::str::from_utf8(high).map_err(|_| PathError::NotUtf8)?;
            high.clear();
        }
        Ok(())
    };
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            end_run(&mut high)?;
            if byte == b'\\' {
                separator(&mut out, slashes, b'\\')?;
                i += 1;
            } else if byte.is_ascii() {
                out.push(char::from(byte));
                i += 1;
            } else {
                // Raw UTF-8 (clients send it, the http crate admits it) is kept as it came:
                // copied whole, never re-encoded byte by byte.
                let ch = path[i..]
                    .chars()
                    .next()
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                out.push(ch);
                i += ch.len_utf8();
            }
            continue;
        }
        let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return Err(PathError::BadEscape);
        };
        let (Some(h), Some(l)) = (hex(h), hex(l)) else {
            return Err(PathError::BadEscape);
        };
        let value = h << 4 | l;
        i += 3;
        if value >= 0x80 {
            high.push(value);
        } else {
            end_run(&mut high)?;
        }
        match value {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => separator(&mut out, slashes, value)?,
            v if is_unreserved(v) => out.push(char::from(v)),
            v => {
                out.push('%');
                out.push(char::from(UPPER[usize::from(v >> 4)]));
                out.push(char::from(UPPER[usize::from(v & 15)]));
            }
        }
    }
    end_run(&mut high)?;
    Ok(out)
}

fn separator(out: &mut String, slashes: EscapedSlashes, which: u8) -> Result<(), PathError> {
    match slashes {
        EscapedSlashes::Reject => return Err(PathError::EncodedSeparator),
        EscapedSlashes::Unescape => out.push('/'),
        EscapedSlashes::Keep => out.push_str(if which == b'/' { "%2F" } else { "%5C" }),
    }
    Ok(())
}

/// Merges repeated slashes and resolves dot segments; refuses dot segments hidden behind
/// kept `%2F`/`%5C`.
fn resolve(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match dot_segment(segment) {
            _ if segment.is_empty() => trailing_slash = true,
            Some(Dots::One) => trailing_slash = true,
            Some(Dots::Two) => {
                segments.pop();
                trailing_slash = true;
            }
            None => segments.push(segment),
        }
    }
    if segments.iter().any(|segment| {
        segment.contains('%') && hidden_pieces(segment).any(|piece| dot_segment(piece).is_some())
    }) {
        return Err(PathError::HiddenDotSegment);
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

enum Dots {
    One,
    Two,
}

/// `.` or `..`, also with `;parameters` (which some servers strip before resolving).
/// Escaped dots are already decoded here.
fn dot_segment(segment: &str) -> Option<Dots> {
    match segment.split(';').next().unwrap_or_default() {
        "." => Some(Dots::One),
        ".." => Some(Dots::Two),
        _ => None,
    }
}

/// The pieces of a segment between the kept separators `%2F` and `%5C`.
fn hidden_pieces(segment: &str) -> impl Iterator<Item = &str> {
    segment.split("%2F").flat_map(|piece| piece.split("%5C"))
}

/// The path without the `;parameters` of its segments (empty segments that leaves merged).
fn without_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut ends_with_slash = false;
    for segment in path[1..].split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        ends_with_slash = name.is_empty();
        if !ends_with_slash {
            out.push('/');
            out.push_str(name);
        }
    }
    if out.is_empty() || ends_with_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::EscapedSlashes::{Keep, Reject, Unescape};
    use super::{PathError, normalize};

    fn forwarded(path: &str) -> String {
        normalize(path, Reject).unwrap().path.into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed_untouched() {
        for path in [
            "/", "/a/b", "/a/b/", "/a.b/c.d", "/a..b", "/%20x", "/a;v=1/b",
        ] {
            let normalized = normalize(path, Reject).unwrap();
            assert!(!normalized.changed(), "{path}");
            assert_eq!(normalized.path, path);
        }
    }

    #[test]
    fn raw_utf8_is_kept_as_it_came_when_the_path_changes() {
        // Found by the `path` fuzz target: each byte used to become a Latin-1 character,
        // so the upstream got `/Ã©tÃ©` for `/été` whenever something else changed.
        let normalized = normalize("/été//x;p/ç%61", Reject).unwrap();
        assert_eq!(normalized.path, "/été/x;p/ça");
        assert_eq!(normalized.key(), "/été/x/ça");
        let again = normalize(&normalized.path, Reject).unwrap();
        assert!(!again.changed());
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        let cases = [
            ("/%61dmin/x", "/admin/x"),
            ("/adm%69n", "/admin"),
            ("/%41%7e%2D%5f", "/A~-_"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb%3Ac", "/a%3Fb%3Ac"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%25", "/%25"),
            ("/%252e%252e/x", "/%252e%252e/x"),
        ];
        for (input, expected) in cases {
            assert_eq!(forwarded(input), expected, "{input}");
        }
    }

    #[test]
    fn repeated_slashes_are_merged() {
        for (input, expected) in [
            ("//admin", "/admin"),
            ("///a//b///", "/a/b/"),
            ("//", "/"),
            ("/a/%2e//b", "/a/b"),
        ] {
            assert_eq!(forwarded(input), expected, "{input}");
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
            assert_eq!(forwarded(input), expected, "{input}");
        }
    }

    #[test]
    fn parameters_are_forwarded_but_not_matched() {
        let normalized = normalize("/admin;x=1/secret.txt", Reject).unwrap();
        assert_eq!(normalized.path, "/admin;x=1/secret.txt");
        assert_eq!(normalized.key(), "/admin/secret.txt");
        assert_eq!(normalize("/;x/a;/", Reject).unwrap().key(), "/a/");
        assert_eq!(normalize("/;x", Reject).unwrap().key(), "/");
        assert_eq!(normalize("/a/b", Reject).unwrap().key(), "/a/b");
    }

    #[test]
    fn encoded_separators_follow_the_setting() {
        for path in ["/%2fadmin/x", "/a%2Fb", "/a%5cb", "/a\\b"] {
            assert_eq!(
                normalize(path, Reject),
                Err(PathError::EncodedSeparator),
                "{path}"
            );
        }
        let unescape = |p| normalize(p, Unescape).unwrap().path.into_owned();
        assert_eq!(unescape("/%2fadmin/x"), "/admin/x");
        assert_eq!(unescape("/a\\..\\admin"), "/admin");
        assert_eq!(unescape("/public/..%2Fadmin"), "/admin");
        let keep = |p| normalize(p, Keep).unwrap().path.into_owned();
        assert_eq!(keep("/repos/a%2fb"), "/repos/a%2Fb");
        assert_eq!(keep("/a\\b"), "/a%5Cb");
    }

    #[test]
    fn kept_separators_cannot_hide_dot_segments() {
        for path in [
            "/public/..%2Finternal/x",
            "/public/..%2finternal",
            "/public/%2e%2e%5Cinternal",
            "/public/..\\internal",
            "/public/x%2F..%2F..%2Fadmin",
            "/a/.%2Fb",
        ] {
            assert_eq!(
                normalize(path, Keep),
                Err(PathError::HiddenDotSegment),
                "{path}"
            );
        }
    }

    #[test]
    fn malformed_escapes_nul_and_overlong_utf8_are_refused() {
        assert_eq!(normalize("/a%", Reject), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4", Reject), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz", Reject), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%00b", Reject), Err(PathError::Nul));
        // Overlong '/', overlong 'a', a lone continuation byte, a truncated sequence.
        for path in ["/%C0%AFadmin", "/%C1%A1dmin", "/%80", "/%E2%82", "/%E2%82x"] {
            assert_eq!(normalize(path, Unescape), Err(PathError::NotUtf8), "{path}");
        }
        // Fullwidth 'ａ' is valid UTF-8 and stays what it is: not an 'a'.
        assert_eq!(forwarded("/%ef%bd%81dmin"), "/%EF%BD%81dmin");
    }

    #[test]
    fn non_paths_are_refused() {
        for path in ["*", "a/b", ""] {
            assert_eq!(normalize(path, Reject), Err(PathError::NotAPath), "{path}");
        }
    }
}
