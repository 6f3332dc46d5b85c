//! Where a service error becomes what a chat platform shows the person who
//! clicked: one message per platform, its text made inert (error messages
//! can quote what someone wrote).

use airlock_notify::discord::{markdown_text, MAX_VALUE};
use airlock_notify::slack::mrkdwn_text;

use crate::ApiError;

/// The refusal, as Slack mrkdwn.
pub(super) fn slack(e: &ApiError) -> String {
    format!("Not done: {}", mrkdwn_text(&e.to_string()))
}

/// The refusal, as Discord markdown.
pub(super) fn discord(e: &ApiError) -> String {
    format!("Not done: {}", markdown_text(&e.to_string(), MAX_VALUE))
}
