//! Unix nanoseconds and RFC 3339 timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch now (0 if the clock is before the epoch).
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Formats Unix nanoseconds as RFC 3339 in UTC with microsecond precision,
/// e.g. `2026-11-23T16:03:17.123456Z`.
pub fn rfc3339(unix_ns: u64) -> String {
    rfc3339_bytes(unix_ns)
        .iter()
        .map(|b| char::from(*b))
        .collect()
}

/// [`rfc3339`] as ASCII bytes on the stack (no allocation).
pub fn rfc3339_bytes(unix_ns: u64) -> [u8; 27] {
    let seconds = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    // Digit by digit: a topology snapshot formats two of these per dependency, and
    // `format!` is slower. u64 nanoseconds end in the year 2554, so four
    // digits always hold the year.
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second_of_day / 3_600);
    put(14, 2, second_of_day % 3_600 / 60);
    put(17, 2, second_of_day % 60);
    put(20, 6, micros);
    out
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_by_digit_matches_format() {
        let reference = |unix_ns: u64| {
            let seconds = unix_ns / 1_000_000_000;
            let micros = (unix_ns % 1_000_000_000) / 1_000;
            let (year, month, day) = civil_from_days(seconds / 86_400);
            let second_of_day = seconds % 86_400;
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
                second_of_day / 3_600,
                second_of_day % 3_600 / 60,
                second_of_day % 60,
            )
        };
        let mut ns = 1u64;
        while ns < u64::MAX / 3 {
            assert_eq!(rfc3339(ns), reference(ns), "{ns}");
            ns = ns * 3 + 12_345_678_901;
        }
        assert_eq!(rfc3339(u64::MAX), reference(u64::MAX), "the last timestamp");
    }

    #[test]
    fn formats_the_epoch() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn formats_a_leap_day_with_microseconds() {
        // 2024-02-29T12:34:56.789012345Z
        let ns = 1_709_210_096_789_012_345;
        assert_eq!(rfc3339(ns), "2024-02-29T12:34:56.789012Z");
    }

    #[test]
    fn formats_the_end_of_a_year() {
        // 2026-12-31T23:59:59Z
        assert_eq!(
            rfc3339(1_798_761_599_000_000_000),
            "2026-12-31T23:59:59.000000Z"
        );
    }
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses RFC 3339 (`2026-11-23T16:03:17Z`, fractions and `+01:00` offsets allowed) into
/// Unix nanoseconds. Unlike [`parse_timestamp`], the offset is required: an API parameter
/// without one is ambiguous.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time such as 2026-11-23T16:03:17Z");
    let b = text.as_bytes();
    let n = b.len();
    let has_offset = matches!(b.last(), Some(b'Z' | b'z'))
        || (n >= 6 && matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':');
    if n < 20 || b[10] == b' ' || !has_offset {
        return Err(bad());
    }
    parse_timestamp(text).map_err(|e| {
        if e.ends_with("before 1970") {
            format!("`{text}` is before 1970")
        } else {
            bad()
        }
    })
}

/// Parses `2026-11-23T16:03:17.123Z`, `2026-11-23T16:03:17+01:00`, `2026-11-23 16:03:17`
/// (no offset: UTC, as Python's `datetime.isoformat()` writes naive times) into Unix
/// nanoseconds.
pub fn parse_timestamp(text: &str) -> Result<u64, String> {
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

/// Parses a duration such as `250ms`, `90s`, `15m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 2h or 1d"))?;
    if unit == "ms" {
        return Ok(std::time::Duration::from_millis(value));
    }
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    value
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// A point in time: RFC 3339, or a duration before `now_unix_ns` (`15m` = 15 minutes ago).
pub fn parse_time(text: &str, now_unix_ns: u64) -> Result<u64, String> {
    let text = text.trim();
    let looks_like_a_date = text.len() > 4
        && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && text.as_bytes()[4] == b'-';
    if looks_like_a_date {
        return parse_rfc3339(text);
    }
    let ago = parse_duration(text).map_err(|e| {
        if e.contains("too long") {
            e
        } else {
            format!("`{text}` is neither an RFC 3339 time nor a relative one such as 15m")
        }
    })?;
    Ok(now_unix_ns.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_offsets_apply() {
        let ns = 1_709_210_096_789_012_000;
        assert_eq!(parse_rfc3339(&rfc3339(ns)), Ok(ns));
        assert_eq!(
            parse_rfc3339("2024-02-29T13:34:56+01:00"),
            parse_rfc3339("2024-02-29T12:34:56Z")
        );
        assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 10_000 * 1_000_000_000;
        assert_eq!(parse_time("15m", now), Ok(now - 900 * 1_000_000_000));
        assert_eq!(parse_time("1d", now), Ok(0));
        let error = parse_time("15 fortnights", now).unwrap_err();
        assert!(error.contains("15 fortnights"), "{error}");
        let error = parse_time("yesterday", now).unwrap_err();
        assert!(
            error.contains("neither an RFC 3339 time nor a relative one"),
            "{error}"
        );
        assert!(
            parse_time("2026-13-01T00:00:00Z", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(parse_duration("3w").unwrap_err().contains("unit"));
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert!(
            parse_duration("999999999999999999d")
                .unwrap_err()
                .contains("too long"),
            "overflow is an error, not a saturated value"
        );
        assert!(parse_time("999999999999999999d", now).is_err());
    }
}
