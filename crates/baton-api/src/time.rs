//! Times on the wire: RFC 3339 UTC strings with milliseconds
//! (`2025-01-31T12:00:00.000Z`). `Timestamp` wraps milliseconds since the Unix
//! epoch and converts with a small civil-calendar routine, so the wire crate
//! needs no date library. Durations are not here: the API sends them as plain
//! integer milliseconds in fields named `*_ms`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// A point in time: milliseconds since 1970-01-01T00:00:00Z. Serialized as an
/// RFC 3339 UTC string with exactly three fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        let days = ms.div_euclid(MS_PER_DAY);
        let of_day = ms.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
        let (second, milli) = (of_day / 1000 % 60, of_day % 1000);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
    }
}

/// Why a time string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTimeError;

impl fmt::Display for ParseTimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected an RFC 3339 time such as 2025-01-31T12:00:00.000Z")
    }
}

impl std::error::Error for ParseTimeError {}

impl FromStr for Timestamp {
    type Err = ParseTimeError;

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`. Digits past
    /// the millisecond are truncated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = Cursor { s: s.as_bytes(), at: 0 };
        let year = p.digits(4)?;
        p.expect(b'-')?;
        let month = p.digits(2)?;
        p.expect(b'-')?;
        let day = p.digits(2)?;
        p.expect_any(b"Tt ")?;
        let hour = p.digits(2)?;
        p.expect(b':')?;
        let minute = p.digits(2)?;
        p.expect(b':')?;
        let second = p.digits(2)?;
        let mut milli = 0;
        if p.peek() == Some(b'.') {
            p.at += 1;
            let start = p.at;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                if p.at - start < 3 {
                    milli = milli * 10 + i64::from(p.s[p.at] - b'0');
                }
                p.at += 1;
            }
            let n = p.at - start;
            if n == 0 {
                return Err(ParseTimeError);
            }
            for _ in n..3 {
                milli *= 10;
            }
        }
        let offset_minutes = match p.next() {
            Some(b'Z' | b'z') => 0,
            Some(sign @ (b'+' | b'-')) => {
                let h = p.digits(2)?;
                p.expect(b':')?;
                let m = p.digits(2)?;
                if h > 23 || m > 59 {
                    return Err(ParseTimeError);
                }
                let total = h * 60 + m;
                if sign == b'+' { total } else { -total }
            }
            _ => return Err(ParseTimeError),
        };
        if p.at != p.s.len()
            || !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(ParseTimeError);
        }
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        Ok(Self(seconds * 1000 + milli))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 UTC time with milliseconds; offsets are accepted in requests."))
            .examples(["2025-01-31T12:00:00.000Z"])
            .build()
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timestamp")
    }
}

const MS_PER_DAY: i64 = 86_400_000;

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseTimeError> {
        self.expect_any(&[c])
    }

    fn expect_any(&mut self, set: &[u8]) -> Result<(), ParseTimeError> {
        match self.next() {
            Some(c) if set.contains(&c) => Ok(()),
            _ => Err(ParseTimeError),
        }
    }

    fn digits(&mut self, n: usize) -> Result<i64, ParseTimeError> {
        let mut v = 0;
        for _ in 0..n {
            match self.next() {
                Some(c) if c.is_ascii_digit() => v = v * 10 + i64::from(c - b'0'),
                _ => return Err(ParseTimeError),
            }
        }
        Ok(v)
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: the inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ms: i64, text: &str) {
        assert_eq!(Timestamp(ms).to_string(), text);
        assert_eq!(text.parse::<Timestamp>(), Ok(Timestamp(ms)), "{text}");
    }

    #[test]
    fn formats_and_parses_round_trip() {
        check(0, "1970-01-01T00:00:00.000Z");
        check(1, "1970-01-01T00:00:00.001Z");
        check(-1, "1969-12-31T23:59:59.999Z");
        check(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check(1_738_324_800_123, "2025-01-31T12:00:00.123Z");
        check(4_102_444_799_999, "2099-12-31T23:59:59.999Z");
        // Every day across several leap cycles survives the round trip.
        for day in -800..100_000 {
            let ms = day * MS_PER_DAY + 45_296_789;
            let text = Timestamp(ms).to_string();
            assert_eq!(text.parse::<Timestamp>(), Ok(Timestamp(ms)), "{text}");
        }
    }

    #[test]
    fn accepts_offsets_and_short_fractions() {
        let t = |s: &str| s.parse::<Timestamp>().map(|t| t.0);
        assert_eq!(t("2025-01-31T12:00:00Z"), Ok(1_738_324_800_000));
        assert_eq!(t("2025-01-31T12:00:00.1Z"), Ok(1_738_324_800_100));
        assert_eq!(t("2025-01-31T12:00:00.123456Z"), Ok(1_738_324_800_123));
        assert_eq!(t("2025-01-31T13:30:00+01:30"), Ok(1_738_324_800_000));
        assert_eq!(t("2025-01-31T10:00:00-02:00"), Ok(1_738_324_800_000));
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "2025-01-31",
            "2025-01-31T12:00:00",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-31T24:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00Zjunk",
            "2025-1-31T12:00:00Z",
            "2025-01-31T12:00:00+1:00",
        ] {
            assert_eq!(bad.parse::<Timestamp>(), Err(ParseTimeError), "{bad:?}");
        }
    }
}
