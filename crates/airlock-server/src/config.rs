//! The configuration file (`airlock.toml`). The doc comments on these
//! structs are the reference for every setting; relative paths are relative
//! to the config file.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};

use airlock_core::{GroupName, UserName};
use airlock_policy::Directory;
use serde::Deserialize;

pub use airlock_auth::oidc::OidcConfig;
pub use airlock_notify::config::{
    DiscordConfig, EmailConfig, NotifyConfig, SlackConfig, WebhookConfig,
};
pub use airlock_proxy_http::{AuthzConfig, HttpProxyConfig, ProxyClientConfig};
pub use airlock_proxy_pg::PgProxyConfig;

/// `[proxies]`: the enforcement points a config declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxiesConfig {
    /// `[[proxies.http]]`: HTTP reverse proxies.
    #[serde(default)]
    pub http: Vec<HttpProxyConfig>,
    /// `[[proxies.authz]]`: authorization endpoints for front proxies
    /// already in place (Envoy `ext_authz`, nginx `auth_request`).
    #[serde(default)]
    pub authz: Vec<AuthzConfig>,
    /// `[[proxies.postgres]]`: PostgreSQL wire proxies.
    #[serde(default)]
    pub postgres: Vec<PgProxyConfig>,
}

impl ProxiesConfig {
    /// Whether it declares nothing.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.authz.is_empty() && self.postgres.is_empty()
    }

    /// Checks what the types cannot: each listener's name is its identity
    /// in the audit log (`proxy.NAME`, key id `proxy:NAME`), so it must be
    /// there and be its own; two listeners of a kind under one name would
    /// be one actor in every record.
    pub fn check(&self) -> Result<(), String> {
        let names = (self.http.iter().map(|p| ("http", p.name.as_str())))
            .chain(self.authz.iter().map(|p| ("authz", p.name.as_str())))
            .chain(self.postgres.iter().map(|p| ("postgres", p.name.as_str())));
        let mut seen = std::collections::BTreeSet::new();
        for (kind, name) in names {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(format!(
                    "proxies.{kind} name {name:?}: use 1 to 64 letters, digits, `_`, `-` or `.`"
                ));
            }
            if !seen.insert((kind, name)) {
                return Err(format!("proxies.{kind} name {name:?} is used twice"));
            }
        }
        Ok(())
    }
}

/// The file `airlock proxy --config FILE` reads: `[proxy]` and
/// `[proxies]`, nothing else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Where Airlock is and the enforcer key.
    pub proxy: ProxyClientConfig,
    /// The listeners.
    #[serde(default)]
    pub proxies: ProxiesConfig,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The TOML or a value in it is wrong.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the server listens.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where state lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Where policies live.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Audit log settings.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The web console.
    #[serde(default)]
    pub web: WebConfig,
    /// Break-glass: who may take an immediate grant in an emergency.
    #[serde(default)]
    pub breakglass: BreakglassConfig,
    /// The people who ask and approve, and their groups.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Notifications: signed webhooks now; Slack, Discord and email
    /// sections are accepted (so configs load) but not yet delivered.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// `[[proxies.http]]` (HTTP reverse proxies), `[[proxies.authz]]`
    /// (authorization endpoints for Envoy and nginx) and
    /// `[[proxies.postgres]]` (PostgreSQL wire proxies) that `airlock serve`
    /// runs itself, asking the service in process (see `airlock_proxy_http`
    /// and `airlock_proxy_pg`).
    #[serde(default)]
    pub proxies: ProxiesConfig,
    /// `[proxy]`: where `airlock proxy` finds the server and its enforcer
    /// key when it runs this file's proxies alone; `airlock serve` ignores it.
    #[serde(default)]
    pub proxy: Option<ProxyClientConfig>,
    /// The folder the file was read from; relative paths resolve here.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file itself, for reloads.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL people reach this server at, used in links. Default
    /// `http://` + `listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Folder for signing keys. Default: `data` beside the config file, or
    /// the SQLite database's folder.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes. Default 65536.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Longest `?wait=` a client may ask for, in seconds. Default 60.
    #[serde(default = "default_max_wait")]
    pub max_wait_seconds: u64,
    /// Most `?wait=` long-polls one user may have open at once on this
    /// node; more are refused with 429 `too_many_waits`. Every key of the
    /// user counts, enforcers' too. Default 16.
    #[serde(default = "default_max_waits")]
    pub max_waits_per_user: NonZeroU32,
    /// Longest a client may take to send a request's header, in seconds,
    /// counted from when the server starts waiting for it: a new
    /// connection, or the end of the previous answer on a kept-alive one
    /// (so it is also how long an idle kept-alive connection stays open).
    /// A connection that sends half a header and stops is closed after
    /// this. Long-polls and event streams are not affected: the clock only
    /// runs while a header is awaited. Default 10.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: NonZeroU64,
    /// Longest a connection may make no progress in the middle of a
    /// request, in seconds: a request body that stops arriving, or an
    /// answer the client stops reading. Default 60.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: NonZeroU64,
    /// Most connections served at once. Further ones wait (in the
    /// operating system's queue) until one closes; with the timeouts above,
    /// stalled connections make room within seconds. Lowered at start if
    /// the open-file limit cannot hold this many (the server raises its
    /// soft limit to the hard limit first). Default 1000.
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroU32,
    /// Most pending requests one principal may have at once. A check that
    /// would create one more is answered 429 `too_many_pending` (asking
    /// again for an action already pending is still answered with that
    /// request). Default 100.
    #[serde(default = "default_max_pending")]
    pub max_pending_per_principal: NonZeroU32,
    /// Checks one API key may make per second, on average; over it,
    /// `POST /v1/check` answers 429 `rate_limited` with `Retry-After`.
    /// An enforcer key (a proxy) is counted per end user it checks for.
    /// Each node counts its own. Default 200.
    #[serde(default = "default_checks_per_second")]
    pub checks_per_second_per_key: NonZeroU32,
    /// Checks one API key may make in a burst above the rate. Default 400.
    #[serde(default = "default_check_burst")]
    pub check_burst_per_key: NonZeroU32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            data_dir: None,
            max_body_bytes: default_body_limit(),
            max_wait_seconds: default_max_wait(),
            max_waits_per_user: default_max_waits(),
            header_read_timeout_seconds: default_header_read_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_pending_per_principal: default_max_pending(),
            checks_per_second_per_key: default_checks_per_second(),
            check_burst_per_key: default_check_burst(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_body_limit() -> usize {
    64 * 1024
}
fn default_max_wait() -> u64 {
    60
}
// NonZeroU32 has no literal form: MIN (1) plus the rest.
fn default_max_waits() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(15)
}
fn default_header_read_timeout() -> NonZeroU64 {
    NonZeroU64::MIN.saturating_add(9)
}
fn default_idle_timeout() -> NonZeroU64 {
    NonZeroU64::MIN.saturating_add(59)
}
fn default_max_connections() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(999)
}
fn default_max_pending() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(99)
}
fn default_checks_per_second() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(199)
}
fn default_check_burst() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(399)
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` (relative to the config file) for one node, or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?OPTIONS]` for any
    /// number of nodes sharing one database (see docs/DEPLOYMENT.md). The
    /// schema is created or migrated at start; a database migrated by a
    /// newer Airlock is refused. Default `sqlite://data/airlock.db`.
    #[serde(default = "default_storage")]
    pub url: StorageUrl,
}

/// A storage URL Airlock can open: `sqlite://PATH` or
/// `postgres://…` / `postgresql://…`, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct StorageUrl(String);

impl StorageUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SQLite file's path as written (relative to the config file),
    /// for a `sqlite://` URL.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.0.strip_prefix("sqlite://")
    }
}

impl TryFrom<String> for StorageUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = match s.split_once("://") {
            Some(("sqlite", path)) => !path.is_empty(),
            Some(("postgres" | "postgresql", rest)) => !rest.is_empty(),
            _ => false,
        };
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "storage.url {s:?} must be sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
            ))
        }
    }
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: default_storage(),
        }
    }
}

fn default_storage() -> StorageUrl {
    StorageUrl("sqlite://data/airlock.db".into())
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Folder of `*.cedar` files, with an optional `schema.cedarschema` or
    /// `schema.json` and an optional `entities.json`. Default `policies`.
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
    /// IANA time zone for `context.local_hour` and `context.weekday`.
    /// Default `UTC`.
    #[serde(default = "default_tz")]
    pub timezone: TimeZone,
    /// Reload when a file in `dir` changes (SIGHUP always reloads).
    /// Default true.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Facts only `enforcer` keys may state: context keys (`rows`,
    /// `bytes`, `dlp`, …) and, as `resource.attrs`, a resource's
    /// attributes. A `user` key sending one gets 400 `untrusted_context`.
    /// Facts Airlock computes (`local_hour`, `weekday`, `source_ip`,
    /// `country`, `sensitive_actions_last_hour`, `granted_before`) are never
    /// taken from a `user` key whatever this says. Default empty: every
    /// other fact is informative, from anyone. Each entry is a context key
    /// (letters, digits, `_`, `-`) or `resource.attrs`; anything else is
    /// refused at load, since a misspelt entry would protect nothing.
    #[serde(default)]
    pub trusted_context: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
            timezone: default_tz(),
            watch: true,
            trusted_context: Vec::new(),
        }
    }
}

/// The `trusted_context` entry that covers resource attributes.
pub const TRUSTED_RESOURCE_ATTRS: &str = "resource.attrs";

fn default_policy_dir() -> PathBuf {
    PathBuf::from("policies")
}
fn default_tz() -> TimeZone {
    TimeZone(chrono_tz::Tz::UTC)
}

/// An IANA time zone, checked when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TimeZone(pub chrono_tz::Tz);

impl TryFrom<String> for TimeZone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<chrono_tz::Tz>()
            .map(Self)
            .map_err(|_| format!("policy.timezone {s:?} is not an IANA time zone"))
    }
}
fn yes() -> bool {
    true
}

/// `[breakglass]`: an immediate grant in an emergency, for members of
/// `groups`, with a reason, reviewed by two other people after the fact.
/// Policy still decides: break-glass never opens what policy forbids.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakglassConfig {
    /// Groups whose members may break the glass. Default none: off.
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// The longest a break-glass grant lives (shorter if policy's
    /// `@grant_ttl` is). Default 15m.
    #[serde(default = "default_breakglass_ttl")]
    pub grant_ttl: airlock_core::Ttl,
}

impl Default for BreakglassConfig {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            grant_ttl: default_breakglass_ttl(),
        }
    }
}

fn default_breakglass_ttl() -> airlock_core::Ttl {
    airlock_core::Ttl::minutes(15)
}

/// `[web]`: the console served at the server's root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Groups whose members may read and export the audit log in the
    /// console and the API (as admin keys may). Default
    /// `["auditors"]`.
    #[serde(default = "default_auditors")]
    pub auditor_groups: Vec<GroupName>,
    /// Single sign-on through an OpenID Connect provider, besides local
    /// passwords. Off when absent.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// Password sign-in attempts one address may make per minute on this
    /// node (IPv6: per /64); more are refused with 429 without checking
    /// the password. Behind a reverse proxy every client shares the
    /// proxy's address: raise it there. Default 30.
    #[serde(default = "default_sign_in_rate")]
    pub sign_in_attempts_per_minute_per_ip: NonZeroU32,
    /// Live-update streams (`/events`) one user may have open at once on
    /// this node; more are refused with 429 `too_many_waits`. Default 8.
    #[serde(default = "default_max_streams")]
    pub max_streams_per_user: NonZeroU32,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            auditor_groups: default_auditors(),
            oidc: None,
            sign_in_attempts_per_minute_per_ip: default_sign_in_rate(),
            max_streams_per_user: default_max_streams(),
        }
    }
}

fn default_sign_in_rate() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(29)
}
fn default_max_streams() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(7)
}

fn default_auditors() -> Vec<GroupName> {
    GroupName::parse("auditors").into_iter().collect()
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between signed checkpoints of the chain head and of the
    /// Merkle tree (one is also signed at shutdown). Default 60.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_interval_seconds: u64,
    /// The log's name in its checkpoints (C2SP `tlog-checkpoint` origin
    /// line and signature key name), e.g. `airlock.example.com/audit`.
    /// Default: the host of `server.public_url` followed by `/audit`.
    #[serde(default)]
    pub origin: Option<String>,
    /// Folders every tree checkpoint is also written to, one file per
    /// checkpoint, never overwritten (`ORIGIN-SIZE.note`): put them where
    /// the database's owner cannot rewrite them (another host, a WORM
    /// bucket mount). `airlock audit verify --config` checks the log
    /// against every note found there. One path or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub witness_dir: Vec<PathBuf>,
    /// C2SP witnesses (`tlog-witness`) each tree checkpoint is sent to:
    /// `POST URL/add-checkpoint` with the consistency proof from the last
    /// size that witness acknowledged. A witness that is down never holds
    /// up the log; it is sent the newest checkpoint at every interval until
    /// it acknowledges it. One URL or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub witness_url: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_seconds: default_checkpoint(),
            origin: None,
            witness_dir: Vec::new(),
            witness_url: Vec::new(),
        }
    }
}

/// A setting that takes one value or a list of them.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn default_checkpoint() -> u64 {
    60
}

/// `[[users]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login and principal name.
    pub name: UserName,
    /// Groups, for policies (`principal in Group::"…"`) and approvals.
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// For email notifications and single sign-on.
    #[serde(default)]
    pub email: Option<String>,
    /// Slack member id.
    #[serde(default)]
    pub slack_id: Option<String>,
    /// Discord user id.
    #[serde(default)]
    pub discord_id: Option<String>,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut cfg =
            Self::parse(&text, &base).map_err(|m| ConfigError::Invalid(path.to_owned(), m))?;
        cfg.path = Some(path.to_owned());
        Ok(cfg)
    }

    /// Parses config text whose relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.base_dir = base.to_owned();
        let mut seen = std::collections::BTreeSet::new();
        let mut ids = std::collections::BTreeSet::new();
        for u in &cfg.users {
            if !seen.insert(&u.name) {
                return Err(format!("user {:?} is listed twice", u.name.as_str()));
            }
            // Sign-in and chat map people to users by these: two users
            // sharing one would let one act as the other.
            let keys = [
                u.email.as_ref().map(|e| ("email", e.to_lowercase())),
                u.slack_id.clone().map(|s| ("slack_id", s)),
                u.discord_id.clone().map(|d| ("discord_id", d)),
            ];
            for (what, value) in keys.into_iter().flatten() {
                if !ids.insert((what, value.clone())) {
                    return Err(format!("{what} {value:?} belongs to two users"));
                }
            }
        }
        cfg.check_values()?;
        cfg.notify.check()?;
        cfg.proxies.check()?;
        Ok(cfg)
    }

    /// Checks values whose type admits mistakes that would load quietly
    /// and then weaken or break something: a `trusted_context` entry
    /// misspelt protects nothing (the fact it meant stays open to every
    /// user key), a body limit of 0 refuses every call, a URL without its
    /// scheme makes every link in every message a dead one.
    fn check_values(&self) -> Result<(), String> {
        if self.server.max_body_bytes == 0 {
            return Err("server.max_body_bytes must be at least 1".into());
        }
        for entry in &self.policy.trusted_context {
            let key_ok = !entry.is_empty()
                && entry.len() <= 128
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !key_ok && entry != TRUSTED_RESOURCE_ATTRS {
                return Err(format!(
                    "policy.trusted_context entry {entry:?} is neither a context key \
                     (1 to 128 letters, digits, `_`, `-`) nor {TRUSTED_RESOURCE_ATTRS:?}"
                ));
            }
        }
        let urls = (self
            .server
            .public_url
            .iter()
            .map(|u| ("server.public_url", u)))
        .chain(
            self.audit
                .witness_url
                .iter()
                .map(|u| ("audit.witness_url", u)),
        );
        for (what, url) in urls {
            check_base_url(url).map_err(|why| format!("{what} {url:?}: {why}"))?;
        }
        if let Some(d) = &self.notify.discord {
            crate::integrations::discord::public_key(&d.application_public_key).map_err(|why| {
                format!(
                    "notify.discord.application_public_key: {why}; copy it from the Discord \
                     application's General Information page"
                )
            })?;
        }
        Ok(())
    }

    /// The policy folder, resolved.
    pub fn policy_dir(&self) -> PathBuf {
        self.base_dir.join(&self.policy.dir)
    }

    /// The configured time zone.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.policy.timezone.0
    }

    /// The folder for signing keys, resolved.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.server.data_dir {
            return self.base_dir.join(d);
        }
        if let Some(p) = self.storage.url.sqlite_path() {
            if let Some(parent) = Path::new(p).parent() {
                return self.base_dir.join(parent);
            }
        }
        self.base_dir.join("data")
    }

    /// The audit log's origin in its checkpoints.
    pub fn audit_origin(&self) -> String {
        if let Some(o) = &self.audit.origin {
            return o.trim().to_owned();
        }
        let url = self.public_url();
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("airlock");
        format!("{host}/audit")
    }

    /// The witness folders, resolved.
    pub fn witness_dirs(&self) -> Vec<PathBuf> {
        self.audit
            .witness_dir
            .iter()
            .map(|d| self.base_dir.join(d))
            .collect()
    }

    /// The URL in links.
    pub fn public_url(&self) -> String {
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.listen))
            .trim_end_matches('/')
            .to_owned()
    }

    /// The configured user `pick` chooses; names, emails and chat ids are
    /// unique (checked at load), so at most one matches an identity.
    pub fn user_where(&self, pick: impl Fn(&UserConfig) -> bool) -> Option<&UserConfig> {
        self.users.iter().find(|u| pick(u))
    }

    /// Users and groups, for policy and approvals.
    pub fn directory(&self) -> Directory {
        self.directory_with(&[])
    }

    /// Users and groups, with the groups single sign-on reported replacing
    /// the configured ones of those users (users not configured stay out).
    pub fn directory_with(&self, synced: &[(UserName, Vec<GroupName>)]) -> Directory {
        // Only while the provider is the source of groups: turning
        // `groups_claim` off puts the config back in charge at once.
        let from_sso = self
            .web
            .oidc
            .as_ref()
            .is_some_and(|o| o.groups_claim.is_some());
        let synced = if from_sso { synced } else { &[] };
        Directory::new(self.users.iter().map(|u| {
            let groups = synced
                .iter()
                .find(|(name, _)| *name == u.name)
                .map_or_else(|| u.groups.clone(), |(_, g)| g.clone());
            (u.name.clone(), groups)
        }))
    }
}

/// A URL other URLs are made from by appending paths (`public_url`, a
/// witness): used as written, so it must be written as it is read. A
/// scheme in capitals or a space in front would pass a lenient parse and
/// then fail the checks made on the text (`https://` decides whether
/// cookies are `Secure`); a query, fragment or credentials would end up
/// in the middle of every link, and credentials in signed checkpoints.
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err("must start with https:// or http:// (in lower case)".into());
    }
    if !parsed.has_host() || url.chars().any(char::is_whitespace) {
        return Err("must name a host, with no spaces".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must have no query (`?`) or fragment (`#`)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_sections_and_bad_values_are_refused_at_load() {
        let base = Path::new(".");
        for (text, says) in [
            ("[notify.slak]\nchannel = \"C1\"\n", "slak"),
            ("[notify]\nwebhok = []\n", "webhok"),
            ("[server]\nlisten = \"localhost\"\n", "listen"),
            ("[storage]\nurl = \"mysql://x\"\n", "mysql"),
            ("[storage]\nurl = \"sqlite://\"\n", "sqlite"),
            ("[policy]\ntimezone = \"Mars/Olympus\"\n", "Mars/Olympus"),
            (
                "[[notify.webhooks]]\nurl = \"http://h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"request.craeted\"]\n",
                "request.craeted",
            ),
            (
                "[[proxies.http]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://h\"\n[[proxies.http]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://h\"\n",
                "used twice",
            ),
            (
                "[[proxies.http]]\nname = \"\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://h\"\n",
                "name \"\"",
            ),
            ("[server]\nmax_body_bytes = 0\n", "max_body_bytes"),
            ("[server]\npublic_url = \"airlock.example.com\"\n", "public_url"),
            ("[server]\npublic_url = \"ftp://airlock.example.com\"\n", "public_url"),
            ("[server]\npublic_url = \"HTTPS://X\"\n", "lower case"),
            ("[server]\npublic_url = \" https://x\"\n", "public_url"),
            ("[server]\npublic_url = \"https:/x\"\n", "https://"),
            ("[server]\npublic_url = \"https://x?q=1\"\n", "query"),
            ("[server]\npublic_url = \"https://x/#f\"\n", "fragment"),
            ("[server]\npublic_url = \"https://u:p@x\"\n", "password"),
            ("[server]\npublic_url = \"http://x:99999\"\n", "port"),
            ("[audit]\nwitness_url = [\"https://w1\", \"w2.example\"]\n", "w2.example"),
            ("[policy]\ntrusted_context = [\"rows\", \"resource.attr\"]\n", "resource.attr"),
            ("[policy]\ntrusted_context = [\"rows \"]\n", "\"rows \""),
            ("[policy]\ntrusted_context = [\"\"]\n", "trusted_context"),
        ] {
            let err = Config::parse(text, base).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let ok = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://[::1]:8080/@team/\"\n[storage]\nurl = \"postgres://u@h:5432/d\"\n[policy]\ntimezone = \"Europe/Paris\"\ntrusted_context = [\"rows\", \"source-app\", \"resource.attrs\"]\n[audit]\nwitness_url = \"http://127.0.0.1:9/w\"\n",
            base,
        )
        .unwrap();
        assert_eq!(ok.server.listen.port(), 0);
        assert_eq!(ok.timezone(), chrono_tz::Tz::Europe__Paris);
        assert_eq!(ok.storage.url.sqlite_path(), None);
    }

    #[test]
    fn contract_example_parses() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"

[storage]
url = "sqlite://data/airlock.db"

[policy]
dir = "policies"
timezone = "Europe/Paris"

[[users]]
name = "alice"
groups = ["engineering"]
email = "alice@example.com"
slack_id = "U0ALICE"
discord_id = "81234567890"

[notify.slack]
api_url = "https://slack.com/api"
bot_token = "xoxb-..."
signing_secret = "0123456789abcdef0123456789abcdef"
channel = "C0APPROVALS"
"#;
        let c = Config::parse(text, Path::new("/etc/airlock")).unwrap();
        assert_eq!(c.policy_dir(), Path::new("/etc/airlock/policies"));
        assert_eq!(c.data_dir(), Path::new("/etc/airlock/data"));
        assert!(c.directory().is_member(
            &UserName::parse("alice").unwrap(),
            &GroupName::parse("engineering").unwrap()
        ));
    }

    /// The contract's `[[proxies.postgres]]` example loads with its
    /// defaults; `[audit]` takes one witness folder or a list, and names
    /// the log after `public_url` unless told.
    #[test]
    fn postgres_proxies_and_witnesses_load() {
        let text = r#"
[server]
public_url = "https://airlock.example.com:8443/"

[audit]
witness_dir = "/mnt/witness"
witness_url = ["https://w1.example", "https://w2.example"]

[[proxies.postgres]]
name = "prod"
listen = "127.0.0.1:6543"
upstream = "postgres://postgres@127.0.0.1:5432/test"
hold_seconds = 20
response_dlp = "mask"
"#;
        let c = Config::parse(text, Path::new("/etc/airlock")).unwrap();
        let pg = &c.proxies.postgres[0];
        assert_eq!(pg.hold_seconds, 20);
        assert_eq!(pg.response_dlp, airlock_proxy_pg::RowsDlp::Mask);
        assert_eq!(pg.max_rows, None);
        assert!(pg.result_action.is_none() && pg.mask_columns.is_empty());
        assert_eq!(c.witness_dirs(), vec![PathBuf::from("/mnt/witness")]);
        assert_eq!(c.audit.witness_url.len(), 2);
        assert_eq!(c.audit_origin(), "airlock.example.com:8443/audit");
        let bad = text.replace("hold_seconds", "hold_secs");
        assert!(Config::parse(&bad, Path::new(".")).is_err());
    }

    #[test]
    fn identities_belong_to_one_user() {
        let two = |field: &str, a: &str, b: &str| {
            format!("[[users]]\nname = \"a\"\n{field} = \"{a}\"\n[[users]]\nname = \"b\"\n{field} = \"{b}\"\n")
        };
        let err = Config::parse(
            &two("email", "X@example.com", "x@example.com"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("belongs to two users"), "{err}");
        let err = Config::parse(&two("slack_id", "U1", "U1"), Path::new(".")).unwrap_err();
        assert!(err.contains("slack_id"), "{err}");
        let err = Config::parse(&two("discord_id", "D1", "D1"), Path::new(".")).unwrap_err();
        assert!(err.contains("discord_id"), "{err}");
        assert!(Config::parse(&two("slack_id", "U1", "U2"), Path::new(".")).is_ok());
    }

    #[test]
    fn discord_needs_a_real_public_key() {
        let section = |key: &str| {
            format!("[notify.discord]\nbot_token = \"b\"\napplication_public_key = \"{key}\"\nchannel_id = \"C\"\n")
        };
        // A key Discord shows: the public half of an Ed25519 pair.
        let good = hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes(),
        );
        let load = |text: &str| Config::parse(text, Path::new("."));
        assert!(load(&section(&good)).is_ok());
        for bad in [
            "",
            "abc",
            &good[..62],
            &format!("{good}00"),
            &"zz".repeat(32),
        ] {
            let err = load(&section(bad)).unwrap_err();
            assert!(err.contains("application_public_key"), "{bad:?}: {err}");
        }
        // 32 bytes that are no point on the curve (about half of all).
        let off_curve = (2..=u8::MAX)
            .map(|b| [b; 32])
            .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        let err = load(&section(&hex::encode(off_curve))).unwrap_err();
        assert!(err.contains("not an Ed25519 public key"), "{err}");
    }

    #[test]
    fn slack_needs_a_real_signing_secret() {
        let text = "[notify.slack]\nbot_token = \"x\"\nsigning_secret = \"\"\nchannel = \"C\"\n";
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        assert!(err.contains("signing_secret"), "{err}");
    }

    #[test]
    fn synced_groups_count_only_while_groups_come_from_sso() {
        let base = "[[users]]\nname = \"dave\"\ngroups = []\n";
        let dave = UserName::parse("dave").unwrap();
        let security = GroupName::parse("security").unwrap();
        let synced = vec![(dave.clone(), vec![security.clone()])];
        let off = Config::parse(base, Path::new(".")).unwrap();
        assert!(!off.directory_with(&synced).is_member(&dave, &security));
        let on = Config::parse(
            &format!("{base}[web.oidc]\nissuer = \"http://idp\"\nclient_id = \"c\"\ngroups_claim = \"groups\"\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(on.directory_with(&synced).is_member(&dave, &security));
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            Config::parse("[policy]\ntimezone = \"Mars/Olympus\"", Path::new(".")).unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
        let err = Config::parse("[[users]]\nname = \"a b\"", Path::new(".")).unwrap_err();
        assert!(err.contains("user name"), "{err}");
        let err = Config::parse("[server]\nlisten = \"nope\"", Path::new(".")).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err =
            Config::parse("[storage]\nurl = \"sqlite://x\"\ntypo = 1", Path::new(".")).unwrap_err();
        assert!(err.contains("typo"), "{err}");
        let err = Config::parse(
            "[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }
}
