//! Time. Every decision about expiry, rotation or limits takes `now` as an argument; the
//! [`Clock`] is how the server obtains it, so tests can substitute their own.

use std::fmt;

use time::{
    Date, OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description,
};

/// An instant in UTC with millisecond precision, written as RFC 3339
/// (`2026-11-22T13:45:43.123Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_unix(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    pub fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Whole seconds since the epoch (rounded down).
    pub fn unix(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    pub fn from_offset(t: OffsetDateTime) -> Self {
        // Floor, not toward zero: an instant before the epoch stays before it.
        Self(i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX))
    }

    pub fn to_offset(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn plus_secs(self, secs: u64) -> Self {
        let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
        Self(self.0.saturating_add(ms))
    }

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() > 40 {
            return Err("must be an RFC 3339 timestamp");
        }
        // Only instants this type can print back the same way: from the epoch to the end of
        // year 9999 in UTC (an offset can push a valid-looking local time outside it).
        const LAST: i64 = 253_402_300_799_999;
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Self::from_offset)
            .ok()
            .filter(|t| (0..=LAST).contains(&t.0))
            .ok_or("must be an RFC 3339 timestamp between 1970 and 9999 (UTC)")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_offset();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A calendar date, written `YYYY-MM-DD`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(Date);

impl Day {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let fmt = format_description!("[year]-[month]-[day]");
        if s.len() != 10 {
            return Err("must be a date YYYY-MM-DD");
        }
        Date::parse(s, &fmt)
            .map(Self)
            .map_err(|_| "must be a date YYYY-MM-DD")
    }

    pub fn of(t: Timestamp) -> Self {
        Self(t.to_offset().date())
    }

    pub fn plus_days(self, days: i64) -> Self {
        Self(self.0.saturating_add(time::Duration::days(days)))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

impl fmt::Debug for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Day {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where the server gets `now` from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Milliseconds straight from the system time, floored like `from_offset` (no calendar
        // arithmetic: this is read on every request).
        let ms = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => {
                i64::try_from(e.duration().as_nanos().div_ceil(1_000_000)).map_or(i64::MIN, |m| -m)
            }
        };
        Timestamp(ms)
    }
}

/// The variable that names a test clock's file (see [`from_environment`]).
pub const TEST_CLOCK_ENV: &str = "TESSERA_TEST_CLOCK";

/// The clock the server runs on: the system's, unless `TESSERA_TEST_CLOCK` names a file in a
/// debug build (the test suite's build), in which case [`FileClock`] reads `now` from it.
///
/// Why a debug build only: the integration tests run the binary `cargo test` builds (debug
/// assertions on); a release build, the one anybody deploys, has no code that reads the
/// variable at all, and refuses to start when it is set, so a stray variable can never move a
/// production server's clock (which would extend every expiry and grace). The test-only clock
/// is compiled out of release builds rather than switched off by a default.
pub fn from_environment() -> Result<std::sync::Arc<dyn Clock>, String> {
    let Some(path) = std::env::var_os(TEST_CLOCK_ENV) else {
        return Ok(std::sync::Arc::new(SystemClock));
    };
    #[cfg(debug_assertions)]
    {
        tracing::warn!(
            file = %std::path::Path::new(&path).display(),
            "TEST CLOCK: `now` is read from a file ({TEST_CLOCK_ENV}); a debug build only"
        );
        Ok(std::sync::Arc::new(FileClock { path: path.into() }))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = path;
        Err(format!(
            "{TEST_CLOCK_ENV} is set, but a release build has no test clock: unset it"
        ))
    }
}

/// A clock the test suite controls: the file holds the current instant as unix milliseconds
/// (read on every call, so a test moves time by rewriting it); while the file is missing or
/// empty, the system clock. Unreadable content is a test's mistake: it panics rather than
/// guess. Compiled into debug builds only (see [`from_environment`]).
#[cfg(debug_assertions)]
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
}

#[cfg(debug_assertions)]
impl Clock for FileClock {
    fn now(&self) -> Timestamp {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let text = text.trim();
        if text.is_empty() {
            return SystemClock.now();
        }
        #[allow(clippy::panic)] // a debug build's test harness wrote something else: say so
        let ms = text
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("{TEST_CLOCK_ENV}: not unix milliseconds: {text:?}"));
        Timestamp::from_unix_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_in_utc() {
        let t = Timestamp::parse("2026-11-22T15:00:00+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T13:00:00.000Z");
        let precise = Timestamp::parse("2026-11-22T13:00:00.25Z").unwrap();
        assert_eq!(precise.unix_millis() - t.unix_millis(), 250);
        assert_eq!(Timestamp::parse(&precise.to_string()).unwrap(), precise);
        assert!(Timestamp::parse("yesterday").is_err());
        assert_eq!(Day::parse("2027-01-31").unwrap().to_string(), "2027-01-31");
        assert!(Day::parse("2027-02-31").is_err());
        // Found by fuzzing: accepted but printed as something else.
        for odd in [
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59",
            "1969-12-31T23:59:59.9995Z",
        ] {
            assert!(Timestamp::parse(odd).is_err(), "{odd}");
        }
        let last = Timestamp::parse("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(Timestamp::parse(&last.to_string()).unwrap(), last);
    }

    #[test]
    fn the_system_clock_reads_what_the_calendar_clock_reads() {
        for _ in 0..1000 {
            let before = Timestamp::from_offset(OffsetDateTime::now_utc());
            let now = SystemClock.now();
            let after = Timestamp::from_offset(OffsetDateTime::now_utc());
            assert!(before <= now && now <= after, "{before} {now} {after}");
        }
    }

    #[test]
    fn the_file_clock_reads_the_file_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FileClock {
            path: dir.path().join("now"),
        };
        let before = SystemClock.now();
        assert!(clock.now() >= before, "no file: the system clock");
        std::fs::write(dir.path().join("now"), "1000000000123\n").unwrap();
        assert_eq!(clock.now().unix_millis(), 1_000_000_000_123);
        std::fs::write(dir.path().join("now"), "-5").unwrap();
        assert_eq!(clock.now().unix_millis(), -5);
    }
}
