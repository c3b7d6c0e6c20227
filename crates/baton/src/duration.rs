//! Durations on the command line: `500ms`, `30s`, `5m`, `1h` (the API itself
//! speaks integer milliseconds). A bare number is refused, so `--wait 30`
//! cannot be misread as 30 ms or 30 s.

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
