//! Approval requests, their reviews, and the state machine they move through.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Action, Fingerprint, GrantId, GroupName, ParseError, RequestId, Requirement, UserName,
};

/// Where a request stands. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for reviews.
    Pending,
    /// Every threshold met; a grant was issued.
    Approved,
    /// An eligible reviewer denied it.
    Denied,
    /// Nobody decided in time, or the grant expired unused.
    Expired,
    /// The requester withdrew it.
    Cancelled,
    /// Every use of the grant was consumed.
    Consumed,
    /// The enforcement point reported the outcome of the last use.
    Completed,
    /// An approver or admin killed the grant.
    Revoked,
}

impl RequestStatus {
    /// All states, for metrics and listings.
    pub const ALL: [RequestStatus; 8] = [
        Self::Pending,
        Self::Approved,
        Self::Denied,
        Self::Expired,
        Self::Cancelled,
        Self::Consumed,
        Self::Completed,
        Self::Revoked,
    ];

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Consumed => "consumed",
            Self::Completed => "completed",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError::new("request status", format!("unknown status {s:?}")))
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Denied | Self::Expired | Self::Cancelled | Self::Completed | Self::Revoked
        )
    }

    /// The one place that says which transitions exist.
    pub fn can_become(self, next: RequestStatus) -> bool {
        use RequestStatus::*;
        matches!(
            (self, next),
            (Pending, Approved | Denied | Expired | Cancelled)
                | (Approved, Consumed | Completed | Revoked | Expired)
                | (Consumed, Completed | Revoked)
        )
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reviewer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Counts toward every threshold the reviewer is eligible for.
    Approve,
    /// Ends the request as denied.
    Deny,
}

impl Verdict {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    /// Parses a verdict name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "approve" => Ok(Self::Approve),
            "deny" => Ok(Self::Deny),
            _ => Err(ParseError::new(
                "verdict",
                format!("{s:?} is not approve or deny"),
            )),
        }
    }
}

/// One reviewer's verdict on one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Who reviewed.
    pub reviewer: UserName,
    /// What they said.
    pub verdict: Verdict,
    /// Why, if they said.
    pub reason: Option<String>,
    /// Where they said it: `api`, `cli`, `web`, `slack`, …
    pub channel: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The step-up the reviewer passed with it (`totp`, `webauthn`), if
    /// any: an approval counts toward a requirement with `@step_up` only
    /// if it passed one at least as strong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<String>,
}

impl Review {
    /// Whether this review passed the step-up `required` asks for: any
    /// passes none; a security key passes a TOTP requirement too; an
    /// unknown requirement is passed by nothing.
    pub fn passed(&self, required: Option<&str>) -> bool {
        crate::decision::step_up_passes(self.step_up.as_deref(), required)
    }
}

/// The grant issued for an approved request, as the store keeps it. The token
/// itself is never stored: it is minted from these fields when shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The grant's id.
    pub grant_id: GrantId,
    /// When it stops being usable.
    pub expires_at: DateTime<Utc>,
    /// How many uses it had.
    pub max_uses: u32,
    /// How many were consumed.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Outcome reported by `complete`, if any.
    pub outcome: Option<String>,
}

/// An approval request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request's id.
    pub id: RequestId,
    /// Where it stands.
    pub status: RequestStatus,
    /// The action it asks for.
    pub action: Action,
    /// The action's fingerprint.
    pub fingerprint: Fingerprint,
    /// What must happen before a grant is issued.
    pub requirement: Requirement,
    /// The policies that asked for approval.
    pub policies: Vec<String>,
    /// The requester's reason.
    pub reason: Option<String>,
    /// Reviews so far, oldest first.
    pub reviews: Vec<Review>,
    /// When it was asked.
    pub created_at: DateTime<Utc>,
    /// When it stops waiting.
    pub expires_at: DateTime<Utc>,
    /// The grant, once approved.
    pub grant: Option<GrantRecord>,
}

impl Request {
    /// Distinct approvals that count for each threshold, given who is in
    /// which group *now* (membership is looked up at every evaluation, so a
    /// reviewer removed from a group stops counting).
    pub fn approvals(&self, is_member: impl Fn(&UserName, &GroupName) -> bool) -> Vec<u32> {
        self.approvals_for(&self.requirement, is_member)
    }

    /// Distinct approvals of this request's reviews that count for each of
    /// `needs`' thresholds (the request's own requirement, or what policy
    /// asks for now): from a member of one of its groups, with the step-up
    /// it asks for passed.
    pub fn approvals_for(
        &self,
        needs: &crate::Requirement,
        is_member: impl Fn(&UserName, &GroupName) -> bool,
    ) -> Vec<u32> {
        let step_up = needs.step_up.as_deref();
        needs
            .thresholds
            .iter()
            .map(|t| {
                let mut counted: Vec<&UserName> = Vec::new();
                for r in &self.reviews {
                    if r.verdict == Verdict::Approve
                        && r.reviewer != self.action.principal
                        && r.passed(step_up)
                        && !counted.contains(&&r.reviewer)
                        && t.groups.iter().any(|g| is_member(&r.reviewer, g))
                    {
                        counted.push(&r.reviewer);
                    }
                }
                // At most the number of reviews, which is small.
                u32::try_from(counted.len()).unwrap_or(u32::MAX)
            })
            .collect()
    }

    /// Whether every threshold is met under the given membership.
    pub fn thresholds_met(&self, is_member: impl Fn(&UserName, &GroupName) -> bool) -> bool {
        self.meets(&self.requirement, is_member)
    }

    /// Whether this request's approvals meet every threshold of `needs`,
    /// with its step-up: at consumption, what policy asks for the action
    /// as it is described then, so a grant approved under a laxer
    /// requirement (fewer approvers, no step-up) cannot carry a riskier
    /// action; and a pending request whose requirement was raised to a
    /// step-up counts only approvals that passed it.
    pub fn meets(
        &self,
        needs: &crate::Requirement,
        is_member: impl Fn(&UserName, &GroupName) -> bool,
    ) -> bool {
        self.approvals_for(needs, is_member)
            .iter()
            .zip(&needs.thresholds)
            .all(|(n, t)| *n >= t.quorum.get())
    }

    /// `user`'s review, if it stands: an approval that no longer counts
    /// (the request was raised to a step-up it did not pass) does not, and
    /// may be given again with the step-up. After-the-fact reviews of
    /// break-glass ask for none, so they always stand.
    pub fn standing_review(&self, user: &UserName) -> Option<&Review> {
        self.reviews.iter().find(|r| {
            r.reviewer == *user
                && (self.requirement.breakglass
                    || r.verdict != Verdict::Approve
                    || r.passed(self.requirement.step_up.as_deref()))
        })
    }

    /// Whether `user` may review this request under the given membership.
    pub fn eligible_reviewer(
        &self,
        user: &UserName,
        is_member: impl Fn(&UserName, &GroupName) -> bool,
    ) -> bool {
        *user != self.action.principal
            && self
                .requirement
                .thresholds
                .iter()
                .any(|t| t.groups.iter().any(|g| is_member(user, g)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final() {
        for from in RequestStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RequestStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn pending_paths() {
        use RequestStatus::*;
        assert!(Pending.can_become(Approved));
        assert!(Pending.can_become(Cancelled));
        assert!(!Pending.can_become(Consumed));
        assert!(!Pending.can_become(Revoked));
        assert!(Approved.can_become(Revoked));
        assert!(!Approved.can_become(Cancelled));
        assert!(!Approved.can_become(Denied));
    }

    /// An approval raised past by a step-up it did not pass does not stand
    /// (its reviewer is asked again); a deny, a passing approval and any
    /// after-the-fact review of break-glass do.
    #[test]
    fn an_approval_without_the_asked_step_up_does_not_stand() {
        let action: Action = serde_json::from_value(serde_json::json!({
            "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "t"}
        }))
        .unwrap();
        let review = |who: &str, verdict, step_up: Option<&str>| Review {
            reviewer: UserName::parse(who).unwrap(),
            verdict,
            reason: None,
            channel: "api".into(),
            at: Utc::now(),
            step_up: step_up.map(str::to_owned),
        };
        let mut req = Request {
            id: RequestId::new(),
            status: RequestStatus::Pending,
            fingerprint: action.fingerprint(),
            action,
            requirement: crate::Requirement {
                thresholds: Vec::new(),
                request_ttl: crate::decision::DEFAULT_REQUEST_TTL,
                grant_ttl: crate::decision::DEFAULT_GRANT_TTL,
                max_uses: std::num::NonZeroU32::MIN,
                reason_required: false,
                step_up: Some("webauthn".into()),
                breakglass: false,
            },
            policies: Vec::new(),
            reason: None,
            reviews: vec![
                review("bob", Verdict::Approve, Some("totp")),
                review("carol", Verdict::Approve, Some("webauthn")),
                review("dave", Verdict::Deny, None),
            ],
            created_at: Utc::now(),
            expires_at: Utc::now(),
            grant: None,
        };
        let stands = |req: &Request, who: &str| {
            req.standing_review(&UserName::parse(who).unwrap())
                .is_some()
        };
        assert!(!stands(&req, "bob"), "a code where a key is asked");
        assert!(stands(&req, "carol") && stands(&req, "dave"));
        assert!(!stands(&req, "erin"), "never reviewed");
        req.requirement.breakglass = true;
        assert!(stands(&req, "bob"), "after the fact, no step-up is asked");
    }

    #[test]
    fn status_names_round_trip() {
        for s in RequestStatus::ALL {
            assert_eq!(RequestStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(RequestStatus::parse("weird").is_err());
    }
}
