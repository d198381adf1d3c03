//! gRPC on the wire, as far as the gateway reads it: deadlines (`grpc-timeout`, gRPC over
//! HTTP/2 §"Timeout": at most 8 digits and a unit, H M S m u n).

use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value; `None` when malformed (then the call has no deadline of its own,
/// as gRPC servers read it).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value: milliseconds while they fit in 8 digits (rounded
/// up, so a deadline never reads as already passed), then seconds, then hours.
pub fn timeout_value(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_nanos().div_ceil(1_000_000).max(1);
    let text = if millis < 100_000_000 {
        format!("{millis}m")
    } else if timeout.as_secs() < 100_000_000 {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}H", (timeout.as_secs() / 3600).min(99_999_999))
    };
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_and_write_as_grpc_does() {
        let parse = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(timeout_value(Duration::from_millis(250)), "250m");
        assert_eq!(timeout_value(Duration::from_micros(1)), "1m");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
    }
}
