//! The HTTP API v1: routes and authentication; every error becomes a JSON
//! response in `respond`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{
    CheckResponse, CompleteResponse, ConsumeResponse, ReasonBody, RequestList, RequestView,
    ReviewBody, ReviewChannel,
};
use airlock_core::{GrantId, RequestId, RequestStatus};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

pub mod listen;
mod respond;

use respond::ApiJson;

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
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        airlock.authenticate(key.trim()).await
    }
}

fn parse_request_id(s: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(s).map_err(|_| ApiError::NotFound(format!("no request {s}")))
}

/// Builds the router.
pub fn router(airlock: AppState) -> Router {
    let limit = airlock.config.load().server.max_body_bytes;
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
        .route("/v1/audit/checkpoint", get(audit_checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit_inclusion))
        .route("/v1/audit/proof/consistency", get(audit_consistency))
        .route("/v1/keys", get(keys))
        .route("/v1/whoami", get(whoami))
        .route("/v1/auth/scram", post(scram_login))
        .route("/v1/auth/key", post(key_live))
        .route("/v1/outbox", get(outbox))
        .route("/v1/outbox/{id}/retry", post(outbox_retry))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::web::routes())
        .merge(crate::integrations::slack::routes())
        .merge(crate::integrations::discord::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::BadRequest("method not allowed on this endpoint".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(airlock)
}

/// What the console's pages may load: only this origin's script and
/// style, no inline code, no framing, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
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
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

async fn check(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckResponse>, ApiError> {
    let out = airlock.check(&caller, body, Some(peer.ip())).await?;
    Ok(Json(airlock.check_answer(out, &caller)))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait: Option<f64>,
}

async fn get_request(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
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
    let req = airlock.get_request(&caller, id, wait).await?;
    let mut v = airlock.request_view_with_token(&req, &caller);
    v.decisions = Some(airlock.decisions_about(&req).await?);
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
    /// The `next` of the previous page.
    after: Option<String>,
}

async fn list_requests(
    State(airlock): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
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
        .list_requests(&caller, statuses, q.limit.unwrap_or(100), after)
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

fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn cancel(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&id)?;
    let req = airlock.cancel(&caller, id).await?;
    Ok(Json(airlock.request_view_with_token(&req, &caller)))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    State(airlock): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let records = airlock.audit_after(&caller, after, limit).await?;
    Ok(Json(json!({"records": records})))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    seq: u64,
    size: Option<u64>,
}

async fn audit_inclusion(
    State(airlock): State<AppState>,
    caller: Caller,
    Query(q): Query<InclusionQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(airlock.audit_inclusion(&caller, q.seq, q.size).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

async fn audit_consistency(
    State(airlock): State<AppState>,
    caller: Caller,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        airlock.audit_consistency(&caller, q.from, q.to).await?,
    ))
}

#[derive(Deserialize)]
struct OutboxQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// Notifications in the outbox (admin): what was delivered, what waits,
/// and what failed for good.
async fn outbox(
    State(airlock): State<AppState>,
    caller: Caller,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let messages = airlock.outbox_list(&caller, q.status, limit).await?;
    let list: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "target": m.target, "event": m.event, "status": m.status,
                "attempts": m.attempts, "last_error": m.last_error,
                "next_attempt_at": airlock_store::time::fmt(m.next_attempt_at),
                "created_at": airlock_store::time::fmt(m.created_at),
                "delivered_at": m.delivered_at.map(airlock_store::time::fmt),
            })
        })
        .collect();
    Ok(Json(json!({"messages": list})))
}

/// Puts a failed notification back in line (admin).
async fn outbox_retry(
    State(airlock): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    airlock.retry_outbox(&caller, id.clone()).await?;
    Ok(Json(json!({"id": id, "status": "pending"})))
}

/// The calling key's user and role: how a proxy holding an enforcer key
/// learns whom an end user's `Airlock-Token` names.
async fn whoami(caller: Caller) -> Json<airlock_api::WhoamiResponse> {
    Json(airlock_api::WhoamiResponse {
        user: caller.user,
        role: caller.role.as_str().to_owned(),
    })
}

/// Checks a database client's SCRAM proof (enforcer keys: the PostgreSQL
/// proxy).
async fn scram_login(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<airlock_api::ScramLoginBody>,
) -> Result<Json<airlock_api::ScramLoginResponse>, ApiError> {
    Ok(Json(airlock.scram_login(&caller, body).await?))
}

/// Whether a user's key may still be used (enforcer keys).
async fn key_live(
    State(airlock): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<airlock_api::KeyLiveBody>,
) -> Result<Json<airlock_api::KeyLiveResponse>, ApiError> {
    Ok(Json(airlock.key_live(&caller, body).await?))
}

async fn keys(State(airlock): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(airlock.public_keys().to_json())
}

/// How long `/healthz` waits for the store before calling it unavailable.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn healthz(State(airlock): State<AppState>) -> Response {
    // Healthy means able to record: reads can work where writes cannot (a
    // read-only database after a failover, a full disk), so a write that
    // changes nothing is committed too, through the same writer as every
    // decision (a stuck writer shows as no answer).
    let store = airlock.store().clone();
    let probe = async move {
        let head = store.read(|r| r.audit_head()).await?;
        store.write(|tx| tx.probe_write()).await?;
        Ok::<_, airlock_store::StoreError>(head)
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

async fn metrics(State(airlock): State<AppState>) -> Response {
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        airlock.metrics.render(pending, unapprovable, breakglass),
    )
        .into_response()
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
