//! Time zones of people: IANA names (`America/Mexico_City`), as a person's
//! record names them, so that an email can say when the code expires in the
//! recipient's own time.
//!
//! `well_formed` is the shape both sides accept; the extension also asks
//! PostgreSQL's time zone database whether the zone exists, and the
//! dispatcher its own (jiff's), falling back to the agent's zone.

/// The longest name passed along (the longest IANA name is 32 characters).
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` looks like an IANA time zone name: ASCII letters, digits,
/// `_`, `+`, `-` in `/`-separated parts, starting with a letter; no `.`, so
/// never a path outside a time zone database.
pub fn well_formed(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_iana_names_only() {
        for good in [
            "America/Mexico_City",
            "UTC",
            "Etc/GMT+6",
            "America/Argentina/Buenos_Aires",
        ] {
            assert!(well_formed(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../../etc/passwd",
            "America//Mexico",
            "America/Mexico City",
            "+03",
            "América/México",
            "a\nb",
            &"A".repeat(65),
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }
}
