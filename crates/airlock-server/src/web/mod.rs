//! The web console: server-rendered pages where approvers see what waits
//! for them and decide, and requesters follow their requests. Every rule is
//! the service's (the same calls the API makes); the console only adds
//! sessions, CSRF tokens and HTML. Pages update live from a server-sent
//! event stream; the only script is `assets/app.js`.

mod charts;
mod pages;
mod respond;
mod session;
mod show;
mod simulate;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::{RequestId, RequestStatus, Verdict};
use airlock_store::AuditFilter;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::StreamExt as _;

use airlock_auth::oidc;

use crate::{Airlock, ApiError};
use pages::Viewer;
use respond::{fail, Refusal};
use session::{
    cookie, random_token, same_secret, set_cookie, WebUser, LOGIN_CSRF_COOKIE, SESSION_COOKIE,
};

type AppState = Arc<Airlock>;

/// The console's routes, merged into the API router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/login/oidc", get(oidc_start))
        .route(oidc::CALLBACK_PATH, get(oidc_callback))
        .route("/inbox", get(inbox))
        .route("/inbox/rows", get(inbox_rows))
        .route("/mine", get(mine))
        .route("/mine/rows", get(mine_rows))
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/state", get(request_state))
        .route("/requests/{id}/review", post(review))
        .route("/requests/{id}/revoke", post(revoke))
        .route("/events", get(events))
        .route("/overview", get(overview))
        .route("/audit", get(audit))
        .route("/audit/export", get(audit_export))
        .route("/policy", get(policy))
        .route("/notifications", get(notifications))
        .route("/notifications/{id}/retry", post(notification_retry))
        .route("/policy/simulate", post(simulate))
        .route("/breakglass", get(breakglass_form).post(breakglass))
        .route("/account", get(account))
        .route("/account/totp", post(account_totp))
        .route("/account/webauthn/start", post(webauthn_register_start))
        .route("/account/webauthn/finish", post(webauthn_register_finish))
        .route("/requests/{id}/webauthn", post(webauthn_challenge))
        .route("/static/app.js", get(script))
        .route("/static/app.css", get(style))
}

type Page = Result<Response, Refusal>;

fn viewer<'a>(airlock: &Airlock, u: &'a WebUser) -> Viewer<'a> {
    Viewer {
        user: u.caller.user.as_str(),
        csrf: &u.csrf,
        auditor: airlock.may_oversee(&u.caller),
        breakglass: airlock.may_break_glass(&u.caller),
    }
}

/// The signed-in user, or the response to send instead: to the sign-in
/// page for a page view, 403 for anything else.
async fn signed_in(airlock: &Airlock, headers: &HeaderMap, page: bool) -> Result<WebUser, Refusal> {
    match airlock.web_user(headers).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) if page => Err(Refusal::SignIn),
        Ok(None) => Err(fail(None, ApiError::forbidden("sign in first"))),
        Err(e) => Err(fail(None, e)),
    }
}

/// A form's CSRF token must be the session's.
fn check_csrf(user: &WebUser, sent: &str) -> Result<(), Refusal> {
    if same_secret(sent, &user.csrf) {
        Ok(())
    } else {
        Err(fail(
            Some(user),
            ApiError::forbidden("this form is stale or was not sent by the console (CSRF token mismatch); reload the page"),
        ))
    }
}

async fn home(State(airlock): State<AppState>, headers: HeaderMap) -> Response {
    match airlock.web_user(&headers).await {
        Ok(Some(_)) => Redirect::to("/inbox").into_response(),
        _ => Redirect::to("/login").into_response(),
    }
}

async fn login_form(State(airlock): State<AppState>) -> Response {
    let token = random_token();
    let cookie = set_cookie(LOGIN_CSRF_COOKIE, &token, 3600, airlock.secure_cookies());
    (
        [(header::SET_COOKIE, cookie)],
        pages::login(&token, sso_label(&airlock).as_deref(), None),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Page {
    // Login CSRF: the form must come from a page of this origin. The
    // double-submit cookie alone is not enough: a page on another port or
    // a sibling host can set that cookie (cookies know no ports) and post
    // the same value, signing the approver in as someone else (found by a
    // black-box pass). Browsers say where a form came from.
    let from = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(from, "cross-site" | "same-site") {
        return Err(fail(
            None,
            ApiError::forbidden("sign in from the console's own sign-in page"),
        ));
    }
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&form.csrf, &expected) {
        return Err(fail(
            None,
            ApiError::forbidden("the sign-in form is stale (CSRF token mismatch); reload the page"),
        ));
    }
    match airlock
        .sign_in(&form.username, form.password, peer.ip())
        .await
    {
        Ok(Some(secret)) => {
            let secure = airlock.secure_cookies();
            let mut res = Redirect::to("/inbox").into_response();
            let h = res.headers_mut();
            for c in [
                set_cookie(SESSION_COOKIE, &secret, 8 * 3600, secure),
                set_cookie(LOGIN_CSRF_COOKIE, "", 0, secure),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            Ok(res)
        }
        Ok(None) => Ok((
            StatusCode::UNAUTHORIZED,
            pages::login(
                &expected,
                sso_label(&airlock).as_deref(),
                Some("Wrong user name or password."),
            ),
        )
            .into_response()),
        Err(ApiError::TooMany { .. }) => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(
                &expected,
                sso_label(&airlock).as_deref(),
                Some("Too many sign-in attempts from your address; try again in a minute."),
            ),
        )
            .into_response()),
        Err(e) => Err(fail(None, e)),
    }
}

fn sso_label(airlock: &Airlock) -> Option<String> {
    airlock.config.load().web.oidc.as_ref().map(|o| {
        o.label
            .clone()
            .unwrap_or_else(|| "Sign in with single sign-on".into())
    })
}

/// Sends the browser to the provider, remembering the flow's secrets.
async fn oidc_start(State(airlock): State<AppState>) -> Page {
    let config = airlock.config.load_full();
    let Some(cfg) = &config.web.oidc else {
        return Err(fail(
            None,
            ApiError::NotFound("single sign-on is not configured".into()),
        ));
    };
    let start = oidc::start(&airlock.oidc, cfg, &airlock.public_url())
        .await
        .map_err(|e| fail(None, e.into()))?;
    let mut cookie = format!(
        "{}={}; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age=600",
        oidc::FLOW_COOKIE,
        start.cookie
    );
    if airlock.secure_cookies() {
        cookie.push_str("; Secure");
    }
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&start.url)).into_response())
}

#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The provider's answer: verify, match the email to a user, sign in.
async fn oidc_callback(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Page {
    let config = airlock.config.load_full();
    let Some(cfg) = &config.web.oidc else {
        return Err(fail(
            None,
            ApiError::NotFound("single sign-on is not configured".into()),
        ));
    };
    let refused = |who: String, e: ApiError| {
        let airlock = airlock.clone();
        async move {
            if let Err(audit) = airlock.sign_in_refused(who, "oidc", e.to_string()).await {
                return fail(None, audit);
            }
            fail(None, e)
        }
    };
    if let Some(err) = cb.error {
        let why = cb.error_description.unwrap_or_default();
        return Err(refused(
            "?".into(),
            ApiError::forbidden(format!("the provider refused: {err} {why}")),
        )
        .await);
    }
    let flow = cookie(&headers, oidc::FLOW_COOKIE).unwrap_or_default();
    let identity = match oidc::finish(
        &airlock.oidc,
        cfg,
        &airlock.public_url(),
        &flow,
        &cb.state,
        &cb.code,
    )
    .await
    {
        Ok(identity) => identity,
        Err(e) => return Err(refused("?".into(), e.into()).await),
    };
    let email = identity.email;
    let user = config
        .user_where(|u| {
            u.email
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(&email))
        })
        .map(|u| u.name.clone());
    let Some(user) = user else {
        return Err(refused(
            email.clone(),
            ApiError::forbidden(format!(
                "{email} is not an Airlock user; ask an admin to add it to [[users]]"
            )),
        )
        .await);
    };
    if let Some(groups) = identity.groups {
        airlock
            .sync_groups(&user, &groups)
            .await
            .map_err(|e| fail(None, e))?;
    }
    let secret = airlock
        .start_session(user, "oidc")
        .await
        .map_err(|e| fail(None, e))?;
    let secure = airlock.secure_cookies();
    let mut res = Redirect::to("/inbox").into_response();
    for c in [
        set_cookie(SESSION_COOKIE, &secret, 8 * 3600, secure),
        format!(
            "{}=; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age=0",
            oidc::FLOW_COOKIE
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(res)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    airlock
        .sign_out(&user)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    let clear = set_cookie(SESSION_COOKIE, "", 0, airlock.secure_cookies());
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

/// REQUEST as the API shows it, without the grant token: a page is no
/// place for a bearer credential, so none is minted.
fn shown(airlock: &Airlock, req: &airlock_core::Request, _user: &WebUser) -> Value {
    airlock.request_view(req, None).to_value()
}

/// How many requests one inbox page shows; older ones are a link away.
const INBOX_PAGE: u32 = 100;

/// A request as an inbox card: its view, its facts on one line, and the
/// viewer's own verdict if they gave one.
fn card(airlock: &Airlock, req: &airlock_core::Request, user: &WebUser) -> pages::Card {
    let request = shown(airlock, req, user);
    let facts = request_facts(airlock, req, &request);
    pages::Card {
        facts: show::facts_line(&facts),
        reviewed_by_me: req
            .standing_review(&user.caller.user)
            .map(|rv| pages::past(rv.verdict.as_str()).to_owned()),
        request,
    }
}

/// The facts policy looked at, with the limits the request's policies
/// set on them.
fn request_facts(airlock: &Airlock, req: &airlock_core::Request, view: &Value) -> Vec<show::Fact> {
    let limits = airlock.loaded.load().engine.context_limits(&req.policies);
    let attrs = airlock.resource_attrs(&req.action.resource);
    show::facts(view, &attrs, &limits, &|f| airlock.fact_is_checked(f))
}

/// The inbox's cards (the service decides what the viewer may see; the
/// typed filters narrow it) and the cursor of the next page, if any.
async fn inbox_list(
    airlock: &Airlock,
    user: &WebUser,
    q: &pages::InboxQuery,
) -> Result<(Vec<pages::Card>, Option<String>), ApiError> {
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(
            airlock_store::Cursor::parse(a)
                .ok_or_else(|| ApiError::BadRequest(format!("after {a:?} is not a page cursor")))?,
        ),
    };
    let show = match q.show.as_str() {
        "" | "waiting" => crate::service::InboxShow::Waiting,
        "reviewed" => crate::service::InboxShow::Reviewed,
        "decided" => crate::service::InboxShow::Decided,
        other => {
            return Err(ApiError::BadRequest(format!(
                "show {other:?}: waiting, reviewed or decided"
            )))
        }
    };
    let page = airlock
        .console_inbox(&user.caller, show, INBOX_PAGE, after)
        .await?;
    let cards = page
        .requests
        .iter()
        .map(|r| card(airlock, r, user))
        .filter(|c| q.keeps(&c.request))
        .collect();
    Ok((cards, page.next.map(|c| c.to_string())))
}

async fn inbox(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<pages::InboxQuery>,
) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    match inbox_list(&airlock, &user, &q).await {
        Ok((cards, next)) => Ok(pages::inbox(
            &viewer(&airlock, &user),
            &cards,
            &q,
            next.as_deref(),
            chrono::Utc::now(),
        )
        .into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

async fn inbox_rows(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<pages::InboxQuery>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    match inbox_list(&airlock, &user, &q).await {
        Ok((cards, next)) => {
            Ok(pages::inbox_rows(&cards, &q, next.as_deref(), chrono::Utc::now()).into_response())
        }
        Err(e) => Err(fail(Some(&user), e)),
    }
}

async fn mine_list(airlock: &Airlock, user: &WebUser) -> Result<Vec<Value>, ApiError> {
    let mine = airlock.my_requests(&user.caller, 200).await?;
    Ok(mine.iter().map(|r| shown(airlock, r, user)).collect())
}

async fn mine(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    match mine_list(&airlock, &user).await {
        Ok(list) => {
            Ok(pages::mine(&viewer(&airlock, &user), &list, chrono::Utc::now()).into_response())
        }
        Err(e) => Err(fail(Some(&user), e)),
    }
}

async fn mine_rows(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    match mine_list(&airlock, &user).await {
        Ok(list) => Ok(pages::mine_rows(&list, chrono::Utc::now()).into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

fn request_id(s: &str) -> Result<RequestId, ApiError> {
    RequestId::parse(s).map_err(|_| ApiError::NotFound(format!("no request {s}")))
}

/// `?done=approve` after a review: the page confirms it.
#[derive(Deserialize, Default)]
struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

async fn request_page(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let page = async {
        let id = request_id(&id)?;
        let req = airlock.get_request(&user.caller, id, None).await?;
        let history = airlock.request_history(&req).await?;
        let history: Vec<Value> = history
            .iter()
            .map(|a| serde_json::to_value(a).unwrap_or_default())
            .collect();
        let me = &user.caller.user;
        let may = {
            let loaded = airlock.loaded.load();
            let member = |u: &airlock_core::UserName, g: &airlock_core::GroupName| {
                loaded.directory.is_member(u, g)
            };
            pages::Allowed {
                // Once reviewed, the form gives way to each approver's state
                // (an approval raised past by a step-up asks again).
                review: req.standing_review(me).is_none()
                    && if req.requirement.breakglass {
                        airlock.may_review_breakglass(&user.caller, &req)
                    } else {
                        req.status == RequestStatus::Pending && req.eligible_reviewer(me, member)
                    },
                // The same rule as the service's revoke (approvers of the
                // request; admin keys are not console users).
                revoke: req.status == RequestStatus::Approved
                    && req
                        .requirement
                        .thresholds
                        .iter()
                        .any(|t| t.groups.iter().any(|g| member(me, g))),
            }
        };
        let view = shown(&airlock, &req, &user);
        let facts = request_facts(&airlock, &req, &view);
        let attrs = airlock.resource_attrs(&req.action.resource);
        let preview_checked = airlock.fact_is_checked("preview");
        // After a review: what happens next, and the next request waiting.
        // Only the viewer's own verdict is confirmed: a link with
        // `?done=deny` showed "You denied this request" on one they never
        // reviewed (found by a black-box pass).
        let mine = req
            .reviews
            .iter()
            .rev()
            .find(|rv| rv.reviewer == *me)
            .map(|rv| rv.verdict.as_str());
        let (verdict, next) = match q.done.as_deref() {
            Some(v @ ("approve" | "deny")) if mine == Some(v) => {
                let waiting = airlock
                    .console_inbox(
                        &user.caller,
                        crate::service::InboxShow::Waiting,
                        INBOX_PAGE,
                        None,
                    )
                    .await?;
                let next = waiting
                    .requests
                    .iter()
                    .find(|r| r.id != req.id && r.standing_review(me).is_none())
                    .map(|r| r.id.to_string());
                (Some(v), next)
            }
            _ => (None, None),
        };
        let done = verdict.map(|v| pages::Done {
            verdict: v,
            what_next: after_review(&view),
            next: next.as_deref(),
        });
        Ok::<Markup, ApiError>(pages::request(
            &viewer(&airlock, &user),
            &view,
            &attrs,
            &facts,
            preview_checked,
            &history,
            may,
            done,
            chrono::Utc::now(),
        ))
    };
    match page.await {
        Ok(m) => Ok(m.into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

/// What happens now that the viewer reviewed, in words.
fn after_review(view: &Value) -> String {
    let who = view["principal"].as_str().unwrap_or("");
    match view["status"].as_str().unwrap_or("") {
        "approved" | "consumed" | "completed" => format!(
            "Every threshold is met: {who} has a grant for exactly this action, valid {}; {who}'s waiting command or client goes ahead.",
            view["grant_ttl"].as_str().unwrap_or("")
        ),
        "denied" => format!("The request is denied; {who} is told your reason."),
        "pending" => {
            let missing: Vec<String> = view["thresholds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["approvals"].as_u64() < t["quorum"].as_u64())
                .map(|t| {
                    let left = t["quorum"].as_u64().unwrap_or(1) - t["approvals"].as_u64().unwrap_or(0);
                    let groups: Vec<&str> = t["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect();
                    format!("{left} more from {}", groups.join(" or "))
                })
                .collect();
            format!("It still needs {}; {who} waits.", missing.join(" and "))
        }
        other => format!("The request is {other}."),
    }
}

/// The live part of a request page (status, thresholds, approvers).
async fn request_state(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    let state = async {
        let req = airlock
            .get_request(&user.caller, request_id(&id)?, None)
            .await?;
        Ok::<_, ApiError>(pages::request_state(
            &shown(&airlock, &req, &user),
            chrono::Utc::now(),
        ))
    };
    match state.await {
        Ok(m) => Ok(m.into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

#[derive(Deserialize)]
struct ReviewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    reason: String,
    /// A TOTP code, when the request asks for step-up.
    #[serde(default)]
    totp: Option<String>,
    /// A security key's answer (`PublicKeyCredential.toJSON()`), when the
    /// request asks for WebAuthn.
    #[serde(default)]
    webauthn: Option<String>,
    /// The sealed challenge it answers.
    #[serde(default)]
    webauthn_state: Option<String>,
}

async fn review(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    let done = async {
        let id = request_id(&id)?;
        let verdict = Verdict::parse(&form.verdict)
            .map_err(|_| ApiError::BadRequest("verdict must be approve or deny".into()))?;
        let reason = Some(form.reason).filter(|r| !airlock_core::display::is_blank(r));
        if verdict == Verdict::Deny && reason.is_none() {
            return Err(ApiError::BadRequest(
                "say why you deny: the requester reads it".into(),
            ));
        }
        airlock
            .review(
                &user.caller,
                id,
                verdict,
                reason,
                "web",
                crate::service::StepUp {
                    totp: form.totp,
                    webauthn: form.webauthn.filter(|c| !c.is_empty()).map(|credential| {
                        crate::service::WebauthnAnswer {
                            credential,
                            state: form.webauthn_state.unwrap_or_default(),
                        }
                    }),
                },
            )
            .await?;
        Ok((id, verdict))
    };
    match done.await {
        Ok((id, verdict)) => {
            Ok(Redirect::to(&format!("/requests/{id}?done={}", verdict.as_str())).into_response())
        }
        Err(e) => Err(fail(Some(&user), e)),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Revokes an approved request's grant (approvers of the request).
async fn revoke(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    let done = async {
        let id = request_id(&id)?;
        let reason = Some(form.reason).filter(|r| !airlock_core::display::is_blank(r));
        airlock.revoke(&user.caller, id, reason).await?;
        Ok(id)
    };
    match done.await {
        Ok(id) => Ok(Redirect::to(&format!("/requests/{id}")).into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

/// How often an open event stream re-reads its session, so that it ends
/// when the session was signed out on another node or expired.
const STREAM_SESSION_CHECK: Duration = Duration::from_secs(5);

/// A bare "changed" event (its data is a dummy: browsers drop events
/// without data) whenever any request changes (on any node): the
/// page re-fetches what it shows, through the same checks as every page,
/// so the stream itself tells nothing to anyone. The stream ends when its
/// session does: at once for a sign-out on this node, otherwise at the
/// next event or periodic check; and each user has a bounded number open.
async fn events(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    let max = airlock.config.load().web.max_streams_per_user;
    let Some(slot) = airlock.streams.try_take(user.caller.user.as_str(), max) else {
        return Err(fail(
            Some(&user),
            ApiError::TooMany {
                code: airlock_api::ErrorCode::TooManyWaits,
                message: format!(
                    "you have {max} live-update streams open on this node; close some pages"
                ),
                retry_after_seconds: None,
            },
        ));
    };
    // Subscribed before the task starts, so nothing between the session
    // check above and the first wait is missed.
    let mut changes = airlock.store.subscribe();
    let mut ended = airlock.sessions_ended.subscribe();
    // Capacity one: a "changed" already waiting to be sent covers the
    // next one too.
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let session = user.id_hash;
    tokio::spawn(async move {
        // Held as long as the stream: a closed connection gives it back.
        let _slot = slot;
        let mut tick = tokio::time::interval(STREAM_SESSION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let send = tokio::select! {
                () = tx.closed() => break,
                _ = tick.tick() => false,
                e = changes.recv() => match e {
                    Ok(_) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => break,
                },
                e = ended.recv() => match e {
                    Ok(h) if h == session => break,
                    Ok(_) | Err(RecvError::Lagged(_)) => false,
                    Err(RecvError::Closed) => break,
                },
            };
            // Fails closed: a session that cannot be read ends the stream.
            if !matches!(airlock.live_session(&session).await, Ok(Some(_))) {
                break;
            }
            if send {
                let _ = tx.try_send(());
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|()| Ok::<_, Infallible>(Event::default().event("changed").data("1")));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Auditors see every request's figures; anyone else the figures of
/// their own requests only (counts across users say who is doing what).
async fn overview(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let (all, everyone) = airlock
        .overview_requests(&user.caller, 5000)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    let now = chrono::Utc::now();
    let decided = all.iter().filter_map(charts::decision_seconds).count();
    Ok(pages::overview(
        &viewer(&airlock, &user),
        everyone,
        charts::requests_per_day(&all, now, 14),
        charts::time_to_decision(&all),
        decided,
    )
    .into_response())
}

/// Whether the user is a member of one of `[web] auditor_groups`.
fn is_auditor(airlock: &Airlock, user: &WebUser) -> bool {
    airlock.may_oversee(&user.caller)
}

/// A typed time (`2026-11-24T09:00`, with seconds, or RFC 3339), as the
/// store's timestamp text; times without a zone are UTC.
fn audit_time(s: &str) -> Result<Option<String>, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
                .map(|t| t.and_utc())
        })
        .map_err(|_| ApiError::BadRequest(format!("{s:?} is not a time like 2026-11-24T09:00")))?;
    Ok(Some(airlock_store::time::fmt(parsed)))
}

fn audit_filter(q: &pages::AuditQuery) -> Result<AuditFilter, ApiError> {
    let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    Ok(AuditFilter {
        actor: text(&q.actor),
        kind: text(&q.kind),
        request: text(&q.request),
        subject: None,
        since: audit_time(&q.since)?,
        until: audit_time(&q.until)?,
    })
}

/// Records shown on one page; the export takes more.
const AUDIT_PAGE: u32 = 500;
const AUDIT_EXPORT: u32 = 100_000;

async fn audit(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<pages::AuditQuery>,
) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let filter = audit_filter(&q).map_err(|e| fail(Some(&user), e))?;
    let (records, found) = airlock
        .audit_search(&user.caller, filter, AUDIT_PAGE, true)
        .await
        .map_err(|e| fail(Some(&user), e))?;

    let records: Vec<Value> = records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect();
    let chain = match found {
        Some(found) => pages::ChainState {
            head: found.head,
            checkpoints: found.checkpoints,
            broken: found.broken,
        },
        // Asked with verification, so always there; never claim "intact"
        // without it.
        None => pages::ChainState {
            head: 0,
            checkpoints: 0,
            broken: Some((0, "not verified".into())),
        },
    };
    Ok(pages::audit(&viewer(&airlock, &user), &q, &records, &chain, AUDIT_PAGE).into_response())
}

async fn audit_export(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<pages::AuditQuery>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    let filter = audit_filter(&q).map_err(|e| fail(Some(&user), e))?;
    let (mut records, _) = airlock
        .audit_search(&user.caller, filter, AUDIT_EXPORT, false)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    records.reverse();
    let mut body = String::new();
    for r in &records {
        body.push_str(&serde_json::to_string(r).unwrap_or_default());
        body.push('\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"airlock-audit.jsonl\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Failed notifications, for auditors.
async fn notifications(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let lists = async {
        let failed = airlock
            .outbox_list(&user.caller, Some("failed".into()), 500)
            .await?;
        let waiting = airlock
            .outbox_list(&user.caller, Some("pending".into()), 10_000)
            .await?
            .len();
        Ok::<_, ApiError>((failed, waiting))
    };
    let (failed, waiting) = lists.await.map_err(|e| fail(Some(&user), e))?;
    Ok(pages::notifications(&viewer(&airlock, &user), &failed, waiting).into_response())
}

async fn notification_retry(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    airlock
        .retry_outbox(&user.caller, id)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(Redirect::to("/notifications").into_response())
}

async fn policy_page(
    airlock: &Airlock,
    user: &WebUser,
    form: &pages::SimulateForm,
    answer: Option<Result<Value, String>>,
) -> Page {
    let loaded = airlock.loaded.load_full();
    let policies: Vec<(String, String)> = loaded
        .engine
        .policy_set()
        .policies()
        .map(|p| {
            let id = p.annotation("id").unwrap_or(p.id().as_ref()).to_owned();
            (id, p.to_string())
        })
        .collect();
    let last = airlock
        .last_policy_load()
        .await
        .map_err(|e| fail(Some(user), e))?;
    let last = last.map(|a| serde_json::to_value(a).unwrap_or_default());
    Ok(pages::policy(
        &viewer(airlock, user),
        !is_auditor(airlock, user),
        loaded.engine.version(),
        &policies,
        last.as_ref(),
        form,
        answer,
    )
    .into_response())
}

async fn policy(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let form = pages::SimulateForm {
        principal: user.caller.user.to_string(),
        ..pages::SimulateForm::default()
    };
    policy_page(&airlock, &user, &form, None).await
}

async fn simulate(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<pages::SimulateForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    // What policy decides for someone else tells what they may do: that
    // is for auditors. The form's field is fixed for others; this is the
    // check that counts.
    if form.principal.trim() != user.caller.user.as_str() && !is_auditor(&airlock, &user) {
        return Err(fail(
            Some(&user),
            ApiError::forbidden(
                "you may simulate only your own actions; simulating for others is for members of [web] auditor_groups",
            ),
        ));
    }
    let answer = airlock.simulate(&form).await;
    policy_page(&airlock, &user, &form, Some(answer)).await
}

/// The break-glass page, for members of `[breakglass] groups` (others are
/// told in plain words why not).
async fn breakglass_form(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    if !airlock.may_break_glass(&user.caller) {
        return Err(fail(
            Some(&user),
            ApiError::forbidden("break-glass is for members of [breakglass] groups"),
        ));
    }
    let form = pages::BreakglassForm::default();
    Ok(pages::breakglass(&viewer(&airlock, &user), &form, None).into_response())
}

async fn breakglass(
    State(airlock): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<pages::BreakglassForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    let body = match simulate::breakglass_body(&form) {
        Ok(b) => b,
        Err(e) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                pages::breakglass(&viewer(&airlock, &user), &form, Some(&e)),
            )
                .into_response())
        }
    };
    match airlock
        .breakglass(&user.caller, body, Some(peer.ip()))
        .await
    {
        Ok(req) => Ok(Redirect::to(&format!("/requests/{}", req.id)).into_response()),
        Err(e) => Err(fail(Some(&user), e)),
    }
}

/// How recent a sign-in must be to add a second factor.
const FRESH_SIGN_IN: chrono::Duration = chrono::Duration::minutes(10);

/// Adding a second factor (a first TOTP enrolment, a security key) needs a
/// sign-in from the last ten minutes: a session stolen earlier cannot enrol
/// an authenticator of its own and then pass step-up with it.
fn recent_sign_in(user: &WebUser) -> Result<(), Refusal> {
    if chrono::Utc::now() - user.signed_in_at <= FRESH_SIGN_IN {
        Ok(())
    } else {
        Err(fail(
            Some(user),
            ApiError::forbidden(
                "adding a second factor needs a recent sign-in: sign out, sign in again, and add it within 10 minutes",
            ),
        ))
    }
}

/// The viewer's account: step-up enrolment.
async fn account(State(airlock): State<AppState>, headers: HeaderMap) -> Page {
    let user = signed_in(&airlock, &headers, true).await?;
    let enrolled = airlock
        .totp_enrolled(&user.caller)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    let keys = airlock
        .webauthn_registered(&user.caller)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(pages::account(&viewer(&airlock, &user), enrolled, keys, None).into_response())
}

/// A ceremony's options and sealed state, as JSON for the page's script.
fn ceremony(options: Value, state: String) -> Response {
    axum::Json(serde_json::json!({"options": options, "state": state})).into_response()
}

/// Starts registering a security key (JSON for the page's script).
async fn webauthn_register_start(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    recent_sign_in(&user)?;
    let (options, state) = airlock
        .webauthn_register_start(&user.caller)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(ceremony(options, state))
}

#[derive(Deserialize)]
struct WebauthnForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    state: String,
}

/// Finishes registering a security key.
async fn webauthn_register_finish(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<WebauthnForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    recent_sign_in(&user)?;
    airlock
        .webauthn_register_finish(&user.caller, &form.credential, &form.state)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(Redirect::to("/account").into_response())
}

/// A security-key challenge for approving one request.
async fn webauthn_challenge(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    let id = request_id(&id).map_err(|e| fail(Some(&user), e))?;
    let (options, state) = airlock
        .webauthn_challenge(&user.caller, id)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(ceremony(options, state))
}

#[derive(Deserialize)]
struct TotpForm {
    #[serde(default)]
    csrf: String,
    /// A current code of the enrolment being replaced.
    #[serde(default)]
    code: Option<String>,
}

/// Enrols (or replaces) the viewer's authenticator and shows its QR code
/// once.
async fn account_totp(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TotpForm>,
) -> Page {
    let user = signed_in(&airlock, &headers, false).await?;
    check_csrf(&user, &form.csrf)?;
    // Replacing an enrolment proves possession with a current code; a
    // first one leans on a recent sign-in.
    if form.code.as_deref().is_none_or(|c| c.trim().is_empty()) {
        recent_sign_in(&user)?;
    }
    let uri = airlock
        .enroll_totp(&user.caller, form.code)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    let qr = airlock_auth::totp::qr_svg(&uri).unwrap_or_default();
    let keys = airlock
        .webauthn_registered(&user.caller)
        .await
        .map_err(|e| fail(Some(&user), e))?;
    Ok(pages::account(&viewer(&airlock, &user), true, keys, Some((&uri, &qr))).into_response())
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
        .into_response()
}
