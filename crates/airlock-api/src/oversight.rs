//! What auditors read: pages of the audit log, Merkle proofs against its
//! checkpoints, the deployment's public keys, and the notification outbox.

use airlock_core::AuditRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `GET /v1/audit`: records after `after`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The records; fewer than `limit` means the end of the log.
    pub records: Vec<AuditRecord>,
}

/// `GET /v1/audit/proof/inclusion`: RFC 6962 proof that record `seq` is
/// leaf `seq - 1` of the tree of `size` records. Hashes are base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionProof {
    /// The record.
    pub seq: u64,
    /// The tree's size (a checkpoint's).
    pub size: u64,
    /// `seq - 1`.
    pub leaf_index: u64,
    /// The record's leaf hash: SHA-256 of 0x00 and its exported line.
    pub leaf_hash: String,
    /// The tree's root, as the checkpoint of that size signs it.
    pub root: String,
    /// Sibling hashes from the leaf up.
    pub proof: Vec<String>,
}

/// `GET /v1/audit/proof/consistency`: RFC 6962 proof that the tree of
/// `to` records extends the tree of `from` records. Hashes are base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The older tree's root.
    pub from_root: String,
    /// The newer tree's root.
    pub to_root: String,
    /// The proof's hashes.
    pub proof: Vec<String>,
}

/// `GET /v1/keys`: what verifies grant tokens and audit checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeySet {
    /// The grant key, then the audit key.
    pub keys: Vec<PublicKeyView>,
}

/// One Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicKeyView {
    /// Key id: the first 8 bytes, hex.
    pub kid: String,
    /// `grant` or `audit`.
    #[serde(rename = "use")]
    pub usage: String,
    /// `v4.public` (PASETO grant tokens) or `ed25519` (checkpoint notes).
    pub alg: String,
    /// The key as PASERK `k4.public.…`.
    pub paserk: String,
    /// The key's 32 bytes, hex.
    pub public_key_hex: String,
}

/// `GET /v1/outbox`: notifications, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxList {
    /// The messages.
    pub messages: Vec<OutboxView>,
}

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxView {
    /// Stable across retries (Standard Webhooks' `webhook-id`).
    pub id: String,
    /// Where it goes.
    pub target: String,
    /// The event type (`request.created`, …).
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it may next be tried.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: DateTime<Utc>,
    /// When it was written.
    #[serde(with = "crate::time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    #[serde(default, with = "crate::time::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// `POST /v1/outbox/{id}/retry`: the message, back in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxRetried {
    /// The message.
    pub id: String,
    /// Always `pending`.
    pub status: String,
}
