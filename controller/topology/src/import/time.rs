//! Timestamps of imported records: RFC 3339 / ISO 8601 text and Unix seconds.

pub(crate) use crate::time::parse_timestamp as parse_rfc3339;

/// Unix seconds (possibly fractional) to nanoseconds.
pub(crate) fn from_unix_seconds(seconds: f64) -> Result<u64, String> {
    if !(0.0..=1.8e10).contains(&seconds) {
        return Err(format!("{seconds} is not a Unix time in seconds"));
    }
    Ok((seconds * 1e9).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::rfc3339;

    #[test]
    fn rfc3339_round_trips_with_the_controller_formatter() {
        let ns = 1_795_449_797_123_456_000;
        assert_eq!(parse_rfc3339(&rfc3339(ns)), Ok(ns));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2016-04-15T20:17:00.310Z"),
            Ok(1_460_751_420_310_000_000)
        );
        assert_eq!(
            parse_rfc3339("2016-04-15T22:17:00.310+02:00"),
            parse_rfc3339("2016-04-15 20:17:00.310")
        );
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2016-13-15T20:17:00Z").is_err());
        assert!(parse_rfc3339("2016-04-15T20:17:00Q").is_err());
        assert_eq!(from_unix_seconds(1.5), Ok(1_500_000_000));
        assert!(from_unix_seconds(-1.0).is_err());
    }
}
