//! ISO 8601 as BPMN timers use it: durations (`PT5M`, `P1DT2H`), dates
//! (`2026-11-25T10:00:00Z`) and cycles (`R3/PT10S`, `R/PT1H`).

/// When a timer fires, and how often it repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Milliseconds since the Unix epoch.
    pub first: i64,
    /// Interval of a cycle, in milliseconds.
    pub every: Option<i64>,
    /// Further firings after the first; `None` repeats forever.
    pub repeats: Option<u32>,
}

/// Milliseconds of an ISO 8601 duration (`PnYnMnDTnHnMnS`, years as 365 days, months as 30).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("'{text}' is not an ISO 8601 duration such as PT5M");
    let body = text.trim().strip_prefix('P').ok_or_else(invalid)?;
    let (date, time) = match body.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let mut millis: f64 = 0.0;
    let mut any = false;
    let mut read = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(if c == ',' { '.' } else { c });
                continue;
            }
            let unit = units.iter().find(|(u, _)| *u == c).ok_or_else(invalid)?;
            let value: f64 = number.parse().map_err(|_| invalid())?;
            millis += value * unit.1;
            number.clear();
            any = true;
        }
        if number.is_empty() {
            Ok(())
        } else {
            Err(invalid())
        }
    };
    const DAY: f64 = 86_400_000.0;
    read(
        date,
        &[
            ('Y', 365.0 * DAY),
            ('M', 30.0 * DAY),
            ('W', 7.0 * DAY),
            ('D', DAY),
        ],
    )?;
    if let Some(time) = time {
        if time.is_empty() {
            return Err(invalid());
        }
        read(time, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1000.0)])?;
    }
    if !any {
        return Err(invalid());
    }
    Ok(millis.round() as i64)
}

/// Milliseconds since the epoch of an RFC 3339 date-time (`2026-11-25T10:00:00Z`).
pub fn parse_date(text: &str) -> Result<i64, String> {
    let parsed =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("'{text}' is not an ISO 8601 date-time with zone: {e}"))?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A `timeCycle`: `R[n]/<duration>` or `R[n]/<start date>/<duration>`.
pub fn parse_cycle(text: &str, now: i64) -> Result<Schedule, String> {
    let invalid = || format!("'{text}' is not an ISO 8601 repeating interval such as R3/PT10S");
    let mut parts = text.trim().split('/');
    let repeat = parts
        .next()
        .and_then(|r| r.strip_prefix('R'))
        .ok_or_else(invalid)?;
    let total: Option<u32> = if repeat.is_empty() {
        None
    } else {
        Some(repeat.parse().map_err(|_| invalid())?)
    };
    let rest: Vec<&str> = parts.collect();
    let (start, every) = match rest.as_slice() {
        [duration] => (None, parse_duration(duration)?),
        [start, duration] => (Some(parse_date(start)?), parse_duration(duration)?),
        _ => return Err(invalid()),
    };
    if total == Some(0) {
        return Err(format!("'{text}' repeats zero times"));
    }
    Ok(Schedule {
        first: start.unwrap_or(now + every),
        every: Some(every),
        repeats: total.map(|t| t - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT5M"), Ok(300_000));
        assert_eq!(parse_duration("PT1.5S"), Ok(1_500));
        assert_eq!(parse_duration("P1DT2H"), Ok(93_600_000));
        assert_eq!(parse_duration("P2W"), Ok(1_209_600_000));
        for bad in ["5M", "PT", "P", "PTxS", "PT5", "P5H"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_and_cycles() {
        assert_eq!(parse_date("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(parse_date("2026-11-25").is_err());
        assert_eq!(
            parse_cycle("R3/PT10S", 0),
            Ok(Schedule {
                first: 10_000,
                every: Some(10_000),
                repeats: Some(2)
            })
        );
        assert_eq!(parse_cycle("R/PT1S", 5).map(|s| s.repeats), Ok(None));
        assert_eq!(
            parse_cycle("R2/1970-01-01T00:00:02Z/PT1S", 0).map(|s| s.first),
            Ok(2000)
        );
        assert!(parse_cycle("R0/PT1S", 0).is_err());
        assert!(parse_cycle("PT1S", 0).is_err());
    }
}
