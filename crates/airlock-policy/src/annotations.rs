//! Airlock's policy annotations (`@approvers`, `@quorum`, `@request_ttl`,
//! `@grant_ttl`, `@max_uses`, `@reason`, `@step_up`), parsed strictly: a
//! malformed or misspelt annotation is a load error, never a silent default,
//! because a typo on a `permit` would otherwise turn "needs approval" into
//! "allowed".

use std::num::NonZeroU32;

use airlock_core::{GroupName, Ttl};

/// Annotations that carry Airlock meaning.
const AIRLOCK: [&str; 7] = [
    "approvers",
    "quorum",
    "request_ttl",
    "grant_ttl",
    "max_uses",
    "reason",
    "step_up",
];

/// Descriptive annotations Airlock accepts and ignores.
const DESCRIPTIVE: [&str; 7] = [
    "id",
    "description",
    "doc",
    "name",
    "title",
    "owner",
    "advice",
];

/// What a `permit` with `@approvers` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Eligible approver groups.
    pub groups: Vec<GroupName>,
    /// Distinct approvals needed (default 1).
    pub quorum: NonZeroU32,
    /// Overrides the default request TTL.
    pub request_ttl: Option<Ttl>,
    /// Overrides the default grant TTL.
    pub grant_ttl: Option<Ttl>,
    /// Overrides the default of one use.
    pub max_uses: Option<NonZeroU32>,
    /// `@reason("required")`.
    pub reason_required: bool,
    /// `@step_up("totp" | "webauthn")`.
    pub step_up: Option<String>,
}

fn positive(key: &str, v: &str) -> Result<NonZeroU32, String> {
    // Digits only: `parse` alone takes `+2`, and a trim took ` 2`.
    Some(v)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<NonZeroU32>().ok())
        .ok_or_else(|| format!("@{key}({v:?}) must be a whole number of at least 1"))
}

/// Reads one policy's annotations. `is_permit` is false for `forbid`.
pub(crate) fn parse<'a>(
    is_permit: bool,
    annotations: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<Approval>, String> {
    let mut groups = None;
    let mut step_up: Option<String> = None;
    let mut quorum = None;
    let mut request_ttl = None;
    let mut grant_ttl = None;
    let mut max_uses = None;
    let mut reason_required = false;
    let mut seen_airlock = Vec::new();

    for (key, value) in annotations {
        if DESCRIPTIVE.contains(&key) || key.starts_with("x_") {
            continue;
        }
        if !AIRLOCK.contains(&key) {
            let hint = AIRLOCK
                .iter()
                .find(|k| close(k, key))
                .map(|k| format!(" (did you mean @{k}?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown annotation @{key}{hint}; Airlock reads {}; descriptive ones are {} or start with x_",
                AIRLOCK.map(|k| format!("@{k}")).join(", "),
                DESCRIPTIVE.map(|k| format!("@{k}")).join(", "),
            ));
        }
        seen_airlock.push(key);
        match key {
            "approvers" => {
                let parsed: Result<Vec<GroupName>, String> = value
                    .split(',')
                    .map(|g| {
                        GroupName::parse(g.trim())
                            .map_err(|e| format!("@approvers({value:?}): {e}"))
                    })
                    .collect();
                let parsed = parsed?;
                groups = Some(parsed);
            }
            "quorum" => quorum = Some(positive(key, value)?),
            "max_uses" => max_uses = Some(positive(key, value)?),
            "request_ttl" => {
                request_ttl = Some(Ttl::parse(value).map_err(|e| format!("@request_ttl: {e}"))?)
            }
            "grant_ttl" => {
                grant_ttl = Some(Ttl::parse(value).map_err(|e| format!("@grant_ttl: {e}"))?)
            }
            "reason" => match value {
                "required" => reason_required = true,
                "optional" => {}
                _ => {
                    return Err(format!(
                        "@reason({value:?}) must be \"required\" or \"optional\""
                    ))
                }
            },
            "step_up" => match value {
                "totp" | "webauthn" => step_up = Some(value.to_owned()),
                _ => {
                    return Err(format!(
                        "@step_up({value:?}) must be \"totp\" or \"webauthn\""
                    ))
                }
            },
            _ => {}
        }
    }

    if !is_permit {
        if let Some(k) = seen_airlock.first() {
            return Err(format!("@{k} has no meaning on a forbid policy"));
        }
        return Ok(None);
    }
    match groups {
        Some(groups) => Ok(Some(Approval {
            groups,
            quorum: quorum.unwrap_or(NonZeroU32::MIN),
            request_ttl,
            grant_ttl,
            max_uses,
            reason_required,
            step_up,
        })),
        None => match seen_airlock.first() {
            // Without @approvers this permit allows outright; an approval
            // setting on it is a mistake the author must hear about.
            Some(k) => Err(format!("@{k} needs @approvers on the same policy")),
            None => Ok(None),
        },
    }
}

/// One edit apart (a typo), for the "did you mean" hint.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        if a.len() > b.len() {
            i += 1;
        } else if b.len() > a.len() {
            j += 1;
        } else {
            i += 1;
            j += 1;
        }
    }
    edits + (a.len() - i) + (b.len() - j) <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Result<Option<Approval>, String> {
        parse(true, kv.iter().copied())
    }

    #[test]
    fn full_set() {
        let a = p(&[
            ("id", "x"),
            ("approvers", "security, data-owners"),
            ("quorum", "2"),
            ("grant_ttl", "10m"),
            ("request_ttl", "2h"),
            ("max_uses", "3"),
            ("reason", "required"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.groups.len(), 2);
        assert_eq!(a.quorum.get(), 2);
        assert_eq!(a.grant_ttl.unwrap().seconds(), 600);
        assert_eq!(a.max_uses.unwrap().get(), 3);
        assert!(a.reason_required);
    }

    #[test]
    fn plain_permit_has_none() {
        assert_eq!(p(&[("id", "x"), ("description", "y")]).unwrap(), None);
    }

    #[test]
    fn malformed_are_errors() {
        for bad in [
            vec![("approvers", "security"), ("quorum", "0")],
            vec![("approvers", "security"), ("quorum", "two")],
            vec![("approvers", "security"), ("quorum", " 2")],
            vec![("approvers", "security"), ("quorum", "+2")],
            vec![("approvers", "security"), ("max_uses", "3 ")],
            vec![("approvers", "sec urity")],
            vec![("approvers", "")],
            vec![("approvers", "security"), ("grant_ttl", "soon")],
            vec![("approvers", "security"), ("reason", "maybe")],
            vec![("quorum", "2")],
            vec![("aprovers", "security")],
        ] {
            assert!(p(&bad).is_err(), "{bad:?} should fail");
        }
        assert!(p(&[("aprovers", "security")])
            .unwrap_err()
            .contains("did you mean @approvers"));
    }

    #[test]
    fn forbid_with_approvers_is_error() {
        assert!(parse(false, [("approvers", "security")].into_iter()).is_err());
        assert_eq!(parse(false, [("id", "f")].into_iter()).unwrap(), None);
    }
}
