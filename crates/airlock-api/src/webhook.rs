//! Webhook payloads: `{"type", "timestamp", "data"}`, signed per Standard
//! Webhooks. `data` says which request (and grant) changed and how; a
//! receiver fetches the REQUEST for the rest.

use airlock_core::{GrantId, Request, RequestId, RequestStatus, Threshold, UserName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One delivery's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// The event: `request.created`, `request.raised`, `request.reviewed`,
    /// `request.decided`, `request.expired`, `request.cancelled`,
    /// `request.revoked`, `grant.consumed`, `grant.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event was queued.
    #[serde(with = "crate::time")]
    pub timestamp: DateTime<Utc>,
    /// What it is about.
    pub data: EventData,
}

/// A request event's or a grant event's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventData {
    /// `request.*`.
    Request(RequestEventData),
    /// `grant.*`.
    Grant(GrantEventData),
}

/// A resource named, without its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    /// Entity type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entity id.
    pub id: String,
}

/// What a request event says about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEventData {
    /// The request's id.
    pub request: RequestId,
    /// Where it stands after the event.
    pub status: RequestStatus,
    /// Who asked.
    pub principal: UserName,
    /// The verb.
    pub action: String,
    /// On what.
    pub resource: ResourceRef,
    /// The requester's reason.
    pub reason: Option<String>,
    /// Who caused the event (`null` for timers and new requests).
    pub by: Option<String>,
    /// What it asks now (`request.created`, `request.raised`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Threshold>>,
    /// When it stops waiting (`request.created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl RequestEventData {
    /// The data of an event that left `req` in `status`, caused by `by`.
    pub fn new(req: &Request, status: RequestStatus, by: Option<&str>) -> Self {
        Self {
            request: req.id,
            status,
            principal: req.action.principal.clone(),
            action: req.action.action.as_str().to_owned(),
            resource: ResourceRef {
                kind: req.action.resource.kind.as_str().to_owned(),
                id: req.action.resource.id.as_str().to_owned(),
            },
            reason: req.reason.clone(),
            by: by.map(str::to_owned),
            thresholds: None,
            expires_at: None,
        }
    }

    /// Adds what the request asks now.
    pub fn with_thresholds(mut self, req: &Request) -> Self {
        self.thresholds = Some(req.requirement.thresholds.clone());
        self
    }

    /// Adds when the request stops waiting.
    pub fn with_expiry(mut self, req: &Request) -> Self {
        self.expires_at = Some(crate::time::fmt(req.expires_at));
        self
    }
}

/// What a grant event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEventData {
    /// The request the grant was issued for.
    pub request: RequestId,
    /// The grant.
    pub grant: GrantId,
    /// Uses left (`grant.consumed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    /// The reported outcome (`grant.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Whose key consumed or completed it.
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes receivers have been getting, byte for byte, and they
    /// read back as the right kind of event.
    #[test]
    fn payload_shapes() {
        let grant = GrantEventData {
            request: RequestId::parse("req_0190a3c4-0000-7000-8000-000000000001").unwrap(),
            grant: GrantId::parse("grt_0190a3c4-0000-7000-8000-000000000002").unwrap(),
            uses_left: Some(0),
            outcome: None,
            by: "alice".into(),
        };
        let text = serde_json::to_string(&grant).unwrap();
        assert_eq!(
            text,
            r#"{"request":"req_0190a3c4-0000-7000-8000-000000000001","grant":"grt_0190a3c4-0000-7000-8000-000000000002","uses_left":0,"by":"alice"}"#
        );
        let payload: WebhookPayload = serde_json::from_str(&format!(
            r#"{{"type":"grant.consumed","timestamp":"2025-01-01T00:00:00.000Z","data":{text}}}"#
        ))
        .unwrap();
        assert_eq!(payload.data, EventData::Grant(grant));

        let request: RequestEventData = serde_json::from_str(
            r#"{"request":"req_0190a3c4-0000-7000-8000-000000000001","status":"denied","principal":"alice","action":"export","resource":{"type":"Table","id":"t"},"reason":"no","by":"bob"}"#,
        )
        .unwrap();
        assert_eq!(request.status, RequestStatus::Denied);
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"request":"req_0190a3c4-0000-7000-8000-000000000001","status":"denied","principal":"alice","action":"export","resource":{"type":"Table","id":"t"},"reason":"no","by":"bob"}"#
        );
    }
}
