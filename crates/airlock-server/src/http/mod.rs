//! The HTTP API v1: routes and authentication; every error becomes a JSON
//! response in `respond`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{
    AuditPage, CheckResponse, CompleteResponse, ConsistencyProof, ConsumeResponse, InclusionProof,
    KeySet, OutboxList, OutboxRetried, OutboxView, PublicKeyView, ReasonBody, RequestList,
    RequestView, ReviewBody, ReviewChannel,
};
use airlock_core::{GrantId, RequestId, RequestStatus};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

pub mod listen;
mod openapi;
mod respond;

use respond::{ApiJson, ApiQuery};

pub use listen::raise_open_file_limit;

use crate::service::{CheckBody, CompleteBody, ConsumeBody};
use crate::{Airlock, ApiError, Caller};

type AppState = Arc<Airlock>;

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    AppState: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let airlock: AppState = axum::extract::FromRef::from_ref(state);
        airlock.authenticate(bearer(&parts.headers)?).await
    }
}

/// A page's `limit` (default 100): 0 asks for nothing a page can hold, and
/// is refused rather than read as 1. Larger than a page holds is cut to it.
fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n => Ok(n),
    }
}

/// The API key in `Authorization: Bearer KEY`.
fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthenticated)?;
    Ok(key.trim())
}

fn parse_request_id(s: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(s).map_err(|_| ApiError::NotFound(format!("no request {s}")))
}

/// Builds the router.
pub fn router(airlock: AppState) -> Router {
    let limit = airlock.config.load().server.max_body_bytes;
    v1().route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes())
        .merge(crate::integrations::slack::routes())
        .merge(crate::integrations::discord::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                // A body declared larger than the limit is refused before
                // any of it is read: the limit alone only trips once that
                // much has arrived, so a client declaring a huge body and
                // sending a small one held the call until the read timeout.
                let declared = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if declared.is_some_and(|n| n > limit as u64) {
                    return ApiError::TooLarge.into_response();
                }
                next.run(req).await
            },
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(airlock)
}

/// The API v1, every route of which the document at `/v1/openapi.json`
/// describes (a test holds the two together).
fn v1() -> Router<AppState> {
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/breakglass", post(breakglass))
        .route("/v1/requests", get(list_requests))
        .route("/v1/requests/{id}", get(get_request))
        .route("/v1/requests/{id}/reviews", post(review))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/requests/{id}/revoke", post(revoke))
        .route("/v1/grants/consume", post(consume))
        .route("/v1/grants/{id}/complete", post(complete))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/findings", post(report_findings))
        .route("/v1/audit/checkpoint", get(audit_checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit_inclusion))
        .route("/v1/audit/proof/consistency", get(audit_consistency))
        .route("/v1/keys", get(keys))
        .route("/v1/whoami", get(whoami))
        .route("/v1/auth/scram", post(scram_login))
        .route("/v1/auth/key", post(key_live))
        .route("/v1/outbox", get(outbox))
        .route("/v1/outbox/{id}/retry", post(outbox_retry))
        .route("/v1/openapi.json", get(openapi::document))
}

/// What the console's pages may load: only this origin's script and
/// style, no inline code, no framing, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every response carries, made once: `from_static` checks
/// every byte of its value, and the policy above is long (about 1% of a
/// check's instructions when it ran per response).
static SECURITY_HEADERS: std::sync::LazyLock<[(header::HeaderName, HeaderValue); 7]> =
    std::sync::LazyLock::new(|| {
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::HeaderName::from_static("cross-origin-opener-policy"),
                "same-origin",
            ),
            (
                header::HeaderName::from_static("permissions-policy"),
                "camera=(), microphone=(), geolocation=()",
            ),
        ]
        .map(|(name, value)| (name, HeaderValue::from_static(value)))
    });

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in SECURITY_HEADERS.iter() {
        h.insert(name.clone(), value.clone());
    }
    res
}

#[utoipa::path(post, path = "/v1/check", tag = "decide",
    summary = "Decide an action: allow, deny, or hold it for approval",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The decision, told apart by `decision`", body = CheckResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 413, response = openapi::Error413),
        (status = 429, response = openapi::Error429), (status = 503, response = openapi::Error503),
    ))]
async fn check(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckResponse>, ApiError> {
    let out = airlock.check(&caller, body, Some(peer.ip())).await?;
    Ok(Json(airlock.check_answer(out, &caller)))
}

#[utoipa::path(post, path = "/v1/breakglass", tag = "decide",
    summary = "Break glass: approve an action at once, for review after the fact",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The request, approved, with its grant token", body = RequestView),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 413, response = openapi::Error413),
        (status = 429, response = openapi::Error429), (status = 503, response = openapi::Error503),
    ))]
/// `POST /v1/breakglass`: the body of a check (with a reason) → REQUEST,
/// approved at once, with its grant token for the caller.
async fn breakglass(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<RequestView>, ApiError> {
    let req = airlock.breakglass(&caller, body, Some(peer.ip())).await?;
    Ok(Json(airlock.request_view_with_token(&req, &caller)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait for a decision before answering (at most
    /// `[server] max_wait_seconds`); answers at once when absent.
    #[param(minimum = 0)]
    wait: Option<f64>,
}

#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests",
    summary = "Read a request; with `wait`, long-poll until it is decided",
    params(("id" = String, Path, description = "The request's id (`req_…`)"), WaitQuery),
    responses(
        (status = 200, description = "The request, with every description it was decided on", body = RequestView),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 404, response = openapi::Error404), (status = 429, response = openapi::Error429),
        (status = 503, response = openapi::Error503),
    ))]
async fn get_request(
    State(airlock): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&id)?;
    let max = airlock.config.load().server.max_wait_seconds as f64;
    let wait = match q.wait {
        Some(w) if w.is_finite() && w >= 0.0 => Some(Duration::from_secs_f64(w.min(max))),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "wait must be a number of seconds".into(),
            ))
        }
        None => None,
    };
    let (req, decisions) = airlock
        .get_request_with_decisions(&caller, id, wait)
        .await?;
    // A key revoked (or its user removed) while the call waited gets no
    // answer, least of all the grant token the approval just issued; the
    // answer is for the caller as they are now.
    let caller = match wait {
        Some(_) => airlock.authenticate(bearer(&headers)?).await?,
        None => caller,
    };
    let mut v = airlock.request_view_with_token(&req, &caller);
    v.decisions = Some(decisions);
    Ok(Json(v))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated statuses (`pending,approved`), or `all` (default).
    status: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/requests", tag = "requests",
    summary = "List the requests the caller may see, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of requests", body = RequestList),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 503, response = openapi::Error503),
    ))]
async fn list_requests(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<RequestList>, ApiError> {
    let statuses = match q.status.as_deref() {
        None | Some("") | Some("all") => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|s| {
                RequestStatus::parse(s.trim()).map_err(|e| ApiError::BadRequest(e.to_string()))
            })
            .collect::<Result<_, _>>()?,
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            airlock_store::Cursor::parse(a)
                .ok_or_else(|| ApiError::BadRequest(format!("after {a:?} is not a page cursor")))?,
        ),
    };
    let page = airlock
        .list_requests(&caller, statuses, page_size(q.limit)?, after)
        .await?;
    let requests = page
        .requests
        .iter()
        .map(|r| airlock.request_view_with_token(r, &caller))
        .collect();
    Ok(Json(RequestList {
        requests,
        next: page.next.map(|c| c.to_string()),
    }))
}

#[utoipa::path(post, path = "/v1/requests/{id}/reviews", tag = "requests",
    summary = "Approve or deny a request",
    params(("id" = String, Path, description = "The request's id (`req_…`)")),
    request_body = ReviewBody,
    responses(
        (status = 200, description = "The request after the review", body = RequestView),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 404, response = openapi::Error404),
        (status = 409, response = openapi::Error409), (status = 413, response = openapi::Error413),
        (status = 429, response = openapi::Error429), (status = 503, response = openapi::Error503),
    ))]
async fn review(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&id)?;
    let channel = body.channel.unwrap_or(ReviewChannel::Api).as_str();
    let req = airlock
        .review(
            &caller,
            id,
            body.verdict,
            body.reason,
            channel,
            crate::service::StepUp {
                totp: body.totp,
                webauthn: None,
            },
        )
        .await?;
    Ok(Json(airlock.request_view_with_token(&req, &caller)))
}

/// A body with nothing in it: empty, or `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// An optional body: none, or JSON `null` (what the document's optional
/// body allows), is the default.
fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(bytes)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "requests",
    summary = "Withdraw one's own pending request",
    params(("id" = String, Path, description = "The request's id (`req_…`)")),
    responses(
        (status = 200, description = "The request, cancelled", body = RequestView),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401), (status = 403, response = openapi::Error403),
        (status = 404, response = openapi::Error404), (status = 409, response = openapi::Error409),
        (status = 503, response = openapi::Error503),
    ))]
async fn cancel(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&id)?;
    // Nothing to say, but a body that says something is refused like any
    // other unknown field, so a client's typo is not silently ignored.
    let NoFields {} = optional_body(&body)?;
    let req = airlock.cancel(&caller, id).await?;
    Ok(Json(airlock.request_view_with_token(&req, &caller)))
}

#[utoipa::path(post, path = "/v1/requests/{id}/revoke", tag = "requests",
    summary = "Kill an approved request's grant",
    params(("id" = String, Path, description = "The request's id (`req_…`)")),
    request_body(content = Option<ReasonBody>, description = "Optional; an empty body is no reason"),
    responses(
        (status = 200, description = "The request, revoked", body = RequestView),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 404, response = openapi::Error404),
        (status = 409, response = openapi::Error409), (status = 413, response = openapi::Error413),
        (status = 503, response = openapi::Error503),
    ))]
async fn revoke(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&id)?;
    let body: ReasonBody = optional_body(&body)?;
    let req = airlock.revoke(&caller, id, body.reason).await?;
    Ok(Json(airlock.request_view_with_token(&req, &caller)))
}

#[utoipa::path(post, path = "/v1/grants/consume", tag = "grants",
    summary = "Spend one use of a grant on exactly the action it was approved for",
    request_body = ConsumeBody,
    responses(
        (status = 200, description = "One use spent", body = ConsumeResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 404, response = openapi::Error404),
        (status = 409, response = openapi::Error409), (status = 413, response = openapi::Error413),
        (status = 503, response = openapi::Error503),
    ))]
async fn consume(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    ApiJson(body): ApiJson<ConsumeBody>,
) -> Result<Json<ConsumeResponse>, ApiError> {
    let (grant_id, uses_left) = airlock.consume(&caller, body, Some(peer.ip())).await?;
    Ok(Json(ConsumeResponse {
        grant_id,
        uses_left,
    }))
}

#[utoipa::path(post, path = "/v1/grants/{id}/complete", tag = "grants",
    summary = "Report how a consumed use went",
    params(("id" = String, Path, description = "The grant's id (`grt_…`)")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "On record", body = CompleteResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 404, response = openapi::Error404),
        (status = 409, response = openapi::Error409), (status = 413, response = openapi::Error413),
        (status = 503, response = openapi::Error503),
    ))]
async fn complete(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> Result<Json<CompleteResponse>, ApiError> {
    let gid = GrantId::parse(&id).map_err(|_| ApiError::NotFound(format!("no grant {id}")))?;
    airlock.complete(&caller, gid, body).await?;
    Ok(Json(CompleteResponse {
        grant_id: gid,
        completed: true,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Records after this `seq` (default 0: from the first).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many, 1 to 10000 (default 100).
    #[param(minimum = 1)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    summary = "Read the audit log, oldest first (admins and auditors)",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 503, response = openapi::Error503),
    ))]
async fn audit(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest(format!(
            "after {after}: a sequence number, 0 or more"
        )));
    }
    let limit = page_size(q.limit)?.min(10_000);
    let records = airlock.audit_after(&caller, after, limit).await?;
    Ok(Json(AuditPage { records }))
}

#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    summary = "The newest signed checkpoint of the log's Merkle tree (a C2SP signed note)",
    responses(
        (status = 200, description = "The note", content_type = "text/plain", body = String),
        (status = 401, response = openapi::Error401), (status = 404, response = openapi::Error404),
        (status = 503, response = openapi::Error503),
    ))]
/// The newest signed checkpoint of the log's Merkle tree, as the C2SP
/// note itself (text/plain); 404 before the first.
async fn audit_checkpoint(
    State(airlock): State<AppState>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    match airlock.audit_checkpoint().await? {
        Some(note) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response()),
        None => Err(ApiError::NotFound(
            "no checkpoint has been signed yet".into(),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    /// The record.
    #[param(minimum = 1)]
    seq: u64,
    /// The tree's size (default: the newest checkpoint's).
    #[param(minimum = 1)]
    size: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit",
    summary = "Prove a record is in a checkpointed tree (admins and auditors)",
    params(InclusionQuery),
    responses(
        (status = 200, description = "The proof", body = InclusionProof),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 503, response = openapi::Error503),
    ))]
async fn audit_inclusion(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    Ok(Json(airlock.audit_inclusion(&caller, q.seq, q.size).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    /// The older tree's size.
    #[param(minimum = 1)]
    from: u64,
    /// The newer tree's size (default: the newest checkpoint's).
    #[param(minimum = 1)]
    to: Option<u64>,
}

#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit",
    summary = "Prove a newer tree extends an older one (admins and auditors)",
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "The proof", body = ConsistencyProof),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 503, response = openapi::Error503),
    ))]
async fn audit_consistency(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    Ok(Json(
        airlock.audit_consistency(&caller, q.from, q.to).await?,
    ))
}

/// The states of an outbox message.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum OutboxStatus {
    Pending,
    Delivered,
    Failed,
}

impl OutboxStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct OutboxQuery {
    /// `pending`, `delivered` or `failed` (default: all); anything else is
    /// a 400.
    #[param(inline)]
    status: Option<OutboxStatus>,
    /// At most this many, 1 to 10000 (default 100).
    #[param(minimum = 1)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/outbox", tag = "notifications",
    summary = "Notifications: delivered, waiting, failed (admins and auditors)",
    params(OutboxQuery),
    responses(
        (status = 200, description = "The messages", body = OutboxList),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 503, response = openapi::Error503),
    ))]
/// Notifications in the outbox (admins and auditors): what was delivered, what waits,
/// and what failed for good.
async fn outbox(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<OutboxQuery>,
) -> Result<Json<OutboxList>, ApiError> {
    let limit = page_size(q.limit)?.min(10_000);
    let status = q.status.map(|s| s.as_str().to_owned());
    let messages = airlock.outbox_list(&caller, status, limit).await?;
    let messages = messages
        .into_iter()
        .map(|m| OutboxView {
            id: m.id,
            target: m.target,
            event: m.event,
            status: m.status,
            attempts: m.attempts,
            last_error: m.last_error,
            next_attempt_at: m.next_attempt_at,
            created_at: m.created_at,
            delivered_at: m.delivered_at,
        })
        .collect();
    Ok(Json(OutboxList { messages }))
}

#[utoipa::path(post, path = "/v1/outbox/{id}/retry", tag = "notifications",
    summary = "Put a failed notification back in line (admins and auditors)",
    params(("id" = String, Path, description = "The message's id")),
    responses(
        (status = 200, description = "Back in line", body = OutboxRetried),
        (status = 401, response = openapi::Error401), (status = 403, response = openapi::Error403),
        (status = 409, response = openapi::Error409), (status = 503, response = openapi::Error503),
    ))]
/// Puts a failed notification back in line (admins and auditors).
async fn outbox_retry(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<OutboxRetried>, ApiError> {
    airlock.retry_outbox(&caller, id.clone()).await?;
    Ok(Json(OutboxRetried {
        id,
        status: "pending".to_owned(),
    }))
}

#[utoipa::path(get, path = "/v1/whoami", tag = "keys",
    summary = "The calling key's user and role",
    responses(
        (status = 200, description = "Who", body = airlock_api::WhoamiResponse),
        (status = 401, response = openapi::Error401), (status = 503, response = openapi::Error503),
    ))]
/// The calling key's user and role: how a proxy holding an enforcer key
/// learns whom an end user's `Airlock-Token` names.
async fn whoami(caller: Caller) -> Json<airlock_api::WhoamiResponse> {
    Json(airlock_api::WhoamiResponse {
        user: caller.user,
        role: caller.role.as_str().to_owned(),
    })
}

#[utoipa::path(post, path = "/v1/auth/scram", tag = "keys",
    summary = "Check a database client's SCRAM-SHA-256 proof (enforcer keys)",
    request_body = airlock_api::ScramLoginBody,
    responses(
        (status = 200, description = "The proof passed", body = airlock_api::ScramLoginResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 413, response = openapi::Error413),
        (status = 429, response = openapi::Error429), (status = 503, response = openapi::Error503),
    ))]
/// Checks a database client's SCRAM proof (enforcer keys: the PostgreSQL
/// proxy).
async fn scram_login(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<airlock_api::ScramLoginBody>,
) -> Result<Json<airlock_api::ScramLoginResponse>, ApiError> {
    Ok(Json(airlock.scram_login(&caller, body).await?))
}

#[utoipa::path(post, path = "/v1/auth/key", tag = "keys",
    summary = "Whether a user's key may still be used (enforcer keys)",
    request_body = airlock_api::KeyLiveBody,
    responses(
        (status = 200, description = "The answer", body = airlock_api::KeyLiveResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 413, response = openapi::Error413),
        (status = 503, response = openapi::Error503),
    ))]
/// Whether a user's key may still be used (enforcer keys).
async fn key_live(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<airlock_api::KeyLiveBody>,
) -> Result<Json<airlock_api::KeyLiveResponse>, ApiError> {
    Ok(Json(airlock.key_live(&caller, body).await?))
}

#[utoipa::path(post, path = "/v1/audit/findings", tag = "audit",
    summary = "Record what DLP found in an answer no grant covers (enforcer keys)",
    request_body = airlock_api::FindingsBody,
    responses(
        (status = 200, description = "On record", body = airlock_api::FindingsResponse),
        (status = 400, response = openapi::Error400), (status = 401, response = openapi::Error401),
        (status = 403, response = openapi::Error403), (status = 413, response = openapi::Error413),
        (status = 503, response = openapi::Error503),
    ))]
/// Records a proxy's DLP findings (counts by type) in an answer to an
/// allowed request or statement (enforcer keys).
async fn report_findings(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<airlock_api::FindingsBody>,
) -> Result<Json<airlock_api::FindingsResponse>, ApiError> {
    Ok(Json(airlock.report_findings(&caller, body).await?))
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    summary = "The public keys that verify grant tokens and audit checkpoints",
    responses(
        (status = 200, description = "The keys", body = KeySet),
        (status = 401, response = openapi::Error401), (status = 503, response = openapi::Error503),
    ))]
async fn keys(State(airlock): State<AppState>, _caller: Caller) -> Json<KeySet> {
    let keys = airlock.public_keys();
    let view = |usage: &str, alg: &str, key: &airlock_keys::PublicKey| PublicKeyView {
        kid: key.id(),
        usage: usage.to_owned(),
        alg: alg.to_owned(),
        paserk: key.paserk(),
        public_key_hex: key.hex(),
    };
    Json(KeySet {
        keys: vec![
            view("grant", "v4.public", &keys.grant),
            view("audit", "ed25519", &keys.audit),
        ],
    })
}

/// How long `/healthz` waits for the store before calling it unavailable.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a failed commit keeps `/healthz` unavailable when nothing but
/// its probe has been written since: long enough to outlast a load
/// balancer's probe interval, short enough that a node taken out of
/// rotation (so sent no decisions to prove it recovered) is tried again.
const HEALTH_MEMORY: std::time::Duration = std::time::Duration::from_secs(30);

async fn healthz(State(airlock): State<AppState>) -> Response {
    // Healthy means able to record: reads can work where writes cannot (a
    // read-only database after a failover, a full disk), so a write that
    // changes nothing is committed too, through the same writer as every
    // decision (a stuck writer shows as no answer). That one-page write
    // can fit where a decision's records do not (a nearly full disk), so a
    // commit that failed lately, with no commit of real work since, also
    // makes the node unhealthy.
    let store = airlock.store().clone();
    let probe = async move {
        let head = store.read(|r| r.audit_head()).await?;
        store.probe_write().await?;
        match store.recent_write_failure(HEALTH_MEMORY) {
            Some(e) => Err(e),
            None => Ok::<_, airlock_store::StoreError>(head),
        }
    };
    let store = tokio::time::timeout(HEALTH_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| {
            Err(airlock_store::StoreError::Db(format!(
                "no answer within {}s",
                HEALTH_TIMEOUT.as_secs()
            )))
        });
    let version = airlock.policy_version();
    let kind = airlock.store().kind();
    match store {
        Ok((seq, _)) => Json(json!({
            "status": "ok", "storage": kind, "policy_version": version, "audit_head": seq,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "reason": format!("storage ({kind}) unavailable: {e}"),
                "storage": kind,
                "storage_error": e.to_string(),
                "policy_version": version,
            })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus
/// does), Prometheus's classic text format to everyone else.
async fn metrics(State(airlock): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let pending = airlock
        .store()
        .read(|r| r.count_status(RequestStatus::Pending))
        .await
        .unwrap_or(-1);
    let unapprovable = airlock
        .unapprovable_pending(1000)
        .await
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let breakglass = airlock
        .unreviewed_breakglass(1000)
        .await
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let open = airlock.metrics.render(pending, unapprovable, breakglass);
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, text) = if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            open,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::prometheus_text(&open),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Serves until `shutdown` resolves, then signs a final checkpoint.
/// Connections are served under `[server]`'s header-read and idle
/// timeouts and connection cap (see [`listen`]).
pub async fn serve(
    airlock: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(airlock.clone());
    let limits = listen::Limits::from_config(&airlock.config.load().server);
    listen::run(app, listener, limits, shutdown).await;
    if let Err(e) = crate::background::checkpoint(&airlock).await {
        tracing::error!(error = %e, "final audit checkpoint failed");
    }
    Ok(())
}
