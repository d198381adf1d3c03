//! Tracing and correlation, per request: the W3C `traceparent` a client sent is continued
//! (a malformed one is replaced), otherwise a trace starts here; `x-correlation-id` is
//! kept when sane, otherwise it is the request id. Both go upstream and back to the client.
//!
//! Spans are recorded only for sampled requests when an OTLP endpoint is configured: one
//! SERVER span for the request and one child per pipeline phase, the upstream call a
//! CLIENT span whose id the upstream receives as its parent. Unsampled requests cost two
//! random numbers and two header values; nothing on the request path waits for the export
//! ([`export`] batches off the path and drops, counted, when the collector falls behind).

pub mod export;

use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Longest incoming correlation id kept as is.
const MAX_CORRELATION_LEN: usize = 128;

/// Which new traces are sampled; a client's sampled flag is followed (parent-based).
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Sampled when the trace id's low 64 bits are below this (ratio × 2^64).
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// `ratio` in [0, 1]; out-of-range values are clamped.
    pub fn ratio(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self {
            threshold: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
        }
    }

    fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        self.always || low < self.threshold
    }
}

/// The trace facts of one request.
pub struct Trace {
    pub trace_id: [u8; 16],
    /// This request's (SERVER) span.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    pub correlation_id: HeaderValue,
    recording: Option<Box<Recording>>,
    /// `traceparent` naming this request's span, made once (shared by the upstream
    /// request and the response when no phase span sits between them).
    own: HeaderValue,
}

/// The spans being recorded for a sampled request.
pub struct Recording {
    pub wall: SystemTime,
    pub started: Instant,
    /// Each phase as it began: name, span id, start.
    pub phases: Vec<(&'static str, [u8; 8], Instant)>,
    pub method: http::Method,
    pub path: String,
    pub host: Option<String>,
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn hex_value(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// A `traceparent` as W3C Trace Context reads it: `00-<trace>-<parent>-<flags>` in
/// lowercase hex, neither id all zeros; a higher version is read by its first four fields.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let mut version = [0u8; 1];
    hex_value(&value[..2], &mut version)?;
    if version[0] == 0xff || (version[0] == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (mut trace, mut parent, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    hex_value(&value[3..35], &mut trace)?;
    hex_value(&value[36..52], &mut parent)?;
    hex_value(&value[53..55], &mut flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// `traceparent` naming `span_id` of `trace_id` as the parent.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(trace_id, &mut text[3..35]);
    hex_into(span_id, &mut text[36..52]);
    if sampled {
        text[54] = b'1';
    }
    HeaderValue::from_bytes(&text).expect("hex is a valid header value")
}

/// Lowercase hex of a trace id, for log lines.
pub fn trace_id_hex(trace_id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_into(trace_id, &mut out);
    out
}

/// The correlation id: the client's when sane (visible ASCII, at most 128 bytes), else
/// the request id.
fn correlation_id(headers: &HeaderMap, request_id: &HeaderValue) -> HeaderValue {
    match headers.get(&X_CORRELATION_ID) {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_CORRELATION_LEN
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => request_id.clone(),
    }
}

impl Trace {
    /// Continues the client's trace or starts one; `record` when spans are exported.
    pub fn start<B>(
        request: &http::Request<B>,
        request_id: &HeaderValue,
        sampler: Sampler,
        record: bool,
        started: Instant,
    ) -> Self {
        let headers = request.headers();
        let (trace_id, parent, sampled) = match headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            Some((trace_id, parent, sampled)) => (trace_id, Some(parent), sampled),
            None => {
                let trace_id = random_trace_id();
                (trace_id, None, sampler.samples(&trace_id))
            }
        };
        let recording = (record && sampled).then(|| {
            Box::new(Recording {
                wall: SystemTime::now(),
                started,
                phases: Vec::with_capacity(12),
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                host: crate::headers::authority(request)
                    .map(|a| crate::headers::host_of(a).into_owned()),
            })
        });
        let span_id = random_span_id();
        Self {
            trace_id,
            span_id,
            parent,
            sampled,
            correlation_id: correlation_id(headers, request_id),
            recording,
            own: traceparent(&trace_id, &span_id, sampled),
        }
    }

    /// A trace that records nothing (for `explain`).
    pub fn none(request_id: &HeaderValue) -> Self {
        let (trace_id, span_id) = (random_trace_id(), random_span_id());
        Self {
            trace_id,
            span_id,
            parent: None,
            sampled: false,
            correlation_id: request_id.clone(),
            recording: None,
            own: traceparent(&trace_id, &span_id, false),
        }
    }

    /// Marks the start of a phase (and the end of the one before); free when not recording.
    #[inline]
    pub fn phase(&mut self, name: &'static str) {
        if let Some(recording) = &mut self.recording {
            recording
                .phases
                .push((name, random_span_id(), Instant::now()));
        }
    }

    /// `traceparent` for the upstream: a child of the phase running now when recording
    /// (the upstream call), else of this request's span.
    pub fn upstream_traceparent(&self) -> HeaderValue {
        match self.recording.as_ref().and_then(|r| r.phases.last()) {
            Some((_, id, _)) => traceparent(&self.trace_id, id, self.sampled),
            None => self.own.clone(),
        }
    }

    /// `traceparent` naming this request's span (echoed to the client).
    pub fn own_traceparent(&self) -> HeaderValue {
        self.own.clone()
    }

    pub fn take_recording(&mut self) -> Option<Box<Recording>> {
        self.recording.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_w3c_trace_context_says() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, parent, sampled) = parse_traceparent(good).unwrap();
        assert_eq!(trace_id_hex(&trace), *b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert!(sampled);
        // A future version with more fields is read by its first four.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")
                .is_some()
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_written_traceparent_reads_back() {
        let parts = http::Request::builder()
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .unwrap();
        let id = HeaderValue::from_static("req-1");
        let trace = Trace::start(&parts, &id, Sampler::ratio(0.0), false, Instant::now());
        assert_eq!(trace.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        assert!(trace.sampled, "the client's decision is followed");
        let written = trace.own_traceparent();
        let (trace_id, parent, sampled) = parse_traceparent(written.as_bytes()).unwrap();
        assert_eq!(
            (trace_id, parent, sampled),
            (trace.trace_id, trace.span_id, true)
        );
        assert_eq!(trace.correlation_id, "req-1");
    }

    #[test]
    fn the_ratio_decides_new_traces() {
        let never = Sampler::ratio(0.0);
        let always = Sampler::ratio(1.0);
        let half = Sampler::ratio(0.5);
        let ids: Vec<[u8; 16]> = (0..2000).map(|_| random_trace_id()).collect();
        assert!(
            ids.iter()
                .all(|id| !never.samples(id) && always.samples(id))
        );
        let sampled = ids.iter().filter(|id| half.samples(id)).count();
        assert!((800..1200).contains(&sampled), "{sampled} of 2000 at 0.5");
    }
}
