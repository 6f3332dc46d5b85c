//! Rows the store keeps beside the domain types: API keys, grant rows, and
//! what a consumption attempt found.

use std::fmt;

use airlock_core::{Fingerprint, GroupName, RequestId, RequestStatus, UserName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acts as its own user.
    User,
    /// May check and consume on behalf of any principal.
    Enforcer,
    /// May do anything, including revoking.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Enforcer => "enforcer",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "enforcer" => Some(Role::Enforcer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored API key: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id (`key_…`), safe to log.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Whose key.
    pub user: UserName,
    /// What it may do.
    pub role: Role,
    /// When made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if it was made to expire.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key is kept, for the audit trail.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's SCRAM-SHA-256 verifier (PostgreSQL's
    /// `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`), so the key can be a
    /// database password at the PostgreSQL proxy; `None` for keys made
    /// before verifiers were kept.
    pub scram: Option<String>,
    /// When it last authenticated a request, to within about a minute: it
    /// is written at most once a minute per key and node, off the request
    /// path.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Why the key may not be used at `now`, if it may not.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<KeyRefusal> {
        if let Some(at) = self.revoked_at {
            return Some(KeyRefusal::Revoked(at));
        }
        match self.expires_at {
            Some(at) if at <= now => Some(KeyRefusal::Expired(at)),
            _ => None,
        }
    }
}

/// Why a stored API key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Revoked at this time.
    Revoked(DateTime<Utc>),
    /// Expired at this time.
    Expired(DateTime<Utc>),
}

/// What revoking an API key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRevocation {
    /// It was live and is now revoked.
    Revoked,
    /// No key has this id.
    Unknown,
    /// It was revoked before, at this time; nothing changed.
    AlreadyRevoked(DateTime<Utc>),
}

/// A grant as stored, with what it was issued for.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRow {
    /// The grant.
    pub grant: airlock_core::request::GrantRecord,
    /// Its request.
    pub request_id: RequestId,
    /// The request's principal.
    pub principal: UserName,
    /// The fingerprint it is bound to.
    pub fingerprint: Fingerprint,
    /// Whether its outcome was reported and it is closed.
    pub completed: bool,
    /// Whether an enforcer key spent a use of it: its outcome is then
    /// reported by an enforcer, not by its principal.
    pub enforced: bool,
}

/// What a consumption attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// One use spent; this many are left.
    Consumed {
        /// Uses left after this one.
        uses_left: u32,
    },
    /// No such grant in the store.
    Unknown,
    /// Every use is spent, or it was completed.
    Spent,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

/// A web console session. Only the SHA-256 of the cookie's secret is kept,
/// so a read of the database yields no usable session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Hex SHA-256 of the cookie value.
    pub id_hash: String,
    /// Who signed in.
    pub user: UserName,
    /// The anti-CSRF token every form of this session must carry.
    pub csrf: String,
    /// How they signed in (`password`, `oidc`).
    pub method: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A notification waiting in (or delivered from) the durable outbox. It is
/// written in the same transaction as the change it reports, so nothing is
/// lost and nothing waits for the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique and stable across retries: receivers drop duplicates by it
    /// (Standard Webhooks' `webhook-id`).
    pub id: String,
    /// Where it goes (a webhook URL).
    pub target: String,
    /// The event type (`request.created`, …).
    pub event: String,
    /// The JSON body, exactly as sent.
    pub payload: String,
    /// `pending`, `delivered` or `failed` (gave up; can be retried).
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it may next be tried (also a claim's lease).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Which audit records to find. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Who acted.
    pub actor: Option<String>,
    /// Record kind (`review`, `decision`, …).
    pub kind: Option<String>,
    /// Records about this request: its own, and those naming it (grants).
    pub request: Option<String>,
    /// Records with exactly this subject.
    pub subject: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub until: Option<String>,
}

impl AuditFilter {
    /// The filter as a `WHERE` clause on the `audit` table naming only the
    /// fields that are set, with their values in order; `mark(n)` writes
    /// the n-th placeholder (1-based). One fixed statement with
    /// `(?3 IS NULL OR request_id = ?3)` hid the index from SQLite's
    /// planner, so every request's history (read on each `?wait` answer)
    /// scanned the whole log.
    ///
    /// The subject index leaves out records without one (decisions, most
    /// of the log): `subject <> ''` beside a subject asked for lets the
    /// planner use it; asking for no subject reads the table.
    pub(crate) fn where_clause(&self, mark: impl Fn(usize) -> String) -> (String, Vec<&str>) {
        let subject = if self.subject.as_deref() == Some("") {
            "subject = "
        } else {
            "subject <> '' AND subject = "
        };
        let fields = [
            ("actor = ", &self.actor),
            ("kind = ", &self.kind),
            ("request_id = ", &self.request),
            (subject, &self.subject),
            ("ts >= ", &self.since),
            ("ts < ", &self.until),
        ];
        let mut sql = String::new();
        let mut values = Vec::new();
        for (condition, value) in fields {
            if let Some(v) = value {
                values.push(v.as_str());
                sql.push_str(if values.len() == 1 {
                    " WHERE "
                } else {
                    " AND "
                });
                sql.push_str(condition);
                sql.push_str(&mark(values.len()));
            }
        }
        (sql, values)
    }
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct StatusFilter {
    /// Only these states (all when empty).
    pub statuses: Vec<RequestStatus>,
    /// Only this principal's.
    pub principal: Option<UserName>,
    /// Only those this viewer may see (everything when `None`). Applied in
    /// the query, before the limit: requests the viewer may not see can
    /// never push the ones they may out of a page.
    pub visible_to: Option<Viewer>,
    /// Only those after this position in the newest-first order (the
    /// `next` of the previous page).
    pub after: Option<Cursor>,
}

/// Who is looking, for listings filtered by visibility. A request is
/// visible to its principal and to members of any group named in any of
/// its thresholds (those who may review it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The viewer.
    pub user: UserName,
    /// The viewer's groups now.
    pub groups: Vec<GroupName>,
    /// Whether the viewer's own requests count; `false` lists only what
    /// they may review (an inbox).
    pub own: bool,
}

/// A position in a newest-first listing of requests: the last one a page
/// held. Written as `MILLIS_ID` (the request's creation time in Unix
/// milliseconds, then its id), so it names no other request and needs no
/// lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The request's creation time.
    pub created_at: DateTime<Utc>,
    /// The request's id (orders requests created in the same millisecond).
    pub id: RequestId,
}

impl Cursor {
    /// The position just after `req`.
    pub fn after(req: &airlock_core::Request) -> Self {
        Self {
            created_at: req.created_at,
            id: req.id,
        }
    }

    /// Reads a cursor written by [`fmt::Display`].
    pub fn parse(s: &str) -> Option<Self> {
        let (millis, id) = s.split_once('_')?;
        let created_at = DateTime::from_timestamp_millis(millis.parse().ok()?)?;
        Some(Self {
            created_at,
            id: RequestId::parse(id).ok()?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.created_at.timestamp_millis(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_filter_names_only_what_is_set() {
        let none = AuditFilter::default();
        assert_eq!(
            none.where_clause(|n| format!("?{n}")),
            (String::new(), vec![])
        );
        let f = AuditFilter {
            request: Some("req_1".into()),
            kind: Some("decision".into()),
            until: Some("2026".into()),
            ..Default::default()
        };
        assert_eq!(
            f.where_clause(|n| format!("${n}")),
            (
                " WHERE kind = $1 AND request_id = $2 AND ts < $3".to_owned(),
                vec!["decision", "req_1", "2026"]
            )
        );
    }
}
