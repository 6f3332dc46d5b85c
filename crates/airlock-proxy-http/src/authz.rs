//! Authorization endpoints for front proxies a team already runs: Envoy's
//! `ext_authz` (HTTP service) under `/envoy/` and nginx's `auth_request` at
//! `/nginx`. The front asks "may this request pass?"; the door decides,
//! holds, and consumes an approved grant's one use when the answer is yes.
//! Each dialect only reads the question and writes the answer.
//!
//! Envoy sends the original method and path (after its `path_prefix`,
//! `/envoy`), the headers it is told to, and the body (`with_request_body`,
//! which marks it with `x-envoy-auth-partial-body`); it passes a non-200
//! answer — status, body, headers — to the client, so a hold reads as the
//! reverse proxy's 202. nginx sends only headers (no body, ever) and passes
//! only 401 and 403 on, so the original request is described in
//! `X-Airlock-Method`, `X-Airlock-Uri` and `X-Airlock-Body`, and the answer's
//! `Airlock-Outcome` and `Airlock-Body` headers let its `error_page`
//! locations answer 202 or the error (docs/PROXIES.md has both configs).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{ErrorCode, Outcome, RequestView};
use airlock_client::Gate;
use airlock_core::{GrantId, UserName};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map};
use tokio::net::TcpListener;

use crate::body::Budget;
use crate::config::{AuthzConfig, ResponseDlp};
use crate::door::{Door, Facts, Verdict};
use crate::proxy::{take_header, PRINCIPAL_HEADER, REQUEST_HEADER, TOKEN_HEADER};
use crate::respond::{json_response, refuse, Body, Refusal};
use crate::{listen, ProxyError};

/// Where Envoy's questions arrive (its `path_prefix`).
pub const ENVOY_PREFIX: &str = "/envoy";
/// Where nginx's questions arrive.
pub const NGINX_PATH: &str = "/nginx";

/// The client's address, as the front states it.
const SOURCE_IP: &str = "x-airlock-source-ip";
/// Set by Envoy on a question that carries the body: `true` when it was
/// cut at `max_request_bytes`.
const ENVOY_PARTIAL_BODY: &str = "x-envoy-auth-partial-body";
/// In an OK answer to Envoy: request headers to drop before the upstream.
const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// nginx's description of the original request.
const NGINX_METHOD: &str = "x-airlock-method";
const NGINX_URI: &str = "x-airlock-uri";
/// nginx's `$host`: the service asked for, bound in params.
const NGINX_HOST: &str = "x-airlock-host";
/// `LENGTH:TRANSFER-ENCODING[:PROTOCOL]` of the original request: nginx's
/// `$content_length:$http_transfer_encoding:$server_protocol`, Envoy's
/// `%REQ(content-length)%:%REQ(transfer-encoding)%`.
const NGINX_BODY: &str = "x-airlock-body";
/// In an answer to nginx: `pass`, `held`, `unauthenticated` or `refused`.
const OUTCOME: &str = "airlock-outcome";
/// In an answer to nginx: the JSON body the client should get.
const OUTCOME_BODY: &str = "airlock-body";

/// The two dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Envoy,
    Nginx,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::Envoy => "envoy",
            Front::Nginx => "nginx",
        }
    }
}

/// One `[[proxies.authz]]` listener.
pub struct Authz {
    cfg: AuthzConfig,
    door: Door,
    bodies: Budget,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("name", &self.cfg.name)
            .field("listen", &self.cfg.listen)
            .finish()
    }
}

impl Authz {
    /// An endpoint for `cfg`, asking `gate` (an enforcer's identity).
    pub fn new(cfg: AuthzConfig, gate: Arc<dyn Gate>) -> Result<Arc<Self>, ProxyError> {
        if let Some(r) = cfg
            .routes
            .iter()
            .find(|r| r.response_dlp != ResponseDlp::Off || r.response_action.is_some())
        {
            return Err(ProxyError::Config(format!(
                "proxies.authz {:?}: route {:?} scans responses, which an authorization \
                 endpoint never sees; use [[proxies.http]] for that",
                cfg.name, r.path
            )));
        }
        let door = Door::new(
            "authz",
            &cfg.name,
            &cfg.routes,
            cfg.principal_header.as_deref(),
            cfg.hold_seconds,
            cfg.checks_per_second_per_user,
            gate,
        )?;
        if cfg.max_buffered_body_bytes < cfg.max_body_bytes {
            // Every body it accepts would be refused as over the budget.
            return Err(ProxyError::Config(format!(
                "proxies.authz {:?}: max_buffered_body_bytes ({}) must be at least max_body_bytes ({})",
                cfg.name, cfg.max_buffered_body_bytes, cfg.max_body_bytes
            )));
        }
        let bodies = Budget::new(cfg.max_buffered_body_bytes);
        Ok(Arc::new(Self { cfg, door, bodies }))
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, ProxyError> {
        listen::bind(&self.cfg.name, self.cfg.listen).await
    }

    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, max) = (self.cfg.name.clone(), self.cfg.max_connections);
        let timeout = Duration::from_secs(self.cfg.client_timeout_seconds);
        listen::serve(listener, &name, max, timeout, move |req, _peer| {
            self.clone().handle(req)
        })
        .await
    }

    /// One question, start to end.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let front = if path == NGINX_PATH {
            Front::Nginx
        } else if path.starts_with(ENVOY_PREFIX) && path[ENVOY_PREFIX.len()..].starts_with('/') {
            Front::Envoy
        } else {
            return refuse(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "ask at /envoy/… (Envoy ext_authz) or /nginx (nginx auth_request)",
            );
        };
        // On a task of its own: if the front gives up on this call after a
        // grant's use was consumed, the use is still recorded as released
        // (the task ends with the hold at the latest).
        let this = self.clone();
        let asked = tokio::spawn(async move { this.ask(front, req).await });
        let verdict = asked.await.unwrap_or_else(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UpstreamUnavailable,
                "the decision failed; nothing was let through",
            )
            .into()
        });
        self.answer(front, verdict)
    }

    async fn ask(&self, front: Front, req: Request<Incoming>) -> Verdict {
        let (mut parts, body) = req.into_parts();
        if let Err(r) = self.door.screen(&parts.headers) {
            return r.into();
        }
        let token = take_header(&mut parts.headers, TOKEN_HEADER);
        let resume = take_header(&mut parts.headers, REQUEST_HEADER);
        let question = match front {
            Front::Envoy => envoy_question(&parts),
            Front::Nginx => nginx_question(&parts.headers),
        };
        let question = match question {
            Ok(q) => q,
            Err(r) => return r.into(),
        };
        if let Err(r) = self.door.screen_query(&question.query) {
            return r.into();
        }
        let (principal, key) = match self.door.identify(&parts.headers, token).await {
            Ok(p) => p,
            Err(r) => return r.into(),
        };
        let target = match self.door.route(&question.method, &question.path) {
            Ok(t) => t,
            Err(r) => return r.into(),
        };
        if target.route.danger_forward_unchecked {
            return Verdict::Pass {
                principal,
                grant: None,
                decision: None,
            };
        }
        // Envoy's copy of the body, whole (it is bound by its SHA-256); its
        // share of the budget is held until the answer.
        let timeout = Duration::from_secs(self.cfg.client_timeout_seconds);
        let (body, _share) = match question.body {
            BodyIs::Sent => match self
                .bodies
                .read(body, self.cfg.max_body_bytes, timeout)
                .await
            {
                Ok(b) => (Some(b.bytes.clone()), Some(b)),
                Err(r) => return r.into(),
            },
            BodyIs::Empty => (Some(Bytes::new()), None),
            BodyIs::Unseen => (None, None),
        };
        let facts = Facts {
            method: &question.method,
            path: &question.path,
            query: &question.query,
            headers: &parts.headers,
            body: body.as_ref(),
            source_ip: source_ip(&parts.headers),
            host: question.host.as_deref(),
            key: key.as_deref(),
        };
        let verdict = self.door.decide(&principal, &target, &facts, resume).await;
        if let Verdict::Pass {
            grant: Some(grant), ..
        } = &verdict
        {
            // The front forwards, not us: the grant's use is recorded as
            // released to it, since the upstream's status is never seen.
            self.release(*grant, front);
        }
        verdict
    }

    fn release(&self, grant: GrantId, front: Front) {
        let enforcer = self.door.enforcer().clone();
        let name = self.cfg.name.clone();
        tokio::spawn(async move {
            let mut detail = Map::new();
            detail.insert("released_to".into(), json!(front.name()));
            detail.insert("authz".into(), json!(name));
            if let Err(e) = enforcer.complete(grant, Outcome::Success, detail).await {
                tracing::warn!(error = %e, grant = %grant, "authz: completing the grant failed");
            }
        });
    }

    fn answer(&self, front: Front, verdict: Verdict) -> Response<Body> {
        match (front, verdict) {
            (_, Verdict::Pass { principal, .. }) => pass(front, &principal),
            (Front::Envoy, Verdict::Held(view)) => self.envoy_held(*view),
            (Front::Envoy, Verdict::Refused(r)) => r.into_response(),
            (Front::Nginx, Verdict::Held(view)) => self.nginx_held(*view),
            (Front::Nginx, Verdict::Refused(r)) => nginx_refused(r),
        }
    }

    /// As the reverse proxy's 202: Envoy passes it to the client whole.
    fn envoy_held(&self, view: RequestView) -> Response<Body> {
        let id = view.id.to_string();
        let mut res = json_response(StatusCode::ACCEPTED, &json!({ "request": view }));
        set(res.headers_mut(), REQUEST_HEADER, &id);
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.cfg.retry_after_seconds),
        );
        res
    }

    /// nginx passes only 401 and 403: a hold is a 401 whose
    /// `Airlock-Outcome: held` its `error_page` location turns into 202.
    fn nginx_held(&self, view: RequestView) -> Response<Body> {
        // Small: nginx keeps an answer's headers in one 4–8 KiB buffer.
        let body = json!({ "request": {
            "id": view.id.to_string(),
            "status": view.status,
            "url": view.url,
        }});
        let mut res = json_response(StatusCode::UNAUTHORIZED, &body);
        let h = res.headers_mut();
        set(h, OUTCOME, "held");
        set(h, OUTCOME_BODY, &ascii_json(&body));
        set(h, REQUEST_HEADER, &view.id.to_string());
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.cfg.retry_after_seconds),
        );
        res
    }
}

/// Yes: the end user's name for the upstream; the Airlock headers are not
/// to reach it.
fn pass(front: Front, principal: &UserName) -> Response<Body> {
    let mut res = json_response(StatusCode::OK, &json!({ "allowed": true }));
    let h = res.headers_mut();
    // In an OK answer: the end user, for the upstream.
    set(h, PRINCIPAL_HEADER, principal.as_str());
    match front {
        Front::Envoy => set(
            h,
            ENVOY_HEADERS_TO_REMOVE,
            &format!("{TOKEN_HEADER},{REQUEST_HEADER}"),
        ),
        Front::Nginx => set(h, OUTCOME, "pass"),
    }
    res
}

fn nginx_refused(r: Refusal) -> Response<Body> {
    let body = ascii_json(&r.body());
    let (status, outcome) = match r.status {
        StatusCode::UNAUTHORIZED => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        // nginx turns anything but 401/403 into its own 500: Airlock
        // failing, a broken question, reads as an error, never a pass.
        s if s.is_server_error() => (s, "error"),
        _ => (StatusCode::FORBIDDEN, "refused"),
    };
    let mut res = r.into_response();
    *res.status_mut() = status;
    let h = res.headers_mut();
    set(h, OUTCOME, outcome);
    set(h, OUTCOME_BODY, &body);
    res
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// JSON with every non-ASCII character escaped, so it fits in a header.
fn ascii_json(v: &impl serde::Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn source_ip(h: &HeaderMap) -> Option<IpAddr> {
    h.get(SOURCE_IP)?.to_str().ok()?.trim().parse().ok()
}

/// Whether the question carries the original body.
enum BodyIs {
    Sent,
    Empty,
    Unseen,
}

/// The original request, as the front describes it.
struct Question {
    method: String,
    path: String,
    query: String,
    host: Option<String>,
    body: BodyIs,
}

fn bad_question(m: &str) -> Refusal {
    // A front that asks wrongly is misconfigured: an error, never a pass.
    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::BadRequest, m)
}

fn envoy_question(parts: &hyper::http::request::Parts) -> Result<Question, Refusal> {
    let path = &parts.uri.path()[ENVOY_PREFIX.len()..];
    let h = &parts.headers;
    let body = match h.get(ENVOY_PARTIAL_BODY).and_then(|v| v.to_str().ok()) {
        Some("false") => BodyIs::Sent,
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "the request body is larger than Envoy may show Airlock",
            ))
        }
        // Envoy marks every body it sends along; none means none was
        // sent — or that `with_request_body` is missing, which the
        // `X-Airlock-Body` Envoy adds (the original Content-Length) tells.
        None => match h.get(NGINX_BODY).and_then(|v| v.to_str().ok()) {
            Some(b) if body_declared(b, parts.method.as_str()) => BodyIs::Unseen,
            Some(_) => BodyIs::Empty,
            None => {
                return Err(bad_question(
                    "Envoy must add X-Airlock-Body (see docs/PROXIES.md)",
                ))
            }
        },
    };
    Ok(Question {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        // Envoy asks with the original request's authority.
        host: h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    })
}

/// Whether a `LENGTH:TRANSFER-ENCODING[:PROTOCOL]` description of a
/// `method` request declares a body. Over HTTP/2 and HTTP/3 a body may come
/// with neither (nginx's `$content_length` is then empty): there, only a GET
/// or HEAD without a length is taken as bodiless.
fn body_declared(description: &str, method: &str) -> bool {
    let mut fields = description.splitn(3, ':');
    let (Some(length), Some(coding)) = (fields.next(), fields.next()) else {
        // Not the form asked for: assume the worst.
        return true;
    };
    let (length, coding) = (length.trim(), coding.trim());
    if !coding.is_empty() || !matches!(length, "" | "0" | "-") {
        return true;
    }
    let http1 = fields
        .next()
        .is_none_or(|p| p.trim().starts_with("HTTP/1") || p.trim().is_empty());
    length.is_empty() && !http1 && !matches!(method, "GET" | "HEAD")
}

fn nginx_question(h: &HeaderMap) -> Result<Question, Refusal> {
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or_else(|| {
                bad_question(&format!(
                    "the nginx location must set {name} (see docs/PROXIES.md)"
                ))
            })
    };
    let method = get(NGINX_METHOD)?;
    let raw_uri = get(NGINX_URI)?;
    // `#` has no place in a request target, and nginx passes it on as
    // sent: the URI parser here drops the fragment, where a service that
    // keeps it in the path and cleans it after reads another path
    // (`/exports/public.csv#/../secret.csv`; found by a black-box pass).
    if raw_uri.contains('#') {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::BadRequest,
            "a request target holding `#` is refused: the service could read a path other than the one decided",
        ));
    }
    let uri: hyper::Uri = raw_uri
        .parse()
        .map_err(|_| bad_question("X-Airlock-Uri is not a request URI"))?;
    let described = get(NGINX_BODY)?;
    if described.split(':').count() != 3 {
        return Err(bad_question(
            "X-Airlock-Body is not LENGTH:TRANSFER-ENCODING:PROTOCOL",
        ));
    }
    let body = if body_declared(described, method) {
        BodyIs::Unseen
    } else {
        BodyIs::Empty
    };
    if method.is_empty() || uri.authority().is_some() {
        return Err(bad_question(
            "X-Airlock-Method or X-Airlock-Uri is malformed",
        ));
    }
    Ok(Question {
        method: method.to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        host: h
            .get(NGINX_HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::body_declared;

    /// Which descriptions declare a body: a length or a coding always; no
    /// length over HTTP/2 or HTTP/3 for anything but GET and HEAD; a
    /// malformed one always.
    #[test]
    fn body_declared_reads_the_description() {
        for (d, m, want) in [
            (":", "GET", false),
            (":", "POST", false),
            ("0:", "POST", false),
            ("-:", "POST", false),
            ("5:", "GET", true),
            (":chunked", "POST", true),
            (":chunked:HTTP/1.1", "POST", true),
            ("::HTTP/1.1", "POST", false),
            ("::HTTP/2.0", "POST", true),
            ("::HTTP/3.0", "PUT", true),
            ("::HTTP/2.0", "GET", false),
            ("::HTTP/2.0", "HEAD", false),
            ("0::HTTP/2.0", "POST", false),
            ("garbage", "GET", true),
        ] {
            assert_eq!(body_declared(d, m), want, "{d:?} {m}");
        }
    }
}
