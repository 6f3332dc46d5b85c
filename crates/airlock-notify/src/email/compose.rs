//! The emails themselves, written when the event is queued: who gets one
//! and what it says.

use std::collections::HashMap;

use airlock_core::display::{json_compact, visible};
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
        let payload = json!({"subject": subject, "text": text});
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
            // What the requester wrote is shown inert: a newline in the
            // reason cannot add lines of its own, an override cannot
            // reorder the resource id.
            let subject = format!(
                "Approval needed: {} wants to {} {}:{}",
                req.action.principal,
                req.action.action,
                req.action.resource.kind,
                visible(req.action.resource.id.as_str())
            );
            let text = format!(
                "{} asks to {} {}:{}.\n\nReason: {}\nParams: {}\nExpires: {}\n\nReview it (sign in; approving is a button on the page, never this link):\n{link}\n",
                req.action.principal,
                req.action.action,
                req.action.resource.kind,
                visible(req.action.resource.id.as_str()),
                visible(req.reason.as_deref().unwrap_or("(none given)")),
                json_compact(&serde_json::to_value(&req.action.params).unwrap_or_default()),
                fmt(req.expires_at),
            );
            self.queue(tx, to, "request.created", subject, text)?;
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
            "Your request to {} {}:{} was {outcome}",
            req.action.action,
            req.action.resource.kind,
            visible(req.action.resource.id.as_str())
        );
        let text = format!(
            "Your request to {} {}:{} was {outcome}{}.\n\n{}/requests/{}\n",
            req.action.action,
            req.action.resource.kind,
            visible(req.action.resource.id.as_str()),
            by.map(|b| format!(" by {b}")).unwrap_or_default(),
            self.public_url,
            req.id,
        );
        self.queue(tx, to, "request.decided", subject, text)
    }
}
