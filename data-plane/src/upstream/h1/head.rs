//! HTTP/1.1 message heads: the request head written upstream, the response head read back
//! (with the framing of the body that follows, RFC 9112 §6).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, request};

use super::Error;

/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Longest response head accepted.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the request body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// No body follows the head.
    None,
    /// `Content-Length` from the client; the body is copied as is.
    Length,
    /// Re-framed as `Transfer-Encoding: chunked` (the client's length is unknown).
    Chunked,
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// Writes the request head. `framing` decides the body headers: the client's
/// `Content-Length` is kept for `Length`, replaced by `Transfer-Encoding: chunked` for
/// `Chunked`; a bodiless POST/PUT/PATCH gets `Content-Length: 0`.
pub(super) fn encode_request(parts: &request::Parts, framing: RequestFraming, out: &mut BytesMut) {
    out.reserve(256 + parts.headers.len() * 32);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // The body is sent at once, so there is nothing to wait for.
        if name == EXPECT || (framing == RequestFraming::Chunked && name == CONTENT_LENGTH) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::None
            if !parts.headers.contains_key(CONTENT_LENGTH)
                && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            out.put_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    out.put_slice(b"\r\n");
}

/// A parsed response head.
pub(super) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`, consuming it. `Ok(None)`: incomplete.
/// Interim 1xx responses are consumed and skipped (except 101, which is refused).
pub(super) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, Error> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let length = match response.parse(buf) {
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
                return Err(Error::Protocol("response head too large"));
            }
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Protocol("too many response header fields"));
            }
            Err(_) => return Err(Error::Protocol("invalid response head")),
        };
        let code = response.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Protocol("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Protocol(
                "the upstream switched protocols, which is not supported here",
            ));
        }
        if status.is_informational() {
            let _ = buf.split_to(length);
            continue;
        }
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Field positions, taken before the head is split off the buffer.
        let base = buf.as_ptr() as usize;
        let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        let count = response.headers.len();
        for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
            *span = (
                field.name.as_ptr() as usize - base,
                field.name.len(),
                field.value.as_ptr() as usize - base,
                field.value.len(),
            );
        }
        let head: Bytes = buf.split_to(length).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
                .map_err(|_| Error::Protocol("invalid response header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                .map_err(|_| Error::Protocol("invalid response header value"))?;
            headers.append(name, value);
        }
        let (framing, mut keep_alive) = framing(status, method, &headers)?;
        keep_alive &= match version {
            Version::HTTP_11 => !has_token(&headers, &CONNECTION, "close"),
            _ => has_token(&headers, &CONNECTION, "keep-alive"),
        };
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// RFC 9112 §6.3, refusing ambiguous lengths (the stuff of request smuggling).
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(ResponseFraming, bool), Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::Empty, true));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(Error::Protocol(
                "both Transfer-Encoding and Content-Length in the response",
            ));
        }
        // Transfer codings are hop-by-hop and only `chunked` is undone here; a body in any
        // other coding (gzip, …) could not be passed on truthfully.
        let codings: Vec<&str> = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        return match codings.as_slice() {
            [coding] if coding.eq_ignore_ascii_case("chunked") => {
                Ok((ResponseFraming::Chunked, true))
            }
            _ => Err(Error::Protocol("a transfer coding other than chunked")),
        };
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value
            .to_str()
            .map_err(|_| Error::Protocol("invalid Content-Length"))?
            .split(',')
        {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Protocol("invalid Content-Length"));
            }
            let parsed: u64 = part
                .parse()
                .map_err(|_| Error::Protocol("invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Error::Protocol("conflicting Content-Length values"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => (ResponseFraming::Empty, true),
        Some(n) => (ResponseFraming::Length(n), true),
        None => (ResponseFraming::Eof, false),
    })
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, Error> {
        parse_response(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn framings() {
        let head = |t: &str| parse(t, Method::GET).unwrap().unwrap();
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (StatusCode::OK, ResponseFraming::Length(5), true)
        );
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n").framing,
            ResponseFraming::Chunked
        );
        let eof = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((eof.framing, eof.keep_alive), (ResponseFraming::Eof, false));
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing,
            ResponseFraming::Empty
        );
        assert_eq!(
            head("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n").framing,
            ResponseFraming::Empty
        );
        let head_request = parse("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(head_request.framing, ResponseFraming::Empty);
        assert!(
            !head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n").framing,
            ResponseFraming::Length(7)
        );
    }

    #[test]
    fn interim_responses_are_skipped_and_incomplete_heads_wait() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        );
        let head = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
        assert!(
            parse("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn ambiguous_or_broken_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "SMTP 220 hello\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, Method::GET), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let encode = |method: Method, headers: &[(&str, &str)], framing| {
            let mut builder = http::Request::builder()
                .method(method)
                .uri("http://backend:80/a?b=c");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let (parts, ()) = builder.body(()).unwrap().into_parts();
            let mut out = BytesMut::new();
            encode_request(&parts, framing, &mut out);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(
            encode(Method::GET, &[("host", "x")], RequestFraming::None),
            "GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        assert_eq!(
            encode(Method::POST, &[], RequestFraming::None),
            "POST /a?b=c HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::PUT,
                &[("content-length", "3"), ("expect", "100-continue")],
                RequestFraming::Chunked
            ),
            "PUT /a?b=c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::PUT,
                &[("content-length", "3")],
                RequestFraming::Length
            ),
            "PUT /a?b=c HTTP/1.1\r\ncontent-length: 3\r\n\r\n"
        );
    }
}
