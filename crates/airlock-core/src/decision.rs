//! What policy answers for an action: allow, deny, or approval required with
//! the thresholds that must all be met.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::{GroupName, Ttl};

/// Default time a pending request waits for its approvals.
pub const DEFAULT_REQUEST_TTL: Ttl = Ttl::minutes(60);
/// Default lifetime of a grant once issued.
pub const DEFAULT_GRANT_TTL: Ttl = Ttl::minutes(10);

/// One group of approvers and how many of them must approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    /// The policy whose `@approvers` produced this threshold.
    pub policy_id: String,
    /// Members of any of these groups are eligible.
    pub groups: Vec<GroupName>,
    /// Distinct eligible approvals needed.
    pub quorum: NonZeroU32,
}

/// Every threshold must be met; the rest shapes the request and its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// All must be met.
    pub thresholds: Vec<Threshold>,
    /// How long the request may stay pending.
    pub request_ttl: Ttl,
    /// How long the grant lives once issued.
    pub grant_ttl: Ttl,
    /// How many times the grant may be consumed.
    pub max_uses: NonZeroU32,
    /// Whether the requester must give a reason.
    pub reason_required: bool,
    /// Extra authentication the approvers must pass, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<String>,
}

/// The answer for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A satisfied plain `permit` and nothing stronger.
    Allow {
        /// Policies that determined the answer.
        policies: Vec<String>,
    },
    /// A satisfied `forbid`, nothing satisfied, or an evaluation error.
    Deny {
        /// Policies that determined the answer (empty for default deny).
        policies: Vec<String>,
        /// Why, for the caller.
        message: String,
    },
    /// At least one satisfied `permit` carried `@approvers`.
    ApprovalRequired {
        /// Policies that determined the answer.
        policies: Vec<String>,
        /// What must happen before a grant is issued.
        requirement: Requirement,
    },
}

impl Decision {
    /// `allow`, `deny` or `approval_required`, as in the API.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::ApprovalRequired { .. } => "approval_required",
        }
    }

    /// The policies that determined the answer.
    pub fn policies(&self) -> &[String] {
        match self {
            Decision::Allow { policies }
            | Decision::Deny { policies, .. }
            | Decision::ApprovalRequired { policies, .. } => policies,
        }
    }
}
