//! Timestamp parsing: RFC 3339 and the `YYYY-MM-DD HH:MM:SS[.ffffff]+HH:MM` form, any offset,
//! normalised to UTC microseconds since the Unix epoch.
//!
//! Hand-written because it sits on the hot path of ingestion (tens of millions of calls) and
//! the accepted grammar is small and fixed.

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsError {
    /// Not a timestamp in an accepted form.
    Invalid,
    /// Well-formed but without a UTC offset, and naive timestamps are not accepted.
    NoOffset,
}

fn digits(b: &[u8], start: usize, n: usize) -> Option<i64> {
    let s = b.get(start..start + n)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// Parse one timestamp to UTC microseconds.
///
/// Accepts `YYYY-MM-DD` then `T`, `t` or a space, `HH:MM:SS`, an optional fraction of 1 to 9
/// digits (beyond microseconds it is truncated toward the past), then `Z`, `z`, `+HH:MM`,
/// `+HHMM` or `+HH` (or `-`), or nothing when `assume_utc` is set.
pub fn parse_timestamp_micros(s: &str, assume_utc: bool) -> Result<i64, TsError> {
    // Exactly as written, as for every typed field: no surrounding whitespace.
    let b = s.as_bytes();
    let bad = TsError::Invalid;
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad);
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad);
    }
    let y = digits(b, 0, 4).ok_or(TsError::Invalid)?;
    let mo = digits(b, 5, 2).ok_or(TsError::Invalid)?;
    let d = digits(b, 8, 2).ok_or(TsError::Invalid)?;
    let h = digits(b, 11, 2).ok_or(TsError::Invalid)?;
    let mi = digits(b, 14, 2).ok_or(TsError::Invalid)?;
    let se = digits(b, 17, 2).ok_or(TsError::Invalid)?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59
    {
        return Err(bad);
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return Err(bad);
        }
        let frac = digits(b, start, n).ok_or(TsError::Invalid)?;
        micros = if n <= 6 {
            frac * 10i64.pow((6 - n) as u32)
        } else {
            frac / 10i64.pow((n - 6) as u32)
        };
    }
    let offset_secs = match b.get(i) {
        None => {
            if assume_utc {
                0
            } else {
                return Err(TsError::NoOffset);
            }
        }
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2).ok_or(TsError::Invalid)?;
            i += 3;
            let om = if b.get(i) == Some(&b':') {
                let v = digits(b, i + 1, 2).ok_or(TsError::Invalid)?;
                i += 3;
                v
            } else if i < b.len() {
                let v = digits(b, i, 2).ok_or(TsError::Invalid)?;
                i += 2;
                v
            } else {
                0
            };
            if oh > 23 || om > 59 {
                return Err(bad);
            }
            let secs = oh * 3600 + om * 60;
            if sign == b'-' { -secs } else { secs }
        }
        Some(_) => return Err(bad),
    };
    if i != b.len() {
        return Err(bad);
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    // In UTC, within years 1 to 9999 (an offset can carry 0001-01-01T00:00+01:00 out of
    // them): outside, no four-digit day exists for monitoring to group by.
    let first = days_from_civil(1, 1, 1) * 86_400;
    let end = days_from_civil(10_000, 1, 1) * 86_400;
    if !(first..end).contains(&secs) {
        return Err(bad);
    }
    Ok(secs * 1_000_000 + micros)
}

/// Format UTC microseconds as RFC 3339 with microseconds and `Z`.
pub fn format_rfc3339_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 for years 0 to 9999; `None` outside,
/// where no four-digit text exists (the CSV/SQLite writers and the generator share it).
pub fn date_text(days: i64) -> Option<[u8; 10]> {
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let mut s = [b'-'; 10];
    for (start, v, width) in [(0, y, 4), (5, m, 2), (8, d, 2)] {
        let mut v = v;
        for slot in s[start..start + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    Some(s)
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn date_text_is_the_calendar_date_and_refuses_years_without_four_digits() {
        for days in [-719_528_i64, -1, 0, 19_000, 20_499, 2_932_896] {
            let chrono_text = (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string();
            assert_eq!(
                date_text(days).map(|t| t.to_vec()),
                Some(chrono_text.into_bytes()),
                "{days}"
            );
        }
        assert_eq!(date_text(-719_529), None); // 31 Dec of year -1
        assert_eq!(date_text(2_932_897), None); // 1 Jan 10000
    }

    fn chrono_micros(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn agrees_with_chrono_on_rfc3339_and_offsets() {
        for s in [
            "2026-02-01T05:26:54.143876Z",
            "2026-02-01T05:26:54+00:00",
            "2026-02-01T05:26:54.1+05:30",
            "2026-02-01T00:00:00-08:00",
            "2024-02-29T23:59:59.999999+01:00",
            "1969-12-31T23:59:59.5Z",
            "2000-03-01T00:00:00Z",
        ] {
            assert_eq!(
                parse_timestamp_micros(s, false).unwrap(),
                chrono_micros(s),
                "{s}"
            );
        }
    }

    #[test]
    fn accepts_the_space_separated_pandas_form() {
        let a = parse_timestamp_micros("2026-02-01 05:26:54.143876+00:00", false).unwrap();
        assert_eq!(a, chrono_micros("2026-02-01T05:26:54.143876Z"));
        let b = parse_timestamp_micros("2026-02-01 07:26:54.143876+0200", false).unwrap();
        assert_eq!(a, b);
        let c = parse_timestamp_micros("2026-02-01 07:26:54.143876+02", false).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn naive_timestamps_need_the_setting() {
        assert_eq!(
            parse_timestamp_micros("2026-02-01 05:26:54", false),
            Err(TsError::NoOffset)
        );
        assert_eq!(
            parse_timestamp_micros("2026-02-01 05:26:54", true).unwrap(),
            chrono_micros("2026-02-01T05:26:54Z")
        );
    }

    #[test]
    fn rejects_impossible_dates_and_junk() {
        for s in [
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-01-01T00:00:00.Z",
            "yesterday",
            "",
            "2026-01-01",
        ] {
            assert_eq!(
                parse_timestamp_micros(s, true),
                Err(TsError::Invalid),
                "{s}"
            );
        }
    }

    /// Regression: `0000-12-31T23:00:00-02:00` and the like reached monitoring as day
    /// `-0001-12-31`; a timestamp must fall within years 1 to 9999 in UTC.
    #[test]
    fn timestamps_outside_years_1_to_9999_are_refused_offsets_included() {
        for s in [
            "0000-06-01T00:00:00Z",
            "0001-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
        ] {
            assert_eq!(
                parse_timestamp_micros(s, false),
                Err(TsError::Invalid),
                "{s}"
            );
        }
        for s in ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"] {
            assert!(parse_timestamp_micros(s, false).is_ok(), "{s}");
        }
        assert!(parse_timestamp_micros(" 2026-02-01T00:00:00Z", false).is_err());
    }

    #[test]
    fn formats_back_to_rfc3339() {
        let s = "2026-02-01T05:26:54.143876Z";
        assert_eq!(format_rfc3339_micros(chrono_micros(s)), s);
        assert_eq!(
            format_rfc3339_micros(chrono_micros("1969-12-31T23:59:59.5Z")),
            "1969-12-31T23:59:59.500000Z"
        );
    }
}
