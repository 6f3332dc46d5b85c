//! What a Slack interaction (a button click or a submitted dialog) asks,
//! read from the callback's raw body once its signature has been checked:
//! a typed value, or why it cannot be acted on.

use airlock_core::RequestId;
use serde_json::Value;

/// One interaction Airlock acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// The Slack user who clicked (`U…`), mapped to an Airlock user by
    /// `slack_id`.
    pub user: String,
    /// Where to answer only that person, when Slack gave one.
    pub response_url: Option<String>,
    /// What they asked.
    pub ask: Ask,
}

/// What an interaction asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// The Approve button.
    Approve(RequestId),
    /// The Deny button: a dialog for the reason is to be opened with
    /// `trigger_id`.
    DenyDialog {
        /// The request.
        request: RequestId,
        /// Slack's handle for opening a dialog in answer.
        trigger_id: String,
    },
    /// The link button to the console (a step-up approval): Slack opens
    /// the link itself and still reports the click, which wants a 200 and
    /// nothing else.
    OpenConsole,
    /// The deny dialog, submitted.
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
    /// The body is not a form with a JSON `payload`.
    #[error("no payload")]
    NoPayload,
    /// A button without a request id Airlock issued.
    #[error("no request in the action")]
    NoRequest,
    /// A dialog without one.
    #[error("no request in the dialog")]
    NoRequestInDialog,
    /// A button Airlock did not put there.
    #[error("unknown action")]
    UnknownAction,
    /// Anything else Slack may send.
    #[error("unsupported interaction")]
    Unsupported,
}

impl Interaction {
    /// Reads an `application/x-www-form-urlencoded` callback body.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        let payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .ok_or(Refusal::NoPayload)?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let request = |v: &Value| v.as_str().and_then(|v| RequestId::parse(v).ok());
        let ask = match payload["type"].as_str() {
            Some("block_actions") => {
                let action = &payload["actions"][0];
                let id = || request(&action["value"]).ok_or(Refusal::NoRequest);
                match action["action_id"].as_str() {
                    Some("approve") => Ask::Approve(id()?),
                    // A link button carries no value.
                    Some("open_console") => Ask::OpenConsole,
                    Some("deny") => Ask::DenyDialog {
                        request: id()?,
                        trigger_id: text(&payload["trigger_id"]).unwrap_or_default(),
                    },
                    _ => return Err(Refusal::UnknownAction),
                }
            }
            Some("view_submission") if payload["view"]["callback_id"] == "deny" => {
                let view = &payload["view"];
                Ask::Deny {
                    request: request(&view["private_metadata"])
                        .ok_or(Refusal::NoRequestInDialog)?,
                    reason: text(&view["state"]["values"]["reason"]["reason"]["value"]),
                }
            }
            _ => return Err(Refusal::Unsupported),
        };
        Ok(Self {
            user: text(&payload["user"]["id"]).unwrap_or_default(),
            response_url: text(&payload["response_url"]),
            ask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(payload: &str) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", payload)
            .finish()
            .into_bytes()
    }

    #[test]
    fn buttons_and_the_dialog_are_read() {
        let id = RequestId::new();
        let click = |action: &str| {
            form(&format!(
                r#"{{"type":"block_actions","user":{{"id":"U1"}},"trigger_id":"tr","response_url":"https://hooks.slack.com/x","actions":[{{"action_id":"{action}","value":"{id}"}}]}}"#
            ))
        };
        let i = Interaction::parse(&click("approve")).unwrap();
        assert_eq!((i.user.as_str(), &i.ask), ("U1", &Ask::Approve(id)));
        assert_eq!(i.response_url.as_deref(), Some("https://hooks.slack.com/x"));
        assert_eq!(
            Interaction::parse(&click("deny")).unwrap().ask,
            Ask::DenyDialog {
                request: id,
                trigger_id: "tr".into()
            }
        );
        assert_eq!(
            Interaction::parse(&click("open_console")).unwrap().ask,
            Ask::OpenConsole
        );
        let link = form(
            r#"{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_id":"open_console"}]}"#,
        );
        assert_eq!(Interaction::parse(&link).unwrap().ask, Ask::OpenConsole);
        assert_eq!(
            Interaction::parse(&click("other")),
            Err(Refusal::UnknownAction)
        );
        let submit = form(&format!(
            r#"{{"type":"view_submission","user":{{"id":"U1"}},"view":{{"callback_id":"deny","private_metadata":"{id}","state":{{"values":{{"reason":{{"reason":{{"value":"no & + %"}}}}}}}}}}}}"#
        ));
        assert_eq!(
            Interaction::parse(&submit).unwrap().ask,
            Ask::Deny {
                request: id,
                reason: Some("no & + %".into())
            }
        );
    }

    #[test]
    fn what_is_not_ours_is_refused() {
        assert_eq!(Interaction::parse(b"a=1"), Err(Refusal::NoPayload));
        assert_eq!(Interaction::parse(b"payload=%7Bx"), Err(Refusal::NoPayload));
        assert_eq!(Interaction::parse(b"payload=%ZZ"), Err(Refusal::NoPayload));
        assert_eq!(
            Interaction::parse(&form(
                r#"{"type":"block_actions","actions":[{"action_id":"approve","value":"nope"}]}"#
            )),
            Err(Refusal::NoRequest)
        );
        assert_eq!(
            Interaction::parse(&form(
                r#"{"type":"view_submission","view":{"callback_id":"deny"}}"#
            )),
            Err(Refusal::NoRequestInDialog)
        );
        assert_eq!(
            Interaction::parse(&form(r#"{"type":"shortcut"}"#)),
            Err(Refusal::Unsupported)
        );
        // "+" is a space and "%2B" a plus, as forms have it.
        assert_eq!(
            Interaction::parse(b"payload=%7B%22type%22%3A+%22x%22%7D"),
            Err(Refusal::Unsupported)
        );
    }
}
