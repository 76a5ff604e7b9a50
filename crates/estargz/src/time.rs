//! RFC 3339 timestamps of TOC entries (`2006-01-02T15:04:05Z`, optional fraction and offset).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

/// Parses a timestamp; `None` if it is empty or malformed (the caller uses the epoch).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() < 20 || !s.is_char_boundary(19) {
        return None;
    }
    let (date_time, rest) = s.split_at(19);
    let b = date_time.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (
        num(&date_time[0..4])?,
        num(&date_time[5..7])?,
        num(&date_time[8..10])?,
    );
    let (h, mi, sec) = (
        num(&date_time[11..13])?,
        num(&date_time[14..16])?,
        num(&date_time[17..19])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = rest;
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits.min(9)];
        nanos = num(f)? * 10u32.pow(9 - f.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = i64::from(num(&o[1..3])?) * 3600 + i64::from(num(&o[4..6])?) * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(sec)
        - offset_secs;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> i64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(secs(parse_rfc3339("1970-01-01T00:00:00Z").unwrap()), 0);
        assert_eq!(
            secs(parse_rfc3339("2026-11-23T00:57:34Z").unwrap()),
            1_795_395_454
        );
        assert_eq!(
            secs(parse_rfc3339("2000-02-29T12:00:00+01:00").unwrap()),
            951_822_000
        );
        let t = parse_rfc3339("2001-09-09T01:46:40.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_000_000_000, 500_000_000)
        );
        assert_eq!(secs(parse_rfc3339("1969-12-31T23:59:59Z").unwrap()), -1);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-23T00:57:34",
            "2026-11-23T00:57:34.Z",
            "2026-11-23X00:57:34Z",
            "ĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳĳ",
        ] {
            assert!(parse_rfc3339(s).is_none(), "{s}");
        }
    }
}
