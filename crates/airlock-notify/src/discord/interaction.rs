//! What a Discord interaction (a button, a submitted modal, Discord's
//! ping) asks, read from the callback's raw JSON once its signature has
//! been checked: a typed value, or why it cannot be acted on.

use airlock_core::RequestId;
use serde_json::Value;

/// One interaction Airlock acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// Discord's id of the interaction: it retries, Airlock acts once.
    pub id: String,
    /// The Discord user (`member.user.id` in a server, `user.id` in a
    /// direct message), mapped to an Airlock user by `discord_id`.
    pub user: String,
    /// What they asked.
    pub ask: Ask,
}

/// What an interaction asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Discord checking the endpoint (type 1): answered with a pong.
    Ping,
    /// The Approve button.
    Approve(RequestId),
    /// The Deny button: a modal for the reason is the answer.
    DenyDialog(RequestId),
    /// The deny modal, submitted.
    Deny {
        /// The request.
        request: RequestId,
        /// What the reviewer typed.
        reason: Option<String>,
    },
}

/// Why an interaction is refused (each a 400 with this text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body is not JSON.
    #[error("not JSON")]
    NotJson,
    /// No request id Airlock issued in its `custom_id`.
    #[error("no request in the interaction")]
    NoRequest,
    /// Anything else Discord may send.
    #[error("unsupported interaction")]
    Unsupported,
}

impl Interaction {
    /// Reads a callback body.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        let i: Value = serde_json::from_slice(body).map_err(|_| Refusal::NotJson)?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let kind = i["type"].as_u64();
        let ask = if kind == Some(1) {
            Ask::Ping
        } else {
            let custom = i["data"]["custom_id"].as_str().unwrap_or("");
            let (verb, rid) = custom.split_once(':').unwrap_or(("", ""));
            let request = RequestId::parse(rid).map_err(|_| Refusal::NoRequest)?;
            match (kind, verb) {
                (Some(3), "approve") => Ask::Approve(request),
                (Some(3), "deny") => Ask::DenyDialog(request),
                (Some(5), "deny") => Ask::Deny {
                    request,
                    reason: i["data"]["components"][0]["components"][0]["value"]
                        .as_str()
                        .map(str::to_owned),
                },
                _ => return Err(Refusal::Unsupported),
            }
        };
        let user = i["member"]["user"]["id"]
            .as_str()
            .or(i["user"]["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            id: text(&i["id"]),
            user,
            ask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_modals_and_pings_are_read() {
        let id = RequestId::new();
        let i = Interaction::parse(br#"{"type":1,"id":"9"}"#).unwrap();
        assert_eq!((i.id.as_str(), i.ask), ("9", Ask::Ping));
        let click = |verb: &str, user: &str| {
            format!(r#"{{"type":3,"id":"7",{user},"data":{{"custom_id":"{verb}:{id}"}}}}"#)
        };
        let i = Interaction::parse(click("approve", r#""member":{"user":{"id":"D1"}}"#).as_bytes())
            .unwrap();
        assert_eq!((i.user.as_str(), i.ask), ("D1", Ask::Approve(id)));
        let i = Interaction::parse(click("deny", r#""user":{"id":"D2"}"#).as_bytes()).unwrap();
        assert_eq!((i.user.as_str(), i.ask), ("D2", Ask::DenyDialog(id)));
        let modal = format!(
            r#"{{"type":5,"id":"8","user":{{"id":"D2"}},"data":{{"custom_id":"deny:{id}","components":[{{"components":[{{"value":"why"}}]}}]}}}}"#
        );
        assert_eq!(
            Interaction::parse(modal.as_bytes()).unwrap().ask,
            Ask::Deny {
                request: id,
                reason: Some("why".into())
            }
        );
    }

    #[test]
    fn what_is_not_ours_is_refused() {
        assert_eq!(Interaction::parse(b"{"), Err(Refusal::NotJson));
        assert_eq!(
            Interaction::parse(br#"{"type":3,"data":{"custom_id":"approve:nope"}}"#),
            Err(Refusal::NoRequest)
        );
        let other = format!(
            r#"{{"type":2,"data":{{"custom_id":"approve:{}"}}}}"#,
            RequestId::new()
        );
        assert_eq!(
            Interaction::parse(other.as_bytes()),
            Err(Refusal::Unsupported)
        );
    }
}
