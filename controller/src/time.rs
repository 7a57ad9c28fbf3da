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
    let seconds = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60,
    )
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
/// Unix nanoseconds.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time such as 2026-11-23T16:03:17Z");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        text.get(range)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(bad)
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
    let mut rest = &text[19..];
    let mut nanos: i64 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return Err(bad());
        }
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        nanos = padded.parse().map_err(|_| bad())?;
        rest = &fraction[digits.len()..];
    }
    let offset_seconds: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let hours: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3_600 + minutes * 60)
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - offset_seconds;
    if seconds < 0 {
        return Err(format!("`{text}` is before 1970"));
    }
    Ok(seconds as u64 * 1_000_000_000 + nanos as u64)
}

/// Parses a duration such as `90s`, `15m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 2h or 1d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use s, m, h or d)"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(
        value.saturating_mul(seconds),
    ))
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
    let ago = parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time nor a relative one such as 15m")
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
    }
}
