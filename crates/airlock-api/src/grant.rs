//! Spending a grant (`POST /v1/grants/consume`) and reporting what the
//! action did (`POST /v1/grants/{id}/complete`).

use airlock_core::{Action, GrantId};
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
