//! Go duration strings (`time.ParseDuration` form: "2160h", "90s", "1h30m", "500ms", "1.5h"), the form Kubernetes
//! users already write in cert-manager and Flux specs.
//!
//! Only non-negative durations are accepted: every duration in this API is a length of time.

use std::time::Duration;

/// The regular expression the CRD schemas use for duration fields (RE2 syntax, same set [`parse`] accepts).
pub const GO_DURATION_PATTERN: &str = "^(0|([0-9]+([.][0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$";

const NANOS_PER_UNIT: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parse a Go duration string into a [`Duration`].
///
/// The error is a sentence meant for a condition message, e.g. `invalid duration "2d": unknown unit "d" (use
/// h, m, s, ms, us or ns, e.g. "2160h")`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration {input:?}: {why} (Go duration form, e.g. \"2160h\", \"1h30m\", \"90s\")"
        )
    };
    if input.is_empty() {
        return Err(bad("empty"));
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    // No sign: Go accepts "+1h", the CRD pattern does not, and this parser agrees with the pattern.
    let mut rest = input;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(bad("missing unit"));
        }
        let Some(&(_, per_unit)) = NANOS_PER_UNIT.iter().find(|(name, _)| *name == unit) else {
            return Err(bad(&format!("unknown unit {unit:?}")));
        };
        let too_big = || bad("too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_big())?
        };
        let mut nanos = int.checked_mul(per_unit).ok_or_else(too_big)?;
        if !frac_part.is_empty() {
            // Keep at most 18 fractional digits: finer than a nanosecond for every unit, and no overflow.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| too_big())?;
            nanos += frac * per_unit / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(nanos).ok_or_else(too_big)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Format a [`Duration`] as a Go duration string that [`parse`] (and Go) read back to the same value.
///
/// Compact rather than Go's `String()`: zero components are left out ("2160h", "1h30m", "500ms", "0s").
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    if nanos > 0 {
        let (ms, us, ns) = (nanos / 1_000_000, (nanos / 1_000) % 1_000, nanos % 1_000);
        if ms > 0 {
            out.push_str(&format!("{ms}ms"));
        }
        if us > 0 {
            out.push_str(&format!("{us}us"));
        }
        if ns > 0 {
            out.push_str(&format!("{ns}ns"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_the_forms_users_write() {
        let cases = [
            ("2160h", secs(2160 * 3600)),
            ("90s", secs(90)),
            ("1h30m", secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", secs(5400)),
            ("0.5s", Duration::from_millis(500)),
            ("1h0m0s", secs(3600)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("8760h", secs(8760 * 3600)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            (
                "2h45m30.5s",
                Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_durations_with_a_clear_message() {
        for input in [
            "",
            "2d",
            "h",
            "10",
            "-1h",
            "1h-",
            "1.h5",
            "abc",
            "1 h",
            "1H",
            ".",
            "99999999999999999999999999999h",
        ] {
            let err = parse(input).expect_err(input);
            assert!(err.contains("invalid duration"), "{input}: {err}");
            assert!(err.contains("2160h"), "the message shows an example: {err}");
        }
        assert!(parse("2d").unwrap_err().contains("unknown unit \"d\""));
        assert!(parse("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn formats_compactly_and_round_trips() {
        let cases = [
            (secs(2160 * 3600), "2160h"),
            (secs(90), "1m30s"),
            (secs(5400), "1h30m"),
            (Duration::from_millis(500), "500ms"),
            (Duration::ZERO, "0s"),
            (secs(3601), "1h1s"),
            (Duration::from_nanos(1_500), "1us500ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want);
            assert_eq!(parse(want), Ok(d), "round trip {want}");
        }
    }

    #[test]
    fn the_schema_pattern_accepts_what_parse_accepts() {
        // Spot-check the pattern's shape without a regex engine: the same strings parse, and the units listed in
        // the pattern are exactly the units parse knows.
        for (unit, _) in NANOS_PER_UNIT {
            assert!(GO_DURATION_PATTERN.contains(unit), "{unit}");
            assert!(parse(&format!("3{unit}")).is_ok());
        }
    }
}
