//! The HTTP API v1 as it travels: every body the server reads or writes,
//! typed, and nothing else (no I/O, no keys, no storage).
//!
//! The server serializes these and its clients (the CLI, enforcement
//! points, proxies) deserialize them, so both sides agree on field names
//! and shapes by construction. Request bodies refuse unknown fields, as
//! the server always has; responses accept them, so an older client keeps
//! working against a newer server.
#![forbid(unsafe_code)]

pub mod check;
pub mod error;
pub mod grant;
pub mod oversight;
pub mod request;
pub mod time;
pub mod webhook;

pub use check::{
    CheckBody, CheckResponse, KeyLiveBody, KeyLiveResponse, ScramLoginBody, ScramLoginResponse,
    WhoamiResponse,
};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use grant::{
    CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse, Disposition, FindingsBody,
    FindingsResponse, FindingsTarget, Outcome,
};
pub use oversight::{
    AuditPage, ConsistencyProof, InclusionProof, KeySet, OutboxList, OutboxRetried, OutboxView,
    PublicKeyView,
};
pub use request::{
    DecisionView, GrantView, ReasonBody, RequestList, RequestView, ReviewBody, ReviewChannel,
    ReviewView, ThresholdView,
};
pub use webhook::{EventData, GrantEventData, RequestEventData, ResourceRef, WebhookPayload};
