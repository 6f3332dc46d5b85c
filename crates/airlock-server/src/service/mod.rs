//! The approval loop: everything a channel (API, CLI, later web and chat)
//! can ask of Airlock, with every rule enforced here so no channel can skip
//! one.

mod breakglass;
mod check;
mod gate;
mod grants;
mod limits;
#[cfg(test)]
mod model;
pub(crate) mod notify;
mod oversight;
mod requests;
mod view;
mod webauthn;

use std::path::PathBuf;
use std::sync::Arc;

use airlock_core::{AuditKind, NewAuditRecord, RequestId, UserName};
use airlock_keys::{Keyring, PublicKeys};
use airlock_policy::{Directory, PolicyEngine};
use airlock_store::{Role, Store, StoreError};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;

pub use airlock_auth::api_keys::{
    create_api_key, create_api_key_with, hash_key, list_api_keys, new_api_key, revoke_api_key,
    KEY_PREFIX, LAST_USED_GRANULARITY,
};
pub use check::{CheckBody, CheckOutcome, COMPUTED_CONTEXT};
pub use gate::LocalGate;
pub use grants::{CompleteBody, ConsumeBody};
pub use requests::{InboxShow, RequestPage, StepUp, MAX_PAGE, MAX_STEP_UP_FAILURES};
pub(crate) use view::threshold_view;
pub use webauthn::WebauthnAnswer;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ApiError;

/// Who is calling, from their API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's user.
    pub user: UserName,
    /// The key's role.
    pub role: Role,
    /// The key's public id, for the audit log.
    pub key_id: String,
}

impl Caller {
    /// Enforcers act for any principal.
    pub fn is_enforcer(&self) -> bool {
        self.role == Role::Enforcer
    }

    /// Admins may revoke and read the audit log.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Policies and the users they were built for, swapped together on reload
/// so a decision never mixes two versions.
#[derive(Debug)]
pub struct Loaded {
    /// The policy engine.
    pub engine: PolicyEngine,
    /// Users and groups.
    pub directory: Directory,
}

/// The running service. Shared by every request handler.
pub struct Airlock {
    pub(crate) store: Store,
    pub(crate) keys: Arc<Keyring>,
    /// Seals secrets kept at rest (TOTP seeds).
    pub(crate) secrets: Arc<airlock_keys::SecretBox>,
    public: PublicKeys,
    pub(crate) loaded: ArcSwap<Loaded>,
    pub(crate) config: ArcSwap<Config>,
    pub(crate) tz: chrono_tz::Tz,
    pub(crate) timers: mpsc::UnboundedSender<(DateTime<Utc>, RequestId)>,
    pub(crate) metrics: Metrics,
    /// When this node last recorded each key's use (see `api_keys`; there
    /// is no cache of keys themselves).
    key_uses: airlock_auth::api_keys::KeyUses,
    /// The single sign-on provider's metadata, read at the first sign-in.
    pub(crate) oidc: airlock_auth::oidc::Discovery,
    /// Password sign-in's per-name locks, per-address limits and bound on
    /// hashes checked at once.
    pub(crate) passwords: airlock_auth::password::PasswordSignIn,
    /// Open `?wait=` long-polls per user.
    pub(crate) waits: crate::limits::UserSlots,
    /// Open console event streams per user.
    pub(crate) streams: crate::limits::UserSlots,
    /// Sessions signed out on this node (their id hashes), so this node's
    /// event streams end at once; other nodes notice on their next check.
    pub(crate) sessions_ended: tokio::sync::broadcast::Sender<String>,
    /// The address the server actually listens on (`listen` may say port 0).
    bound: std::sync::OnceLock<String>,
    /// Checks per key per second.
    check_limiter: limits::CheckLimiter,
    /// What each C2SP witness last acknowledged.
    pub(crate) witnessed: crate::witness::Witnessed,
}

impl std::fmt::Debug for Airlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Airlock")
            .field("store", &self.store)
            .finish()
    }
}

/// What `Airlock::start` hands back for the background tasks to drive.
#[derive(Debug)]
pub struct Background {
    /// New expiry deadlines.
    pub timers: mpsc::UnboundedReceiver<(DateTime<Utc>, RequestId)>,
}

impl Airlock {
    /// Opens the store and keys and loads policy. Fails (and the server does
    /// not start) on any of: bad config, unreadable keys, policy that does
    /// not load, a store that does not open.
    pub async fn start(config: Config) -> Result<(Arc<Self>, Background), StartError> {
        let tz = config.timezone();
        let store = Store::open(config.storage.url.as_str(), &config.base_dir)?;
        let (keys, created) = Keyring::load_or_create(&config.data_dir().join("keys"))
            .map_err(|e| StartError::Keys(e.to_string()))?;
        let secrets = airlock_keys::SecretBox::load_or_create(&config.data_dir().join("keys"))
            .map_err(|e| StartError::Keys(e.to_string()))?;
        let synced = store.read(|r| r.synced_groups()).await?;
        let directory = config.directory_with(&synced);
        let engine = PolicyEngine::load(&config.policy_dir(), &directory)
            .map_err(|e| StartError::Policy(e.to_string()))?;
        let version = engine.version().to_owned();
        let count = engine.policy_count();
        let (timers_tx, timers_rx) = mpsc::unbounded_channel();
        let public = keys.public();
        let airlock = Arc::new(Self {
            store,
            keys: Arc::new(keys),
            secrets: Arc::new(secrets),
            public,
            loaded: ArcSwap::from_pointee(Loaded { engine, directory }),
            config: ArcSwap::from_pointee(config),
            tz,
            timers: timers_tx,
            metrics: Metrics::new(),
            key_uses: Default::default(),
            oidc: Default::default(),
            bound: std::sync::OnceLock::new(),
            passwords: Default::default(),
            waits: Default::default(),
            streams: Default::default(),
            sessions_ended: tokio::sync::broadcast::channel(64).0,
            check_limiter: Default::default(),
            witnessed: Default::default(),
        });
        let now = airlock_store::time::now();
        let created: Vec<String> = created.into_iter().map(String::from).collect();
        let ours = [
            ("grant", airlock.public.grant.paserk()),
            ("audit", airlock.public.audit.paserk()),
            // Not a signing key: the fingerprint of secrets.key, which
            // seals TOTP seeds; a node with another one could not open
            // them and would refuse every step-up approval.
            ("secrets", airlock.secrets.fingerprint().to_owned()),
        ];
        airlock
            .store
            .write(move |tx| {
                // Records after the last signed checkpoint, before this
                // start writes any: a stop that signed nothing (a crash, a
                // kill), here or on another node.
                let (head, _) = tx.audit_head()?;
                let checkpoint = tx.checkpoints()?.last().map_or(0, |c| c.seq);
                // Every node of a deployment must sign with the same keys,
                // or grants minted here fail elsewhere and checkpoints
                // signed here fail verification.
                for (purpose, public) in &ours {
                    match tx.signing_key(purpose)? {
                        None => tx.insert_signing_key(purpose, public, now)?,
                        Some(k) if k == *public => {}
                        Some(k) => {
                            return Err(StartError::Keys(format!(
                                "this node's {purpose} key ({public}) is not the one this \
                                 database was set up with ({k}); copy the key files from an \
                                 existing node into this node's keys folder"
                            )))
                        }
                    }
                }
                for k in &created {
                    tx.append_audit(
                        NewAuditRecord {
                            kind: AuditKind::KeyCreated,
                            actor: "system".into(),
                            subject: format!("{k}-signing-key"),
                            details: json!({"kind": "signing", "use": k}).into(),
                        },
                        now,
                    )?;
                }
                if head > checkpoint {
                    let tree = tx.audit_notes()?.last().map_or(0, |(size, _)| *size);
                    tx.append_audit(
                        NewAuditRecord {
                            kind: AuditKind::Resumed,
                            actor: "system".into(),
                            subject: String::new(),
                            details: json!({
                                "head": head,
                                "last_checkpoint": checkpoint,
                                "last_tree_checkpoint": tree,
                            })
                            .into(),
                        },
                        now,
                    )?;
                }
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::PolicyLoaded,
                        actor: "system".into(),
                        subject: String::new(),
                        details: json!({"version": version, "policies": count, "trigger": "start"})
                            .into(),
                    },
                    now,
                )?;
                Ok::<_, StartError>(())
            })
            .await?;
        // Re-arm the timers of everything still waiting from before a restart.
        for (id, at) in airlock.store.read(|r| r.pending_expiries()).await? {
            let _ = airlock.timers.send((at, id));
        }
        Ok((airlock, Background { timers: timers_rx }))
    }

    /// Records the address the listener got, for links when `public_url`
    /// is not set.
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let _ = self.bound.set(format!("http://{addr}"));
    }

    /// The URL people reach this server at, for links: `[server]
    /// public_url`, else the address it listens on.
    pub fn public_url(&self) -> String {
        let config = self.config.load();
        match (&config.server.public_url, self.bound.get()) {
            (Some(_), _) | (None, None) => config.public_url(),
            (None, Some(bound)) => bound.clone(),
        }
    }

    /// The store, for tools that share the process.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The public keys, for `/v1/keys`.
    pub fn public_keys(&self) -> &PublicKeys {
        &self.public
    }

    /// The policy version being served.
    pub fn policy_version(&self) -> String {
        self.loaded.load().engine.version().to_owned()
    }

    /// Looks up the caller behind a bearer key, in the store, on every
    /// call: a revoked or expired key is refused at once (see
    /// `airlock_auth::api_keys`).
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller, ApiError> {
        let key = airlock_auth::api_keys::authenticate(&self.store, &self.key_uses, bearer).await?;
        // A user removed from the configuration keeps no access through a
        // key made for them (enforcer keys name a service, not a person).
        if key.role != Role::Enforcer && !self.loaded.load().directory.contains(&key.user) {
            return Err(ApiError::Unauthenticated);
        }
        Ok(Caller {
            user: key.user,
            role: key.role,
            key_id: key.id,
        })
    }

    /// Checks a database client's SCRAM proof for `body.user` (the
    /// PostgreSQL proxy's login, asked by an enforcer key): which live key
    /// it was made with, and the signature that proves Airlock back.
    pub async fn scram_login(
        &self,
        caller: &Caller,
        body: airlock_api::ScramLoginBody,
    ) -> Result<airlock_api::ScramLoginResponse, ApiError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        if caller.role != Role::Enforcer {
            return Err(ApiError::forbidden(
                "only enforcer keys log database clients in",
            ));
        }
        // Removed users keep no access through their keys, as in
        // `authenticate`.
        if !self.loaded.load().directory.contains(&body.user) {
            return Err(ApiError::Unauthenticated);
        }
        let proof = b64
            .decode(body.proof.as_bytes())
            .map_err(|_| ApiError::BadRequest("proof is not base64".into()))?;
        let (key, signature) = airlock_auth::api_keys::scram_login(
            &self.store,
            &self.key_uses,
            &body.user,
            body.auth_message.as_bytes(),
            &proof,
        )
        .await?;
        Ok(airlock_api::ScramLoginResponse {
            user: key.user,
            key: key.id,
            server_signature: b64.encode(signature),
        })
    }

    /// Whether `body.user`'s key `body.key` may still be used (enforcer
    /// keys: the PostgreSQL proxy re-checks the key of each open session).
    pub async fn key_live(
        &self,
        caller: &Caller,
        body: airlock_api::KeyLiveBody,
    ) -> Result<airlock_api::KeyLiveResponse, ApiError> {
        if caller.role != Role::Enforcer {
            return Err(ApiError::forbidden(
                "only enforcer keys ask about other keys",
            ));
        }
        if !self.loaded.load().directory.contains(&body.user) {
            return Ok(airlock_api::KeyLiveResponse { live: false });
        }
        let user = body.user.clone();
        let keys = self
            .store
            .read_single(move |r| r.api_keys_of(&user))
            .await?;
        let now = airlock_store::time::now();
        let live = keys
            .iter()
            .any(|k| k.id == body.key && k.role != Role::Enforcer && k.refusal(now).is_none());
        Ok(airlock_api::KeyLiveResponse { live })
    }

    pub(crate) fn policy_dir(&self) -> PathBuf {
        self.config.load().policy_dir()
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration.
    #[error("config: {0}")]
    Config(String),
    /// Keys.
    #[error("signing keys: {0}")]
    Keys(String),
    /// Policy.
    #[error("policy: {0}")]
    Policy(String),
    /// Storage.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}
