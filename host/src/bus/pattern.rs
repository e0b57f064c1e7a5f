//! Subscription patterns: an exact type, a `Prefix*`, or `*`.

use std::fmt;

use super::BusError;

/// Which event types a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Every event.
    All,
    /// Types starting with the prefix (`User*` matches `UserCreated`).
    Prefix(String),
    /// Exactly this type.
    Exact(String),
}

impl Pattern {
    /// Parses `*`, `Prefix*` or an exact type. A `*` anywhere but at the end, whitespace
    /// or an empty pattern is an error.
    pub fn parse(pattern: &str) -> Result<Self, BusError> {
        let invalid = |reason| BusError::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("it is empty"));
        }
        if pattern.chars().any(char::is_whitespace) {
            return Err(invalid("it contains whitespace"));
        }
        match pattern.find('*') {
            None => Ok(Self::Exact(pattern.to_owned())),
            Some(at) if at + 1 == pattern.len() => match &pattern[..at] {
                "" => Ok(Self::All),
                prefix => Ok(Self::Prefix(prefix.to_owned())),
            },
            Some(_) => Err(invalid("`*` may only appear at the end")),
        }
    }

    /// Parses several patterns; at least one is required.
    pub fn parse_all(patterns: &[impl AsRef<str>]) -> Result<Vec<Self>, BusError> {
        if patterns.is_empty() {
            return Err(BusError::InvalidPattern {
                pattern: String::new(),
                reason: "a subscription needs at least one pattern",
            });
        }
        patterns.iter().map(|p| Self::parse(p.as_ref())).collect()
    }

    /// Whether an event of type `ty` matches.
    pub fn matches(&self, ty: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => ty.starts_with(prefix.as_str()),
            Self::Exact(exact) => ty == exact,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_prefix_and_all() {
        let exact = Pattern::parse("UserCreated").unwrap();
        assert!(exact.matches("UserCreated"));
        assert!(!exact.matches("UserCreatedV2"));
        assert!(!exact.matches("User"));

        let prefix = Pattern::parse("User*").unwrap();
        assert!(prefix.matches("UserCreated"));
        assert!(prefix.matches("User"));
        assert!(!prefix.matches("PaymentCreated"));

        let all = Pattern::parse("*").unwrap();
        assert!(all.matches("Anything"));
        assert_eq!(all.to_string(), "*");
        assert_eq!(prefix.to_string(), "User*");
    }

    #[test]
    fn malformed_patterns_are_rejected_with_a_reason() {
        for (pattern, reason) in [
            ("", "it is empty"),
            ("User *", "it contains whitespace"),
            ("*Created", "`*` may only appear at the end"),
            ("U*r*", "`*` may only appear at the end"),
        ] {
            let err = Pattern::parse(pattern).unwrap_err();
            assert!(err.to_string().contains(reason), "{pattern}: {err}");
        }
    }
}
