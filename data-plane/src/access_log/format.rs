//! One access line, written straight into a byte buffer: no `tracing` event, no field
//! visitor, no intermediate `String`. The JSON line has the fields (and the `target`) the
//! general log had, so collectors see no difference; the text line is for terminals.

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Principal;

/// What one access line says about a request.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub client: IpAddr,
    pub method: &'a str,
    /// The path without the query (which may carry secrets).
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub upstream: &'a str,
    /// The error code when the gateway answered itself.
    pub error: &'a str,
    /// Envoy-style response flags (`UF`, `RL`, …).
    pub flags: &'a str,
    pub identity: Option<&'a Principal>,
    pub tenant: &'a str,
    /// Until the response headers.
    pub duration: Duration,
}

/// How lines are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One JSON object per line.
    #[default]
    Json,
    /// `key=value` text for people at a terminal.
    Text,
}

impl Entry<'_> {
    /// Appends the line, newline included, to `out`.
    pub fn write(&self, layout: Layout, out: &mut Vec<u8>) {
        match layout {
            Layout::Json => self.write_json(out),
            Layout::Text => self.write_text(out),
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":\"");
        json_str(out, self.request_id);
        out.extend_from_slice(b"\",\"trace_id\":\"");
        json_str(out, self.trace_id);
        out.extend_from_slice(b"\",\"client\":\"");
        ip(out, self.client);
        out.extend_from_slice(b"\",\"method\":\"");
        json_str(out, self.method);
        out.extend_from_slice(b"\",\"path\":\"");
        json_str(out, self.path);
        out.extend_from_slice(b"\",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"route\":\"");
        json_str(out, self.route);
        out.extend_from_slice(b"\",\"upstream\":\"");
        json_str(out, self.upstream);
        out.extend_from_slice(b"\",\"error\":\"");
        json_str(out, self.error);
        out.extend_from_slice(b"\",\"flags\":\"");
        json_str(out, self.flags);
        out.extend_from_slice(b"\",\"identity\":\"");
        identity(out, self.identity, json_str);
        out.extend_from_slice(b"\",\"tenant\":\"");
        json_str(out, self.tenant);
        out.extend_from_slice(b"\",\"duration_ms\":");
        millis(out, self.duration);
        out.extend_from_slice(b",\"target\":\"pavilion::access\"}\n");
    }

    fn write_text(&self, out: &mut Vec<u8>) {
        timestamp(out);
        out.extend_from_slice(b"  ACCESS ");
        text(out, self.method);
        out.push(b' ');
        text(out, self.path);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.push(b' ');
        millis(out, self.duration);
        out.extend_from_slice(b"ms route=");
        text(out, self.route);
        out.extend_from_slice(b" upstream=");
        text(out, self.upstream);
        out.extend_from_slice(b" error=");
        text(out, self.error);
        out.extend_from_slice(b" flags=");
        text(out, self.flags);
        out.extend_from_slice(b" identity=");
        identity(out, self.identity, text);
        out.extend_from_slice(b" tenant=");
        text(out, self.tenant);
        out.extend_from_slice(b" client=");
        ip(out, self.client);
        out.extend_from_slice(b" request_id=");
        text(out, self.request_id);
        out.extend_from_slice(b" trace_id=");
        text(out, self.trace_id);
        out.push(b'\n');
    }
}

fn identity(out: &mut Vec<u8>, principal: Option<&Principal>, write: fn(&mut Vec<u8>, &str)) {
    match principal {
        Some(Principal::Subject(subject)) => {
            out.extend_from_slice(b"sub:");
            write(out, subject);
        }
        Some(Principal::Key(id)) => {
            out.extend_from_slice(b"key:");
            write(out, id);
        }
        None => out.push(b'-'),
    }
}

fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{addr}");
}

/// Milliseconds to the microsecond (`12.345`): all a log reader can use.
fn millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros().min(u64::MAX as u128) as u64;
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let fraction = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// A JSON string's content: `"`, `\` and control characters escaped. Values are `&str`,
/// so the line is valid UTF-8; most need no escaping and are copied whole.
fn json_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            _ => out.push(b),
        }
    }
}

/// A text value: spaces and control characters would split the line or the field, so
/// they are written as `%XX`; an empty value as `-`.
fn text(out: &mut Vec<u8>, value: &str) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in value.as_bytes() {
        if b <= b' ' || b == 0x7f {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

thread_local! {
    /// The second last formatted and its `YYYY-MM-DDTHH:MM:SS` (lines share their second).
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Now, as RFC 3339 UTC with microseconds (`2026-11-26T21:01:45.668232Z`).
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != seconds {
        text = date_time(seconds);
        SECOND.set((seconds, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    let micros = now.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (proleptic Gregorian, UTC).
fn date_time(unix_seconds: u64) -> [u8; 19] {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let put = |text: &mut [u8; 19], at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(&mut text, 0, year.clamp(0, 9999) as u64, 4);
    text[4] = b'-';
    put(&mut text, 5, month as u64, 2);
    text[7] = b'-';
    put(&mut text, 8, day as u64, 2);
    text[10] = b'T';
    put(&mut text, 11, second_of_day / 3600, 2);
    text[13] = b':';
    put(&mut text, 14, second_of_day / 60 % 60, 2);
    text[16] = b':';
    put(&mut text, 17, second_of_day % 60, 2);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, identity: Option<&Principal>) -> Vec<u8> {
        let mut out = Vec::new();
        Entry {
            request_id: "req-1",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            client: "2001:db8::1".parse().unwrap(),
            method: "GET",
            path,
            status: 503,
            route: "shop/api",
            upstream: "http://10.0.0.1:8080",
            error: "upstream_unreachable",
            flags: "UF",
            identity,
            tenant: "-",
            duration: Duration::from_micros(12_345_678),
        }
        .write(Layout::Json, &mut out);
        out
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field_once() {
        let subject = Principal::Subject("alice \"the\" admin\n".into());
        let line = entry("/a\\b\"c\u{1}/é", Some(&subject));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["path"], "/a\\b\"c\u{1}/é");
        assert_eq!(value["identity"], "sub:alice \"the\" admin\n");
        assert_eq!(value["status"], 503);
        assert_eq!(value["duration_ms"].as_f64(), Some(12_345.678));
        assert_eq!(value["client"], "2001:db8::1");
        assert_eq!(value["target"], "pavilion::access");
        assert_eq!(value["flags"], "UF");
        let text = String::from_utf8(line).unwrap();
        for key in ["\"path\":", "\"status\":", "\"message\":", "\"timestamp\":"] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
    }

    #[test]
    fn short_durations_keep_their_leading_zeros() {
        let mut out = Vec::new();
        millis(&mut out, Duration::from_micros(7));
        assert_eq!(out, b"0.007");
        out.clear();
        millis(&mut out, Duration::from_micros(1_020_300));
        assert_eq!(out, b"1020.300");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(&date_time(0), b"1970-01-01T00:00:00");
        // 2024-02-29 (a leap day) 23:59:59.
        assert_eq!(&date_time(1_709_251_199), b"2024-02-29T23:59:59");
        assert_eq!(&date_time(1_798_761_600), b"2027-01-01T00:00:00");
        let mut out = Vec::new();
        timestamp(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.len(), "2026-11-26T21:01:45.668232Z".len(), "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    }

    #[test]
    fn a_text_line_keeps_each_field_one_word() {
        let mut out = Vec::new();
        let key = Principal::Key("k1".into());
        Entry {
            request_id: "r",
            trace_id: "t",
            client: [10, 0, 0, 1].into(),
            method: "GET",
            path: "/with space\r\n",
            status: 200,
            route: "a/b",
            upstream: "",
            error: "-",
            flags: "-",
            identity: Some(&key),
            tenant: "acme",
            duration: Duration::from_millis(2),
        }
        .write(Layout::Text, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(" ACCESS GET /with%20space%0D%0A 200 2.000ms route=a/b upstream=- "),
            "{line}"
        );
        assert!(line.contains("identity=key:k1 tenant=acme client=10.0.0.1"));
        assert_eq!(line.matches('\n').count(), 1);
    }
}
