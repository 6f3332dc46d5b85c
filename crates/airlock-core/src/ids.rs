//! Identifiers of requests and grants: UUIDv7 (time-ordered, unguessable
//! enough to be public) behind a type that only holds a well-formed one.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ParseError;

macro_rules! id_type {
    ($(#[$doc:meta])* $ty:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(Uuid);

        impl $ty {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses `prefix_<uuid>`.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                let rest = s
                    .strip_prefix($prefix)
                    .ok_or_else(|| ParseError::new($what, format!("must start with {:?}", $prefix)))?;
                let uuid = Uuid::try_parse(rest)
                    .map_err(|e| ParseError::new($what, e.to_string()))?;
                Ok(Self(uuid))
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                Self::parse(&s)
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
                v.to_string()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.as_hyphenated())
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::schema::string(
                    concat!("A ", $what, ": `", $prefix, "` and a UUID."),
                    Some(concat!(
                        "^", $prefix,
                        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
                    )),
                    40,
                    40,
                )
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

/// How every request id starts.
pub const REQUEST_PREFIX: &str = "req_";

id_type!(
    /// The id of an approval request.
    RequestId,
    "req_",
    "request id"
);
id_type!(
    /// The id of a grant.
    GrantId,
    "grt_",
    "grant id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = RequestId::new();
        assert_eq!(RequestId::parse(&id.to_string()).unwrap(), id);
        let g = GrantId::new();
        assert_eq!(g.to_string().parse::<GrantId>().unwrap(), g);
    }

    #[test]
    fn refuses_wrong_prefix_and_garbage() {
        let id = RequestId::new().to_string();
        assert!(GrantId::parse(&id).is_err());
        assert!(RequestId::parse("req_nope").is_err());
        assert!(RequestId::parse("").is_err());
    }
}
