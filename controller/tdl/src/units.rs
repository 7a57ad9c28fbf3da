//! Sizes (bytes), rates (bits per second) and CPU counts (millicores): parsing and the
//! canonical spelling [`crate::format()`] writes.

/// `512MB`, `8GB`, `1GiB`, `1.5GiB`, `1073741824`: bytes. `KB`/`MB`/`GB`/`TB` (and `K`..`T`)
/// are powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` (and `Ki`..`Ti`) powers of 1024, as in
/// Kubernetes; units are case-insensitive. Zero is refused.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u128)] = &[
        ("", 1),
        ("b", 1),
        ("k", 1_000),
        ("kb", 1_000),
        ("ki", 1 << 10),
        ("kib", 1 << 10),
        ("m", 1_000_000),
        ("mb", 1_000_000),
        ("mi", 1 << 20),
        ("mib", 1 << 20),
        ("g", 1_000_000_000),
        ("gb", 1_000_000_000),
        ("gi", 1 << 30),
        ("gib", 1 << 30),
        ("t", 1_000_000_000_000),
        ("tb", 1_000_000_000_000),
        ("ti", 1 << 40),
        ("tib", 1 << 40),
    ];
    let hint = "write a number and a unit: 512MB, 8GB, 1GiB (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024), or plain bytes";
    let v = with_unit(text, UNITS).map_err(|e| format!("{e}; {hint}"))?;
    if v == 0 {
        return Err(format!("{text:?} is zero; {hint}"));
    }
    u64::try_from(v).map_err(|_| format!("{text:?} is too large (more than 2^64 bytes)"))
}

/// `100mbit`, `1gbit`, `500kbit`, `1.5gbit`, `1000000`: bits per second (units as tc's:
/// kbit = 1000 bit/s, kibit = 1024). Zero is refused.
pub fn parse_bits(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u128)] = &[
        ("", 1),
        ("bit", 1),
        ("kbit", 1_000),
        ("kibit", 1 << 10),
        ("mbit", 1_000_000),
        ("mibit", 1 << 20),
        ("gbit", 1_000_000_000),
        ("gibit", 1 << 30),
        ("tbit", 1_000_000_000_000),
        ("tibit", 1 << 40),
    ];
    let hint =
        "write a rate in bits per second: 500kbit, 100mbit, 1gbit (or a plain number of bit/s)";
    let lower = text.trim().to_ascii_lowercase();
    if lower.ends_with("bps") || lower.ends_with("b/s") {
        return Err(format!(
            "{text:?} is ambiguous (tc reads \"bps\" as bytes per second); {hint}"
        ));
    }
    let v = with_unit(text, UNITS).map_err(|e| format!("{e}; {hint}"))?;
    if v == 0 {
        return Err(format!("{text:?} is zero; {hint}"));
    }
    u64::try_from(v).map_err(|_| format!("{text:?} is too large"))
}

/// `4`, `0.5`, `1.25`, `500m` (millicores): millicores, at most 3 decimals, more than 0
/// and at most 4096 CPUs.
pub fn parse_cpu(text: &str) -> Result<u32, String> {
    let hint = "write a number of CPUs such as 2, 0.5 or 1.25 (at most 3 decimals), or millicores such as 500m";
    let t = text.trim();
    let millis: u128 = if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) || m.len() > 12 {
            return Err(format!("{text:?} is not a CPU count; {hint}"));
        }
        m.parse::<u128>()
            .map_err(|_| format!("{text:?} is not a CPU count; {hint}"))?
    } else {
        decimal(t, 1000).map_err(|e| format!("{e}; {hint}"))?
    };
    if millis == 0 {
        return Err(format!("{text:?} is zero; {hint}"));
    }
    if millis > 4_096_000 {
        return Err(format!("{text:?} is more than 4096 CPUs; {hint}"));
    }
    Ok(millis as u32)
}

/// `number[unit]` with the number possibly fractional, exact in the unit's base quantity.
fn with_unit(text: &str, units: &[(&str, u128)]) -> Result<u128, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_l = unit.trim().to_ascii_lowercase();
    let Some(&(_, mult)) = units.iter().find(|(u, _)| *u == unit_l) else {
        return Err(format!("{text:?} has an unknown unit {:?}", unit.trim()));
    };
    decimal(num, mult)
}

/// `num` (digits with at most one `.`) times `mult`, refusing results that are not whole.
fn decimal(num: &str, mult: u128) -> Result<u128, String> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return Err(format!("{num:?} is not a number"));
    }
    if int.len() > 20 || frac.len() > 18 {
        return Err(format!("{num:?} has too many digits"));
    }
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| format!("{num:?} is not a number"))?
    };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| format!("{num:?} is not a number"))?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let whole = int_v
        .checked_mul(mult)
        .ok_or_else(|| format!("{num:?} is too large"))?;
    let part = frac_v
        .checked_mul(mult)
        .ok_or_else(|| format!("{num:?} is too large"))?;
    if part % scale != 0 {
        return Err(format!(
            "{num:?} is not a whole number of the smallest unit"
        ));
    }
    whole
        .checked_add(part / scale)
        .ok_or_else(|| format!("{num:?} is too large"))
}

/// The shortest exact spelling among the units, largest unit first.
fn spell(v: u64, units: &[(&str, u64)], base: &str) -> String {
    for (name, mult) in units {
        if v >= *mult && v.is_multiple_of(*mult) {
            return format!("{}{name}", v / mult);
        }
    }
    format!("{v}{base}")
}

/// Bytes as `8GiB`, `512MB`, or a plain number.
pub fn format_bytes(v: u64) -> String {
    spell(
        v,
        &[
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1_000),
        ],
        "",
    )
}

/// Bits per second as `1gbit`, `100mbit`, `1234bit`.
pub fn format_bits(v: u64) -> String {
    spell(
        v,
        &[
            ("tbit", 1_000_000_000_000),
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ],
        "bit",
    )
}

/// Millicores as `4`, `0.5`, `1.25`.
pub fn format_cpu(millis: u32) -> String {
    if millis.is_multiple_of(1000) {
        return (millis / 1000).to_string();
    }
    let frac = format!("{:03}", millis % 1000);
    format!("{}.{}", millis / 1000, frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("8GB"), Ok(8_000_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512mb"), Ok(512_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1 KiB"), Ok(1024));
        assert!(parse_bytes("0").unwrap_err().contains("zero"));
        assert!(parse_bytes("0GB").unwrap_err().contains("zero"));
        assert!(
            parse_bytes("8 potatoes")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_bytes("GB").is_err());
        assert!(parse_bytes("1.2.3GB").is_err());
        assert!(parse_bytes("0.5").is_err(), "half a byte");
        assert!(parse_bytes("99999999999999999999TiB").is_err());
        assert!(parse_bytes("-1GB").is_err());
    }

    #[test]
    fn bits() {
        assert_eq!(parse_bits("100mbit"), Ok(100_000_000));
        assert_eq!(parse_bits("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_bits("500kbit"), Ok(500_000));
        assert_eq!(parse_bits("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_bits("12345"), Ok(12345));
        assert!(parse_bits("100mbps").unwrap_err().contains("ambiguous"));
        assert!(parse_bits("0kbit").is_err());
        assert!(parse_bits("fast").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu("4"), Ok(4000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("1.25"), Ok(1250));
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert!(parse_cpu("0").unwrap_err().contains("zero"));
        assert!(parse_cpu("0.0001").is_err());
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("5000").is_err());
        assert!(parse_cpu("two").is_err());
    }

    #[test]
    fn spellings_round_trip() {
        for v in [
            1u64,
            999,
            1000,
            1024,
            1536,
            8_000_000_000,
            1 << 30,
            3 << 29,
            u64::MAX,
        ] {
            assert_eq!(parse_bytes(&format_bytes(v)), Ok(v), "{v}");
            assert_eq!(parse_bits(&format_bits(v)), Ok(v), "{v}");
        }
        assert_eq!(format_bytes(1 << 30), "1GiB");
        assert_eq!(format_bits(100_000_000), "100mbit");
        for m in [1u32, 10, 100, 500, 1000, 1250, 4_096_000] {
            assert_eq!(parse_cpu(&format_cpu(m)), Ok(m), "{m}");
        }
        assert_eq!(format_cpu(500), "0.5");
        assert_eq!(format_cpu(4000), "4");
    }
}
