//! Which clock a device's fix times are on, and noticing when it is not the one we think.
//!
//! Fix times are UTC by default (gt06-protocol.md §5.1: current firmware sends UTC, and
//! devices that announce a time zone in their login mostly still send UTC). Per device,
//! the operator can say otherwise: `login` (the login's time-zone word), a fixed offset
//! like `+05:30`, or `auto`. Independently of the setting, [`OffsetDetector`] watches
//! live fixes: when they sit a whole number of quarter-hours (at least an hour) away
//! from the moment they arrive, consistently, the device is on another clock. That is
//! reported always and acted on only under `auto`.
//!
//! Everything here is pure: times come in as arguments.

/// How to read one device's fix times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeSetting {
    /// The fields are UTC.
    #[default]
    Utc,
    /// The fields are local time in the zone of the login's time-zone word (UTC when the
    /// login carried none).
    Login,
    /// The fields are local time at this many minutes east of UTC.
    Offset(i32),
    /// UTC, until the detector has seen the device's live fixes sit a whole number of
    /// quarter-hours away from their receipt time; then that offset is taken out.
    Auto,
}

/// Largest offset a time zone has (UTC+14:00, Kiribati).
const MAX_OFFSET_MIN: i32 = 14 * 60;

impl TimeSetting {
    /// `utc`, `login`, `auto` or `±HH:MM` (at most 14:00).
    pub fn parse(s: &str) -> Result<TimeSetting, String> {
        match s {
            "utc" => return Ok(TimeSetting::Utc),
            "login" => return Ok(TimeSetting::Login),
            "auto" => return Ok(TimeSetting::Auto),
            _ => {}
        }
        let bad =
            || format!("`{s}` is not \"utc\", \"login\", \"auto\" or an offset like \"+05:30\"");
        let b = s.as_bytes();
        if b.len() != 6 || b[3] != b':' || !matches!(b[0], b'+' | b'-') {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Option<i32> {
            let part = s.get(r)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        let (Some(h), Some(m)) = (num(1..3), num(4..6)) else {
            return Err(bad());
        };
        let minutes = h * 60 + m;
        if m > 59 || minutes > MAX_OFFSET_MIN {
            return Err(format!(
                "`{s}` is beyond the largest time zone offset, 14:00"
            ));
        }
        Ok(TimeSetting::Offset(if b[0] == b'-' {
            -minutes
        } else {
            minutes
        }))
    }

    /// Minutes to take off the device's fields to get UTC, given the login's time-zone
    /// word and what the detector has concluded so far.
    pub fn offset_min(self, login_tz_min: Option<i16>, detected_min: Option<i32>) -> i32 {
        match self {
            TimeSetting::Utc => 0,
            TimeSetting::Login => login_tz_min.map_or(0, i32::from),
            TimeSetting::Offset(m) => m,
            TimeSetting::Auto => detected_min.unwrap_or(0),
        }
    }
}

const QUARTER_HOUR_MS: i64 = 15 * 60 * 1000;
/// How far a fix may sit from the quarter-hour grid and still count: transmission and
/// fix age are seconds, a device's buffer flush is minutes.
const TOLERANCE_MS: i64 = 2 * 60 * 1000;
/// Offsets below an hour are not reported: they are as likely a device that buffered.
const MIN_REPORTED_MIN: i32 = 60;
/// Consecutive live fixes that must agree before anything is concluded.
const AGREEING_FIXES: u32 = 3;

/// Watches live fixes of one device (fix time against receipt time) for a clock that is
/// a whole number of quarter-hours off. Pure; one per connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffsetDetector {
    /// Quarter-hours of the current run of agreeing fixes.
    candidate: Option<i64>,
    run: u32,
    /// The conclusion: minutes the fixes sit ahead of receipt (negative: behind).
    concluded: Option<i32>,
}

impl OffsetDetector {
    /// Starts from an earlier conclusion (e.g. the device's previous connection).
    pub fn with_conclusion(concluded: Option<i32>) -> OffsetDetector {
        OffsetDetector {
            concluded,
            ..OffsetDetector::default()
        }
    }

    /// Feeds one live fix (its time read with the offset in force, and when it arrived)
    /// and returns the conclusion so far: `Some(minutes)` when the last
    /// [`AGREEING_FIXES`] fixes all sat within ±2 min of the same multiple of 15 min, at
    /// least an hour away; `None` once that many agree on being in time again.
    pub fn observe(&mut self, fix_ms: i64, received_ms: i64) -> Option<i32> {
        let diff = fix_ms.saturating_sub(received_ms);
        let quarters = (diff + diff.signum() * QUARTER_HOUR_MS / 2) / QUARTER_HOUR_MS;
        let off_grid = (diff - quarters * QUARTER_HOUR_MS).abs();
        if off_grid > TOLERANCE_MS {
            // Neither in time nor on the grid: a late or buffered fix says nothing.
            self.candidate = None;
            self.run = 0;
            return self.concluded;
        }
        if self.candidate == Some(quarters) {
            self.run = self.run.saturating_add(1);
        } else {
            self.candidate = Some(quarters);
            self.run = 1;
        }
        if self.run >= AGREEING_FIXES {
            let minutes = i32::try_from(quarters * 15).unwrap_or(i32::MAX);
            if minutes.abs() >= MIN_REPORTED_MIN {
                self.concluded = Some(minutes);
            } else if quarters == 0 {
                self.concluded = None;
            }
        }
        self.concluded
    }

    pub fn concluded(&self) -> Option<i32> {
        self.concluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_735_787_045_000;
    const MIN: i64 = 60_000;

    fn feed(d: &mut OffsetDetector, offsets_ms: &[i64]) -> Vec<Option<i32>> {
        offsets_ms
            .iter()
            .enumerate()
            .map(|(i, off)| {
                let received = NOW + i as i64 * 10_000;
                d.observe(received + off, received)
            })
            .collect()
    }

    #[test]
    fn three_fixes_eight_hours_ahead_conclude_plus_480() {
        let mut d = OffsetDetector::default();
        let got = feed(
            &mut d,
            &[480 * MIN - 5_000, 480 * MIN - 9_000, 480 * MIN + 70_000],
        );
        assert_eq!(got, [None, None, Some(480)]);
    }

    #[test]
    fn west_offsets_and_half_hours_are_found() {
        let mut d = OffsetDetector::default();
        let got = feed(&mut d, &[-240 * MIN - 4_000; 3]);
        assert_eq!(got[2], Some(-240));
        let mut d = OffsetDetector::default();
        assert_eq!(feed(&mut d, &[330 * MIN - 3_000; 3])[2], Some(330));
    }

    #[test]
    fn disagreeing_or_off_grid_fixes_reset_the_run() {
        let mut d = OffsetDetector::default();
        // 8 h, 8 h, then a fix 7 minutes late (off the grid), then 8 h twice: no run of 3.
        let got = feed(
            &mut d,
            &[480 * MIN, 480 * MIN, -7 * MIN, 480 * MIN, 480 * MIN],
        );
        assert_eq!(got, [None; 5]);
        // Two at +8 h then one at +3 h: still nothing.
        let mut d = OffsetDetector::default();
        assert_eq!(feed(&mut d, &[480 * MIN, 480 * MIN, 180 * MIN]), [None; 3]);
    }

    #[test]
    fn offsets_under_an_hour_are_not_reported() {
        let mut d = OffsetDetector::default();
        assert_eq!(feed(&mut d, &[-30 * MIN; 4]), [None; 4]);
        assert_eq!(feed(&mut d, &[45 * MIN; 4]), [None; 4]);
    }

    #[test]
    fn fixes_in_time_again_clear_the_conclusion() {
        let mut d = OffsetDetector::with_conclusion(Some(480));
        assert_eq!(feed(&mut d, &[-4_000, -2_000]), [Some(480), Some(480)]);
        assert_eq!(d.observe(NOW - 3_000, NOW), None);
    }

    #[test]
    fn settings_parse_and_name_their_offset() {
        assert_eq!(TimeSetting::parse("utc"), Ok(TimeSetting::Utc));
        assert_eq!(TimeSetting::parse("login"), Ok(TimeSetting::Login));
        assert_eq!(TimeSetting::parse("auto"), Ok(TimeSetting::Auto));
        assert_eq!(TimeSetting::parse("+05:30"), Ok(TimeSetting::Offset(330)));
        assert_eq!(TimeSetting::parse("-04:00"), Ok(TimeSetting::Offset(-240)));
        assert_eq!(TimeSetting::parse("+14:00"), Ok(TimeSetting::Offset(840)));
        for bad in ["UTC", "+5:30", "+05:60", "+15:00", "05:30", "+05:3x", ""] {
            assert!(TimeSetting::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TimeSetting::Login.offset_min(Some(-240), None), -240);
        assert_eq!(TimeSetting::Login.offset_min(None, None), 0);
        assert_eq!(TimeSetting::Auto.offset_min(Some(480), Some(480)), 480);
        assert_eq!(TimeSetting::Utc.offset_min(Some(480), Some(480)), 0);
    }
}
