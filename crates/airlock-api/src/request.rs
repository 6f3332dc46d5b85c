//! REQUEST as the API shows it, and the bodies that act on one: reviews,
//! cancel, revoke, and the paged list.
//!
//! A view is built from a stored [`Request`] plus what only the server
//! knows (approvals under today's group membership, who may approve, the
//! console link). The grant token is never derived here: whoever builds the
//! view decides whether the reader may hold one and passes it in.

use std::collections::BTreeMap;

use airlock_core::action::Resource;
use airlock_core::request::GrantRecord;
use airlock_core::{
    ActionName, Fingerprint, GrantId, GroupName, Request, RequestId, RequestStatus, Threshold,
    UserName, Verdict,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The contract's REQUEST object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestView {
    /// The request's id.
    pub id: RequestId,
    /// Where it stands.
    pub status: RequestStatus,
    /// Who asked.
    pub principal: UserName,
    /// The verb.
    pub action: ActionName,
    /// On what.
    pub resource: Resource,
    /// What binds the grant.
    pub params: BTreeMap<String, Value>,
    /// The facts the requester stated.
    pub context: Map<String, Value>,
    /// The requester's reason (`null` when none).
    pub reason: Option<String>,
    /// The action's fingerprint.
    pub fingerprint: Fingerprint,
    /// The policies that asked for approval.
    pub policies: Vec<String>,
    /// Every threshold that must be met, with its progress.
    pub thresholds: Vec<ThresholdView>,
    /// Reviews so far, oldest first.
    pub reviews: Vec<ReviewView>,
    /// When it was asked.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// When it stops waiting.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// Its page in the console.
    pub url: String,
    /// How long the grant will live once issued (`10m`): what approving
    /// hands out, shown at the button.
    #[serde(default)]
    pub grant_ttl: String,
    /// How many uses the grant will have.
    #[serde(default)]
    pub max_uses: u32,
    /// The step-up an approval needs (`totp`), if policy asks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<String>,
    /// Granted at once by break-glass.
    #[serde(default)]
    pub breakglass: bool,
    /// A break-glass use still waiting for its two reviews after the fact:
    /// always present, so a client sees it turn `false` when the second
    /// review lands rather than vanish.
    #[serde(default)]
    pub review_required: bool,
    /// The grant, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
    /// Every description the action was decided on (`GET` of one request
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Vec<DecisionView>>,
}

impl RequestView {
    /// The view of `req`, with `thresholds` as the server counts them now,
    /// and its grant (if any) with `token` when the reader may hold it.
    pub fn new(
        req: &Request,
        thresholds: Vec<ThresholdView>,
        url: String,
        token: Option<String>,
    ) -> Self {
        Self {
            id: req.id,
            status: req.status,
            principal: req.action.principal.clone(),
            action: req.action.action.clone(),
            resource: req.action.resource.clone(),
            params: req.action.params.clone(),
            context: req.action.context.clone(),
            reason: req.reason.clone(),
            fingerprint: req.fingerprint,
            policies: req.policies.clone(),
            thresholds,
            reviews: req.reviews.iter().map(ReviewView::from).collect(),
            created_at: req.created_at,
            expires_at: req.expires_at,
            url,
            grant_ttl: req.requirement.grant_ttl.to_string(),
            max_uses: req.requirement.max_uses.get(),
            step_up: req.requirement.step_up.clone(),
            breakglass: req.requirement.breakglass,
            review_required: req.requirement.breakglass && req.reviews.len() < 2,
            grant: req.grant.as_ref().map(|g| GrantView::new(g, token)),
            decisions: None,
        }
    }

    /// The view as a JSON value, for code that reads it by key (console
    /// templates, chat messages).
    pub fn to_value(&self) -> Value {
        // A struct of strings, numbers and maps with string keys always
        // serializes; `Null` is never produced in practice.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The first `deny` review, if the request was denied by one.
    pub fn denial(&self) -> Option<&ReviewView> {
        self.reviews.iter().find(|r| r.verdict == Verdict::Deny)
    }
}

/// One threshold as shown: its groups and quorum, the approvals so far,
/// and who may approve (everyone in the groups but the requester).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThresholdView {
    /// Members of any of these groups are eligible.
    pub groups: Vec<GroupName>,
    /// Distinct eligible approvals needed.
    pub quorum: u32,
    /// Distinct eligible approvals so far.
    pub approvals: u32,
    /// The policy whose `@approvers` asked for it.
    pub policy_id: String,
    /// Who may approve.
    pub eligible: Vec<UserName>,
}

impl ThresholdView {
    /// Whether enough people may approve to meet the quorum. A request
    /// with a threshold that cannot be met waits until it expires unless
    /// an admin adds approvers, so it is flagged wherever it is shown.
    pub fn can_be_met(&self) -> bool {
        self.eligible.len() as u64 >= u64::from(self.quorum)
    }

    /// A threshold with its progress and eligible approvers.
    pub fn new(t: &Threshold, approvals: u32, eligible: Vec<UserName>) -> Self {
        Self {
            groups: t.groups.clone(),
            quorum: t.quorum.get(),
            approvals,
            policy_id: t.policy_id.clone(),
            eligible,
        }
    }
}

/// One review as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewView {
    /// Who reviewed.
    pub reviewer: UserName,
    /// What they said.
    pub verdict: Verdict,
    /// Why (`null` when they did not say).
    pub reason: Option<String>,
    /// Where they said it: `api`, `cli`, `web`, `slack`, …
    pub channel: String,
    /// When.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// The step-up passed with it (`totp`, `webauthn`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<String>,
}

impl From<&airlock_core::Review> for ReviewView {
    fn from(r: &airlock_core::Review) -> Self {
        Self {
            reviewer: r.reviewer.clone(),
            verdict: r.verdict,
            reason: r.reason.clone(),
            channel: r.channel.clone(),
            at: r.at,
            step_up: r.step_up.clone(),
        }
    }
}

/// An approved request's grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantView {
    /// The grant's id.
    pub grant_id: GrantId,
    /// When it stops being usable.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// How many uses it has.
    pub max_uses: u32,
    /// How many were consumed.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The outcome `complete` reported (`null` until then).
    pub outcome: Option<String>,
    /// The bearer token that consumes it: only for the requester and
    /// enforcer keys, and only while it can still be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl GrantView {
    /// A stored grant as shown, with `token` if the reader may hold it.
    pub fn new(g: &GrantRecord, token: Option<String>) -> Self {
        Self {
            grant_id: g.grant_id,
            expires_at: g.expires_at,
            max_uses: g.max_uses,
            uses: g.uses,
            revoked: g.revoked,
            outcome: g.outcome.clone(),
            token,
        }
    }
}

/// One decision recorded about a request, as the audit log holds it.
/// Fields are shown as recorded, so records written by older versions
/// show as they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionView {
    /// The audit record.
    pub seq: i64,
    /// When, as recorded.
    pub at: String,
    /// Whose key asked.
    pub by: String,
    /// `allow`, `deny` or `approval_required`.
    pub outcome: Value,
    /// The determining policies.
    pub policies: Value,
    /// The full context the decision saw, computed facts included.
    pub context: Value,
}

/// `GET /v1/requests`: one page, and the cursor of the next (`null` on
/// the last page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestView>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

/// Where a review was given through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewChannel {
    /// A program (the default).
    Api,
    /// `airlock requests approve|deny`.
    Cli,
}

impl ReviewChannel {
    /// The name recorded with the review.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cli => "cli",
        }
    }
}

/// The body of `POST /v1/requests/{id}/reviews`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// `approve` or `deny`.
    pub verdict: Verdict,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which channel the reviewer used (`api` unless a client says `cli`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ReviewChannel>,
    /// A current TOTP code, for an approval whose policy asks
    /// `@step_up("totp")`. Accepted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

/// The optional body of `POST /v1/requests/{id}/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use airlock_core::{Action, GroupName, Requirement, Review, Ttl};
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().unwrap()
    }

    fn request() -> Request {
        let action: Action = serde_json::from_value(json!({
            "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "prod.customers"},
            "params": {"rows": 10}, "context": {"ticket": "T-1"},
        }))
        .unwrap();
        Request {
            id: RequestId::parse("req_0190a3c4-0000-7000-8000-000000000001").unwrap(),
            status: RequestStatus::Approved,
            fingerprint: action.fingerprint(),
            requirement: Requirement {
                thresholds: vec![Threshold {
                    policy_id: "p1".into(),
                    groups: vec![GroupName::parse("security").unwrap()],
                    quorum: NonZeroU32::MIN,
                }],
                request_ttl: Ttl::minutes(60),
                grant_ttl: Ttl::minutes(10),
                max_uses: NonZeroU32::MIN,
                reason_required: false,
                step_up: None,
                breakglass: false,
            },
            policies: vec!["p1".into()],
            reason: None,
            reviews: vec![Review {
                reviewer: UserName::parse("bob").unwrap(),
                verdict: Verdict::Approve,
                reason: None,
                channel: "cli".into(),
                at: at(1_700_000_001_000),
                step_up: None,
            }],
            created_at: at(1_700_000_000_000),
            expires_at: at(1_700_003_600_000),
            grant: Some(GrantRecord {
                grant_id: GrantId::parse("grt_0190a3c4-0000-7000-8000-000000000002").unwrap(),
                expires_at: at(1_700_000_600_000),
                max_uses: 1,
                uses: 0,
                revoked: false,
                outcome: None,
            }),
            action,
        }
    }

    /// The REQUEST object keeps the field names, shapes and order the
    /// server sent when it was built with `json!`, byte for byte.
    #[test]
    fn request_view_is_the_contract_shape() {
        let req = request();
        let t = ThresholdView::new(
            &req.requirement.thresholds[0],
            1,
            vec![UserName::parse("bob").unwrap()],
        );
        let url = "http://x/requests/req_0190a3c4-0000-7000-8000-000000000001".to_owned();
        let view = RequestView::new(&req, vec![t], url, Some("tok".into()));
        let fp = req.fingerprint.to_string();
        let expected = format!(
            concat!(
                r#"{{"id":"req_0190a3c4-0000-7000-8000-000000000001","status":"approved","principal":"alice","#,
                r#""action":"export","resource":{{"type":"Table","id":"prod.customers"}},"params":{{"rows":10}},"#,
                r#""context":{{"ticket":"T-1"}},"reason":null,"fingerprint":"{fp}","policies":["p1"],"#,
                r#""thresholds":[{{"groups":["security"],"quorum":1,"approvals":1,"policy_id":"p1","eligible":["bob"]}}],"#,
                r#""reviews":[{{"reviewer":"bob","verdict":"approve","reason":null,"channel":"cli","at":"2023-11-14T22:13:21.000Z"}}],"#,
                r#""created_at":"2023-11-14T22:13:20.000Z","expires_at":"2023-11-14T23:13:20.000Z","#,
                r#""url":"http://x/requests/req_0190a3c4-0000-7000-8000-000000000001","grant_ttl":"10m","max_uses":1,"#,
                r#""breakglass":false,"review_required":false,"#,
                r#""grant":{{"grant_id":"grt_0190a3c4-0000-7000-8000-000000000002","expires_at":"2023-11-14T22:23:20.000Z","#,
                r#""max_uses":1,"uses":0,"revoked":false,"outcome":null,"token":"tok"}}}}"#
            ),
            fp = fp
        );
        assert_eq!(serde_json::to_string(&view).unwrap(), expected);
        // And reads back as it was written.
        let back: RequestView = serde_json::from_str(&expected).unwrap();
        assert_eq!(back, view);
    }

    /// No token is passed, none is shown; the view never makes one up.
    #[test]
    fn no_token_unless_given() {
        let req = request();
        let view = RequestView::new(&req, vec![], "u".into(), None);
        let v = view.to_value();
        assert!(v["grant"].get("token").is_none(), "{v}");
        assert_eq!(v["grant"]["uses"], 0);
    }
}
