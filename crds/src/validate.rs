//! Field-level validation shared by every resource kind.

use std::fmt;

/// One problem with one field of a resource, e.g. `spec.rules[0].backends: at least one
/// backend is required`. The field is a path in the document as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects field errors while a validator walks a resource.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, against `field`.
    pub(crate) fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(field, message);
        }
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
pub(crate) fn dns_label(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` must be 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
        ))
    }
}

/// RFC 1123 subdomain: what Kubernetes accepts as an object name.
pub(crate) fn dns_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| dns_label(label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` must be a lower-case DNS subdomain (letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

/// A host name a route may claim: a DNS name, optionally with a leading `*.` wildcard
/// label. Case is ignored (the compiler lower-cases); ports are not part of a host.
pub(crate) fn route_host(value: &str) -> Result<(), String> {
    let name = value.strip_prefix("*.").unwrap_or(value);
    let lower = name.to_ascii_lowercase();
    if value.contains(':') {
        return Err(format!("`{value}`: hosts carry no port"));
    }
    if lower.len() > 253 || lower.split('.').any(|label| dns_label(label).is_err()) {
        return Err(format!(
            "`{value}` is not a DNS host name (a leading `*.` is the only wildcard allowed)"
        ));
    }
    Ok(())
}

/// Backend URL: `http`, `https` or `h2c`, a host, no credentials, path, query or fragment.
pub(crate) fn backend_url(value: &str) -> Result<(), String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https" | "h2c") => {}
        Some(other) => {
            return Err(format!(
                "`{value}`: scheme `{other}` is not supported; use http, https or h2c"
            ));
        }
        None => {
            return Err(format!(
                "`{value}` needs a scheme: http://, https:// or h2c://"
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{value}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{value}`: credentials do not belong in a backend URL"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("`{value}` has no host"));
    }
    // `http::Uri` accepts any text after the colon; only a real port will do.
    let port = authority
        .as_str()
        .rsplit_once(':')
        .filter(|_| !authority.as_str().ends_with(']'))
        .map(|(_, port)| port);
    if let Some(port) = port
        && !matches!(port.parse::<u16>(), Ok(p) if p > 0)
    {
        return Err(format!("`{value}`: `{port}` is not a port (1-65535)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || value.contains('#') {
        return Err(format!(
            "`{value}`: a backend URL is scheme://host:port only; the request path is forwarded as is"
        ));
    }
    Ok(())
}

/// Path of a list element, for error fields like `spec.rules[2]`.
pub(crate) fn at(field: &str, index: usize) -> String {
    format!("{field}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in [
            "api.example.com",
            "*.example.com",
            "API.Example.com",
            "localhost",
            "a-b.c",
        ] {
            assert!(route_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*",
            "a.*.com",
            "api.example.com:80",
            "-a.com",
            "a..com",
            "a_b.com",
            "*.*.com",
        ] {
            assert!(route_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backend_urls() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://api.internal",
            "h2c://grpc:50051",
            "http://[::1]:80/",
        ] {
            assert!(backend_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:9000",
            "ftp://x",
            "http://user:pw@x",
            "http://x/api",
            "http://x?a=1",
            "not a url",
            "http://",
            "http://10.0.0.7:90000",
            "http://x:",
            "http://x:8o80",
            "http://x:0",
        ] {
            assert!(backend_url(bad).is_err(), "{bad}");
        }
    }
}
