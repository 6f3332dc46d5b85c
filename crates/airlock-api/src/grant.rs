//! Spending a grant (`POST /v1/grants/consume`) and reporting what the
//! action did (`POST /v1/grants/{id}/complete`, and for actions no grant
//! covers, what DLP found in their answers: `POST /v1/audit/findings`).

use std::collections::BTreeMap;

use airlock_core::action::Resource;
use airlock_core::{Action, ActionName, GrantId, UserName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `POST /v1/grants/consume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    /// The grant token.
    pub token: String,
    /// The action about to be performed, as in check, with its principal.
    pub action: Action,
}

/// What consuming answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsumeResponse {
    /// The grant one use of which was spent.
    pub grant_id: GrantId,
    /// Uses left after this one.
    pub uses_left: u32,
}

/// How a consumed use of a grant went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action succeeded.
    Success,
    /// The action failed.
    Failure,
}

impl Outcome {
    /// The name recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The body of `POST /v1/grants/{id}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// `success` or `failure`.
    pub outcome: Outcome,
    /// Anything the enforcement point wants on record (exit code, rows).
    #[serde(default, deserialize_with = "airlock_core::action::exact::map")]
    pub detail: Map<String, Value>,
}

/// What completing answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompleteResponse {
    /// The grant.
    pub grant_id: GrantId,
    /// Always `true`: a refusal is an error.
    pub completed: bool,
}

/// What became of a response or result in which DLP found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// It left as it was (`response_dlp = "report"`).
    Passed,
    /// It left with every finding replaced (`mask`).
    Masked,
    /// It did not leave (`block`).
    Withheld,
    /// It left without being scanned: DLP cannot read it (a charset other
    /// than UTF-8 and its kin, UTF-16, binary), and `report` lets such an
    /// answer through; `counts` may then be empty.
    Unscanned,
}

impl Disposition {
    /// The name recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Masked => "masked",
            Self::Withheld => "withheld",
            Self::Unscanned => "unscanned",
        }
    }
}

/// One action whose answer was scanned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingsTarget {
    /// The action, as checked.
    pub action: ActionName,
    /// Its resource, as checked (attributes are not recorded).
    pub resource: Resource,
}

/// The body of `POST /v1/audit/findings` (enforcer keys): what DLP found
/// in an answer that no grant covers (an allowed request, an allowed
/// statement), so the finding counts reach the audit log. Counts by type,
/// never values. Findings in the answer to a granted use are reported
/// with its completion instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingsBody {
    /// Whose request it answered.
    pub principal: UserName,
    /// The proxy that scanned it.
    pub proxy: String,
    /// The actions it answered (one per table for a SQL statement).
    pub targets: Vec<FindingsTarget>,
    /// The audit records of the decisions that let them through, where
    /// known.
    #[serde(default)]
    pub decisions: Vec<i64>,
    /// What became of it.
    pub disposition: Disposition,
    /// Findings by type.
    pub counts: BTreeMap<String, u64>,
}

/// What reporting findings answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FindingsResponse {
    /// The audit record written.
    pub audit_seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_body_reads_outcomes_and_refuses_others() {
        let b: CompleteBody = serde_json::from_str(r#"{"outcome":"failure"}"#).unwrap();
        assert_eq!(b.outcome, Outcome::Failure);
        assert!(b.detail.is_empty());
        assert!(serde_json::from_str::<CompleteBody>(r#"{"outcome":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<CompleteBody>(
            r#"{"outcome":"success","detail":{"x":0.5}}"#
        )
        .is_err());
    }
}
