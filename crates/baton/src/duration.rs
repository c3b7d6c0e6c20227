//! Durations on the command line: `500ms`, `30s`, `5m`, `1h` (the API itself
//! speaks integer milliseconds). A bare number is refused, so `--wait 30`
//! cannot be misread as 30 ms or 30 s.

/// A duration for people: the largest unit that divides it (`7d`, `90m`).
pub fn format_ms(ms: i64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses `--retention`: `off` (0) or a positive duration, in milliseconds.
pub fn parse_retention(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "off" {
        return Ok(0);
    }
    // Days too: retentions are long.
    let days = text.strip_suffix('d').filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let parsed = match days {
        Some(n) => n
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(86_400_000))
            .ok_or_else(|| format!("{text:?} is too long")),
        None => parse_ms(text),
    };
    match parsed {
        Ok(0) => {
            Err("a retention of 0 would archive tasks as they finish; write `off` or a duration like 7d"
                .into())
        }
        Ok(ms) => Ok(ms),
        Err(e) => Err(format!("{e} (or days: 7d), or `off`")),
    }
}

/// Parses a duration flag into milliseconds.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let hint = || format!("{text:?} is not a duration; write it like 500ms, 30s, 5m or 1h");
    let value: u64 = number.parse().map_err(|_| hint())?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(hint()),
    };
    value.checked_mul(factor).ok_or_else(|| format!("{text:?} is too long"))
}
