//! When a desk's humans are there: weekly hours in the desk's time zone, and dated
//! closures. The time zone database is compiled in (`jiff`'s bundled tzdb), so the answer
//! does not depend on the host or the container having `tzdata`.

use std::collections::{BTreeMap, HashSet};

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _, Zoned};
use serde::Deserialize;

/// What happens to a handoff asked outside hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offline {
    /// The customer and the bot are told; the desk is not called.
    #[default]
    Notify,
    /// As `notify`, and the desk gets the request anyway, marked `meta.offline: true`, so
    /// someone follows up; the customer stays with the bot.
    Ticket,
}

/// A desk's hours as the channels file writes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BusinessHours {
    /// An IANA time zone (`Europe/Berlin`).
    pub timezone: String,
    /// `mon` … `sun` → `["09:00-12:00", "13:00-17:30"]`; a day left out is closed. `24:00`
    /// ends a day.
    #[serde(default)]
    pub weekly: BTreeMap<String, Vec<String>>,
    /// Dates (`2026-12-25`, in the desk's time zone) closed whatever the weekday.
    #[serde(default)]
    pub closed: Vec<String>,
    #[serde(default)]
    pub offline: Offline,
    #[serde(skip)]
    schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
struct Schedule {
    tz: TimeZone,
    /// Monday first; each day's openings sorted, as minutes since midnight.
    weekly: [Vec<(u16, u16)>; 7],
    closed: HashSet<Date>,
}

/// Whether the desk is open at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Open,
    /// Closed; it opens next at this moment (none within two weeks: `None`).
    Closed {
        next_open: Option<Zoned>,
    },
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl BusinessHours {
    /// Checks and compiles the hours; the error names the field under `path`.
    pub(crate) fn compile(&mut self, path: &str) -> Result<(), String> {
        let tz = TimeZone::get(&self.timezone).map_err(|_| {
            format!(
                "{path}.timezone: `{}` is not an IANA time zone (like Europe/Berlin)",
                self.timezone
            )
        })?;
        let mut weekly: [Vec<(u16, u16)>; 7] = Default::default();
        for (day, ranges) in &self.weekly {
            let index = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .ok_or_else(|| format!("{path}.weekly.{day}: days are mon, tue, … sun"))?;
            for range in ranges {
                let opening = parse_range(range).ok_or_else(|| {
                    format!("{path}.weekly.{day}: `{range}` is not HH:MM-HH:MM (start before end)")
                })?;
                weekly[index].push(opening);
            }
            weekly[index].sort_unstable();
        }
        let closed = self
            .closed
            .iter()
            .map(|d| {
                d.parse::<Date>()
                    .map_err(|_| format!("{path}.closed: `{d}` is not a date (YYYY-MM-DD)"))
            })
            .collect::<Result<_, _>>()?;
        self.schedule = Some(Schedule { tz, weekly, closed });
        Ok(())
    }

    /// Whether the desk is open now.
    pub fn now(&self) -> Availability {
        self.at(Timestamp::now())
    }

    /// Whether the desk is open at `now`, and if not, when it opens next.
    pub fn at(&self, now: Timestamp) -> Availability {
        let Some(s) = &self.schedule else {
            return Availability::Open;
        };
        let here = now.to_zoned(s.tz.clone());
        let today = here.date();
        for offset in 0..15i64 {
            let Ok(date) = today.checked_add(offset.days()) else {
                break;
            };
            if s.closed.contains(&date) {
                continue;
            }
            let day = usize::from(date.weekday().to_monday_zero_offset().unsigned_abs());
            for &(start, end) in &s.weekly[day] {
                let (Some(opens), Some(closes)) =
                    (at_minute(s, date, start), at_minute(s, date, end))
                else {
                    continue;
                };
                if opens <= here && here < closes {
                    return Availability::Open;
                }
                if opens > here {
                    return Availability::Closed {
                        next_open: Some(opens),
                    };
                }
            }
        }
        Availability::Closed { next_open: None }
    }
}

/// `date` at `minute` minutes after midnight in the schedule's zone (1440: the next
/// midnight).
fn at_minute(s: &Schedule, date: Date, minute: u16) -> Option<Zoned> {
    let (date, minute) = if minute >= 24 * 60 {
        (date.checked_add(1.day()).ok()?, 0)
    } else {
        (date, minute)
    };
    let time = Time::new(
        i8::try_from(minute / 60).ok()?,
        i8::try_from(minute % 60).ok()?,
        0,
        0,
    )
    .ok()?;
    date.to_datetime(time).to_zoned(s.tz.clone()).ok()
}

/// `HH:MM-HH:MM` as minutes since midnight, start before end (`24:00` ends the day).
fn parse_range(range: &str) -> Option<(u16, u16)> {
    let (start, end) = range.split_once('-')?;
    let minutes = |t: &str| {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (start, end) = (minutes(start)?, minutes(end)?);
    (start < end).then_some((start, end))
}

/// How a next opening reads for a customer: `Monday 09:00 (Europe/Berlin)`.
pub fn opening_text(at: &Zoned) -> String {
    format!(
        "{} ({})",
        at.strftime("%A %H:%M"),
        at.time_zone().iana_name().unwrap_or("UTC")
    )
}

/// The same for a program: RFC 3339 with the desk's offset.
pub fn opening_stamp(at: &Zoned) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(yaml: &str) -> BusinessHours {
        let mut h: BusinessHours = serde_yaml::from_str(yaml).unwrap();
        h.compile("hours").unwrap();
        h
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const OFFICE: &str = "timezone: Europe/Berlin
weekly: { mon: ['09:00-12:00', '13:00-17:00'], tue: ['09:00-17:00'], sat: ['10:00-24:00'] }
closed: ['2026-12-08']";

    #[test]
    fn open_within_a_range_in_the_desks_zone_and_closed_over_lunch() {
        let h = hours(OFFICE);
        // Monday 2026-12-07, 10:00 in Berlin is 09:00 UTC.
        assert_eq!(h.at(at("2026-12-07T09:00:00Z")), Availability::Open);
        let lunch = h.at(at("2026-12-07T11:30:00Z"));
        let Availability::Closed {
            next_open: Some(next),
        } = lunch
        else {
            panic!("{lunch:?}");
        };
        assert_eq!(opening_text(&next), "Monday 13:00 (Europe/Berlin)");
        assert_eq!(opening_stamp(&next), "2026-12-07T13:00:00+01:00");
    }

    #[test]
    fn a_closed_date_and_closed_days_skip_to_the_next_opening() {
        let h = hours(OFFICE);
        // Monday evening: Tuesday the 8th is closed, Wednesday to Friday have no hours.
        let Availability::Closed {
            next_open: Some(next),
        } = h.at(at("2026-12-07T18:00:00Z"))
        else {
            panic!()
        };
        assert_eq!(opening_stamp(&next), "2026-12-12T10:00:00+01:00");
        // Saturday until midnight.
        assert_eq!(h.at(at("2026-12-12T22:30:00Z")), Availability::Open);
    }

    #[test]
    fn hours_that_do_not_parse_are_refused_with_their_field() {
        let mut h: BusinessHours =
            serde_yaml::from_str("timezone: Mars/Olympus\nweekly: {}").unwrap();
        assert!(h.compile("x").unwrap_err().contains("x.timezone"));
        for (bad, field) in [
            ("weekly: { mon: ['17:00-09:00'] }", "x.weekly.mon"),
            ("weekly: { funday: ['09:00-10:00'] }", "x.weekly.funday"),
            ("closed: ['25.12.2026']", "x.closed"),
        ] {
            let mut h: BusinessHours =
                serde_yaml::from_str(&format!("timezone: UTC\n{bad}")).unwrap();
            let err = h.compile("x").unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }
}
