//! FHIR date, dateTime and instant values as half-open millisecond ranges, so that a partial
//! date such as `2024-05` covers the whole month.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Milliseconds since the Unix epoch now (wall clock), as `meta.lastUpdated` stores it.
pub fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `millis` since the Unix epoch as a FHIR instant in UTC with milliseconds, the form
/// `meta.lastUpdated` takes.
pub fn format_instant(millis: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

/// `[low, high)` in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// The first millisecond in the range.
    pub low: i64,
    /// The first millisecond after it.
    pub high: i64,
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn day_start(date: Date) -> i64 {
    millis(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc())
}

/// Exactly two ASCII digits (`u8::from_str` would also take `+1`).
fn two_digits(s: &str) -> Option<u8> {
    match s.as_bytes() {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

fn parse_offset(text: &str) -> Option<UtcOffset> {
    if text == "Z" {
        return Some(UtcOffset::UTC);
    }
    let sign: i8 = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    // Exactly `±hh:mm`, within the offsets FHIR allows (up to 14:00).
    let (h, m) = text[1..].split_once(':')?;
    let (h, m) = (two_digits(h)? as i8, two_digits(m)? as i8);
    if h > 14 || m > 59 || (h == 14 && m > 0) {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD` and `YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm]`.
/// A time without zone is taken as UTC.
pub fn parse_date_range(text: &str) -> Option<DateRange> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year: i32 = fields
        .next()
        .filter(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let month = fields.next();
    let day = fields.next();
    if fields.next().is_some() {
        return None;
    }
    let two = two_digits;
    let Some(month) = month else {
        let low = day_start(Date::from_calendar_date(year, Month::January, 1).ok()?);
        let high = day_start(Date::from_calendar_date(year + 1, Month::January, 1).ok()?);
        return Some(DateRange { low, high });
    };
    let month = Month::try_from(two(month)?).ok()?;
    let Some(day) = day else {
        let first = Date::from_calendar_date(year, month, 1).ok()?;
        let next = if month == Month::December {
            Date::from_calendar_date(year + 1, Month::January, 1).ok()?
        } else {
            Date::from_calendar_date(year, month.next(), 1).ok()?
        };
        return Some(DateRange {
            low: day_start(first),
            high: day_start(next),
        });
    };
    let date = Date::from_calendar_date(year, month, two(day)?).ok()?;
    let Some(time_part) = time_part else {
        let low = day_start(date);
        return Some(DateRange {
            low,
            high: low + 86_400_000,
        });
    };
    let zone_at = time_part.find(['Z', '+', '-']).unwrap_or(time_part.len());
    let (clock, zone) = time_part.split_at(zone_at);
    let offset = if zone.is_empty() {
        UtcOffset::UTC
    } else {
        parse_offset(zone)?
    };
    let mut parts = clock.split(':');
    let hour = two(parts.next()?)?;
    let minute = two(parts.next()?)?;
    let (second, fraction, width) = match parts.next() {
        None => (0, 0, 60_000),
        Some(sec) => match sec.split_once('.') {
            None => (two(sec)?, 0, 1_000),
            Some((s, frac)) => {
                if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let ms: String = frac.chars().chain("000".chars()).take(3).collect();
                (two(s)?, ms.parse::<u16>().ok()?, 1)
            }
        },
    };
    if parts.next().is_some() {
        return None;
    }
    let time = Time::from_hms_milli(hour, minute, second, fraction).ok()?;
    let low = millis(PrimitiveDateTime::new(date, time).assume_offset(offset));
    Some(DateRange {
        low,
        high: low + width,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_sets_the_width() {
        let y = parse_date_range("2024").unwrap();
        assert_eq!(y.high - y.low, 366 * 86_400_000);
        let m = parse_date_range("2024-02").unwrap();
        assert_eq!(m.high - m.low, 29 * 86_400_000);
        let d = parse_date_range("2024-02-29").unwrap();
        assert_eq!(d.low, m.low + 28 * 86_400_000);
        let s = parse_date_range("2024-02-29T00:00:01Z").unwrap();
        assert_eq!((s.low - d.low, s.high - s.low), (1000, 1000));
        let ms = parse_date_range("2024-02-29T01:00:00.5+01:00").unwrap();
        assert_eq!((ms.low - d.low, ms.high - ms.low), (500, 1));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "24",
            "2024-13",
            "2024-02-30",
            "2024-1-01",
            "2024-01-01T25:00",
            "2024-01-01T10:00--128:00",
            "2024-01-01T10:00+-1:00",
            "2024-01-01T10:00+15:00",
            "2024-01-01T10:00+1:00",
            "2024-01-01T10:00:00.x",
            "x",
        ] {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }
}
