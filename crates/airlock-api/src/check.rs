//! `POST /v1/check`: the action to decide, and the decision.

use std::collections::BTreeMap;

use airlock_core::action::Resource;
use airlock_core::{ActionName, UserName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::RequestView;

/// The body of `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Who; defaults to the key's user. Only enforcer keys may name another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<UserName>,
    /// The verb.
    pub action: ActionName,
    /// On what.
    pub resource: Resource,
    /// What binds the grant.
    #[serde(default, deserialize_with = "airlock_core::action::exact::btree")]
    pub params: BTreeMap<String, Value>,
    /// What informs the decision.
    #[serde(default, deserialize_with = "airlock_core::action::exact::map")]
    pub context: Map<String, Value>,
    /// Why, for the approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a check answers, told apart by `decision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CheckResponse {
    /// Allowed outright.
    Allow {
        /// Determining policies.
        policies: Vec<String>,
        /// The decision's audit record.
        audit_seq: i64,
    },
    /// Denied.
    Deny {
        /// Determining policies.
        policies: Vec<String>,
        /// Why, from the policy.
        message: String,
        /// The decision's audit record.
        audit_seq: i64,
    },
    /// Held for approval: the new request, or the one already pending for
    /// the same action.
    ApprovalRequired {
        /// Determining policies.
        policies: Vec<String>,
        /// The request.
        request: Box<RequestView>,
    },
}

impl CheckResponse {
    /// The determining policies, whatever the decision.
    pub fn policies(&self) -> &[String] {
        match self {
            Self::Allow { policies, .. }
            | Self::Deny { policies, .. }
            | Self::ApprovalRequired { policies, .. } => policies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_tagged_as_before() {
        let allow = CheckResponse::Allow {
            policies: vec!["p".into()],
            audit_seq: 7,
        };
        assert_eq!(
            serde_json::to_string(&allow).unwrap(),
            r#"{"decision":"allow","policies":["p"],"audit_seq":7}"#
        );
        let deny = CheckResponse::Deny {
            policies: vec![],
            message: "no".into(),
            audit_seq: 8,
        };
        assert_eq!(
            serde_json::to_string(&deny).unwrap(),
            r#"{"decision":"deny","policies":[],"message":"no","audit_seq":8}"#
        );
    }

    #[test]
    fn check_body_keeps_its_validation() {
        let ok: CheckBody = serde_json::from_str(
            r#"{"action":"export","resource":{"type":"Table","id":"t"},"params":{"n":1}}"#,
        )
        .unwrap();
        assert_eq!(ok.params["n"], 1);
        // Inexact numbers, unknown fields and bad names are refused at the door.
        for bad in [
            r#"{"action":"export","resource":{"type":"Table","id":"t"},"params":{"n":1.5}}"#,
            r#"{"action":"export","resource":{"type":"Table","id":"t"},"context":{"n":1e3}}"#,
            r#"{"action":"export","resource":{"type":"Table","id":"t"},"extra":1}"#,
            r#"{"action":"no way","resource":{"type":"Table","id":"t"}}"#,
        ] {
            assert!(serde_json::from_str::<CheckBody>(bad).is_err(), "{bad}");
        }
    }
}

impl CheckBody {
    /// What an approval of this action binds (principal, action, resource,
    /// params; never context), or `None` without a principal.
    pub fn fingerprint(&self) -> Option<airlock_core::Fingerprint> {
        Some(
            airlock_core::Action {
                principal: self.principal.clone()?,
                action: self.action.clone(),
                resource: self.resource.clone(),
                params: self.params.clone(),
                context: Map::new(),
            }
            .fingerprint(),
        )
    }
}

/// What `GET /v1/whoami` answers: the calling key's user and role. An
/// enforcement point asks it with its end user's key, to learn whom to
/// check for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoamiResponse {
    /// The key's user.
    pub user: UserName,
    /// The key's role: `user`, `enforcer` or `admin`.
    pub role: String,
}

/// `POST /v1/auth/scram` (enforcer keys): checks a SCRAM-SHA-256 proof a
/// database client made with one of `user`'s API keys, so the PostgreSQL
/// proxy can log the user in without holding any verifier.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScramLoginBody {
    /// Who is logging in (the startup message's `user`).
    pub user: UserName,
    /// RFC 5802's AuthMessage: client-first-bare, server-first and
    /// client-final-without-proof, comma-separated.
    pub auth_message: String,
    /// The client's proof, base64.
    pub proof: String,
}

/// A proof that passed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScramLoginResponse {
    /// The user logged in.
    pub user: UserName,
    /// The public id of the key the proof was made with.
    pub key: String,
    /// The server signature for the client's `v=`, base64.
    pub server_signature: String,
}

/// `POST /v1/auth/key` (enforcer keys): whether `user`'s key `key` may
/// still be used, so a proxy ends sessions opened with a key revoked or
/// expired since.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLiveBody {
    /// Whose key.
    pub user: UserName,
    /// Its public id (`key_…`).
    pub key: String,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyLiveResponse {
    /// False once the key is revoked, expired or its user removed.
    pub live: bool,
}
