//! Durations and byte sizes as admins write them in the config file: `"30s"`, `"10m"`, `"50M"`.
//!
//! Sizes use binary multiples (`k` = 1024), as Synapse's `max_upload_size` does, so `"50M"` here and
//! there mean the same number of bytes.

use std::fmt;
use std::time::Duration;

/// A byte count parsed from a string like `"50M"`, `"64k"`, `"1G"` or `"1048576"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(digits_end);
        if digits.is_empty() {
            return Err(format!(
                "`{text}` is not a size; write a number with an optional unit, e.g. \"50M\", \"64k\", \"1G\""
            ));
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" | "b" => 1,
            "k" | "K" | "KiB" | "kB" | "KB" => 1 << 10,
            "M" | "m" | "MiB" | "MB" => 1 << 20,
            "G" | "g" | "GiB" | "GB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; valid units are k, M, G (binary multiples)"
                ));
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("G", 30), ("M", 20), ("k", 10)] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// Parses `"30s"`, `"10m"`, `"1h 30m"`, `"250ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"10m\", \"600s\", \"250ms\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("50M"), Ok(ByteSize(50 * 1024 * 1024)));
        assert_eq!(ByteSize::parse("64k"), Ok(ByteSize(64 * 1024)));
        assert_eq!(ByteSize::parse("1G"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("123"), Ok(ByteSize(123)));
        assert!(ByteSize::parse("M").is_err());
        assert!(ByteSize::parse("5X").is_err());
        assert!(ByteSize::parse("99999999999999999999G").is_err());
        assert_eq!(ByteSize(50 << 20).to_string(), "50M");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
