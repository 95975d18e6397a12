//! Go-style durations (`1h2m3.5s`, `300ms`, `15s`), the spelling Consul uses in query
//! parameters, JSON bodies and config files.
//!
//! `parse` follows Go's `time.ParseDuration`: an optional sign, then one or more
//! `<decimal><unit>` segments with units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`; a bare
//! `0` is allowed. `format` is Go's `Duration.String` (`0s`, `1.5ms`, `1m30s`, `72h0m0s`), so
//! a value round-trips through the API the way Consul clients expect.

use std::time::Duration;

/// Why a duration string was rejected; the text matches Go's error wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration \"{0}\"")]
    Invalid(String),
    #[error("time: missing unit in duration \"{0}\"")]
    MissingUnit(String),
    #[error("time: unknown unit \"{unit}\" in duration \"{input}\"")]
    UnknownUnit { unit: String, input: String },
    #[error("time: negative duration \"{0}\" is not allowed here")]
    Negative(String),
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration into signed nanoseconds.
pub fn parse_nanos(input: &str) -> Result<i128, DurationError> {
    let invalid = || DurationError::Invalid(input.to_string());
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    // Totals are kept in u128 nanoseconds with the fraction scaled exactly, then capped
    // at i64 like Go's overflow check.
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, next) = after_num.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let scale = NANOS_PER_UNIT
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, n)| *n)
            .ok_or_else(|| DurationError::UnknownUnit {
                unit: unit.to_string(),
                input: input.to_string(),
            })?;
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut seg = whole.checked_mul(scale).ok_or_else(invalid)?;
        // The fraction is scaled through f64 like Go's leadingFraction, digits past
        // i64 range ignored, so `0.3333333333333333333h` is exactly 20m as in Go.
        let (mut f, mut f_scale) = (0u128, 1f64);
        for d in frac_part.bytes() {
            if f > (i64::MAX as u128) / 10 {
                break;
            }
            f = f * 10 + u128::from(d - b'0');
            f_scale *= 10.0;
        }
        seg += (f as f64 * (scale as f64 / f_scale)) as u128;
        total = total.checked_add(seg).ok_or_else(invalid)?;
        if total > i64::MAX as u128 {
            return Err(invalid());
        }
        rest = next;
    }
    let total = total as i128;
    Ok(if negative { -total } else { total })
}

/// Parses a non-negative Go duration.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let nanos = parse_nanos(input)?;
    if nanos < 0 {
        return Err(DurationError::Negative(input.to_string()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats like Go's `time.Duration.String`.
pub fn format(d: Duration) -> String {
    format_nanos(d.as_nanos().min(i64::MAX as u128) as i128)
}

/// Formats signed nanoseconds like Go's `time.Duration.String`.
pub fn format_nanos(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u == 0 {
        return "0s".to_string();
    }
    if u < 1_000_000_000 {
        let (digits, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        return format!("{sign}{}{unit}", frac(u, digits));
    }
    let secs = u / 1_000_000_000;
    let sub = frac(u % 1_000_000_000 + (secs % 60) * 1_000_000_000, 9);
    let mins = secs / 60;
    let mut out = sign.to_string();
    if mins >= 60 {
        out.push_str(&format!("{}h", mins / 60));
    }
    if mins > 0 {
        out.push_str(&format!("{}m", mins % 60));
    }
    out.push_str(&sub);
    out.push('s');
    out
}

/// `value / 10^digits` written with the fraction's trailing zeros removed.
fn frac(value: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let (whole, rem) = (value / scale, value % scale);
    if rem == 0 {
        return whole.to_string();
    }
    let fraction = format!("{rem:0width$}", width = digits as usize);
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// Serde helpers for `Duration` fields written as Go duration strings.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Accepts either a Go duration string or a number of nanoseconds.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Nanos(u64),
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(t) => super::parse(&t).map_err(serde::de::Error::custom),
            Raw::Nanos(n) => Ok(Duration::from_nanos(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_go_examples() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("5.6s", 5_600_000_000),
            ("5.s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.004s", 1_004_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14_000_000_000),
            ("15m", 900_000_000_000),
            ("16h", 57_600_000_000_000),
            ("3h30m", 12_600_000_000_000),
            ("10.5s4m", 250_500_000_000),
            ("1h1m1s1ms1us1ns", 3_661_001_001_001),
            ("0.3333333333333333333h", 1_200_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_nanos(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn rejects_go_errors() {
        for bad in [
            "", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "3000000h", "5 s",
        ] {
            assert!(parse_nanos(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(
            parse_nanos("10"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_nanos("10x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("-1s"), Err(DurationError::Negative(_))));
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(i128, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (15_000_000_000, "15s"),
            (60_000_000_000, "1m0s"),
            (90_000_000_000, "1m30s"),
            (4 * 60_000_000_000 + 5_001_000_000, "4m5.001s"),
            (3_600_000_000_000, "1h0m0s"),
            (
                5 * 3_600_000_000_000 + 6 * 60_000_000_000 + 7_001_000_000,
                "5h6m7.001s",
            ),
            (72 * 3_600_000_000_000, "72h0m0s"),
            (-1_000_000_000, "-1s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(format_nanos(*nanos), *want);
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(n in 0i128..i64::MAX as i128) {
            prop_assert_eq!(parse_nanos(&format_nanos(n)), Ok(n));
        }
    }
}
