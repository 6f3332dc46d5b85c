//! The audit chain: record shapes, the hash that links each record to the one
//! before it, and the offline check of a whole chain.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::action::{canonical_json, write_json_string};
use crate::ParseError;

/// What happened. The name is stored; add kinds, never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// Policy answered a check.
    Decision,
    /// An approval request was created.
    RequestCreated,
    /// A reviewer gave a verdict.
    Review,
    /// A request changed state (approved, denied, expired, cancelled, revoked, …).
    RequestState,
    /// A grant was issued.
    GrantIssued,
    /// A grant use was consumed.
    GrantConsumed,
    /// A grant was presented and refused.
    GrantRefused,
    /// The outcome of a grant use was reported.
    GrantCompleted,
    /// A policy set was loaded.
    PolicyLoaded,
    /// A policy reload failed; the previous set kept serving.
    PolicyReloadFailed,
    /// An API key was created.
    KeyCreated,
    /// An API key was revoked.
    KeyRevoked,
    /// The server started.
    ServerStarted,
    /// A user's web console password was set.
    PasswordSet,
    /// Someone signed in to the web console.
    SignIn,
    /// A web console sign-in was refused.
    SignInFailed,
    /// A sign-in was refused unchecked: too many recent failures.
    SignInLocked,
    /// Someone signed out of the web console.
    SignOut,
    /// A user's groups were taken from their single sign-on provider.
    GroupsSynced,
    /// A check asked more of a pending request than it demanded: its
    /// requirement now demands both.
    RequirementRaised,
    /// A failed notification was put back in line.
    NotificationRetried,
    /// A signing key was replaced (the old public key is kept, so what it
    /// signed still verifies).
    KeyRotated,
    /// A node started and found records after the last signed checkpoint
    /// (it, or another node, stopped without signing one): the gap is on
    /// record, naming the last checkpoints found.
    Resumed,
    /// A user's TOTP authenticator was enrolled (or replaced).
    TotpEnrolled,
    /// Someone broke the glass: an immediate grant, to be reviewed after
    /// the fact (severity high).
    Breakglass,
    /// A user registered a WebAuthn security key or passkey.
    WebauthnRegistered,
    /// A proxy's DLP found personal data or secrets in an answer no grant
    /// covers (an allowed request or statement): counts by type, and what
    /// became of the answer.
    DlpFindings,
    /// A step-up proof (a TOTP code) was given and was wrong: counted, so
    /// that guessing stops after a few.
    StepUpFailed,
    /// A review refused before it counted: a requester reviewing their own
    /// request, or someone not eligible to review it (an attempt to get
    /// around an approval, kept on record with the request).
    ReviewRefused,
    /// A check or break-glass refused for what the caller claimed: another
    /// principal's name on a user key, facts only enforcers may state, a
    /// break-glass its caller may not break.
    CheckRefused,
}

impl AuditKind {
    /// Every kind, for lists that offer them (the console's audit filter).
    pub const ALL: &'static [AuditKind] = &[
        Self::Decision,
        Self::RequestCreated,
        Self::Review,
        Self::RequestState,
        Self::GrantIssued,
        Self::GrantConsumed,
        Self::GrantRefused,
        Self::GrantCompleted,
        Self::PolicyLoaded,
        Self::PolicyReloadFailed,
        Self::KeyCreated,
        Self::KeyRevoked,
        Self::ServerStarted,
        Self::PasswordSet,
        Self::SignIn,
        Self::SignInFailed,
        Self::SignInLocked,
        Self::SignOut,
        Self::GroupsSynced,
        Self::RequirementRaised,
        Self::NotificationRetried,
        Self::Resumed,
        Self::KeyRotated,
        Self::TotpEnrolled,
        Self::Breakglass,
        Self::WebauthnRegistered,
        Self::DlpFindings,
        Self::StepUpFailed,
        Self::ReviewRefused,
        Self::CheckRefused,
    ];

    /// Whether records of this kind belong to a request or its grant; only
    /// these are filed under one (the `request_id` column).
    pub fn is_about_requests(self) -> bool {
        matches!(
            self,
            Self::Decision
                | Self::RequestCreated
                | Self::Review
                | Self::RequestState
                | Self::GrantIssued
                | Self::GrantConsumed
                | Self::GrantRefused
                | Self::GrantCompleted
                | Self::RequirementRaised
                | Self::Breakglass
                | Self::ReviewRefused
        )
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::RequestCreated => "request_created",
            Self::Review => "review",
            Self::RequestState => "request_state",
            Self::GrantIssued => "grant_issued",
            Self::GrantConsumed => "grant_consumed",
            Self::GrantRefused => "grant_refused",
            Self::GrantCompleted => "grant_completed",
            Self::PolicyLoaded => "policy_loaded",
            Self::PolicyReloadFailed => "policy_reload_failed",
            Self::KeyCreated => "key_created",
            Self::KeyRevoked => "key_revoked",
            Self::ServerStarted => "server_started",
            Self::PasswordSet => "password_set",
            Self::SignIn => "sign_in",
            Self::SignInFailed => "sign_in_failed",
            Self::SignInLocked => "sign_in_locked",
            Self::SignOut => "sign_out",
            Self::GroupsSynced => "groups_synced",
            Self::RequirementRaised => "requirement_raised",
            Self::NotificationRetried => "notification_retried",
            Self::Resumed => "resumed",
            Self::KeyRotated => "key_rotated",
            Self::TotpEnrolled => "totp_enrolled",
            Self::Breakglass => "breakglass",
            Self::WebauthnRegistered => "webauthn_registered",
            Self::DlpFindings => "dlp_findings",
            Self::StepUpFailed => "step_up_failed",
            Self::ReviewRefused => "review_refused",
            Self::CheckRefused => "check_refused",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SHA-256 link in the chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the first record.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        // By hand rather than `hex::decode_to_slice`: offline verification
        // parses two of these per record, and this is several times faster.
        fn digit(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let b = s.as_bytes();
        let bad = || ParseError::new("hash", "must be 64 hex digits");
        if b.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = digit(b[2 * i]).ok_or_else(bad)?;
            let lo = digit(b[2 * i + 1]).ok_or_else(bad)?;
            *o = hi << 4 | lo;
        }
        Ok(Self(out))
    }

    /// The 64 lower-case hex digits, without allocating.
    pub fn hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Local invariant: hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChainHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A record about to be appended: everything but its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditRecord {
    /// What happened.
    pub kind: AuditKind,
    /// Who did it (user name, `system`, or `key:<id>`).
    pub actor: String,
    /// What it happened to (request or grant id), or empty.
    pub subject: String,
    /// Everything else, as JSON. Never holds a key or a grant token.
    pub details: Details,
}

impl NewAuditRecord {
    /// The request this record belongs to: its subject when that is a
    /// request, else the `request` Airlock put at the top of its details.
    /// Caller-supplied values only ever sit deeper (under `params`,
    /// `context`, `detail`), so no caller can file a record under someone
    /// else's request.
    pub fn request_id(&self) -> Option<&str> {
        match filed(self.kind.is_about_requests(), &self.subject) {
            Filed::Nowhere => None,
            Filed::Subject(s) => Some(s),
            Filed::Details => self.details.request.as_deref(),
        }
    }
}

/// Where a record's request is, by the one rule records are filed by and
/// verified against.
enum Filed<'a> {
    /// Not a request record: its subject can be text a caller typed (a
    /// user name at sign-in), which could look like a request id.
    Nowhere,
    /// Its subject, a request id.
    Subject(&'a str),
    /// The `request` at the top of its details, if any.
    Details,
}

fn filed(about_requests: bool, subject: &str) -> Filed<'_> {
    if !about_requests {
        Filed::Nowhere
    } else if subject.starts_with(crate::ids::REQUEST_PREFIX) {
        Filed::Subject(subject)
    } else {
        Filed::Details
    }
}

impl AuditRecord {
    /// The request a stored record belongs to, by the rule
    /// [`NewAuditRecord::request_id`] filed it under when it was written,
    /// read from what the chain covers (kind, subject, the `request` at
    /// the top of its details). The store keeps the answer in a column of
    /// its own for listings, which the chain does not cover: verification
    /// holds the column to this.
    pub fn request_id(&self) -> Option<String> {
        /// Only the top-level `request` member, borrowed where it can be.
        #[derive(Deserialize)]
        struct Top<'a> {
            #[serde(borrow)]
            request: Option<std::borrow::Cow<'a, str>>,
        }
        let about_requests = AuditKind::ALL
            .iter()
            .any(|k| k.as_str() == self.kind && k.is_about_requests());
        match filed(about_requests, &self.subject) {
            Filed::Nowhere => None,
            Filed::Subject(s) => Some(s.to_owned()),
            Filed::Details => serde_json::from_str::<Top<'_>>(self.details.get())
                .ok()
                .and_then(|t| t.request)
                .map(std::borrow::Cow::into_owned),
        }
    }
}

/// A new record's details, already canonical: made where the record is
/// made (a request's own task), so the store's one writer only links and
/// stores the text. Carries the `request` member at its top, if any, for
/// [`NewAuditRecord::request_id`].
#[derive(Clone, Debug, PartialEq)]
pub struct Details {
    text: RecordedJson,
    request: Option<String>,
}

impl Details {
    /// The canonical text of `value`, which serializes canonically (see
    /// [`crate::action::Canonical`]): a struct with its fields declared in
    /// sorted order and its free-form values behind `Canonical`, written
    /// with no `Value` built. `request` is the value of its top-level
    /// `request` member, if it has one. A test per such type holds its
    /// text to [`RecordedJson::canonical`] of its value.
    pub fn from_sorted<T: Serialize>(value: &T, request: Option<String>) -> Self {
        let mut buf = Vec::with_capacity(512);
        // Local invariant: the types given here serialize (strings,
        // numbers and JSON values), and writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, value);
        Self {
            text: RecordedJson::trusted(buf),
            request,
        }
    }

    /// The canonical text.
    pub fn text(&self) -> &RecordedJson {
        &self.text
    }
}

impl From<Value> for Details {
    fn from(v: Value) -> Self {
        Self {
            request: v.get("request").and_then(Value::as_str).map(str::to_owned),
            text: RecordedJson::canonical(&v),
        }
    }
}

/// A record's details exactly as stored: canonical JSON text (keys sorted,
/// no white space). The chain hashes these bytes, so what verifies is what
/// is stored, never a re-encoding of a parsed value.
///
/// Always valid JSON: text from a store is checked as it is read, and
/// canonical text is serde_json's own output, so it is not parsed again.
#[derive(Clone)]
pub struct RecordedJson(Box<str>);

impl RecordedJson {
    /// The canonical text of `v`.
    pub fn canonical(v: &Value) -> Self {
        let mut buf = Vec::with_capacity(128);
        canonical_json(v, &mut buf);
        Self::trusted(buf)
    }

    /// Bytes serde_json wrote for a value: UTF-8 and valid JSON.
    fn trusted(buf: Vec<u8>) -> Self {
        // Local invariant: serde_json writes UTF-8; the fallback (an
        // empty object) is never taken, and would fail the chain's
        // verification rather than pass anything.
        Self(
            String::from_utf8(buf)
                .unwrap_or_else(|_| "{}".to_owned())
                .into_boxed_str(),
        )
    }

    /// Text read back from a store, kept byte for byte. Refused if it is
    /// not JSON at all.
    pub fn from_stored(text: String) -> Result<Self, ParseError> {
        RawValue::from_string(text)
            .map(|raw| Self(raw.into()))
            .map_err(|e| ParseError::new("audit details", e.to_string()))
    }

    /// The stored text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The details as a value, for display and filters.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl PartialEq for RecordedJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for RecordedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RecordedJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Embedded as JSON, not as a string: checked again here, where a
        // record is shown, not where it is made.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RecordedJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Self(raw.into()))
    }
}

/// What [`AuditRecord::read_export_line`] found in a line whose content
/// matches its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedLine {
    /// The record's sequence number.
    pub seq: i64,
    /// Its link to the record before.
    pub prev_hash: ChainHash,
    /// Its own hash, checked against its content.
    pub hash: ChainHash,
}

/// An export line's fields, borrowed from it (escaped strings fail here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineFields<'a> {
    actor: &'a str,
    #[serde(borrow)]
    details: &'a RawValue,
    hash: &'a str,
    kind: &'a str,
    prev_hash: &'a str,
    seq: i64,
    subject: &'a str,
    ts: &'a str,
}

/// A cursor over an export line, matching its expected pieces in order.
struct Layout<'a> {
    rest: &'a [u8],
}

impl Layout<'_> {
    fn eat(&mut self, piece: &[u8]) -> bool {
        match self.rest.strip_prefix(piece) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }
}

/// 64 lower-case hex digits (the export form) as a hash.
fn lower_hex_hash(s: &str) -> Option<ChainHash> {
    const fn table() -> [u8; 256] {
        let mut t = [0xff_u8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    }
    const DIGIT: [u8; 256] = table();
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (hi, lo) = (DIGIT[usize::from(pair[0])], DIGIT[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    // Any digit outside 0-9a-f set the high bits.
    (bad & 0xf0 == 0).then_some(ChainHash(out))
}

impl utoipa::PartialSchema for ChainHash {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string("A SHA-256 hash, hex.", Some("^[0-9a-f]{64}$"), 64, 64)
    }
}

impl utoipa::ToSchema for ChainHash {}

impl utoipa::PartialSchema for RecordedJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::free_object("The record's details, exactly as stored and hashed.")
    }
}

impl utoipa::ToSchema for RecordedJson {}

/// A record in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// 1, 2, 3, … with no gaps.
    pub seq: i64,
    /// RFC 3339 time with milliseconds, stored as text so the hash is exact.
    pub ts: String,
    /// What happened, as stored.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// What it happened to.
    pub subject: String,
    /// Everything else, exactly as stored and hashed.
    pub details: RecordedJson,
    /// Hash of the record before (zeros for the first).
    pub prev_hash: ChainHash,
    /// Hash of this record, over `prev_hash` and its content.
    pub hash: ChainHash,
}

/// The hash of a record's content linked to the previous hash: SHA-256 over
/// a domain tag, the previous hash, and the canonical JSON object of the
/// record's fields with `details` as its stored bytes.
pub fn chain_hash(
    prev: &ChainHash,
    seq: i64,
    ts: &str,
    kind: &str,
    actor: &str,
    subject: &str,
    details: &RecordedJson,
) -> ChainHash {
    let mut buf = Vec::with_capacity(256 + details.get().len());
    buf.extend_from_slice(b"airlock-audit-v1\0");
    buf.extend_from_slice(&prev.0);
    // Keys in sorted order, as canonical_json writes them: records written
    // before details were hashed as stored hash the same.
    let field = |buf: &mut Vec<u8>, name: &str, v: &str| {
        write_json_string(name, buf);
        buf.push(b':');
        write_json_string(v, buf);
    };
    buf.push(b'{');
    field(&mut buf, "actor", actor);
    buf.extend_from_slice(b",\"details\":");
    buf.extend_from_slice(details.get().as_bytes());
    buf.push(b',');
    field(&mut buf, "kind", kind);
    buf.extend_from_slice(format!(",\"seq\":{seq},").as_bytes());
    field(&mut buf, "subject", subject);
    buf.push(b',');
    field(&mut buf, "ts", ts);
    buf.push(b'}');
    ChainHash(Sha256::digest(&buf).into())
}

impl AuditRecord {
    /// Builds the next record after `prev` (seq `prev_seq + 1`).
    pub fn link(prev_seq: i64, prev: ChainHash, ts: String, rec: NewAuditRecord) -> AuditRecord {
        let seq = prev_seq + 1;
        let kind = rec.kind.as_str().to_owned();
        let details = rec.details.text;
        let hash = chain_hash(&prev, seq, &ts, &kind, &rec.actor, &rec.subject, &details);
        AuditRecord {
            seq,
            ts,
            kind,
            actor: rec.actor,
            subject: rec.subject,
            details,
            prev_hash: prev,
            hash,
        }
    }

    /// Whether the stored content matches the stored hash. Records written
    /// by releases before details were stored canonically hold their
    /// details in insertion order while their hash covered the canonical
    /// form; for those (and only when the stored bytes do not match) the
    /// canonical re-encoding is checked, which is what those releases
    /// hashed. Everything written since hashes its stored bytes exactly.
    pub fn content_matches(&self) -> bool {
        if self.computed_hash() == self.hash {
            return true;
        }
        let canonical = RecordedJson::canonical(&self.details.value());
        // Those releases wrote a map's keys once each: a key twice is an
        // edit (the canonical form keeps the last, and so hashed as the
        // record did while a reader of the first saw another value; found
        // by a black-box pass).
        canonical.get() != self.details.get()
            && !has_duplicate_keys(self.details.get())
            && chain_hash(
                &self.prev_hash,
                self.seq,
                &self.ts,
                &self.kind,
                &self.actor,
                &self.subject,
                &canonical,
            ) == self.hash
    }

    /// The record as one line of an export (`records.jsonl`, without the
    /// newline): a JSON object with its fields in sorted order and
    /// `details` as its stored bytes. This is leaf `seq - 1` of the log's
    /// Merkle tree (RFC 6962), so what an auditor reads is what was proved.
    pub fn export_line(&self) -> String {
        let mut buf = Vec::with_capacity(320 + self.details.get().len());
        let field = |buf: &mut Vec<u8>, name: &str, v: &str| {
            write_json_string(name, buf);
            buf.push(b':');
            write_json_string(v, buf);
        };
        buf.push(b'{');
        field(&mut buf, "actor", &self.actor);
        buf.extend_from_slice(b",\"details\":");
        buf.extend_from_slice(self.details.get().as_bytes());
        buf.extend_from_slice(b",\"hash\":\"");
        buf.extend_from_slice(&self.hash.hex());
        buf.extend_from_slice(b"\",");
        field(&mut buf, "kind", &self.kind);
        buf.extend_from_slice(b",\"prev_hash\":\"");
        buf.extend_from_slice(&self.prev_hash.hex());
        buf.push(b'"');
        buf.extend_from_slice(format!(",\"seq\":{},", self.seq).as_bytes());
        field(&mut buf, "subject", &self.subject);
        buf.push(b',');
        field(&mut buf, "ts", &self.ts);
        buf.push(b'}');
        // Local invariant: only serde_json's encodings of strings and the
        // stored (valid JSON) details joined with ASCII punctuation.
        String::from_utf8(buf).unwrap_or_default()
    }

    /// What an export line says about itself, read in place: its links and
    /// whether its content hashes to its `hash`. `None` unless the line is
    /// in export form with no escaped strings and its content matches; the
    /// caller then parses it as a record, which names what is wrong (or
    /// accepts a record from before details were stored canonically).
    /// Offline verification reads every line this way: nothing is copied
    /// or re-encoded, and the chain hash is taken over the line's own bytes
    /// with the two hash fields left out.
    pub fn read_export_line(line: &str) -> Option<ExportedLine> {
        let f: LineFields<'_> = serde_json::from_str(line).ok()?;
        // The line must be exactly what `export_line` writes for these
        // fields. Strings read without copying had no escapes, so their
        // JSON encoding is their bytes between quotes.
        let mut seq = [0u8; 20];
        let seq_len = {
            let mut w = std::io::Cursor::new(&mut seq[..]);
            std::io::Write::write_fmt(&mut w, format_args!("{}", f.seq)).ok()?;
            usize::try_from(w.position()).ok()?
        };
        let mut at = Layout {
            rest: line.as_bytes(),
        };
        let details = f.details.get().as_bytes();
        let ok = at.eat(b"{\"actor\":\"")
            && at.eat(f.actor.as_bytes())
            && at.eat(b"\",\"details\":")
            && at.eat(details)
            && at.eat(b",\"hash\":\"")
            && at.eat(f.hash.as_bytes())
            && at.eat(b"\",\"kind\":\"")
            && at.eat(f.kind.as_bytes())
            && at.eat(b"\",\"prev_hash\":\"")
            && at.eat(f.prev_hash.as_bytes())
            && at.eat(b"\",\"seq\":")
            && at.eat(&seq[..seq_len])
            && at.eat(b",\"subject\":\"")
            && at.eat(f.subject.as_bytes())
            && at.eat(b"\",\"ts\":\"")
            && at.eat(f.ts.as_bytes())
            && at.eat(b"\"}")
            && at.rest.is_empty();
        if !ok {
            return None;
        }
        let hash = lower_hex_hash(f.hash)?;
        let prev_hash = lower_hex_hash(f.prev_hash)?;
        // `{"actor":…,"details":D` ‖ `,"kind":…` ‖ `,"seq":…}`: the
        // canonical body `chain_hash` builds, cut from the line.
        let b = line.as_bytes();
        let details_end = 22 + f.actor.len() + details.len();
        let kind_start = details_end + 74;
        let kind_end = kind_start + 10 + f.kind.len();
        let computed: [u8; 32] = Sha256::new()
            .chain_update(b"airlock-audit-v1\0")
            .chain_update(prev_hash.0)
            .chain_update(b.get(..details_end)?)
            .chain_update(b.get(kind_start..kind_end)?)
            .chain_update(b.get(kind_end + 79..)?)
            .finalize()
            .into();
        (computed == hash.0).then_some(ExportedLine {
            seq: f.seq,
            prev_hash,
            hash,
        })
    }

    /// This record's Merkle leaf hash: SHA-256(0x00 ‖ export line).
    pub fn leaf_hash(&self) -> crate::merkle::Hash {
        crate::merkle::leaf_hash(self.export_line().as_bytes())
    }

    /// Recomputes this record's hash from its content.
    pub fn computed_hash(&self) -> ChainHash {
        chain_hash(
            &self.prev_hash,
            self.seq,
            &self.ts,
            &self.kind,
            &self.actor,
            &self.subject,
            &self.details,
        )
    }
}

/// Why a chain failed to verify, naming the first bad sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A sequence number is missing or out of place (deleted or reordered).
    #[error("record {seq}: expected sequence number {seq}, found {found}")]
    Gap {
        /// The first sequence number that is wrong.
        seq: i64,
        /// What stood there instead.
        found: i64,
    },
    /// The record does not link to the one before it (inserted or reordered).
    #[error("record {seq}: previous-hash link is broken")]
    BrokenLink {
        /// The first sequence number that is wrong.
        seq: i64,
    },
    /// The record's content does not match its hash (changed).
    #[error("record {seq}: content does not match its hash")]
    Altered {
        /// The first sequence number that is wrong.
        seq: i64,
    },
    /// A signed checkpoint names a record whose hash differs, or that is gone.
    #[error("record {seq}: does not match the signed checkpoint at {seq}")]
    Checkpoint {
        /// The sequence number of the checkpoint.
        seq: i64,
    },
}

impl ChainError {
    /// The first sequence number that fails.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Gap { seq, .. }
            | Self::BrokenLink { seq }
            | Self::Altered { seq }
            | Self::Checkpoint { seq } => *seq,
        }
    }
}

/// Walks a chain in stored order, checking sequence, links and hashes.
/// Returns the last (seq, hash) on success.
#[derive(Debug)]
pub struct ChainVerifier {
    expect_seq: i64,
    prev: ChainHash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expect_seq: 1,
            prev: ChainHash::GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, rec: &AuditRecord) -> Result<(), ChainError> {
        if rec.seq != self.expect_seq {
            return Err(ChainError::Gap {
                seq: self.expect_seq,
                found: rec.seq,
            });
        }
        if rec.prev_hash != self.prev {
            return Err(ChainError::BrokenLink { seq: rec.seq });
        }
        if !rec.content_matches() {
            return Err(ChainError::Altered { seq: rec.seq });
        }
        self.prev = rec.hash;
        self.expect_seq += 1;
        Ok(())
    }

    /// Checks the next record when its content was checked elsewhere
    /// (`content_ok`: [`AuditRecord::content_matches`], computed in
    /// parallel by a verifier of many records).
    pub fn push_checked(
        &mut self,
        seq: i64,
        prev_hash: ChainHash,
        hash: ChainHash,
        content_ok: bool,
    ) -> Result<(), ChainError> {
        if seq != self.expect_seq {
            return Err(ChainError::Gap {
                seq: self.expect_seq,
                found: seq,
            });
        }
        if prev_hash != self.prev {
            return Err(ChainError::BrokenLink { seq });
        }
        if !content_ok {
            return Err(ChainError::Altered { seq });
        }
        self.prev = hash;
        self.expect_seq += 1;
        Ok(())
    }

    /// The last verified sequence number (0 before any).
    pub fn head_seq(&self) -> i64 {
        self.expect_seq - 1
    }

    /// The last verified hash.
    pub fn head_hash(&self) -> ChainHash {
        self.prev
    }
}

/// Whether the JSON text `s` holds an object with a key twice, at any
/// depth (text that does not parse counts as holding one).
fn has_duplicate_keys(s: &str) -> bool {
    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            while a.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                if !seen.insert(k) {
                    return Err(de::Error::custom("a key twice"));
                }
                a.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    serde_json::from_str::<Unique>(s).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `AuditKind::ALL` lists every kind once: the match below stops
    /// compiling when a kind is added, and its numbers must then be those
    /// of `ALL`'s entries.
    #[test]
    fn all_lists_every_kind_once() {
        fn number(k: AuditKind) -> usize {
            match k {
                AuditKind::Decision => 0,
                AuditKind::RequestCreated => 1,
                AuditKind::Review => 2,
                AuditKind::RequestState => 3,
                AuditKind::GrantIssued => 4,
                AuditKind::GrantConsumed => 5,
                AuditKind::GrantRefused => 6,
                AuditKind::GrantCompleted => 7,
                AuditKind::PolicyLoaded => 8,
                AuditKind::PolicyReloadFailed => 9,
                AuditKind::KeyCreated => 10,
                AuditKind::KeyRevoked => 11,
                AuditKind::ServerStarted => 12,
                AuditKind::PasswordSet => 13,
                AuditKind::SignIn => 14,
                AuditKind::SignInFailed => 15,
                AuditKind::SignInLocked => 16,
                AuditKind::SignOut => 17,
                AuditKind::GroupsSynced => 18,
                AuditKind::RequirementRaised => 19,
                AuditKind::NotificationRetried => 20,
                AuditKind::Resumed => 21,
                AuditKind::KeyRotated => 22,
                AuditKind::TotpEnrolled => 23,
                AuditKind::Breakglass => 24,
                AuditKind::WebauthnRegistered => 25,
                AuditKind::DlpFindings => 26,
                AuditKind::StepUpFailed => 27,
                AuditKind::ReviewRefused => 28,
                AuditKind::CheckRefused => 29,
            }
        }
        let numbers: Vec<usize> = AuditKind::ALL.iter().map(|k| number(*k)).collect();
        assert_eq!(numbers, (0..30).collect::<Vec<_>>());
    }
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let (seq, prev) = out
                .last()
                .map_or((0, ChainHash::GENESIS), |r| (r.seq, r.hash));
            out.push(AuditRecord::link(
                seq,
                prev,
                format!("2026-01-01T00:00:0{i}.000Z"),
                NewAuditRecord {
                    kind: AuditKind::Decision,
                    actor: "alice".into(),
                    subject: String::new(),
                    details: json!({"n": i}).into(),
                },
            ));
        }
        out
    }

    #[test]
    fn an_export_line_read_in_place_agrees_with_the_record() {
        let mut prev = (0, ChainHash::GENESIS);
        let cases = [
            (
                "alice",
                "",
                json!({"n": 1, "nested": {"a": [1, 2.5, null, true]}}),
            ),
            ("bjørn ✓", "req_01", json!({"text": "ünïcödé \u{2028}"})),
            ("key:abc", "", json!([])),
            ("system", "grant_x", json!("plain")),
        ];
        for (actor, subject, details) in cases {
            let rec = AuditRecord::link(
                prev.0,
                prev.1,
                "2026-11-26T08:00:00.000Z".into(),
                NewAuditRecord {
                    kind: AuditKind::Decision,
                    actor: actor.into(),
                    subject: subject.into(),
                    details: details.into(),
                },
            );
            let line = rec.export_line();
            let read = AuditRecord::read_export_line(&line);
            assert_eq!(
                read,
                Some(ExportedLine {
                    seq: rec.seq,
                    prev_hash: rec.prev_hash,
                    hash: rec.hash
                }),
                "{line}"
            );
            prev = (rec.seq, rec.hash);

            // Anything else is left to the full parse: a changed byte, a
            // re-encoding, upper-case hex, an extra field.
            let changed = [
                line.replacen("2026", "2027", 1),
                line.replacen("\"actor\":", "\"actor\": ", 1),
                line.replacen(
                    &rec.hash.to_string(),
                    &rec.hash.to_string().to_uppercase(),
                    1,
                ),
                line.replacen('{', "{\"x\":1,", 1),
                line.replacen(
                    &format!("\"seq\":{}", rec.seq),
                    &format!("\"seq\":{}", rec.seq + 1),
                    1,
                ),
            ];
            for bad in changed {
                assert_ne!(bad, line);
                assert_eq!(AuditRecord::read_export_line(&bad), None, "{bad}");
            }
        }
        // An escaped string is valid but is not read in place.
        let rec = AuditRecord::link(
            0,
            ChainHash::GENESIS,
            "2026-11-26T08:00:00.000Z".into(),
            NewAuditRecord {
                kind: AuditKind::Decision,
                actor: "a\"b".into(),
                subject: String::new(),
                details: json!({}).into(),
            },
        );
        assert!(rec.content_matches());
        assert_eq!(AuditRecord::read_export_line(&rec.export_line()), None);
    }

    fn verify(records: &[AuditRecord]) -> Result<i64, ChainError> {
        let mut v = ChainVerifier::default();
        for r in records {
            v.push(r)?;
        }
        Ok(v.head_seq())
    }

    #[test]
    fn the_hash_is_the_one_of_earlier_releases() {
        // Chains written before details were hashed as stored bytes must
        // still verify: same bytes as canonical_json over the whole record.
        let r = &chain(1)[0];
        let mut buf = b"airlock-audit-v1\0".to_vec();
        buf.extend_from_slice(&ChainHash::GENESIS.0);
        canonical_json(
            &json!({"seq": 1, "ts": r.ts, "kind": "decision", "actor": "alice",
                    "subject": "", "details": {"n": 0}}),
            &mut buf,
        );
        assert_eq!(r.hash.0, <[u8; 32]>::from(Sha256::digest(&buf)));
    }

    #[test]
    fn records_of_earlier_releases_still_verify() {
        // Earlier releases stored details in insertion order and hashed the
        // canonical form.
        let mut c = chain(3);
        let canonical = RecordedJson::canonical(&json!({"a": 1, "b": [2, {"d": 3, "c": 4}]}));
        c[1].details = canonical.clone();
        c[1].hash = c[1].computed_hash();
        c[2].prev_hash = c[1].hash;
        c[2].hash = c[2].computed_hash();
        c[1].details =
            RecordedJson::from_stored(r#"{"b":[2,{"d":3,"c":4}],"a":1}"#.into()).unwrap();
        assert_eq!(verify(&c), Ok(3));
        // A changed value is still caught.
        c[1].details =
            RecordedJson::from_stored(r#"{"b":[2,{"d":3,"c":5}],"a":1}"#.into()).unwrap();
        assert_eq!(verify(&c).unwrap_err().seq(), 2);
        // So is a key written twice, the last one the canonical value, at
        // any depth.
        for twice in [
            r#"{"b":[2,{"d":3,"c":4}],"a":0,"a":1}"#,
            r#"{"b":[2,{"d":9,"d":3,"c":4}],"a":1}"#,
        ] {
            c[1].details = RecordedJson::from_stored(twice.into()).unwrap();
            assert_eq!(verify(&c).unwrap_err().seq(), 2, "{twice}");
        }
    }

    #[test]
    fn stored_bytes_are_what_is_hashed() {
        // The same value written another way is another record.
        let mut c = chain(3);
        c[1].details = RecordedJson::from_stored("{\"n\":2}".into()).unwrap();
        assert_eq!(verify(&c).unwrap_err().seq(), 2);
        let c = chain(3);
        assert_eq!(c[1].details.get(), "{\"n\":1}", "canonical bytes stored");
        // And a float that would not survive a parse keeps its exact text.
        let d = RecordedJson::from_stored(r#"{"n":9376.0323511051380}"#.into()).unwrap();
        assert_eq!(d.get(), r#"{"n":9376.0323511051380}"#);
    }

    #[test]
    fn only_request_records_are_filed_under_a_request() {
        let rec = |kind, subject: &str, details: Value| NewAuditRecord {
            kind,
            actor: "x".into(),
            subject: subject.into(),
            details: details.into(),
        };
        let id = "req_01a21552-c916-76b1-b1d4-7e13c514b076";
        assert_eq!(rec(AuditKind::Review, id, json!({})).request_id(), Some(id));
        assert_eq!(
            rec(AuditKind::GrantConsumed, "grt_x", json!({"request": id})).request_id(),
            Some(id)
        );
        // A sign-in's subject is the name someone typed.
        assert_eq!(
            rec(AuditKind::SignInFailed, id, json!({})).request_id(),
            None
        );
        assert_eq!(
            rec(AuditKind::SignInLocked, id, json!({"request": id})).request_id(),
            None
        );
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn changed_record_is_named() {
        let mut c = chain(5);
        c[2].details = RecordedJson::canonical(&json!({"n": 99}));
        assert_eq!(verify(&c).unwrap_err().seq(), 3);
    }

    #[test]
    fn deleted_record_is_named() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c).unwrap_err().seq(), 2);
    }

    #[test]
    fn reordered_records_are_named() {
        let mut c = chain(5);
        c.swap(2, 3);
        // Renumber as an attacker would, to hide the swap from the seq check.
        c[2].seq = 3;
        c[3].seq = 4;
        assert_eq!(verify(&c).unwrap_err().seq(), 3);
    }

    #[test]
    fn inserted_record_is_named() {
        let mut c = chain(5);
        let mut fake = c[1].clone();
        fake.details = RecordedJson::canonical(&json!({"forged": true}));
        c.insert(2, fake);
        for (i, r) in c.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        // The forgery stands at seq 3.
        assert_eq!(verify(&c).unwrap_err().seq(), 3);
    }
}
