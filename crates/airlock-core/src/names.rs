//! Names of users, groups and actions: short, printable, and safe to embed in
//! Cedar entity ids, log lines and URLs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ParseError;

const MAX_NAME: usize = 128;

fn check_name(what: &'static str, s: &str) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::new(what, "must not be empty"));
    }
    if s.len() > MAX_NAME {
        return Err(ParseError::new(
            what,
            format!("longer than {MAX_NAME} bytes"),
        ));
    }
    // A small alphabet keeps names unambiguous everywhere they are shown or
    // embedded (Cedar ids, chat messages, URLs) without escaping rules.
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '+')))
    {
        return Err(ParseError::new(
            what,
            format!("{s:?} contains {c:?}; allowed are ASCII letters, digits and _ - . @ +"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Parses a name, refusing empty, over-long or oddly spelled ones.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                check_name($what, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                check_name($what, &s)?;
                Ok(Self(s))
            }
        }

        impl std::str::FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::schema::string(
                    concat!("A ", $what, ": ASCII letters, digits and `_ - . @ +`."),
                    Some(NAME_PATTERN),
                    1,
                    MAX_NAME,
                )
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

/// [`check_name`]'s alphabet and length, as the API document states it.
const NAME_PATTERN: &str = "^[A-Za-z0-9_.@+-]{1,128}$";

name_type!(
    /// A user (principal) name, such as `alice`.
    UserName,
    "user name"
);
name_type!(
    /// An approver or membership group, such as `security`.
    GroupName,
    "group name"
);
name_type!(
    /// An action verb, such as `export`.
    ActionName,
    "action name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert!(UserName::parse("alice").is_ok());
        assert!(GroupName::parse("data-owners").is_ok());
        assert!(UserName::parse("a.b+c@example.com").is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        assert!(UserName::parse("").is_err());
        assert!(GroupName::parse("sec urity").is_err());
        assert!(GroupName::parse("a\"b").is_err());
        assert!(ActionName::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn serde_refuses_bad_names() {
        assert!(serde_json::from_str::<GroupName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<GroupName>("\"no way\"").is_err());
    }
}
