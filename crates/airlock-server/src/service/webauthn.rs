//! WebAuthn step-up, in the console: registering a security key or
//! passkey, and the assertion an approval of a `@step_up("webauthn")`
//! request needs. webauthn-rs does the ceremonies; the state between a
//! challenge and its answer travels sealed in the page (bound to the user
//! and to what it is for), so any node can finish it; credentials and
//! their signature counters live in the store.

use airlock_core::{AuditKind, NewAuditRecord, RequestId, UserName};
use airlock_store::time::now;
use airlock_store::WriteTx;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::{Airlock, Caller};
use crate::ApiError;

/// An approval's WebAuthn answer, as the console posts it: the
/// credential's JSON and the sealed challenge state.
#[derive(Debug, Clone, Default)]
pub struct WebauthnAnswer {
    /// `PublicKeyCredential.toJSON()`.
    pub credential: String,
    /// The sealed state from the challenge.
    pub state: String,
}

fn refuse(message: String) -> ApiError {
    ApiError::Forbidden {
        code: airlock_api::ErrorCode::StepUpRequired,
        message,
    }
}

/// What a sealed ceremony state is bound to.
fn bound(purpose: &str, user: &UserName, request: Option<RequestId>) -> String {
    match request {
        Some(id) => format!("webauthn-{purpose}:{user}:{id}"),
        None => format!("webauthn-{purpose}:{user}"),
    }
}

fn passkeys(stored: Option<String>) -> Result<Vec<Passkey>, ApiError> {
    match stored {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            ApiError::Storage(airlock_store::StoreError::Corrupt(format!(
                "stored WebAuthn credentials: {e}"
            )))
        }),
    }
}

impl Airlock {
    /// The relying party: the console's own origin (`server.public_url`),
    /// its host as the RP id. Browsers accept `localhost` and real domain
    /// names, not bare IP addresses.
    fn relying_party(&self) -> Result<Webauthn, ApiError> {
        relying_party(&self.public_url())
    }

    /// Starts registering a security key: the browser's options and the
    /// sealed state to send back with its answer.
    pub async fn webauthn_register_start(
        &self,
        caller: &Caller,
    ) -> Result<(Value, String), ApiError> {
        let rp = self.relying_party()?;
        let user = caller.user.clone();
        let known = self.passkeys_of(&user).await?;
        let exclude = known.iter().map(|p| p.cred_id().clone()).collect();
        // A stable, opaque handle per user name.
        let digest = Sha256::digest(user.as_str().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let (options, state) = rp
            .start_passkey_registration(
                Uuid::from_bytes(id),
                user.as_str(),
                user.as_str(),
                Some(exclude),
            )
            .map_err(|e| {
                ApiError::BadRequest(format!("cannot start WebAuthn registration: {e}"))
            })?;
        let state = serde_json::to_vec(&state).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let sealed = self.secrets.seal(&state, &bound("register", &user, None));
        Ok((json!(options), sealed))
    }

    /// Finishes registering: the browser's answer checked against the
    /// sealed state, and the credential kept.
    pub async fn webauthn_register_finish(
        &self,
        caller: &Caller,
        credential: &str,
        sealed: &str,
    ) -> Result<(), ApiError> {
        let rp = self.relying_party()?;
        let user = caller.user.clone();
        let state = self
            .secrets
            .open(sealed, &bound("register", &user, None))
            .map_err(|_| ApiError::BadRequest("the registration is stale; start again".into()))?;
        let state: PasskeyRegistration =
            serde_json::from_slice(&state).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let answer: RegisterPublicKeyCredential = serde_json::from_str(credential)
            .map_err(|e| ApiError::BadRequest(format!("not a WebAuthn credential: {e}")))?;
        let key = rp
            .finish_passkey_registration(&answer, &state)
            .map_err(|e| {
                ApiError::BadRequest(format!("the security key was not registered: {e}"))
            })?;
        self.store
            .write(move |tx| {
                let t = now();
                let mut all = passkeys(tx.webauthn_keys(&user)?)?;
                all.push(key);
                tx.set_webauthn_keys(&user, &json!(all).to_string(), t)?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::WebauthnRegistered,
                        actor: user.to_string(),
                        subject: user.to_string(),
                        details: json!({"user": user.as_str(), "credentials": all.len()}).into(),
                    },
                    t,
                )?;
                Ok::<_, ApiError>(())
            })
            .await
    }

    /// Whether `caller` registered a security key.
    pub async fn webauthn_registered(&self, caller: &Caller) -> Result<bool, ApiError> {
        Ok(!self.passkeys_of(&caller.user).await?.is_empty())
    }

    /// `user`'s registered credentials.
    async fn passkeys_of(&self, user: &UserName) -> Result<Vec<Passkey>, ApiError> {
        let u = user.clone();
        passkeys(self.store.read(move |r| r.webauthn_keys(&u)).await?)
    }

    /// A challenge for approving request `id` with a security key.
    pub async fn webauthn_challenge(
        &self,
        caller: &Caller,
        id: RequestId,
    ) -> Result<(Value, String), ApiError> {
        let rp = self.relying_party()?;
        let user = caller.user.clone();
        let known = self.passkeys_of(&user).await?;
        if known.is_empty() {
            return Err(refuse(format!(
                "this approval needs a security key and {user} has registered none: register one on the console's Account page"
            )));
        }
        let (options, state) = rp
            .start_passkey_authentication(&known)
            .map_err(|e| ApiError::BadRequest(format!("cannot start WebAuthn: {e}")))?;
        let state = serde_json::to_vec(&state).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok((
            json!(options),
            self.secrets
                .seal(&state, &bound("approve", &user, Some(id))),
        ))
    }
}

/// The relying party for the console at `public_url`, its host as the RP
/// id. Built only where a security key is used: webauthn-rs logs an error
/// for every origin it refuses (the quickstart's `127.0.0.1`), which every
/// review made when it was built for each.
pub(crate) fn relying_party(public_url: &str) -> Result<Webauthn, ApiError> {
    let origin = Url::parse(public_url)
        .map_err(|e| ApiError::BadRequest(format!("server.public_url: {e}")))?;
    let host = origin.host_str().unwrap_or_default().to_owned();
    WebauthnBuilder::new(&host, &origin)
        .and_then(|b| b.rp_name("Airlock").build())
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "WebAuthn needs server.public_url on a domain name or localhost ({origin}): {e}"
            ))
        })
}

/// The relying party an approval with a security key needs. A server
/// whose `public_url` no browser takes as an RP id (a bare IP address)
/// cannot ask for a key at all: the approval is refused as a step-up not
/// met (403 `step_up_required`), not blamed on the reviewer's input.
pub(crate) fn approval_relying_party(public_url: &str) -> Result<Webauthn, ApiError> {
    relying_party(public_url).map_err(|e| {
        refuse(format!(
            "this approval needs a security key, which this server cannot ask for: {e}"
        ))
    })
}

/// Checks `reviewer`'s WebAuthn answer for approving request `id`, inside
/// the review's transaction, and keeps the credential's new counter (a
/// cloned key shows up as a counter that goes back).
pub(crate) fn step_up_webauthn(
    tx: &mut dyn WriteTx,
    rp: &Webauthn,
    secrets: &airlock_keys::SecretBox,
    reviewer: &UserName,
    id: RequestId,
    answer: Option<&WebauthnAnswer>,
    page: &str,
) -> Result<(), ApiError> {
    let Some(answer) = answer.filter(|a| !a.credential.is_empty()) else {
        return Err(refuse(format!(
            "this approval needs your security key: approve in the console, {page}"
        )));
    };
    let state = secrets
        .open(&answer.state, &bound("approve", reviewer, Some(id)))
        .map_err(|_| {
            refuse(
                "the security-key challenge is not for this approval, or is stale; try again"
                    .into(),
            )
        })?;
    let state: PasskeyAuthentication = serde_json::from_slice(&state)
        .map_err(|_| refuse("the security-key challenge is unreadable; try again".into()))?;
    let credential: PublicKeyCredential = serde_json::from_str(&answer.credential)
        .map_err(|e| refuse(format!("not a WebAuthn assertion: {e}")))?;
    let result = rp
        .finish_passkey_authentication(&credential, &state)
        .map_err(|e| refuse(format!("the security key's answer does not verify: {e}")))?;
    let mut all = passkeys(tx.webauthn_keys(reviewer)?)?;
    for key in &mut all {
        key.update_credential(&result);
    }
    tx.set_webauthn_keys(reviewer, &json!(all).to_string(), now())?;
    Ok(())
}
