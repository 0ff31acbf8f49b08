//! Durations, sizes and rates as operators write them in config files.

use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"10m"`, `"2h"`, `"14d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("\"{s}\" is not a duration; write e.g. \"250ms\", \"5s\", \"10m\", \"14d\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return Err(err()),
    };
    Ok(d)
}

/// Parses `"64KiB"`, `"1MiB"`, `"1GiB"` or a plain byte count `"1024"` / `"1024B"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || format!("\"{s}\" is not a size; write e.g. \"64KiB\", \"1MiB\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// A rate such as `"50/s"`, `"600/m"`, `"3600/h"`, as tokens per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let err = || format!("\"{s}\" is not a rate; write e.g. \"50/s\", \"600/m\"");
    let (n, per) = s.split_once('/').ok_or_else(err)?;
    let n: u32 = n.parse().map_err(|_| err())?;
    let secs = match per {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    if n == 0 {
        return Err(format!("\"{s}\": a rate must be above zero"));
    }
    Ok(f64::from(n) / secs)
}
