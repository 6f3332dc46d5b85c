//! Callbacks from chat platforms, where approvers decide without leaving
//! their chat: each verifies the platform's signature on the raw body
//! before parsing anything, maps the platform user to an Airlock user, and
//! calls the same service methods as every other channel.

pub(crate) mod discord;
mod respond;
pub(crate) mod slack;
