//! One proxy listener: identify the end user, match the route, check, hold,
//! forward once, scan the response. Every error on the way refuses the
//! request; nothing here forwards by default.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{
    CheckBody, Disposition, ErrorCode, FindingsBody, FindingsTarget, Outcome, RequestView,
};
use airlock_client::{ClientError, Entry, Gate, Waited};
use airlock_core::{ActionName, GrantId, RequestId, RequestStatus, UserName};
use airlock_dlp::Scanner;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::body::Budget;
use crate::config::{HttpProxyConfig, ResponseDlp};
use crate::door::{same_action, Door, Facts, Target, Verdict};
use crate::respond::{full, gate_error, json_response, refuse, Body, BoxError};
use crate::scan::{self, Counts};
use crate::{listen, ProxyError};

/// The header carrying the end user's API key; never forwarded.
pub const TOKEN_HEADER: &str = "airlock-token";
/// The header naming a held request on a retry; never forwarded.
pub const REQUEST_HEADER: &str = "airlock-request";
/// On a 202 for a response held for approval: the request to approve.
pub const RESPONSE_REQUEST_HEADER: &str = "airlock-response-request";
/// Sent to the service: the end user (a client's own is dropped).
pub const PRINCIPAL_HEADER: &str = "airlock-principal";

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The finding counts of a response: none (not scanned), known now
/// (buffered), or once the streamed body has gone through; with what became
/// of it, or `None` where the counts are on record already (a decision on
/// the response withheld it, or the response's grant was completed with
/// them).
enum Counted {
    None,
    Now(Counts, Option<Disposition>),
    /// A streamed body's counts when it ends, and how far DLP could read
    /// it.
    Later(
        tokio::sync::oneshot::Receiver<(Counts, Reading)>,
        Disposition,
    ),
}

impl Counted {
    /// These counts with what the headers held added: a streamed body's
    /// when it ends.
    fn with(self, headers: Counts, mode: ResponseDlp) -> Counted {
        if headers.is_empty() {
            return self;
        }
        match self {
            Counted::None => Counted::Now(headers, Some(leaving(mode))),
            Counted::Now(mut counts, d) => {
                scan::add(&mut counts, &headers);
                Counted::Now(counts, d)
            }
            Counted::Later(rx, d) => {
                let (tx, merged) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Ok((mut counts, reading)) = rx.await {
                        scan::add(&mut counts, &headers);
                        let _ = tx.send((counts, reading));
                    }
                });
                Counted::Later(merged, d)
            }
        }
    }
}

/// How far DLP could read a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Read and scanned.
    Read,
    /// Unreadable, and let through unscanned (`report`).
    Unscanned,
    /// Unreadable, and withheld before any of it left.
    Withheld,
}

/// What becomes of an answer DLP cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// Withheld: what cannot be read cannot be masked, blocked or decided.
    Withhold,
    /// Let through, unscanned and on record as such: the route only reports.
    Pass,
}

/// How the decision on a response went.
enum ResponseFate {
    /// Allowed: it leaves.
    Allowed,
    /// Approved, and that grant's one use consumed and completed (with the
    /// counts): it leaves.
    Granted,
    /// It does not leave: this answer goes instead.
    Withheld(Response<Body>),
}

/// A response body fed by the task that scans it.
struct ChannelBody {
    /// The piece taken before the head was sent, if any.
    first: Option<Bytes>,
    rest: Pieces,
}

/// A streamed body's pieces, or why it broke off.
type Pieces = tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>;

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if let Some(piece) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))));
        }
        self.rest
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(hyper::body::Frame::data)))
    }
}

/// How long a streamed response's head waits for its body's first piece,
/// so that a body failing at once gets an error status.
const HEAD_WAIT: Duration = Duration::from_secs(1);

/// What a streamed, masked response accumulates before it is sent on.
const STREAM_FLUSH: usize = 64 << 10;
/// Compressed bytes decoded at a time: deflate and brotli expand at most
/// about 1000:1, so one step yields about a MiB at most.
const DECODE_STEP: usize = 1024;

/// One HTTP proxy: its routes, its gate, its upstream.
pub struct Proxy {
    cfg: HttpProxyConfig,
    door: Door,
    upstream: String,
    upstream_authority: HeaderValue,
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    scanner: Scanner,
    bodies: Budget,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("name", &self.cfg.name)
            .field("listen", &self.cfg.listen)
            .field("upstream", &self.upstream)
            .finish()
    }
}

pub(crate) fn take_header(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let v = headers.remove(name)?;
    // A second copy must not survive to the upstream either.
    while headers.remove(name).is_some() {}
    v.to_str().ok().map(|s| s.trim().to_owned())
}

impl Proxy {
    /// A proxy for `cfg`, asking `gate` (whose identity must be an
    /// enforcer's). Routes, the upstream and the detectors are checked here.
    pub fn new(cfg: HttpProxyConfig, gate: Arc<dyn Gate>) -> Result<Arc<Self>, ProxyError> {
        let bad = |m: String| ProxyError::Config(format!("proxies.http {:?}: {m}", cfg.name));
        let door = Door::new(
            "proxy",
            &cfg.name,
            &cfg.routes,
            cfg.principal_header.as_deref(),
            cfg.hold_seconds,
            cfg.checks_per_second_per_user,
            gate,
        )?;
        let uri: Uri = cfg
            .upstream
            .parse()
            .map_err(|e| bad(format!("upstream {:?}: {e}", cfg.upstream)))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(format!(
                "upstream {:?} must be an http:// URL",
                cfg.upstream
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad(format!("upstream {:?} has no host", cfg.upstream)))?
            .to_string();
        let upstream_authority = HeaderValue::from_str(&authority)
            .map_err(|e| bad(format!("upstream host {authority:?}: {e}")))?;
        if cfg.max_buffered_body_bytes < cfg.max_body_bytes {
            // Every body it accepts would be refused as over the budget.
            return Err(bad(format!(
                "max_buffered_body_bytes ({}) must be at least max_body_bytes ({})",
                cfg.max_buffered_body_bytes, cfg.max_body_bytes
            )));
        }
        let scanner = Scanner::new(&cfg.dlp).map_err(|e| bad(e.to_string()))?;
        // Small writes (a masked body goes out in pieces) must not wait for
        // the peer's delayed ACK: no Nagle on either side.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Full<Bytes>>(connector);
        Ok(Arc::new(Self {
            upstream: format!("http://{authority}"),
            upstream_authority,
            door,
            client,
            scanner,
            bodies: Budget::new(cfg.max_buffered_body_bytes),
            cfg,
        }))
    }

    /// The proxy's name.
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
        listen::serve(listener, &name, max, timeout, move |req, peer| {
            self.clone().handle(req, peer)
        })
        .await
    }

    /// One request, start to end.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let screened = self
            .door
            .screen(&parts.headers)
            .and_then(|()| self.door.screen_query(parts.uri.query().unwrap_or("")));
        if let Err(r) = screened {
            return r.into_response();
        }
        let token = take_header(&mut parts.headers, TOKEN_HEADER);
        let resume = take_header(&mut parts.headers, REQUEST_HEADER);
        let (principal, key) = match self.door.identify(&parts.headers, token).await {
            Ok(p) => p,
            Err(r) => return r.into_response(),
        };
        let mut target = match self.door.route(parts.method.as_str(), parts.uri.path()) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        };
        target.response_resume = take_header(&mut parts.headers, RESPONSE_REQUEST_HEADER);
        target.key = key.clone().map(crate::door::EndUserKey);
        let client_timeout = Duration::from_secs(self.cfg.client_timeout_seconds);
        // Its share of the listener's body budget is held until the answer
        // (through a hold for approval, too).
        let read = self
            .bodies
            .read(body, self.cfg.max_body_bytes, client_timeout)
            .await;
        let share = match read {
            Ok(b) => b,
            Err(r) => return r.into_response(),
        };
        let body = share.bytes.clone();
        if target.route.danger_forward_unchecked {
            let sent = self.forward(parts, body, peer, &target, &principal).await;
            return self.record_findings(sent, &target, &principal, None).await;
        }
        let facts = Facts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: Some(&body),
            source_ip: Some(peer.ip()),
            // One upstream per listener: the path says it all.
            host: None,
            key: key.as_deref(),
        };
        match self.door.decide(&principal, &target, &facts, resume).await {
            Verdict::Refused(r) => r.into_response(),
            Verdict::Held(view) => self.accepted(*view),
            Verdict::Pass {
                principal,
                grant: None,
                decision,
            } => {
                let sent = self.forward(parts, body, peer, &target, &principal).await;
                self.record_findings(sent, &target, &principal, decision)
                    .await
            }
            Verdict::Pass {
                principal,
                grant: Some(grant),
                ..
            } => {
                self.forward_once(grant, principal, parts, body, peer, target)
                    .await
            }
        }
    }

    /// 202: still pending; how to come back.
    fn accepted(&self, view: RequestView) -> Response<Body> {
        let id = view.id.to_string();
        let mut res = json_response(StatusCode::ACCEPTED, &json!({ "request": view }));
        let h = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert(HeaderName::from_static(REQUEST_HEADER), v);
        }
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.cfg.retry_after_seconds),
        );
        res
    }

    /// An approved request whose grant's one use is consumed: forward it
    /// and complete with the upstream's status.
    async fn forward_once(
        self: Arc<Self>,
        grant: GrantId,
        principal: UserName,
        parts: Parts,
        body: Bytes,
        peer: SocketAddr,
        target: Target,
    ) -> Response<Body> {
        // The use is spent: forward and complete on a task of its own, so
        // a client going away now cannot leave a consumed grant unreported.
        // The task ends with the upstream's answer (bounded by its timeout).
        let this = self.clone();
        let task = tokio::spawn(async move {
            let (res, counted) = this.forward(parts, body, peer, &target, &principal).await;
            let status = res.status();
            match counted {
                Counted::None => this.complete(grant, status, None, Reading::Read).await,
                Counted::Now(c, d) => {
                    let reading = match d {
                        Some(Disposition::Unscanned) => Reading::Unscanned,
                        Some(Disposition::Withheld) => Reading::Withheld,
                        _ => Reading::Read,
                    };
                    this.complete(grant, status, Some(c), reading).await
                }
                // Streamed: completed when the body has gone through (or
                // the client left), with what was found.
                Counted::Later(rx, _) => {
                    let this = this.clone();
                    tokio::spawn(async move {
                        let (counts, reading) = match rx.await {
                            Ok((c, r)) => (Some(c), r),
                            Err(_) => (None, Reading::Read),
                        };
                        this.complete(grant, status, counts, reading).await;
                    });
                }
            }
            res
        });
        task.await.unwrap_or_else(|_| {
            refuse(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamUnavailable,
                "forwarding failed",
            )
        })
    }

    /// What DLP found in the answer to an allowed request, put on record
    /// (a granted one's counts go with its completion instead). A buffered
    /// answer is recorded before it leaves, and withheld if that fails, as
    /// any action whose audit record cannot be written; a streamed one has
    /// left by the time its counts are known, so a failure is logged.
    async fn record_findings(
        self: &Arc<Self>,
        (res, counted): (Response<Body>, Counted),
        target: &Target,
        principal: &UserName,
        decision: Option<i64>,
    ) -> Response<Body> {
        let report = |counts: Counts, disposition: Disposition| FindingsBody {
            principal: principal.clone(),
            proxy: self.cfg.name.clone(),
            targets: vec![FindingsTarget {
                action: target.action.clone(),
                resource: target.resource.clone(),
            }],
            decisions: decision.into_iter().collect(),
            disposition,
            counts,
        };
        match counted {
            Counted::None | Counted::Now(_, None) => res,
            // Nothing found is worth a record only when nothing could be
            // looked for: unread and let through, or unread and withheld.
            Counted::Now(counts, Some(Disposition::Passed | Disposition::Masked))
                if counts.is_empty() =>
            {
                res
            }
            Counted::Now(counts, Some(disposition)) => {
                let gate = self.door.enforcer().gate();
                match gate.report_findings(&report(counts, disposition)).await {
                    Ok(_) => res,
                    Err(e) => {
                        tracing::error!(proxy = %self.cfg.name, error = %e, "cannot record DLP findings; the response is withheld");
                        if disposition == Disposition::Withheld {
                            return res;
                        }
                        refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            ErrorCode::AuditUnavailable,
                            "the response's DLP findings could not be recorded, so it was withheld",
                        )
                    }
                }
            }
            Counted::Later(rx, disposition) => {
                let this = self.clone();
                let body = report(Counts::new(), disposition);
                tokio::spawn(async move {
                    let Ok((counts, reading)) = rx.await else {
                        return;
                    };
                    let disposition = match reading {
                        // Nothing found is worth a record only when
                        // nothing could be looked for.
                        Reading::Read if counts.is_empty() => return,
                        Reading::Read => body.disposition,
                        Reading::Unscanned => Disposition::Unscanned,
                        Reading::Withheld => Disposition::Withheld,
                    };
                    let body = FindingsBody {
                        counts,
                        disposition,
                        ..body
                    };
                    let gate = this.door.enforcer().gate();
                    if let Err(e) = gate.report_findings(&body).await {
                        tracing::error!(proxy = %this.cfg.name, error = %e, "cannot record the DLP findings of a streamed response");
                    }
                });
                res
            }
        }
    }

    async fn complete(
        &self,
        grant: GrantId,
        status: StatusCode,
        counts: Option<Counts>,
        reading: Reading,
    ) {
        // An answer withheld unread did not leave, whatever status its head
        // already carried (a streamed one breaks off after a 200).
        let delivered = reading != Reading::Withheld;
        let outcome = if delivered && (status.is_success() || status.is_redirection()) {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut detail = Map::new();
        detail.insert("status".into(), json!(status.as_u16()));
        if let Some(c) = counts {
            detail.insert("dlp".into(), json!(c));
        }
        match reading {
            Reading::Read => {}
            Reading::Unscanned => {
                detail.insert("dlp_unscanned".into(), json!(true));
            }
            Reading::Withheld => {
                detail.insert("dlp_withheld".into(), json!(true));
            }
        }
        if let Err(e) = self.door.enforcer().complete(grant, outcome, detail).await {
            tracing::warn!(error = %e, grant = %grant, "proxy: completing the grant failed");
        }
    }

    /// Sends the request upstream and the answer back through DLP; the
    /// finding counts when the route scans.
    async fn forward(
        self: &Arc<Self>,
        parts: Parts,
        body: Bytes,
        peer: SocketAddr,
        target: &Target,
        principal: &UserName,
    ) -> (Response<Body>, Counted) {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = format!("{}{pq}", self.upstream);
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method;
        *req.uri_mut() = match uri.parse() {
            Ok(u) => u,
            Err(_) => {
                return (
                    refuse(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "bad path"),
                    Counted::None,
                )
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.insert(header::HOST, self.upstream_authority.clone());
        // The service learns who the end user is from us alone: a client's
        // own `Airlock-Principal` would name anyone.
        let who = HeaderName::from_static(PRINCIPAL_HEADER);
        while headers.remove(&who).is_some() {}
        if let Ok(v) = HeaderValue::from_str(principal.as_str()) {
            headers.insert(who, v);
        }
        if target.route.response_dlp != ResponseDlp::Off {
            // A scanned answer is scanned whole: pieces asked for one at a
            // time would each hold part of a card number, and none a
            // finding.
            // Apache's older spelling, which it reads where `Range` is
            // missing (found by a black-box pass).
            // (`remove` takes every line of a name.)
            for h in [
                header::RANGE,
                header::IF_RANGE,
                HeaderName::from_static("request-range"),
            ] {
                headers.remove(h);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.append(HeaderName::from_static("x-forwarded-for"), v);
        }
        *req.headers_mut() = headers;
        let timeout = Duration::from_secs(self.cfg.upstream_timeout_seconds);
        let res = match tokio::time::timeout(timeout, self.client.request(req)).await {
            // No protocol is switched through the proxy (`Upgrade` is not
            // forwarded): a 101 would leave the client on a connection
            // that goes nowhere.
            Ok(Ok(r)) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
                return (
                    refuse(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::UpstreamUnavailable,
                        "the upstream service switched protocols, which the proxy does not carry",
                    ),
                    Counted::None,
                );
            }
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(proxy = %self.cfg.name, error = %e, "upstream failed");
                return (
                    refuse(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::UpstreamUnavailable,
                        "the upstream service did not answer",
                    ),
                    Counted::None,
                );
            }
            Err(_) => {
                return (
                    refuse(
                        StatusCode::GATEWAY_TIMEOUT,
                        ErrorCode::UpstreamUnavailable,
                        "the upstream service took too long",
                    ),
                    Counted::None,
                )
            }
        };
        self.respond(res, target, principal).await
    }

    /// The upstream's answer as it may leave: as is (DLP off, or a type
    /// not scanned), or decoded, scanned, and reported, masked or withheld.
    async fn respond(
        self: &Arc<Self>,
        res: Response<Incoming>,
        target: &Target,
        principal: &UserName,
    ) -> (Response<Body>, Counted) {
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let mode = target.route.response_dlp;
        // hyper passes the upstream's reason phrase on (`200 4111…`): the
        // standard one for the status goes instead.
        parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        // The headers leave with the body: scanned in every mode that
        // scans, masked in place under `mask`, the answer withheld under
        // `block`, counted with the body's findings.
        let in_headers = match mode {
            ResponseDlp::Off => Counts::new(),
            _ => scan::headers(&self.scanner, &mut parts.headers, mode == ResponseDlp::Mask),
        };
        if mode != ResponseDlp::Off {
            // Ranges are not forwarded here: none are offered.
            parts.headers.remove(header::ACCEPT_RANGES);
        }
        if mode == ResponseDlp::Block && !in_headers.is_empty() {
            return (
                refuse(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    format!(
                        "the response was withheld: its headers contain {}",
                        describe(&in_headers)
                    ),
                ),
                Counted::Now(in_headers, Some(Disposition::Withheld)),
            );
        }
        let (res, counted) = self
            .respond_body(parts, body, target, principal, &in_headers)
            .await;
        (res, counted.with(in_headers, mode))
    }

    /// [`Self::respond`] for the body, the headers done (`in_headers`, what
    /// they held, counts in a decision on the response).
    async fn respond_body(
        self: &Arc<Self>,
        mut parts: hyper::http::response::Parts,
        body: Incoming,
        target: &Target,
        principal: &UserName,
        in_headers: &Counts,
    ) -> (Response<Body>, Counted) {
        let mode = target.route.response_dlp;
        // Every line of each, joined as HTTP joins them: the first alone
        // (`identity`, then `gzip`) let a gzip body out unmasked (found by
        // a black-box pass). Types given twice are read as one list, which
        // is no type the scanner passes unread.
        let ct = joined(&parts.headers, header::CONTENT_TYPE);
        let ct = ct.as_deref();
        let encoding = joined(&parts.headers, header::CONTENT_ENCODING);
        let encoding = encoding.as_deref();
        let sniff = scan::Sniffer::default();
        let pass = |parts, body: Incoming| {
            let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            (Response::from_parts(parts, body), Counted::None)
        };
        // A route that decides its responses decides every one: what
        // cannot be scanned cannot be decided, so it is withheld.
        let decided = target.route.response_action.is_some();
        if mode == ResponseDlp::Off || !scan::scannable(ct) {
            if decided && mode != ResponseDlp::Off {
                let why = "its type is not scanned, and this route decides every response";
                return (unscannable(why.into()), withheld_unread());
            }
            return pass(parts, body);
        }
        // Range is not forwarded on scanned routes; an upstream that sends a
        // piece anyway sends what cannot be scanned whole.
        let unreadable = if parts.status == StatusCode::PARTIAL_CONTENT {
            Some("a partial response (206) cannot be scanned whole".to_owned())
        } else {
            scan::unreadable_charset(ct).map(|cs| format!("its charset {cs} cannot be scanned"))
        };
        if let Some(why) = unreadable {
            if self.cannot_read(mode, decided, &target.action, &why) == Unread::Withhold {
                return (unscannable(why), withheld_unread());
            }
            let (res, _) = pass(parts, body);
            return (
                res,
                Counted::Now(Counts::new(), Some(Disposition::Unscanned)),
            );
        }
        // Report and mask need no verdict before the body leaves: they
        // stream, scanning as it goes, in bounded memory, whatever the size.
        // Block and a decision on the response must see it all first.
        if matches!(mode, ResponseDlp::Report | ResponseDlp::Mask)
            && target.route.response_action.is_none()
        {
            if let Some(decoder) = scan::StreamDecoder::new(encoding) {
                if mode == ResponseDlp::Mask {
                    for h in [
                        header::CONTENT_ENCODING,
                        header::CONTENT_LENGTH,
                        header::ETAG,
                        header::ACCEPT_RANGES,
                    ] {
                        parts.headers.remove(h);
                    }
                }
                let (mut rest, counts) = self.stream_scanned(body, decoder, sniff, mode, target);
                // The head waits a moment for the body's first piece (or
                // its end): a body that fails at once (unreadable,
                // undecodable, broken off) is answered with an error
                // status, not a 200 that breaks off (found by a review).
                // A slow stream (an export, events) is not held back
                // longer: its head leaves after HEAD_WAIT, as before.
                let first = match tokio::time::timeout(HEAD_WAIT, rest.recv()).await {
                    Ok(Some(Ok(piece))) => Some(piece),
                    Ok(Some(Err(why))) => {
                        let found = counts.await.map(|(c, _)| c).unwrap_or_default();
                        return (
                            unscannable(why.to_string()),
                            Counted::Now(found, Some(Disposition::Withheld)),
                        );
                    }
                    Ok(None) | Err(_) => None,
                };
                let body = ChannelBody { first, rest }.boxed_unsync();
                return (
                    Response::from_parts(parts, body),
                    Counted::Later(counts, leaving(mode)),
                );
            }
        }
        let max = self.cfg.max_scan_bytes;
        let raw = match Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let why = if e.is::<http_body_util::LengthLimitError>() {
                    format!("the response is larger than max_scan_bytes ({max})")
                } else {
                    "the upstream's response body broke off".to_owned()
                };
                return (unscannable(why), withheld_unread());
            }
        };
        let decoded = match scan::decode(&raw, encoding, max) {
            Ok(d) => d,
            Err(e) => return (unscannable(e.to_string()), withheld_unread()),
        };
        let unread = { sniff }.push(&decoded).err();
        if let Some(why) = unread {
            if self.cannot_read(mode, decided, &target.action, why) == Unread::Withhold {
                return (unscannable(why.into()), withheld_unread());
            }
        }
        let (out, counts) = match mode {
            ResponseDlp::Mask => {
                let (masked, counts) = scan::mask(&self.scanner, &decoded);
                parts.headers.remove(header::CONTENT_ENCODING);
                parts.headers.remove(header::ETAG);
                parts.headers.remove(header::ACCEPT_RANGES);
                (masked, counts)
            }
            _ => (raw, scan::count(&self.scanner, &decoded)),
        };
        let total: u64 = counts.values().sum();
        tracing::info!(proxy = %self.cfg.name, action = %target.action, findings = ?counts, "response scanned");
        if mode == ResponseDlp::Block && total > 0 {
            return (
                refuse(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    format!(
                        "the response was withheld: it contains {}",
                        describe(&counts)
                    ),
                ),
                Counted::Now(counts, Some(Disposition::Withheld)),
            );
        }
        let mut disposition = Some(if unread.is_some() {
            Disposition::Unscanned
        } else {
            leaving(mode)
        });
        if let Some(action) = &target.route.response_action {
            // What the approver sees of what would leave: the first lines
            // of the masked body, never the raw one.
            let preview = if self.cfg.response_preview_lines == 0 {
                Vec::new()
            } else if mode == ResponseDlp::Mask {
                preview_lines(&out, self.cfg.response_preview_lines)
            } else {
                let (masked, _) = scan::mask(&self.scanner, &decoded);
                preview_lines(&masked, self.cfg.response_preview_lines)
            };
            // What leaves is the headers and the body: the decision counts
            // both.
            let mut leaving_counts = counts.clone();
            scan::add(&mut leaving_counts, in_headers);
            match self
                .decide_response(
                    action,
                    target,
                    principal,
                    &leaving_counts,
                    preview,
                    &decoded,
                )
                .await
            {
                ResponseFate::Allowed => {}
                // The response grant's completion holds the counts.
                ResponseFate::Granted => disposition = None,
                ResponseFate::Withheld(refusal) => {
                    return (refusal, Counted::Now(counts, None));
                }
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len() as u64));
        (
            Response::from_parts(parts, full(out)),
            Counted::Now(counts, disposition),
        )
    }

    /// What becomes of an answer DLP cannot read (`why`): withheld, unless
    /// the route only reports and decides nothing, where it leaves
    /// unscanned, with a warning here and, by the caller, on record.
    fn cannot_read(
        &self,
        mode: ResponseDlp,
        decided: bool,
        action: &impl std::fmt::Display,
        why: &str,
    ) -> Unread {
        if mode != ResponseDlp::Report || decided {
            return Unread::Withhold;
        }
        tracing::warn!(proxy = %self.cfg.name, action = %action, why, "a response DLP cannot read passed unscanned (report)");
        Unread::Pass
    }

    /// Scans a body as it streams to the client, on a task of its own:
    /// decoded a small step at a time, masked (or passed as it came, for
    /// report), sent on in bounded pieces; the counts when it ends. A body
    /// that breaks off or does not decode ends the stream with an error:
    /// the caller answers 502 if nothing was sent yet, else the response
    /// breaks off (what was sent was already masked).
    fn stream_scanned(
        self: &Arc<Self>,
        mut body: Incoming,
        mut decoder: scan::StreamDecoder,
        sniff: scan::Sniffer,
        mode: ResponseDlp,
        target: &Target,
    ) -> (Pieces, tokio::sync::oneshot::Receiver<(Counts, Reading)>) {
        let mask = mode == ResponseDlp::Mask;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
        let (counts_tx, counts_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let action = target.action.clone();
        tokio::spawn(async move {
            let mut ms = this.scanner.mask_stream();
            let mut findings = Vec::new();
            let mut out = Vec::new();
            let mut failed: Option<String> = None;
            // Until the body's start is seen to be readable.
            let mut sniff = Some(sniff);
            let mut reading = Reading::Read;
            // A stalled upstream or a client that stops reading ends the
            // stream after this long, so the task cannot linger.
            let stall = Duration::from_secs(this.cfg.upstream_timeout_seconds);
            'body: loop {
                let frame = match tokio::time::timeout(stall, body.frame()).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        failed = Some("the upstream's body stalled".to_owned());
                        break;
                    }
                };
                let data = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => d,
                        Err(_trailers) => continue,
                    },
                    Err(e) => {
                        failed = Some(format!("the upstream's body broke off: {e}"));
                        break;
                    }
                };
                for step in data.chunks(DECODE_STEP) {
                    let decoded = match decoder.push(step) {
                        Ok(d) => d,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break 'body;
                        }
                    };
                    if let Some(Err(why)) = sniff.as_mut().map(|s| s.push(&decoded)) {
                        sniff = None;
                        if this.cannot_read(mode, false, &action, why) == Unread::Withhold {
                            // Nothing of it has been sent yet: the first
                            // masked bytes leave at STREAM_FLUSH or the end.
                            failed = Some(format!("it cannot be scanned: {why}"));
                            reading = Reading::Withheld;
                            break 'body;
                        }
                        reading = Reading::Unscanned;
                    }
                    findings.extend(ms.feed(&decoded, &mut out));
                    if !mask {
                        out.clear();
                    } else if out.len() >= STREAM_FLUSH
                        && tx
                            .send_timeout(Ok(Bytes::from(std::mem::take(&mut out))), stall)
                            .await
                            .is_err()
                    {
                        break 'body; // the client left
                    }
                }
                if !mask && tx.send_timeout(Ok(data), stall).await.is_err() {
                    break;
                }
            }
            if failed.is_none() {
                match decoder.finish() {
                    // A small compressed body comes out only here: it is
                    // looked at like every other step.
                    Ok(rest) => match sniff.as_mut().map(|s| s.push(&rest)) {
                        Some(Err(why))
                            if this.cannot_read(mode, false, &action, why) == Unread::Withhold =>
                        {
                            failed = Some(format!("it cannot be scanned: {why}"));
                            reading = Reading::Withheld;
                        }
                        Some(Err(_)) => {
                            reading = Reading::Unscanned;
                            findings.extend(ms.feed(&rest, &mut out));
                        }
                        _ => findings.extend(ms.feed(&rest, &mut out)),
                    },
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            findings.extend(ms.finish(&mut out));
            match failed {
                Some(why) => {
                    tracing::warn!(proxy = %this.cfg.name, error = %why, "streamed response ended early");
                    let _ = tx.send_timeout(Err(why.into()), stall).await;
                }
                None if mask && !out.is_empty() => {
                    let _ = tx.send_timeout(Ok(Bytes::from(out)), stall).await;
                }
                None => {}
            }
            let counts = airlock_dlp::counts(&findings);
            tracing::info!(proxy = %this.cfg.name, action = %action, findings = ?counts, "response scanned");
            let _ = counts_tx.send((counts, reading));
        });
        (rx, counts_rx)
    }

    /// The second decision, on what the response contains, bound to it
    /// (params: the decoded body's SHA-256 and the counts), so an approval
    /// lets exactly the response the approver was shown leave, once:
    /// allowed → it leaves; approved within the hold → it leaves, the grant
    /// consumed and completed; still pending → 202 naming the request in
    /// `Airlock-Response-Request` (the body is not kept: the same request
    /// sent again with that header once approved gets the same response
    /// through, a changed one asks anew); denied → 403.
    async fn decide_response(
        &self,
        action: &str,
        target: &Target,
        principal: &UserName,
        counts: &Counts,
        preview: Vec<String>,
        decoded: &[u8],
    ) -> ResponseFate {
        let Ok(action) = ActionName::parse(action) else {
            return ResponseFate::Withheld(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "bad response_action",
            ));
        };
        let mut context = Map::new();
        context.insert("dlp".into(), json!(counts));
        context.insert("proxy".into(), json!(self.cfg.name));
        context.insert("bytes".into(), json!(decoded.len() as u64));
        if !preview.is_empty() {
            context.insert("preview".into(), json!(preview));
        }
        let mut params = BTreeMap::new();
        params.insert(
            "body_sha256".into(),
            json!(hex::encode(Sha256::digest(decoded))),
        );
        params.insert("dlp".into(), json!(counts));
        let check = CheckBody {
            principal: Some(principal.clone()),
            action,
            resource: target.resource.clone(),
            params,
            context,
            reason: None,
        };
        let hold = Duration::from_secs(self.cfg.hold_seconds);
        let entry = match target.response_resume.as_deref() {
            Some(id) => self.resume_response(id, &check, hold).await,
            None => self.door.enforcer().enter(&check, hold).await,
        };
        match entry {
            Ok(Entry::Allowed { .. }) => ResponseFate::Allowed,
            Ok(Entry::Granted { grant, .. }) => {
                let mut detail = Map::new();
                detail.insert("dlp".into(), json!(counts));
                // Approved after a wait: only for a key still good.
                if let Some(key) = &target.key {
                    if let Err(r) = self.door.still_names(&key.0, principal).await {
                        detail.insert(
                            "withheld".into(),
                            json!("the end user's key is no longer good"),
                        );
                        let enforcer = self.door.enforcer();
                        if let Err(e) = enforcer
                            .complete(grant.grant_id, Outcome::Failure, detail)
                            .await
                        {
                            tracing::warn!(error = %e, "proxy: completing the response grant failed");
                        }
                        return ResponseFate::Withheld(r.into_response());
                    }
                }
                if let Err(e) = self
                    .door
                    .enforcer()
                    .complete(grant.grant_id, Outcome::Success, detail)
                    .await
                {
                    tracing::warn!(error = %e, "proxy: completing the response grant failed");
                }
                ResponseFate::Granted
            }
            Ok(Entry::Denied { message, .. }) => ResponseFate::Withheld(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("the response was withheld: {message}"),
            )),
            Ok(Entry::Held { request }) => {
                let id = request.id.to_string();
                // Only how to come back: the request's params and context
                // describe the withheld response (its preview among them).
                let mut res = json_response(
                    StatusCode::ACCEPTED,
                    &json!({
                        "request": { "id": id, "status": request.status, "url": request.url },
                        "withheld": "response",
                    }),
                );
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    h.insert(HeaderName::from_static(RESPONSE_REQUEST_HEADER), v);
                }
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.cfg.retry_after_seconds),
                );
                ResponseFate::Withheld(res)
            }
            Ok(Entry::NotApproved { request }) => ResponseFate::Withheld(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!(
                    "the response was withheld: request {} is {}",
                    request.id, request.status
                ),
            )),
            Err(e) => ResponseFate::Withheld(gate_error(e).into_response()),
        }
    }

    /// A retry naming the response held before: the same response (same
    /// body hash and counts) waits for, then uses, that request's grant; a
    /// response that changed is decided anew.
    async fn resume_response(
        &self,
        id: &str,
        check: &CheckBody,
        hold: Duration,
    ) -> Result<Entry, ClientError> {
        let enforcer = self.door.enforcer();
        let Ok(id) = RequestId::parse(id) else {
            return enforcer.enter(check, hold).await;
        };
        let view = enforcer.gate().request(id, None).await?;
        if !same_action(check, &view) {
            return enforcer.enter(check, hold).await;
        }
        match enforcer.wait(view, hold).await? {
            Waited::Held(view) => Ok(Entry::Held {
                request: Box::new(view),
            }),
            Waited::Decided(view) => match view.status {
                RequestStatus::Approved | RequestStatus::Consumed | RequestStatus::Completed => {
                    let grant = enforcer.consume(&view, check).await?;
                    Ok(Entry::Granted {
                        request: Box::new(view),
                        grant,
                    })
                }
                _ => Ok(Entry::NotApproved {
                    request: Box::new(view),
                }),
            },
        }
    }
}

/// How a scanned response leaves when nothing withholds it.
/// Every line of header `name`, joined with `, `; `None` when absent. A
/// value that is not visible ASCII is kept as Latin-1 would show it, so it
/// still reaches the checks (and fails them) rather than vanishing. One
/// plain line, the usual case, is borrowed.
fn joined(headers: &HeaderMap, name: header::HeaderName) -> Option<Cow<'_, str>> {
    let latin = |v: &hyper::header::HeaderValue| -> String {
        v.as_bytes().iter().map(|b| char::from(*b)).collect()
    };
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(
            first
                .to_str()
                .map_or_else(|_| Cow::Owned(latin(first)), Cow::Borrowed),
        );
    };
    let all: Vec<String> = [first, second]
        .into_iter()
        .chain(lines)
        .map(latin)
        .collect();
    Some(Cow::Owned(all.join(", ")))
}

fn leaving(mode: ResponseDlp) -> Disposition {
    if mode == ResponseDlp::Mask {
        Disposition::Masked
    } else {
        Disposition::Passed
    }
}

/// What an answer withheld because DLP could not read it counts as: on
/// record as withheld with nothing found, so the log does not read as if
/// it left.
fn withheld_unread() -> Counted {
    Counted::Now(Counts::new(), Some(Disposition::Withheld))
}

/// A response that could not be scanned is refused, never passed.
fn unscannable(why: String) -> Response<Body> {
    refuse(
        StatusCode::BAD_GATEWAY,
        ErrorCode::UpstreamUnavailable,
        format!("the response could not be scanned and was withheld: {why}"),
    )
}

/// Up to `n` first lines of `masked`, each cut to a bounded length (cut
/// after masking, so a cut never reveals part of a finding).
fn preview_lines(masked: &[u8], n: usize) -> Vec<String> {
    const MAX_LINE: usize = 160;
    String::from_utf8_lossy(masked)
        .lines()
        .take(n)
        .map(|l| match l.char_indices().nth(MAX_LINE) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_owned(),
        })
        .collect()
}

fn describe(counts: &Counts) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = crate::door::connection_tokens(headers).collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        while headers.remove(h).is_some() {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use airlock_api::{
        CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse, FindingsResponse,
        WhoamiResponse,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A gate that allows every check, knows one key (alice's), and
    /// records findings reports, or fails them.
    struct AllowAll {
        reports: Mutex<Vec<FindingsBody>>,
        audit_down: bool,
    }

    fn unused() -> ClientError {
        ClientError::Config("not used here".into())
    }

    #[async_trait::async_trait]
    impl Gate for AllowAll {
        async fn check(&self, _: &CheckBody) -> Result<airlock_api::CheckResponse, ClientError> {
            Ok(airlock_api::CheckResponse::Allow {
                policies: vec!["all".into()],
                audit_seq: 7,
            })
        }
        async fn request(
            &self,
            _: RequestId,
            _: Option<Duration>,
        ) -> Result<RequestView, ClientError> {
            Err(unused())
        }
        async fn cancel(&self, _: RequestId) -> Result<RequestView, ClientError> {
            Err(unused())
        }
        async fn consume(&self, _: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
            Err(unused())
        }
        async fn complete(
            &self,
            _: GrantId,
            _: &CompleteBody,
        ) -> Result<CompleteResponse, ClientError> {
            Err(unused())
        }
        async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
            assert_eq!(key, "alice-key");
            Ok(WhoamiResponse {
                user: UserName::parse("alice").unwrap(),
                role: "user".into(),
            })
        }
        async fn report_findings(
            &self,
            body: &FindingsBody,
        ) -> Result<FindingsResponse, ClientError> {
            if self.audit_down {
                return Err(ClientError::Api {
                    status: 503,
                    code: ErrorCode::AuditUnavailable,
                    message: "the audit log cannot be written".into(),
                });
            }
            self.reports.lock().unwrap().push(body.clone());
            Ok(FindingsResponse { audit_seq: 8 })
        }
    }

    const CARD: &str = "4111111111111111";

    /// An upstream answering every request with one CSV row holding a card
    /// number.
    async fn upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = c.read(&mut buf).await;
                    let body = format!("name,card\nann,{CARD}\n");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(head.as_bytes()).await;
                    let _ = c.write_all(body.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// A proxy in front of `up` whose one route scans with `mode` and
    /// decides the response as `download.response`; its address.
    async fn proxy(up: SocketAddr, mode: &str, gate: Arc<AllowAll>) -> SocketAddr {
        let cfg: HttpProxyConfig = toml::from_str(&format!(
            r#"
name = "files"
listen = "127.0.0.1:0"
upstream = "http://{up}"

[[routes]]
method = "GET"
path = "/exports/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "{mode}"
response_action = "download.response"
"#
        ))
        .unwrap();
        let proxy = Proxy::new(cfg, gate).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(proxy.serve(listener));
        addr
    }

    /// One GET as alice: the raw answer.
    async fn get(proxy: SocketAddr) -> String {
        let mut c = tokio::net::TcpStream::connect(proxy).await.unwrap();
        c.write_all(
            b"GET /exports/people.csv HTTP/1.1\r\nhost: x\r\nairlock-token: alice-key\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    /// An allowed answer with findings is recorded before it leaves: the
    /// record names the decision, the action and the counts; when the
    /// record cannot be written the answer is withheld (503), as any
    /// action whose audit fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn findings_are_recorded_before_an_allowed_answer_leaves() {
        let up = upstream().await;
        let gate = Arc::new(AllowAll {
            reports: Mutex::default(),
            audit_down: false,
        });
        let p = proxy(up, "report", gate.clone()).await;
        let out = get(p).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(CARD), "report lets it leave as it was");
        let reports = gate.reports.lock().unwrap().clone();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!(r.principal.as_str(), "alice");
        assert_eq!(r.disposition, Disposition::Passed);
        assert_eq!(r.counts.get("credit_card"), Some(&1));
        assert_eq!(r.decisions, vec![7]);
        assert_eq!(r.targets[0].action.as_str(), "download");
        assert_eq!(r.targets[0].resource.id.as_str(), "people");

        let down = Arc::new(AllowAll {
            reports: Mutex::default(),
            audit_down: true,
        });
        for mode in ["report", "mask"] {
            let p = proxy(up, mode, down.clone()).await;
            let out = get(p).await;
            assert!(out.starts_with("HTTP/1.1 503"), "{mode}: {out}");
            assert!(out.contains("audit_unavailable"), "{mode}: {out}");
            assert!(
                !out.contains(CARD) && !out.contains("ann,"),
                "{mode}: {out}"
            );
        }
    }
}
