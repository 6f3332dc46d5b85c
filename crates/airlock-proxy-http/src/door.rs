//! The decision at the door, shared by every front that asks Airlock about
//! an HTTP request: who the end user is, which route it matches, what
//! Airlock says, the hold, and the one use of an approved grant. It answers
//! with a [`Verdict`]; how a verdict reads on the wire is each front's
//! business (the reverse proxy forwards, an authorization endpoint answers
//! its front proxy).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{CheckBody, CheckResponse, ErrorCode, RequestView};
use airlock_client::{ClientError, Enforcer, Gate, Waited};
use airlock_core::action::Resource;
use airlock_core::{ActionName, GrantId, RequestId, RequestStatus, UserName};
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::StatusCode;
use serde::de::IgnoredAny;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::RouteConfig;
use crate::proxy::{PRINCIPAL_HEADER, REQUEST_HEADER, RESPONSE_REQUEST_HEADER, TOKEN_HEADER};
use crate::respond::{gate_error, Refusal};
use crate::route::{ambiguous_path, Routes};
use crate::ProxyError;

/// A matched request's action, owned (it outlives the match when the
/// forwarding of a consumed grant runs on its own task).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub route: RouteConfig,
    /// The route's `bind_headers`, parsed.
    pub bind_headers: Vec<HeaderName>,
    pub action: ActionName,
    pub resource: Resource,
    /// `Airlock-Response-Request` of a retry: the response held before.
    pub response_resume: Option<String>,
    /// The end user's key, when it identified them (see [`Facts::key`]).
    pub key: Option<EndUserKey>,
}

/// An end user's API key, kept to be asked about again; never printed.
#[derive(Clone)]
pub(crate) struct EndUserKey(pub String);

impl std::fmt::Debug for EndUserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndUserKey(…)")
    }
}

/// What a request is, as the front saw it.
pub(crate) struct Facts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// The body, or `None` where the front never shows it (nginx).
    pub body: Option<&'a Bytes>,
    /// The request's headers as the upstream gets them (those in
    /// [`BOUND_HEADERS`] are bound; `Content-Type` is also context).
    pub headers: &'a HeaderMap,
    /// The end user's address, where the front knows it.
    pub source_ip: Option<IpAddr>,
    /// The service's host name, where one listener serves several
    /// (authz fronts): bound in params, so an approval for one service does
    /// not pass on another.
    pub host: Option<&'a str>,
    /// The `Airlock-Token` key that identified the end user, if one did:
    /// asked again when a hold ends, so a key revoked (or a user removed)
    /// while the request waited is not served what was approved.
    pub key: Option<&'a str>,
}

/// The door's answer.
pub(crate) enum Verdict {
    /// Let it through: allowed, or approved and the grant's one use
    /// consumed for exactly this request (`grant`, to be completed).
    Pass {
        principal: UserName,
        grant: Option<GrantId>,
        /// The audit record of the decision that allowed it, if one did.
        decision: Option<i64>,
    },
    /// Still pending when the hold ran out: come back with its id.
    Held(Box<RequestView>),
    /// Not let through.
    Refused(Refusal),
}

impl From<Refusal> for Verdict {
    fn from(r: Refusal) -> Self {
        Verdict::Refused(r)
    }
}

/// One front's routes and its way to Airlock.
pub(crate) struct Door {
    /// The listener's kind and name, for messages: `proxy files`.
    label: String,
    /// Its name, for `context.proxy`: `files`.
    name: String,
    routes: Routes,
    enforcer: Enforcer<Arc<dyn Gate>>,
    principal_header: Option<HeaderName>,
    hold: Duration,
    per_user: Option<DefaultKeyedRateLimiter<UserName>>,
}

/// Headers some frameworks take as the request's real method, or (IIS,
/// older Symfony and Zend) as its real path.
const METHOD_OVERRIDES: [&str; 8] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
    "x-method",
    "x-original-url",
    "x-rewrite-url",
];

/// Request headers bound with the request (`params.headers_sha256`):
/// with the same method, path, query and body they still change what the
/// upstream does, so a retry that changes one is another request. Whose
/// credentials the service sees (the standard header, a cookie, the
/// common API-key headers), how it reads the body, which part of a file
/// it sends (`Request-Range` too: Apache reads it where `Range` is
/// missing; found by a black-box pass).
const BOUND_HEADERS: [HeaderName; 8] = [
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-auth-token"),
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::RANGE,
    HeaderName::from_static("request-range"),
];

/// How large a compressed request body may grow when decoded to be
/// screened; larger is refused. As large as the default `max_body_bytes`:
/// 65 KB of gzip that decoded to 64 MiB cost a gigabyte of memory to
/// screen (found by a black-box pass).
const MAX_SCREENED: u64 = 16 << 20;

/// Users whose allowance is remembered before the idle ones are dropped.
const MAX_USERS: usize = 10_000;

impl Door {
    pub fn new(
        kind: &str,
        name: &str,
        routes: &[RouteConfig],
        principal_header: Option<&str>,
        hold_seconds: u64,
        checks_per_second_per_user: u32,
        gate: Arc<dyn Gate>,
    ) -> Result<Self, ProxyError> {
        let principal_header = principal_header
            .map(|h| {
                HeaderName::from_bytes(h.trim().as_bytes()).map_err(|e| {
                    ProxyError::Config(format!("{kind} {name:?}: principal_header {h:?}: {e}"))
                })
            })
            .transpose()?;
        Ok(Self {
            label: format!("{kind} {name}"),
            name: name.to_owned(),
            routes: Routes::compile(routes)?,
            enforcer: Enforcer::new(gate),
            principal_header,
            hold: Duration::from_secs(hold_seconds),
            per_user: NonZeroU32::new(checks_per_second_per_user)
                .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_second(n))),
        })
    }

    pub fn enforcer(&self) -> &Enforcer<Arc<dyn Gate>> {
        &self.enforcer
    }

    /// Refuses what would let the upstream act on something other than
    /// what Airlock decides: a method-override header (the upstream would
    /// run DELETE where POST was decided), or two values of a header that
    /// says who is asking or which approval to use (the proxy reads one,
    /// the upstream may read the other).
    pub fn screen(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m);
        for h in METHOD_OVERRIDES {
            if headers.contains_key(h) {
                return Err(bad(format!(
                    "{h} is refused: the method and path Airlock decides must be the ones the \
                     service runs"
                )));
            }
        }
        // Content-Type too: Apache joins two into one the framework reads
        // as JSON where the first alone said text.
        let once = [
            TOKEN_HEADER,
            REQUEST_HEADER,
            RESPONSE_REQUEST_HEADER,
            header::CONTENT_TYPE.as_str(),
        ]
        .into_iter()
        .chain(self.principal_header.as_ref().map(HeaderName::as_str));
        for h in once.clone() {
            if headers.get_all(h).iter().nth(1).is_some() {
                return Err(bad(format!("{h} is sent more than once")));
            }
        }
        // CGI-style servers (Puma, PHP-FPM behind some fronts) read
        // `X_HTTP_Method_Override` as `X-HTTP-Method-Override`, and an
        // `X_Airlock_User` as the principal header; `Airlock_Principal` as
        // the `Airlock-Principal` the service gets from us (ours replaces a
        // client's dashed one; an underscored one would pass beside it).
        for name in headers.keys().filter(|n| n.as_str().contains('_')) {
            let dashed = name.as_str().replace('_', "-");
            if METHOD_OVERRIDES.contains(&dashed.as_str())
                || dashed == PRINCIPAL_HEADER
                || once.clone().any(|h| h == dashed)
            {
                return Err(bad(format!(
                    "{name} is refused: with `_` read as `-` it is {dashed}"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a `_method` query parameter, which some frameworks (Laravel,
    /// Symfony) take as the request's real method, as the headers above;
    /// its name is read decoded, as they read it.
    pub fn screen_query(&self, query: &str) -> Result<(), Refusal> {
        if form_names_override(query.as_bytes()) {
            return Err(method_override_refused());
        }
        Ok(())
    }

    /// Refuses a body carrying `_method` where frameworks look for it: a
    /// form's field (Rails, Laravel, Symfony), a multipart form's part, a
    /// JSON object's key (Laravel reads JSON input as the form).
    /// The type and encoding are read from the raw headers (a byte past
    /// ASCII must not hide the type), and a compressed body is screened
    /// as its upstream may decompress it.
    pub fn screen_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        if body.is_empty() {
            return Ok(());
        }
        let raw = |name| {
            headers
                .get(name)
                .map(|v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()))
        };
        // Every `Content-Encoding` line, joined as HTTP joins them: the
        // first alone (`identity`) hid a second (`gzip`) from the screen
        // (found by a black-box pass).
        let encodings: Vec<String> = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let encoding = (!encodings.is_empty()).then(|| encodings.join(", "));
        // The raw bytes, and decoded as the upstream may decode them: many
        // frameworks (PHP, Rack, Tomcat) ignore `Content-Encoding` and read
        // the raw bytes as the form, `&_method=DELETE` after a deflate
        // stream or in a gzip header included (found by a black-box pass).
        let mut readings = vec![body];
        let decoded;
        if let Some(enc) = encoding.filter(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            decoded = crate::scan::decode(body, Some(&enc), MAX_SCREENED).map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    format!("the request body cannot be read to screen it: {e}"),
                )
            })?;
            readings.push(&decoded[..]);
        }
        // Frameworks cut the type at `;`, `,` or a space, each its own way:
        // a type that so much as mentions a form or JSON is read as one.
        let ct = raw(header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let form = ct.trim().is_empty() || ct.contains("x-www-form-urlencoded");
        let multipart = ct.contains("multipart");
        let json = ct.contains("json");
        // A charset Airlock does not read (UTF-7: `{"+AF8-method":…}`, which
        // body-parser decodes) is refused where `_method` is looked for.
        if (form || multipart || json) && !readable_charset(&ct, json) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "a form or JSON body in a charset other than UTF-8, UTF-16, UTF-32, ASCII or Latin-1 is refused: Airlock could not screen it for _method",
            ));
        }
        let overrides = readings.iter().any(|body| {
            (form && form_names_override(body))
                || (multipart && multipart_overrides(body))
                || (json && json_names_override(body))
        });
        if overrides {
            return Err(method_override_refused());
        }
        Ok(())
    }

    /// Who the end user is: the trusted front proxy's header when one is
    /// configured and present, else the owner of the `Airlock-Token` key
    /// (returned with the user, to be asked again after a hold).
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        token: Option<String>,
    ) -> Result<(UserName, Option<String>), Refusal> {
        let no_identity =
            |m: &str| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, m);
        if let Some(h) = &self.principal_header {
            if let Some(v) = headers.get(h) {
                return v
                    .to_str()
                    .ok()
                    .and_then(|s| UserName::parse(s.trim()).ok())
                    .map(|user| (user, None))
                    .ok_or_else(|| no_identity("the principal header does not name a user"));
            }
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(no_identity(&match &self.principal_header {
                Some(h) => format!(
                    "no identity: the trusted front sets {h}, or send your Airlock API key in the Airlock-Token header"
                ),
                None => "send your Airlock API key in the Airlock-Token header".to_owned(),
            }));
        };
        let user = self.owner_of(&token).await?;
        Ok((user, Some(token)))
    }

    /// Whether `key` still names `user` (after a hold: it may have been
    /// revoked meanwhile).
    pub async fn still_names(&self, key: &str, user: &UserName) -> Result<(), Refusal> {
        match self.owner_of(key).await {
            Ok(owner) if owner == *user => Ok(()),
            Ok(_) => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "the Airlock-Token key no longer names this user",
            )),
            Err(r) => Err(r),
        }
    }

    /// Whose `key` is, as the server says now.
    async fn owner_of(&self, key: &str) -> Result<UserName, Refusal> {
        match self.enforcer.gate().whoami(key).await {
            Ok(w) => Ok(w.user),
            Err(ClientError::Api { status: 401, .. }) => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "the Airlock-Token key is unknown or revoked",
            )),
            Err(e) => Err(gate_error(e)),
        }
    }

    /// The route a request matches, as the action it is; none → refused.
    pub fn route(&self, method: &str, path: &str) -> Result<Target, Refusal> {
        // Methods are case-sensitive, and some services upper-case what
        // they get: `delete` would run as DELETE where a policy on
        // `params.method == "DELETE"` never saw it.
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("the method {method:?} is not in upper case; refused rather than guessed"),
            ));
        }
        if ambiguous_path(path) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the path has dot segments or encoded separators; refused rather than guessed",
            ));
        }
        let Some(m) = self.routes.find(method, path) else {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("no route of {} matches this request", self.label),
            ));
        };
        Ok(Target {
            route: m.route.config.clone(),
            bind_headers: m.route.bind_headers.clone(),
            action: m.route.action.clone(),
            resource: Resource {
                kind: m.kind,
                id: m.id,
                attrs: Map::new(),
            },
            response_resume: None,
            key: None,
        })
    }

    /// Asks Airlock about this request and, when it needs approval, holds
    /// it; `resume` is the `Airlock-Request` of a retry.
    pub async fn decide(
        &self,
        principal: &UserName,
        target: &Target,
        facts: &Facts<'_>,
        resume: Option<String>,
    ) -> Verdict {
        if let Some(limiter) = &self.per_user {
            if limiter.len() >= MAX_USERS {
                limiter.retain_recent();
            }
            if limiter.check_key(principal).is_err() {
                return Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    format!(
                        "{principal} sent more requests through {} than it allows per second",
                        self.label
                    ),
                )
                .into();
            }
        }
        if facts.body.is_none() && !target.route.danger_body_unseen {
            return Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!(
                    "{} cannot show Airlock this request's body, so an approval could not \
                     bind it; refused (a route may set danger_body_unseen)",
                    self.label
                ),
            )
            .into();
        }
        if let Err(r) = screen_bound(facts.headers, &target.bind_headers) {
            return r.into();
        }
        if let Some(body) = facts.body {
            if let Err(r) = self.screen_body(facts.headers, body) {
                return r.into();
            }
        }
        let check = self.check_body(principal, facts, target);
        if let Some(id) = resume {
            return self.resume(&id, check, facts.key).await;
        }
        match self.enforcer.check(&check).await {
            Err(e) => gate_error(e).into(),
            Ok(CheckResponse::Allow { audit_seq, .. }) => Verdict::Pass {
                principal: principal.clone(),
                grant: None,
                decision: Some(audit_seq),
            },
            Ok(CheckResponse::Deny { message, .. }) => {
                Refusal::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message).into()
            }
            Ok(CheckResponse::ApprovalRequired { request, .. }) => {
                self.hold(*request, check, facts.key).await
            }
        }
    }

    /// The action a request is: params bind what it does (method, path,
    /// query, body hash); context carries what the front saw.
    fn check_body(&self, principal: &UserName, facts: &Facts<'_>, target: &Target) -> CheckBody {
        let mut params = BTreeMap::new();
        params.insert("method".into(), json!(facts.method));
        params.insert("path".into(), json!(facts.path));
        params.insert("query".into(), json!(facts.query));
        if let Some(host) = facts.host {
            params.insert("host".into(), json!(host.to_ascii_lowercase()));
        }
        if let Some(digest) = bound_headers_digest(facts.headers, &target.bind_headers) {
            params.insert("headers_sha256".into(), json!(digest));
        }
        // The route's own bound headers (a tenant, an account) are what
        // the approver must see to know what they approve; the fixed ones
        // hold credentials and stay hashed.
        let shown: Map<String, Value> = target
            .bind_headers
            .iter()
            .filter(|n| !BOUND_HEADERS.contains(n))
            .filter(|n| facts.headers.contains_key(*n))
            .map(|n| {
                let values: Vec<Value> = facts
                    .headers
                    .get_all(n)
                    .iter()
                    .map(|v| json!(String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                (n.as_str().to_owned(), Value::Array(values))
            })
            .collect();
        if !shown.is_empty() {
            params.insert("headers".into(), Value::Object(shown));
        }
        let mut context = Map::new();
        match facts.body {
            Some(body) => {
                params.insert(
                    "body_sha256".into(),
                    json!(hex::encode(Sha256::digest(body))),
                );
                context.insert("bytes".into(), json!(body.len() as u64));
            }
            None => {
                params.insert("body_sha256".into(), json!("unseen"));
            }
        }
        if let Some(ct) = facts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            context.insert("content_type".into(), json!(ct));
        }
        let last = facts.path.rsplit('/').next().unwrap_or("");
        if let Some((stem, ext)) = last.rsplit_once('.') {
            if !stem.is_empty() && !ext.is_empty() {
                context.insert("extension".into(), json!(ext.to_ascii_lowercase()));
            }
        }
        if let Some(ip) = facts.source_ip {
            context.insert("source_ip".into(), json!(ip.to_string()));
        }
        context.insert("proxy".into(), json!(self.name));
        CheckBody {
            principal: Some(principal.clone()),
            action: target.action.clone(),
            resource: target.resource.clone(),
            params,
            context,
            reason: None,
        }
    }

    /// A retry naming a held request: only the identical request may use
    /// it.
    async fn resume(&self, id: &str, check: CheckBody, key: Option<&str>) -> Verdict {
        let Ok(id) = RequestId::parse(id) else {
            return Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "Airlock-Request is not a request id",
            )
            .into();
        };
        let view = match self.enforcer.gate().request(id, None).await {
            Ok(v) => v,
            Err(e) => return gate_error(e).into(),
        };
        if !same_action(&check, &view) {
            return Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::ActionMismatch,
                format!("this is not the request {id} was opened for"),
            )
            .into();
        }
        if view.status == RequestStatus::Pending {
            self.hold(view, check, key).await
        } else {
            self.use_grant(view, check).await
        }
    }

    /// Holds a pending request up to the hold, woken by its decision (the
    /// gate's wait), then uses the grant or answers held. Dropping this
    /// future (the client went away) cancels nothing: the request stays
    /// pending for a retry.
    async fn hold(&self, view: RequestView, check: CheckBody, key: Option<&str>) -> Verdict {
        match self.enforcer.wait(view, self.hold).await {
            Ok(Waited::Held(mut view)) => {
                // The view comes from an enforcer's gate; a token must never
                // reach the end user.
                view.grant = None;
                Verdict::Held(Box::new(view))
            }
            Ok(Waited::Decided(view)) => {
                // The key was good when the hold began; the grant is spent
                // only for a key that still is, and still the same user's.
                // (Only what would be forwarded: a denied request answers
                // 403 as ever, whatever became of the key.)
                let approved = matches!(
                    view.status,
                    RequestStatus::Approved | RequestStatus::Consumed | RequestStatus::Completed
                );
                if let (true, Some(key), Some(user)) = (approved, key, &check.principal) {
                    if let Err(r) = self.still_names(key, user).await {
                        return r.into();
                    }
                }
                self.use_grant(view, check).await
            }
            Err(e) => gate_error(e).into(),
        }
    }

    /// A decided request: approved → one use consumed for exactly this
    /// request; anything else → refused.
    async fn use_grant(&self, view: RequestView, check: CheckBody) -> Verdict {
        match view.status {
            // Spent ones too: the gate answers `grant_spent`, which says why.
            RequestStatus::Approved | RequestStatus::Consumed | RequestStatus::Completed => {}
            other => {
                return Refusal::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    format!("request {} is {other}; not forwarded", view.id),
                )
                .into()
            }
        }
        match self.enforcer.consume(&view, &check).await {
            Ok(g) => Verdict::Pass {
                principal: view.principal,
                grant: Some(g.grant_id),
                decision: None,
            },
            Err(e) => gate_error(e).into(),
        }
    }
}

/// Refuses a request that would reach the service with other bound
/// headers than the ones bound: one spelled with `_` (CGI-style servers
/// read `X_Tenant_Id` as `X-Tenant-Id`, beside or in place of the bound
/// one), or one its `Connection` header names (dropped as hop-by-hop after
/// it was bound). Both found by a black-box pass.
fn screen_bound(headers: &HeaderMap, extra: &[HeaderName]) -> Result<(), Refusal> {
    let bound = |name: &str| {
        BOUND_HEADERS
            .iter()
            .chain(extra)
            .any(|b| b.as_str() == name)
    };
    let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m);
    for name in headers.keys().filter(|n| n.as_str().contains('_')) {
        let dashed = name.as_str().replace('_', "-");
        if bound(&dashed) {
            return Err(bad(format!(
                "{name} is refused: with `_` read as `-` it is {dashed}, which an approval binds"
            )));
        }
    }
    for token in connection_tokens(headers) {
        if bound(&token) {
            return Err(bad(format!(
                "Connection names {token}, which an approval binds; refused rather than dropped"
            )));
        }
    }
    Ok(())
}

/// The header names `Connection` lists (lowercased), which are dropped
/// as hop-by-hop before forwarding: one reading for the check on bound
/// headers and for the dropping, so they cannot disagree.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

/// The SHA-256 of the [`BOUND_HEADERS`] and the route's own `extra` a
/// request carries (each name and value, length-prefixed, in that order),
/// or `None` when it carries none, so a request without them has the
/// params the contract names. Hashed, not copied: they hold credentials,
/// and params are shown to approvers.
fn bound_headers_digest(headers: &HeaderMap, extra: &[HeaderName]) -> Option<String> {
    let mut hash = Sha256::new();
    let mut any = false;
    let extra = extra.iter().filter(|n| !BOUND_HEADERS.contains(n));
    for name in BOUND_HEADERS.iter().chain(extra) {
        for value in headers.get_all(name) {
            any = true;
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
    }
    any.then(|| hex::encode(hash.finalize()))
}

/// Whether a form, query or JSON name is one frameworks take as the
/// request's method: `_method`, also as PHP reads a name (it cuts it at a
/// NUL, drops leading spaces, and turns a leading `.`, ` ` or `[` into
/// `_`), and `_method[...]`. Read with and without leading whitespace and
/// control characters of any kind, in case another reader is looser still.
fn overrides_method(name: &str) -> bool {
    let name = name.split('\0').next().unwrap_or("");
    // Both ends: `_method+=` is `_method ` decoded, which readers that
    // trim names take as `_method`.
    let trimmed = name.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    // Rack 2 drops leading brackets: `]_method`, `[_method]`.
    let unbracketed = trimmed.trim_start_matches(['[', ']']);
    [name, trimmed, unbracketed].into_iter().any(|name| {
        name.strip_prefix(['_', '.', ' ', '[']).is_some_and(|rest| {
            rest.get(..6)
                .is_some_and(|m| m.eq_ignore_ascii_case("method"))
                && matches!(rest.as_bytes().get(6), None | Some(b'[' | b']'))
        })
    })
}

/// Whether a query or form body names `_method`, split at `&` and also at
/// `;`, which older parsers (Rack 2, Python's `cgi`, Go before 1.17) take
/// as a separator too.
fn form_names_override(form: &[u8]) -> bool {
    let semis: Vec<u8> = form
        .iter()
        .map(|b| if *b == b';' { b'&' } else { *b })
        .collect();
    let overrides = [form, &semis[..]]
        .into_iter()
        .any(|f| form_urlencoded::parse(f).any(|(k, _)| overrides_method(&k)));
    overrides
}

/// Whether every `charset` named in a (lower-cased) Content-Type is one
/// the screen reads: UTF-8, ASCII and Latin-1, and for JSON also UTF-16
/// and UTF-32 (read by [`json_names_override`]). Any mention counts, in
/// quotes or not, as readers split parameters their own ways.
fn readable_charset(ct: &str, json: bool) -> bool {
    const JSON: &[&str] = &[
        "utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be",
    ];
    crate::scan::charsets(ct)
        .all(|c| crate::scan::ascii_compatible(&c) || (json && JSON.contains(&c.as_str())))
}

/// Whether a JSON body names `_method` as a key (keys decoded: a `\u005f`
/// spelling is the same key; valid JSON that is not an object has no keys
/// a framework would read). A body that is not strict JSON, or an object
/// serde cannot read (a lone surrogate in a key, which `JSON.parse`
/// takes), may still be read by lenient readers (Node's body-parser drops
/// a byte-order mark and decodes UTF-16): it is refused where it mentions
/// `_method` at all, as bytes, escapes decoded, and with NULs dropped (how
/// ASCII reads in UTF-16 and UTF-32) (found by a black-box pass and a
/// review).
fn json_names_override(body: &[u8]) -> bool {
    if let Ok(o) = serde_json::from_slice::<BTreeMap<String, IgnoredAny>>(body) {
        return o.keys().any(|k| overrides_method(k));
    }
    let object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !object && serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        return false;
    }
    // Searched as bytes, with at most one copy at a time: invalid UTF-8
    // made three bytes of each when read as text, and a large body several
    // copies (found by a black-box pass).
    let mentions = |bytes: &[u8]| {
        let found = |b: &[u8]| {
            [&b"_method"[..], b".method", b"[method"]
                .iter()
                .any(|m| b.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m)))
        };
        found(bytes) || (bytes.windows(2).any(|w| w == b"\\u") && found(&unescape_ascii(bytes)))
    };
    // ASCII text in UTF-16 or UTF-32 (a byte-order mark or not) is the
    // same bytes with NULs between.
    mentions(body) || {
        let ascii: Vec<u8> = body.iter().copied().filter(|b| *b != 0).collect();
        ascii.len() != body.len() && mentions(&ascii)
    }
}

/// `bytes` with each `\uXXXX` escape of an ASCII character replaced by
/// that character (everything else kept as written): enough to find a key
/// spelled with escapes, in one copy.
fn unescape_ascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i..i + 6)
            .filter(|w| w.starts_with(b"\\u"))
            .and_then(|w| std::str::from_utf8(&w[2..]).ok())
            .and_then(|h| u8::from_str_radix(h.strip_prefix("00")?, 16).ok())
            .filter(u8::is_ascii);
        match escaped {
            Some(c) => {
                out.push(c);
                i += 6;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Every value a multipart form could name a part with: each `name` or
/// `content-id` parameter anywhere in the body (Rack names a part by its
/// Content-ID), after `=` or `:`, quoted with `"` or `'` or not, read in a
/// copy without line breaks and backslashes (PHP joins a header line
/// with no `:` to the one before; Rack drops a backslash before any
/// character). So a second `name` on one line (PHP takes the last), a
/// folded header or a file's own content is read too: refusing a
/// look-alike costs less than missing a part. One pass, and only the
/// first bytes of each value: a body of `name=name=…` costs linear time.
///
/// Each name is handed to `found` as it is read, which stops the reading
/// by answering true: nothing is collected (a body of `name*=` repeated
/// made hundreds of times its size in names; found by a review).
fn multipart_names(body: &[u8], found: &mut dyn FnMut(&str) -> bool) -> bool {
    let flat: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n' | b'\\'))
        .collect();
    // As sent too: there a line break ends an unquoted value.
    param_values(body, found) || param_values(&flat, found)
}

/// Whether a multipart body names a part `_method`, however spelt.
fn multipart_overrides(body: &[u8]) -> bool {
    multipart_names(body, &mut |n| overrides_method(n))
}

/// The start of the value after each `name` or `content-id` key in `flat`,
/// each handed to `found` until it answers true (then true).
fn param_values(flat: &[u8], found: &mut dyn FnMut(&str) -> bool) -> bool {
    /// Enough of a value to tell `_method` and its spellings.
    const HEAD: usize = 32;
    /// Enough of an RFC 2231 value, percent-encoded after its charset.
    const EXTENDED_HEAD: usize = 256;
    // RFC 2231 continuations (`name*0=_met; name*1=hod`) joined in order.
    let mut joined = String::new();
    let mut i = 0;
    while i < flat.len() {
        let key_len = [&b"name"[..], &b"content-id"[..]]
            .into_iter()
            .find_map(|k| {
                flat.get(i..i + k.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(k))
                    .then_some(k.len())
            });
        let Some(key_len) = key_len else {
            i += 1;
            continue;
        };
        i += key_len;
        let mut j = i;
        // RFC 2231 spellings: `name*=utf-8''_method`, `name*0=_met`.
        let mut extended = false;
        let mut first_part = true;
        while flat
            .get(j)
            .is_some_and(|b| *b == b'*' || b.is_ascii_digit())
        {
            extended = true;
            if flat
                .get(j)
                .is_some_and(|b| b.is_ascii_digit() && *b != b'0')
            {
                first_part = false;
            }
            j += 1;
        }
        while flat.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
            j += 1;
        }
        if !matches!(flat.get(j), Some(b'=' | b':')) {
            continue;
        }
        j += 1;
        while flat.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
            j += 1;
        }
        let quote = match flat.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                j += 1;
                Some(*q)
            }
            _ => None,
        };
        let value: Vec<u8> = flat
            .get(j..)
            .unwrap_or_default()
            .iter()
            .take(if extended { EXTENDED_HEAD } else { HEAD })
            .take_while(|b| match quote {
                Some(q) => **b != q,
                None => **b != b';' && !b.is_ascii_whitespace(),
            })
            .copied()
            .collect();
        if extended {
            // `charset'language'value`, percent-encoded: the value, decoded,
            // alone and joined to the parts before it.
            let quotes: Vec<usize> = value
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\'')
                .map(|(k, _)| k)
                .take(2)
                .collect();
            let (charset, v) = match quotes[..] {
                [first, second] => (&value[..first], &value[second + 1..]),
                _ => (&b""[..], &value[..]),
            };
            // A name in a charset read here only as bytes (UTF-16 puts a
            // NUL between the letters of `_method`) is taken as naming it.
            let charset = String::from_utf8_lossy(charset).to_ascii_lowercase();
            if !matches!(
                charset.as_str(),
                "" | "utf-8" | "utf8" | "us-ascii" | "ascii" | "iso-8859-1" | "latin1"
            ) {
                return true;
            }
            let decoded: Vec<u8> = percent_encoding::percent_decode(v).collect();
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            if first_part {
                joined.clear();
            } else if joined.len() < EXTENDED_HEAD {
                joined.push_str(&decoded);
                if found(&joined) {
                    return true;
                }
            }
            if first_part {
                joined.push_str(&decoded);
            }
            if found(&decoded) {
                return true;
            }
        }
        if found(&String::from_utf8_lossy(&value)) {
            return true;
        }
        // Resume right after the key: a value may hold the next key.
    }
    false
}

fn method_override_refused() -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
        "_method is refused: the method Airlock decides must be the one the service runs",
    )
}

/// Whether `check` is the action `view` was opened for (its fingerprint:
/// principal, action, resource, params).
pub(crate) fn same_action(check: &CheckBody, view: &RequestView) -> bool {
    check.fingerprint() == Some(view.fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name a multipart body gives, in order.
    fn names_of(body: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        multipart_names(body, &mut |n| {
            names.push(n.to_owned());
            false
        });
        names
    }

    #[test]
    fn method_overrides_are_spotted_however_spelt() {
        for n in [
            "_method",
            "_METHOD",
            ".method",
            " method",
            "[method",
            "_method[x]",
            " _method",
            "_method\0",
            "_method\0x",
            "\t_method",
            "]_method",
            "[_method]",
        ] {
            assert!(overrides_method(n), "{n:?}");
        }
        for n in ["method", "_methods", "x_method", "_metho", ""] {
            assert!(!overrides_method(n), "{n}");
        }
        let names = names_of(
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b\r\n\
              content-disposition: form-data; filename=\"f\"; name=_method\r\n\r\nDELETE\r\n--b\r\n\
              Content-Disposition: form-data;\r\n NAME = '_method'\r\n\r\nx\r\n--b--",
        );
        assert_eq!(names[..4], ["a", "f", "_method", "_method"]);
        // Line breaks and backslashes dropped, Content-ID read, and a
        // body of keys costs one pass each way.
        let names = names_of(b"na\r\nme=\"\\_method\"; Content-ID: x");
        assert!(names.iter().any(|n| n == "_method"), "{names:?}");
        assert!(names.iter().any(|n| n == "x"), "{names:?}");
        let many = b"name=".repeat(200_000);
        assert_eq!(names_of(&many).len(), 400_000);
    }

    /// JSON bodies lenient readers take and a strict parse does not: a
    /// byte-order mark, UTF-16, a raw control character, a trailing NUL
    /// (found by a black-box pass); strict JSON is read by its keys only.
    #[test]
    fn json_overrides_in_bodies_only_lenient_readers_take() {
        let utf16: Vec<u8> = "{\"_method\":\"DELETE\"}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for body in [
            &b"\xEF\xBB\xBF{\"_method\":\"DELETE\"}"[..],
            &[&b"\xFF\xFE"[..], &utf16[..]].concat(),
            &utf16,
            b"{\"a\":\"\x01\",\"_method\":\"DELETE\"}",
            b"{\"_method\":\"DELETE\"}\0",
            b"{\"_\\u006dethod\":\"DELETE\",}",
            b"{\"_method\":\"DELETE\"}",
        ] {
            assert!(json_names_override(body), "{body:?}");
        }
        // Found by a review: a lone surrogate in a key (serde refuses it,
        // JSON.parse takes it), and UTF-16 whose code units read as other
        // JSON once their high bytes are dropped.
        assert!(json_names_override(br#"{"\ud800":0,"_method":"DELETE"}"#));
        let sneaky: Vec<u8> = "{\"a\":\"\u{ff22}\u{ff2c}\u{ff22}\u{ff7a}\u{ff22}\u{ff3a}\u{ff7b}\",\"_method\":\"DELETE\",\"c\":\"\u{ff22}\u{ff7d}\"}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(json_names_override(&sneaky));
        for body in [
            &b"{\"method\":\"sum\",\"id\":1}"[..],
            b"[{\"_method\":\"DELETE\"}]",
            b"{\"note\":\"_method\"}",
            b"{\"a\":1}\n{\"b\":2}\n",
        ] {
            assert!(!json_names_override(body), "{body:?}");
        }
    }

    /// Spellings a black-box pass got through: `;` between fields (older
    /// Rack, Python's `cgi`), `_method+=` (a trailing space once decoded)
    /// and RFC 2231's `name*=`.
    #[test]
    fn method_overrides_in_older_separators_and_extended_names() {
        for form in [
            &b"a=1;_method=DELETE"[..],
            b"_method+=DELETE",
            b"a=1&_method%20=DELETE",
        ] {
            assert!(form_names_override(form), "{form:?}");
        }
        assert!(!form_names_override(b"a=1;method=x&b=_method"));
        for body in [
            &b"Content-Disposition: form-data; name*=utf-8''_method\r\n"[..],
            b"Content-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n",
            b"Content-Disposition: form-data; name*0=_method\r\n",
            // Found by a review: continuations are joined, and a value
            // encoded past 32 bytes is read whole.
            b"Content-Disposition: form-data; name*0=_met; name*1=hod\r\n",
            b"Content-Disposition: form-data; name*=iso-8859-1''%5F%6D%65%74%68%6F%64\r\n",
            b"Content-Disposition: form-data; name*=utf-16le''%5F%00m%00e%00t%00h%00o%00d%00\r\n",
        ] {
            assert!(multipart_overrides(body), "{:?}", names_of(body));
        }
    }

    #[test]
    fn bound_headers_change_the_digest_and_others_do_not() {
        let mut h = HeaderMap::new();
        h.insert("x-custom", "1".parse().unwrap());
        assert_eq!(bound_headers_digest(&h, &[]), None);
        h.insert(header::AUTHORIZATION, "Bearer a".parse().unwrap());
        let a = bound_headers_digest(&h, &[]);
        h.insert("x-custom", "2".parse().unwrap());
        assert_eq!(bound_headers_digest(&h, &[]), a);
        h.insert(header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_ne!(bound_headers_digest(&h, &[]), a);
        // Moving bytes between a name and its value is another digest.
        let mut x = HeaderMap::new();
        x.insert(header::COOKIE, "ab".parse().unwrap());
        let mut y = HeaderMap::new();
        y.insert(header::COOKIE, "a".parse().unwrap());
        y.append(header::COOKIE, "b".parse().unwrap());
        assert_ne!(bound_headers_digest(&x, &[]), bound_headers_digest(&y, &[]));
    }

    #[test]
    fn bound_headers_cannot_be_respelled_or_dropped_as_hop_by_hop() {
        let tenant = [HeaderName::from_static("x-tenant-id")];
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            h
        };
        assert!(screen_bound(&with("x_tenant_id", "t2"), &tenant).is_err());
        assert!(screen_bound(&with("x_api_key", "k"), &[]).is_err());
        assert!(screen_bound(&with("x_other", "1"), &tenant).is_ok());
        assert!(screen_bound(&with("connection", "close, X-Tenant-Id"), &tenant).is_err());
        assert!(screen_bound(&with("connection", "keep-alive, Content-Type"), &[]).is_err());
        assert!(screen_bound(&with("connection", "close"), &tenant).is_ok());
    }

    #[test]
    fn a_routes_own_bound_headers_count_and_a_repeat_of_a_fixed_one_is_once() {
        let tenant = [HeaderName::from_static("x-tenant-id")];
        let mut h = HeaderMap::new();
        assert_eq!(bound_headers_digest(&h, &tenant), None);
        h.insert("x-tenant-id", "mine".parse().unwrap());
        let mine = bound_headers_digest(&h, &tenant);
        assert!(mine.is_some());
        assert_eq!(bound_headers_digest(&h, &[]), None);
        h.insert("x-tenant-id", "theirs".parse().unwrap());
        assert_ne!(bound_headers_digest(&h, &tenant), mine);
        let mut c = HeaderMap::new();
        c.insert(header::COOKIE, "a".parse().unwrap());
        assert_eq!(
            bound_headers_digest(&c, &[header::COOKIE]),
            bound_headers_digest(&c, &[])
        );
    }
}
