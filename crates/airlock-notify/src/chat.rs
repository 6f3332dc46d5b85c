//! What the chat channels share: the request a message is about, read as
//! it is when the message is sent.

use airlock_core::{Request, RequestId};
use airlock_store::OutboxMessage;
use serde_json::Value;

use crate::channel::DeliveryError;
use crate::host::Host;

/// The request a chat message is about, its REQUEST view (never with a
/// grant token) and its console link.
pub(crate) struct Subject {
    pub(crate) req: Request,
    pub(crate) view: Value,
    pub(crate) link: String,
}

/// Reads the request a chat message is about: messages are rendered from
/// the request as it is when sent, so a late retry shows the latest state.
pub(crate) async fn subject(
    host: &dyn Host,
    msg: &OutboxMessage,
) -> Result<Subject, DeliveryError> {
    let payload: Value =
        serde_json::from_str(&msg.payload).map_err(|e| DeliveryError::Permanent(e.to_string()))?;
    let id = payload["request"]
        .as_str()
        .and_then(|s| RequestId::parse(s).ok())
        .ok_or_else(|| DeliveryError::Permanent("no request in the message".to_owned()))?;
    let req = host
        .store()
        .read(move |r| r.get_request(&id))
        .await
        .map_err(|e| DeliveryError::Transient(e.to_string()))?
        .ok_or_else(|| DeliveryError::Permanent("the request is gone".to_owned()))?;
    let view = host.view(&req)?;
    let link = host.link(id);
    Ok(Subject { req, view, link })
}
