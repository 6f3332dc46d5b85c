//! Single sign-on with OpenID Connect: the authorization code flow with
//! PKCE, state and nonce, and a verified ID token, through the
//! `openidconnect` crate. People are matched to configured users by email.
//!
//! The flow's secrets (state, nonce, PKCE verifier) wait in a short-lived
//! HttpOnly cookie scoped to the callback path; it is `SameSite=Lax`
//! because the provider's redirect back is a cross-site navigation.

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};

use airlock_core::{AuditKind, GroupName, NewAuditRecord, UserName};
use airlock_store::time::now;
use airlock_store::{Store, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::tokens::same_secret;
use crate::AuthError;

/// `[web.oidc]`: sign-in with an OpenID Connect provider (authorization
/// code flow with PKCE). People are matched to `[[users]]` by the ID
/// token's `email` claim, which the provider must mark verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; its discovery document is read from
    /// `ISSUER/.well-known/openid-configuration` at the first sign-in.
    pub issuer: String,
    /// This console's client id at the provider.
    pub client_id: String,
    /// The client secret, for confidential clients (sent with HTTP Basic
    /// authentication). PKCE is used either way.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Where the provider sends people back. Default
    /// `PUBLIC_URL/login/oidc/callback`; register it at the provider.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// The sign-in button's label. Default "Sign in with single sign-on".
    #[serde(default)]
    pub label: Option<String>,
    /// Take the user's groups from this claim of the ID token (a list of
    /// names) at each sign-in, replacing the `groups` of their `[[users]]`
    /// entry on every node until the next sign-in reports others. Unset:
    /// groups come from the config only.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Accept an email the provider does not mark as verified. Anyone who
    /// can set an unverified address at the provider could then sign in as
    /// the Airlock user with that address. Default false.
    #[serde(default)]
    pub danger_accept_unverified_email: bool,
}

/// The cookie that carries the flow's secrets between the two redirects.
pub const FLOW_COOKIE: &str = "airlock_oidc";
/// Where the provider sends people back.
pub const CALLBACK_PATH: &str = "/login/oidc/callback";

/// The provider's metadata, read at the first sign-in and again whenever
/// the configured issuer changes (a reload cutting over to another
/// provider takes effect at once).
#[derive(Default)]
pub struct Discovery(tokio::sync::Mutex<Option<(String, CoreProviderMetadata)>>);

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discovery")
    }
}

fn http() -> Result<openidconnect::reqwest::Client, AuthError> {
    openidconnect::reqwest::Client::builder()
        // Following redirects would open the token request to SSRF.
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| AuthError::Upstream(format!("HTTP client: {e}")))
}

fn upstream(what: &str) -> impl Fn(String) -> AuthError + '_ {
    move |e| AuthError::Upstream(format!("single sign-on: {what}: {e}"))
}

impl Discovery {
    async fn metadata(&self, cfg: &OidcConfig) -> Result<CoreProviderMetadata, AuthError> {
        let mut cached = self.0.lock().await;
        if let Some((issuer, meta)) = cached.as_ref() {
            if *issuer == cfg.issuer {
                return Ok(meta.clone());
            }
        }
        let issuer =
            IssuerUrl::new(cfg.issuer.clone()).map_err(|e| upstream("issuer")(e.to_string()))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &http()?)
            .await
            .map_err(|e| upstream("discovery")(format!("{e:?}")))?;
        *cached = Some((cfg.issuer.clone(), meta.clone()));
        Ok(meta)
    }
}

/// The redirect to the provider and the cookie value to set.
pub struct Start {
    pub url: String,
    pub cookie: String,
}

fn redirect_url(cfg: &OidcConfig, public_url: &str) -> Result<RedirectUrl, AuthError> {
    let url = cfg
        .redirect_url
        .clone()
        .unwrap_or_else(|| format!("{public_url}{CALLBACK_PATH}"));
    RedirectUrl::new(url).map_err(|e| upstream("redirect_url")(e.to_string()))
}

/// The client as discovery configured it: authorization and token
/// endpoints known, userinfo possibly.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

async fn client(
    discovery: &Discovery,
    cfg: &OidcConfig,
    public_url: &str,
) -> Result<Client, AuthError> {
    let meta = discovery.metadata(cfg).await?;
    Ok(CoreClient::from_provider_metadata(
        meta,
        ClientId::new(cfg.client_id.clone()),
        cfg.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(redirect_url(cfg, public_url)?))
}

/// Begins a sign-in: where to send the browser, and what to remember.
pub async fn start(
    discovery: &Discovery,
    cfg: &OidcConfig,
    public_url: &str,
) -> Result<Start, AuthError> {
    let client = client(discovery, cfg, public_url).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok(Start {
        url: url.to_string(),
        cookie: format!(
            "{}~{}~{}",
            state.secret(),
            nonce.secret(),
            verifier.secret()
        ),
    })
}

/// Who the provider says signed in.
#[derive(Debug)]
pub struct Identity {
    /// Their verified email.
    pub email: String,
    /// Their groups, when `groups_claim` is configured (empty if the ID
    /// token lacks the claim).
    pub groups: Option<Vec<String>>,
}

/// A claim of an ID token whose signature was already verified: its
/// payload is read as JSON.
fn verified_claim(id_token: &impl serde::Serialize, name: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let jwt = serde_json::to_value(id_token).ok()?;
    let payload = jwt.as_str()?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name).cloned()
}

/// Finishes a sign-in: checks the state, exchanges the code (with the
/// PKCE verifier), verifies the ID token (signature, issuer, audience,
/// expiry, nonce) and returns who it names.
pub async fn finish(
    discovery: &Discovery,
    cfg: &OidcConfig,
    public_url: &str,
    flow_cookie: &str,
    state: &str,
    code: &str,
) -> Result<Identity, AuthError> {
    let mut parts = flow_cookie.splitn(3, '~');
    let (Some(expected), Some(nonce), Some(verifier)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Refused(
            "the sign-in flow expired or was not started here; try again".into(),
        ));
    };
    if !same_secret(state, expected) {
        return Err(AuthError::Refused(
            "the provider's answer does not belong to this sign-in (state mismatch)".into(),
        ));
    }
    let client = client(discovery, cfg, public_url).await?;
    let http = http()?;
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| upstream("token endpoint")(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
        .request_async(&http)
        .await
        .map_err(|e| upstream("code exchange")(format!("{e:?}")))?;
    let id_token = openidconnect::TokenResponse::id_token(&token)
        .ok_or_else(|| upstream("token response")("no ID token".into()))?;
    let claims = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(nonce.to_owned()))
        .map_err(|e| AuthError::Refused(format!("the ID token does not verify: {e}")))?;
    // Many providers put the email in the ID token; others only at the
    // userinfo endpoint, which answers for the same subject or not at all.
    let (email, verified) = match claims.email() {
        Some(e) => (e.as_str().to_owned(), claims.email_verified()),
        None => {
            let info: openidconnect::core::CoreUserInfoClaims = client
                .user_info(
                    openidconnect::OAuth2TokenResponse::access_token(&token).clone(),
                    Some(claims.subject().clone()),
                )
                .map_err(|e| upstream("userinfo endpoint")(e.to_string()))?
                .request_async(&http)
                .await
                .map_err(|e| upstream("userinfo")(format!("{e:?}")))?;
            let email = info.email().ok_or_else(|| {
                AuthError::Refused("the provider sent no email for this account".into())
            })?;
            (email.as_str().to_owned(), info.email_verified())
        }
    };
    if verified != Some(true) && !cfg.danger_accept_unverified_email {
        return Err(AuthError::Refused(
            "the provider has not verified this account's email".into(),
        ));
    }
    let groups = cfg
        .groups_claim
        .as_deref()
        .map(|claim| match verified_claim(id_token, claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one],
            _ => Vec::new(),
        });
    Ok(Identity { email, groups })
}

/// Records the groups single sign-on reported for `user` if they differ
/// from `current` (those in force); every node then rebuilds its
/// directory. Names that are not valid group names are dropped (and
/// logged).
pub async fn sync_groups(
    store: &Store,
    user: &UserName,
    claimed: &[String],
    current: Vec<GroupName>,
) -> Result<(), AuthError> {
    let mut groups: Vec<GroupName> = claimed
        .iter()
        .filter_map(|g| match GroupName::parse(g) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(group = %g, error = %e, "ignoring a group from single sign-on");
                None
            }
        })
        .collect();
    groups.sort();
    groups.dedup();
    if current == groups {
        return Ok(());
    }
    let (user, t) = (user.clone(), now());
    store
        .write(move |tx| {
            tx.set_synced_groups(&user, &groups, t)?;
            tx.append_audit(
                NewAuditRecord {
                    kind: AuditKind::GroupsSynced,
                    actor: "oidc".into(),
                    subject: user.to_string(),
                    details: json!({"groups": groups, "previous": current}).into(),
                },
                t,
            )?;
            tx.directory_changed();
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(AuthError::Audit)
}
