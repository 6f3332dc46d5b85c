//! Airlock's notifications: telling other systems what happened.
//!
//! `outbox` queues events in the caller's write transaction, so a change
//! and the news of it commit together; `email::Mail` writes the emails at
//! the same moment. `worker` then delivers the outbox in the background,
//! one message at a time under a lease, through one [`Channel`] per kind of
//! receiver (`webhook`, `email`, `slack`, `discord`), retrying what may
//! pass later ([`DeliveryError::Transient`]) with back-off and giving up at
//! once on what cannot ([`DeliveryError::Permanent`]).
//!
//! Chat callbacks (people pressing Approve in Slack or Discord) are not
//! here: they review through the service, which lives in the server and
//! uses this crate's rendering.
#![forbid(unsafe_code)]

mod channel;
mod chat;
pub mod config;
pub mod discord;
pub mod email;
mod host;
mod outbox;
pub mod slack;
pub mod webhook;
pub mod worker;

pub use channel::{Channel, Delivered, DeliveryError};
pub use email::Mail;
pub use host::{Host, Outcome, Platform};
pub use outbox::{emit, Notifier};
pub use worker::{deliver_due, run};
