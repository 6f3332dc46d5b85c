//! The emails themselves, written when the event is queued: who gets one
//! and what it says.

use std::collections::HashMap;

use airlock_core::display::{json_compact, resource_label, visible};
use airlock_core::{Request, UserName};
use airlock_store::time::fmt;
use airlock_store::{StoreError, WriteTx};
use serde_json::json;

use crate::outbox::queue;

/// Who gets email about a request, captured before a write job so the job
/// can queue the messages in its own transaction.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    /// Whether email is configured at all.
    pub enabled: bool,
    /// The console's URL, for links.
    pub public_url: String,
    /// Each user's email address.
    pub emails: HashMap<UserName, String>,
}

/// The most characters of a subject: a header line may not pass 998
/// bytes (RFC 5322), and a subject with no space to fold at (a long
/// resource id) made servers refuse the message, so its approvers never
/// heard of the request. The body keeps the whole id.
const MAX_SUBJECT: usize = 160;

/// `subject`, cut to [`MAX_SUBJECT`] characters with an ellipsis, with no
/// RFC 2047 encoded-word left in it: mail clients decode `=?utf-8?b?…?=`
/// in a Subject, so a resource id could put any text (a right-to-left
/// override, "pre-approved by security") in the approver's inbox line
/// (found by a black-box pass). Its `?` is shown full-width instead.
fn shortened(subject: String) -> String {
    let subject = subject.replace("=?", "=\u{FF1F}");
    match subject.char_indices().nth(MAX_SUBJECT) {
        None => subject,
        Some((end, _)) => format!("{}…", &subject[..end]),
    }
}

impl Mail {
    /// Queues one email in `tx`.
    fn queue(
        &self,
        tx: &mut dyn WriteTx,
        to: &str,
        event: &str,
        subject: String,
        text: String,
    ) -> Result<(), StoreError> {
        let payload = json!({"subject": shortened(subject), "text": text});
        queue(tx, format!("mailto:{to}"), event, payload)
    }

    /// Asks every eligible approver with an email address to review.
    pub fn to_approvers(
        &self,
        tx: &mut dyn WriteTx,
        req: &Request,
        directory: &airlock_policy::Directory,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let mut approvers: Vec<&UserName> = req
            .requirement
            .thresholds
            .iter()
            .flat_map(|t| directory.members_of(&t.groups))
            .filter(|u| **u != req.action.principal)
            .collect();
        approvers.sort();
        approvers.dedup();
        let link = format!("{}/requests/{}", self.public_url, req.id);
        for user in approvers {
            let Some(to) = self.emails.get(user) else {
                continue;
            };
            let (event, subject, text) = to_approver(req, &link);
            self.queue(tx, to, event, subject, text)?;
        }
        Ok(())
    }

    /// Tells the requester how their request ended.
    pub fn to_requester(
        &self,
        tx: &mut dyn WriteTx,
        req: &Request,
        outcome: &str,
        by: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(to) = self.emails.get(&req.action.principal) else {
            return Ok(());
        };
        let subject = format!(
            "Your request to {} {} was {outcome}",
            req.action.action,
            visible(&resource_label(
                req.action.resource.kind.as_str(),
                req.action.resource.id.as_str()
            ))
        );
        let text = format!(
            "Your request to {} {} was {outcome}{}.\n\n{}/requests/{}\n",
            req.action.action,
            visible(&resource_label(
                req.action.resource.kind.as_str(),
                req.action.resource.id.as_str()
            )),
            by.map(|b| format!(" by {b}")).unwrap_or_default(),
            self.public_url,
            req.id,
        );
        self.queue(tx, to, "request.decided", subject, text)
    }
}

/// What an approver is sent about `req`: its event, subject and text. A
/// break-glass use is said to be one (granted at once, to be reviewed after
/// the fact), as every other channel says; it read as an ordinary request
/// for approval (found by a black-box pass). What the requester wrote is
/// shown inert: a newline in the reason cannot add lines of its own, an
/// override cannot reorder the resource id.
fn to_approver(req: &Request, link: &str) -> (&'static str, String, String) {
    let who = &req.action.principal;
    let verb = &req.action.action;
    let label = resource_label(
        req.action.resource.kind.as_str(),
        req.action.resource.id.as_str(),
    );
    let what = visible(&label);
    let reason = visible(req.reason.as_deref().unwrap_or("(none given)"));
    let params = json_compact(&serde_json::to_value(&req.action.params).unwrap_or_default());
    if req.requirement.breakglass {
        let until = req
            .grant
            .as_ref()
            .map_or_else(|| fmt(req.expires_at), |g| fmt(g.expires_at));
        return (
            "request.breakglass",
            format!("BREAK-GLASS: {who} broke the glass to {verb} {what} (review it after the fact)"),
            format!(
                "{who} broke the glass to {verb} {what}: granted at once, without approval.\n\nReason: {reason}\nParams: {params}\nGrant expires: {until}\n\nReview it after the fact (sign in; approve if it was right, or deny with a reason to flag it and revoke what is left of its grant):\n{link}\n"
            ),
        );
    }
    (
        "request.created",
        format!("Approval needed: {who} wants to {verb} {what}"),
        format!(
            "{who} asks to {verb} {what}.\n\nReason: {reason}\nParams: {params}\nExpires: {}\n\nReview it (sign in; approving is a button on the page, never this link):\n{link}\n",
            fmt(req.expires_at)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subject never passes what a header line may hold, whatever the
    /// resource id (at the API's 1,024 bytes it made a 1,010-byte line
    /// that SMTP servers refuse); a short one is kept as it is.
    #[test]
    fn a_subject_fits_a_header_line() {
        let long = format!(
            "Approval needed: alice wants to download File:{}",
            "é".repeat(1000)
        );
        let cut = shortened(long);
        assert_eq!(cut.chars().count(), MAX_SUBJECT + 1);
        assert!(cut.len() < 998 && cut.ends_with('…'));
        assert_eq!(shortened("short".into()), "short");
        let word = shortened("Approval needed: x:=?utf-8?b?cHJvZC5vcmRlcnM=?=".into());
        assert!(!word.contains("=?"), "{word}");
    }
}
