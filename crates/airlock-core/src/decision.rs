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
    /// Granted at once by break-glass, to be reviewed after the fact: its
    /// grant stands without approvals (policy must still allow it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breakglass: bool,
}

impl Requirement {
    /// Whether meeting `self` also meets `other`: every threshold of
    /// `other` is matched by one of `self` over the same groups with at
    /// least its quorum, and the grant is no looser. Two thresholds over
    /// the same groups are met by the same approvals, so matching by groups
    /// (not by policy) is exact.
    pub fn covers(&self, other: &Requirement) -> bool {
        other.thresholds.iter().all(|o| {
            self.thresholds
                .iter()
                .any(|t| same_groups(&t.groups, &o.groups) && t.quorum >= o.quorum)
        }) && self.grant_ttl <= other.grant_ttl
            && self.max_uses <= other.max_uses
            && (self.reason_required || !other.reason_required)
            && step_up_passes(self.step_up.as_deref(), other.step_up.as_deref())
    }

    /// The strictest of both: every threshold of each (over the same
    /// groups, the larger quorum), the shorter grant, the fewer uses. The
    /// request TTL stays `self`'s: a pending request's deadline never moves.
    pub fn raised(&self, other: &Requirement) -> Requirement {
        let mut out = self.clone();
        for o in &other.thresholds {
            match out
                .thresholds
                .iter_mut()
                .find(|t| same_groups(&t.groups, &o.groups))
            {
                Some(t) => t.quorum = t.quorum.max(o.quorum),
                None => out.thresholds.push(o.clone()),
            }
        }
        out.grant_ttl = out.grant_ttl.min(other.grant_ttl);
        out.max_uses = out.max_uses.min(other.max_uses);
        out.reason_required |= other.reason_required;
        out.step_up = stronger_step_up(out.step_up.take(), &other.step_up);
        out
    }
}

/// Whether passing the step-up `have` also passes `need`: anything passes
/// none; a security key passes a TOTP requirement too; a requirement this
/// release does not know is passed by nothing (it fails closed).
pub fn step_up_passes(have: Option<&str>, need: Option<&str>) -> bool {
    match need {
        None => true,
        Some("totp") => matches!(have, Some("totp" | "webauthn")),
        Some("webauthn") => have == Some("webauthn"),
        Some(_) => false,
    }
}

/// The stricter of two step-ups: `mine` unless passing it would not pass
/// `other`. Where two policies (or a raised request) ask for different
/// ones, a security key wins over a TOTP code whatever their order.
pub fn stronger_step_up(mine: Option<String>, other: &Option<String>) -> Option<String> {
    // One this release does not know wins in either order: nothing passes
    // it, so it fails closed.
    let known = |s: &Option<String>| matches!(s.as_deref(), None | Some("totp" | "webauthn"));
    if !known(&mine) {
        return mine;
    }
    if !known(other) || !step_up_passes(mine.as_deref(), other.as_deref()) {
        return other.clone();
    }
    mine
}

fn same_groups(a: &[GroupName], b: &[GroupName]) -> bool {
    a.iter().all(|g| b.contains(g)) && b.iter().all(|g| a.contains(g))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(thresholds: &[(&str, u32)]) -> Requirement {
        Requirement {
            thresholds: thresholds
                .iter()
                .map(|(g, q)| Threshold {
                    policy_id: format!("p-{g}"),
                    groups: vec![GroupName::parse(g).unwrap()],
                    quorum: NonZeroU32::new(*q).unwrap(),
                })
                .collect(),
            request_ttl: DEFAULT_REQUEST_TTL,
            grant_ttl: DEFAULT_GRANT_TTL,
            max_uses: NonZeroU32::MIN,
            reason_required: false,
            step_up: None,
            breakglass: false,
        }
    }

    #[test]
    fn a_laxer_requirement_does_not_cover_a_stricter_one() {
        let leads = req(&[("leads", 1)]);
        let security = req(&[("security", 2)]);
        assert!(!leads.covers(&security));
        assert!(!security.covers(&leads));
        assert!(!req(&[("security", 1)]).covers(&security));
        assert!(security.covers(&req(&[("security", 1)])));
        assert!(leads.covers(&leads));
    }

    #[test]
    fn the_stronger_step_up_wins_whatever_the_order() {
        let with = |s: Option<&str>| Requirement {
            step_up: s.map(str::to_owned),
            ..req(&[])
        };
        for (a, b) in [
            (None, Some("totp")),
            (Some("totp"), Some("webauthn")),
            (None, Some("webauthn")),
        ] {
            let (weak, strong) = (with(a), with(b));
            assert_eq!(weak.raised(&strong).step_up.as_deref(), b);
            assert_eq!(strong.raised(&weak).step_up.as_deref(), b);
            assert!(strong.covers(&weak), "{b:?} covers {a:?}");
            assert!(!weak.covers(&strong), "{a:?} does not cover {b:?}");
        }
        let sms = Some("sms".to_owned());
        assert_eq!(stronger_step_up(Some("totp".into()), &sms), sms);
        assert_eq!(stronger_step_up(sms.clone(), &Some("totp".into())), sms);
    }

    #[test]
    fn raised_covers_both() {
        let leads = req(&[("leads", 1)]);
        let security = req(&[("security", 2)]);
        let both = leads.raised(&security);
        assert!(both.covers(&leads) && both.covers(&security));
        assert_eq!(both.thresholds.len(), 2);
        let more = req(&[("security", 1)]).raised(&security);
        assert_eq!(more.thresholds.len(), 1);
        assert_eq!(more.thresholds[0].quorum.get(), 2);
        let mut short = req(&[]);
        short.grant_ttl = crate::Ttl::minutes(1);
        short.max_uses = NonZeroU32::MIN;
        let mut long = req(&[]);
        long.max_uses = NonZeroU32::new(5).unwrap();
        assert!(!long.covers(&short));
        assert!(long.raised(&short).covers(&short));
    }
}
