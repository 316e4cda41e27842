//! Calendar arithmetic for the CMOS RTC: UNIX seconds to a civil UTC date
//! and back, in the proleptic Gregorian calendar, without a date library.
//!
//! The day conversions use the classic era/day-of-era decomposition
//! (400-year eras of 146097 days, years starting on March 1st so the leap
//! day is last), which needs no tables and no loops.

/// Seconds in a day.
const SECS_PER_DAY: i64 = 86_400;
/// Days in a 400-year Gregorian era.
const DAYS_PER_ERA: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;

/// A UTC date and time broken into the fields the RTC exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    /// Full year, e.g. 2025.
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// 1..=7, Sunday = 1 (the MC146818 convention).
    pub weekday: u8,
}

impl DateTime {
    /// Breaks `secs` since 1970-01-01T00:00:00Z into fields.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
        let weekday = (days + 4).rem_euclid(7) + 1;
        Self {
            year,
            month,
            day,
            hour: to_u8(rem / 3600),
            minute: to_u8(rem / 60 % 60),
            second: to_u8(rem % 60),
            weekday: to_u8(weekday),
        }
    }

    /// Seconds since the epoch. Out-of-range fields (day 31 in a 30-day
    /// month) roll over into the next unit instead of failing.
    pub fn to_unix(self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// Narrows a value that the arithmetic above keeps below 256.
fn to_u8(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// Year, month (1..=12), day (1..=31) of the given day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA); // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, to_u8(month), to_u8(day))
}

/// Days since 1970-01-01 of the given civil date; `month` is taken modulo
/// the valid range by the caller, `day` may overflow the month.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = i64::from(month.clamp(1, 12));
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_thursday_first_of_january_1970() {
        let t = DateTime::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        assert_eq!((t.hour, t.minute, t.second), (0, 0, 0));
    }

    #[test]
    fn known_dates() {
        // 2000-02-29T12:34:56Z, a Tuesday (weekday 3).
        let t = DateTime::from_unix(951_827_696);
        assert_eq!(
            t,
            DateTime {
                year: 2000,
                month: 2,
                day: 29,
                hour: 12,
                minute: 34,
                second: 56,
                weekday: 3
            }
        );
        // 2038-01-19T03:14:08Z, just past i32.
        let t = DateTime::from_unix(1 << 31);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2038, 1, 19, 3, 14, 8)
        );
        // Before the epoch: 1969-12-31T23:59:59Z.
        let t = DateTime::from_unix(-1);
        assert_eq!((t.year, t.month, t.day, t.second), (1969, 12, 31, 59));
    }

    #[test]
    fn round_trips_over_centuries() {
        let mut secs = -5_000_000_000i64;
        while secs < 10_000_000_000 {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs, "at {secs}");
            secs += 7_777_777;
        }
    }

    #[test]
    fn overflowing_day_rolls_into_next_month() {
        let t = DateTime {
            year: 2023,
            month: 2,
            day: 31,
            hour: 0,
            minute: 0,
            second: 0,
            weekday: 1,
        };
        let back = DateTime::from_unix(t.to_unix());
        assert_eq!((back.month, back.day), (3, 3));
    }
}
