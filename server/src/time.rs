//! Time as the server shows it: milliseconds since the Unix epoch in storage, RFC 3339 in the
//! API.

/// Formats ms since the Unix epoch as RFC 3339 with milliseconds, clamped to the years
/// 1970..=9999 (times can come from agents: formatting must never fail).
pub fn rfc3339_ms(ms: i64) -> String {
    const LAST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = u64::try_from(ms).unwrap_or(0).min(LAST_MS);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn times_from_agents_format_without_panicking_whatever_their_value() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
