//! Timestamps of imported records: RFC 3339 / ISO 8601 text and Unix seconds.

/// Parses `2026-11-23T16:03:17.123Z`, `2026-11-23T16:03:17+01:00`, `2026-11-23 16:03:17`
/// (no offset: UTC, as Python's `datetime.isoformat()` writes naive times) into Unix
/// nanoseconds.
pub(crate) fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 timestamp");
    let s = text.trim().as_bytes();
    if s.len() < 19 || !matches!(s[10], b'T' | b't' | b' ') || s[4] != b'-' || s[7] != b'-' {
        return Err(bad());
    }
    if s[13] != b':' || s[16] != b':' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u64, String> {
        let part = &s[range];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut nanos = 0u64;
    if let Some((b'.' | b',', frac)) = rest.split_first() {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, d) in frac[..digits].iter().enumerate() {
            if i < 9 {
                nanos += u64::from(d - b'0') * 10u64.pow(8 - i as u32);
            }
        }
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let v = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let off = v(digits[0], digits[1]) * 3600 + v(digits[2], digits[3]) * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_s;
    let secs = u64::try_from(secs).map_err(|_| format!("{text:?} is before 1970"))?;
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .ok_or_else(bad)
}

/// Unix seconds (possibly fractional) to nanoseconds.
pub(crate) fn from_unix_seconds(seconds: f64) -> Result<u64, String> {
    if !(0.0..=1.8e10).contains(&seconds) {
        return Err(format!("{seconds} is not a Unix time in seconds"));
    }
    Ok((seconds * 1e9).round() as u64)
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
