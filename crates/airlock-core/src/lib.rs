//! Airlock's domain types: the vocabulary every other crate speaks, with no I/O.
//!
//! Everything here is parsed, not validated: a value of one of these types
//! cannot hold an invalid name, id, fingerprint or duration, so the layers
//! above never re-check.
#![forbid(unsafe_code)]

pub mod action;
pub mod audit;
pub mod decision;
pub mod display;
pub mod error;
pub mod ids;
pub mod merkle;
pub mod names;
pub mod request;
mod schema;
pub mod scram;
pub mod ttl;

pub use action::{Action, Fingerprint, Resource};
pub use audit::{
    AuditKind, AuditRecord, ChainError, ChainHash, ChainVerifier, Details, ExportedLine,
    NewAuditRecord, RecordedJson,
};
pub use decision::{Decision, Requirement, Threshold};
pub use error::ParseError;
pub use ids::{GrantId, RequestId};
pub use names::{ActionName, GroupName, UserName};
pub use request::{Request, RequestStatus, Review, Verdict};
pub use ttl::{KeyLifetime, Ttl};
