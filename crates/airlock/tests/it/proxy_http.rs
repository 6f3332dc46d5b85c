//! The HTTP proxy (`[[proxies.http]]`, `airlock proxy`): a real upstream
//! behind a real proxy, inside `airlock serve` and alone, driven with
//! reqwest and curl: allow, deny, no route, no identity, each hold path,
//! header stripping and response DLP.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const PROXY_POLICIES: &str = r#"
@id("public-files")
permit(principal, action == Action::"download", resource == File::"public");

@id("no-secrets")
forbid(principal, action == Action::"download", resource == File::"secret");

@id("customer-files")
@approvers("security")
permit(principal, action == Action::"download", resource == File::"customers");

@id("uploads")
@approvers("security")
permit(principal, action == Action::"upload", resource);

@id("open-data")
permit(principal, action == Action::"download", resource == File::"open");

@id("public-responses")
permit(principal, action == Action::"download.response", resource == File::"public");

@id("reviewed-files")
permit(principal, action == Action::"download", resource == File::"reviewed");

@id("reviewed-responses")
@approvers("security")
permit(principal, action == Action::"download.response", resource == File::"reviewed");

@id("clean-files")
permit(principal, action == Action::"download", resource == File::"clean");

@id("clean-responses")
permit(principal, action == Action::"download.response", resource == File::"clean")
when { context.dlp == {} };

@id("unclean-responses")
@approvers("security")
permit(principal, action == Action::"download.response", resource == File::"clean")
when { !(context.dlp == {}) };
"#;

/// The planted values DLP must find: an email and a card passing Luhn.
pub(crate) const EMAIL: &str = "ann.lee@example.com";
pub(crate) const CARD: &str = "4111111111111111";

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A real HTTP service behind the proxy that records every request it
/// gets. `/gz/...` answers gzip-encoded; everything else plain CSV with the
/// planted values.
pub(crate) struct Upstream {
    pub addr: std::net::SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let seen = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
                seen.lock().unwrap().push(Hit {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body,
                });
                let mut csv = format!("name,email,card\nann,{EMAIL},{CARD}\n");
                let query = parts.uri.query().unwrap_or("");
                if query.contains("clean") {
                    csv = "name\nann\n".to_owned();
                }
                if query.contains("switch") {
                    // Switching protocols unasked.
                    return axum::response::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "x-other")
                        .body(axum::body::Body::empty())
                        .unwrap();
                }
                if query.contains("partial") {
                    // A piece of the file, as if a Range had been sent.
                    return axum::response::Response::builder()
                        .status(206)
                        .header("content-type", "text/csv")
                        .header("content-range", format!("bytes 20-43/{}", csv.len()))
                        .body(axum::body::Body::from(csv[20..44].to_owned()))
                        .unwrap();
                }
                if parts.uri.path().contains("big") {
                    // 8 MiB: more than the scan cap the streaming test sets.
                    csv = format!("name,email,card\n{}", "bob,nobody,none\n".repeat(8 << 16));
                }
                let label = if query.contains("octet") {
                    "application/octet-stream"
                } else if query.contains("yaml") {
                    "application/x-yaml"
                } else if query.contains("utf16") {
                    "text/csv; charset=utf-16"
                } else {
                    "text/csv"
                };
                if parts.uri.path().contains("gz") {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                    e.write_all(csv.as_bytes()).unwrap();
                    axum::response::Response::builder()
                        .header("content-type", "text/csv")
                        .header("content-encoding", "gzip")
                        .body(axum::body::Body::from(e.finish().unwrap()))
                        .unwrap()
                } else if query.contains("wide") || query.contains("bom") {
                    // UTF-16LE saying nothing of it: a mark, or none.
                    let mut wide: Vec<u8> = if query.contains("bom") {
                        vec![0xFF, 0xFE]
                    } else {
                        Vec::new()
                    };
                    wide.extend(csv.encode_utf16().flat_map(u16::to_le_bytes));
                    axum::response::Response::builder()
                        .header("content-type", label.replace("; charset=utf-16", ""))
                        .body(axum::body::Body::from(wide))
                        .unwrap()
                } else {
                    let mut res = axum::response::Response::builder().header("content-type", label);
                    if query.contains("hdr") {
                        res = res
                            .header("x-card", CARD)
                            .header("location", "https://u:hunter2pass@example.com/")
                            .header(format!("x-{CARD}"), "y")
                            .extension(hyper::ext::ReasonPhrase::from_static(CARD.as_bytes()));
                    }
                    res.body(axum::body::Body::from(csv)).unwrap()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { addr, hits }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `[[proxies.http]]` named `files` on `port` in front of `up`.
fn proxy_toml(port: u16, up: &Upstream, hold: u64) -> String {
    format!(
        r#"
[[proxies.http]]
name = "files"
listen = "127.0.0.1:{port}"
upstream = "http://{up}"
hold_seconds = {hold}

[[proxies.http.routes]]
method = "GET"
path = "/exports/{{name}}.csv"
action = "download"
resource = "File:{{name}}"

[[proxies.http.routes]]
method = "POST"
path = "/upload/{{name}}"
action = "upload"
resource = "Doc:{{name}}"
bind_headers = ["X-Tenant-Id"]

[[proxies.http.routes]]
method = "GET"
path = "/masked/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "mask"

[[proxies.http.routes]]
method = "GET"
path = "/gz/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "mask"

[[proxies.http.routes]]
method = "GET"
path = "/blocked/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "block"

[[proxies.http.routes]]
method = "GET"
path = "/reported/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "report"

[[proxies.http.routes]]
method = "GET"
path = "/checked/{{name}}.csv"
action = "download"
resource = "File:{{name}}"
response_dlp = "report"
response_action = "download.response"

[[proxies.http.routes]]
method = "GET"
path = "/{{kind}}/{{name}}.big"
action = "download"
resource = "File:{{name}}"
response_dlp = "mask"

[[proxies.http.routes]]
method = "GET"
path = "/{{kind}}/{{name}}.bigblock"
action = "download"
resource = "File:{{name}}"
response_dlp = "block"
"#,
        up = up.addr
    )
}

/// A server running the proxy in process; the proxy's base URL.
async fn with_proxy(db: &Db, hold: u64) -> (Server, Upstream, String) {
    with_proxy_extra(db, hold, "").await
}

/// The same, with `extra` settings on the proxy.
async fn with_proxy_extra(db: &Db, hold: u64, extra: &str) -> (Server, Upstream, String) {
    let up = Upstream::start().await;
    let port = free_port();
    let cfg =
        proxy_toml(port, &up, hold).replacen("hold_seconds", &format!("{extra}\nhold_seconds"), 1);
    let s = Server::start_extra(db, PROXY_POLICIES, &cfg);
    (s, up, format!("http://127.0.0.1:{port}"))
}

pub(crate) async fn send(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    request: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("x-custom", "kept")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.header("Airlock-Token", t);
    }
    if let Some(r) = request {
        req = req.header("Airlock-Request", r);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

pub(crate) async fn get(
    url: &str,
    token: Option<&str>,
    request: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    send(reqwest::Method::GET, url, token, request, "").await
}

/// curl's status code for a GET with `Airlock-Token: key`.
async fn curl(key: &str, url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
        ])
        .arg(format!("Airlock-Token: {key}"))
        .arg(url)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// Allow forwards (and the Airlock-Token header never reaches the
/// upstream, other headers do); deny, no route, no identity and an unknown
/// key are refused and the upstream sees none of them; curl sees the same.
async fn allow_deny_no_route_no_identity(db: Db) {
    let (s, up, p) = with_proxy(&db, 1).await;
    let alice = s.key("alice", "user");
    // How a proxy learns whose key an Airlock-Token is.
    let (st, me) = s.get(&alice, "/v1/whoami").await;
    assert_eq!(
        (st, me["user"].as_str(), me["role"].as_str()),
        (200, Some("alice"), Some("user"))
    );

    let (st, _, body) = get(&format!("{p}/exports/public.csv?x=1"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(EMAIL));
    let hits = up.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/exports/public.csv?x=1");
    assert!(hits[0]
        .headers
        .iter()
        .all(|(k, v)| k != "airlock-token" && !v.contains(&alice)));
    assert!(hits[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-custom" && v == "kept"));

    let (st, _, body) = get(&format!("{p}/exports/secret.csv"), Some(&alice), None).await;
    assert_eq!((st, code(&body).as_str()), (403, "forbidden"), "{body}");
    let (st, _, body) = get(&format!("{p}/elsewhere/public.csv"), Some(&alice), None).await;
    assert_eq!((st, code(&body).as_str()), (403, "forbidden"), "{body}");
    let (st, _, body) = send(
        reqwest::Method::DELETE,
        &format!("{p}/exports/public.csv"),
        Some(&alice),
        None,
        "",
    )
    .await;
    assert_eq!(st, 403, "{body}");
    let (st, _, body) = get(&format!("{p}/exports/public.csv"), None, None).await;
    assert_eq!(
        (st, code(&body).as_str()),
        (401, "unauthenticated"),
        "{body}"
    );
    let (st, _, body) = get(
        &format!("{p}/exports/public.csv"),
        Some("ak_not_a_key"),
        None,
    )
    .await;
    assert_eq!(st, 401, "{body}");
    let (st, _, body) = get(&format!("{p}/exports/..%2Fpublic.csv"), Some(&alice), None).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(up.hits().len(), 1, "refused requests reached the upstream");

    // curl, HTTP/1.1, the same door (run off this thread: the upstream
    // answers on this test's runtime).
    assert_eq!(
        curl(&alice, &format!("{p}/exports/public.csv")).await,
        "200"
    );
    assert_eq!(
        curl(&alice, &format!("{p}/exports/secret.csv")).await,
        "403"
    );
    // HTTP/2 (prior knowledge): the same answers.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code} %{http_version}", "-H"])
        .arg(format!("Airlock-Token: {alice}"))
        .arg(format!("{p}/exports/public.csv"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    assert_eq!(up.hits().len(), 3);
    // An upstream that switches protocols unasked: 502, not a 101 leading
    // nowhere.
    let (st, _, body) = get(
        &format!("{p}/exports/public.csv?switch"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        (st, code(&body).as_str()),
        (502, "upstream_unavailable"),
        "{body}"
    );
}

/// Held past hold_seconds → 202 with Airlock-Request and Retry-After, the
/// upstream untouched; approved, the same request with Airlock-Request is
/// forwarded once, the grant completed with the upstream's status; again →
/// 403 grant_spent.
async fn held_then_approved_is_forwarded_once(db: Db) {
    let (s, up, p) = with_proxy(&db, 1).await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/exports/customers.csv");

    let (st, h, body) = get(&url, Some(&alice), None).await;
    assert_eq!(st, 202, "{body}");
    let id = h["airlock-request"].to_str().unwrap().to_owned();
    assert!(h.contains_key("retry-after"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["request"]["id"], id.as_str());
    assert_eq!(v["request"]["principal"], "alice");
    assert_eq!(v["request"]["resource"]["id"], "customers");
    assert!(v["request"]["grant"].is_null());
    assert!(up.hits().is_empty());

    // Still pending: held again, 202 again, same request.
    let (st, h, _) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 202);
    assert_eq!(h["airlock-request"].to_str().unwrap(), id);
    assert!(up.hits().is_empty());

    let (st, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200, "{r}");
    let (st, _, body) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("ann"));
    assert_eq!(up.hits().len(), 1);
    assert!(up.hits()[0]
        .headers
        .iter()
        .all(|(k, _)| k != "airlock-request" && k != "airlock-token"));

    let (st, _, body) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!((st, code(&body).as_str()), (403, "grant_spent"), "{body}");
    assert_eq!(up.hits().len(), 1);

    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "completed", "{r}");
    let admin = s.key("admin", "admin");
    // Completed with the upstream's status.
    let (_, a) = s.get(&admin, "/v1/audit?limit=100000").await;
    assert!(a.to_string().contains("\"status\":200"), "{a}");
    // Policies see the proxy's name as configured.
    assert!(a.to_string().contains("\"proxy\":\"files\""), "{a}");
}

/// With the request's id, anything changed (body, path, another user) is
/// refused with action_mismatch and never forwarded; the original still
/// goes through.
async fn changed_request_is_action_mismatch(db: Db) {
    let (s, up, p) = with_proxy(&db, 1).await;
    let alice = s.key("alice", "user");
    let mallory = s.key("mallory", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/upload/report");

    let (st, h, body) = send(reqwest::Method::POST, &url, Some(&alice), None, "rows=10").await;
    assert_eq!(st, 202, "{body}");
    let id = h["airlock-request"].to_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;

    // A header the route binds: another tenant's, or none, is another
    // request.
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert!(r["params"]["headers_sha256"].is_null(), "{r}");
    let res = reqwest::Client::new()
        .post(&url)
        .header("Airlock-Token", &alice)
        .header("Airlock-Request", &id)
        .header("X-Tenant-Id", "victim")
        .body("rows=10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(code(&res.text().await.unwrap()), "action_mismatch");
    // The header respelled with `_`, or named in Connection to be dropped
    // after binding: refused.
    for (h, v) in [
        ("X_Tenant_Id", "victim"),
        ("Connection", "close, X-Tenant-Id"),
    ] {
        let res = reqwest::Client::new()
            .post(&url)
            .header("Airlock-Token", &alice)
            .header("Airlock-Request", &id)
            .header(h, v)
            .body("rows=10")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{h}");
    }
    // A request carrying it shows the approver its value.
    let res = reqwest::Client::new()
        .post(format!("{p}/upload/tenanted"))
        .header("Airlock-Token", &alice)
        .header("X-Tenant-Id", "acme")
        .body("rows=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let tenanted = res.headers()["airlock-request"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, r) = s.get(&alice, &format!("/v1/requests/{tenanted}")).await;
    assert_eq!(
        r["params"]["headers"]["x-tenant-id"],
        serde_json::json!(["acme"]),
        "{r}"
    );

    for (who, path, body) in [
        (&alice, url.clone(), "rows=10000"),
        (&alice, format!("{p}/upload/other"), "rows=10"),
        (&alice, format!("{url}?all=1"), "rows=10"),
        (&mallory, url.clone(), "rows=10"),
    ] {
        let (st, _, b) = send(reqwest::Method::POST, &path, Some(who), Some(&id), body).await;
        assert_eq!(
            (st, code(&b).as_str()),
            (403, "action_mismatch"),
            "{path} {body}: {b}"
        );
    }
    // The same request carrying the upstream's credentials of someone
    // else, or asking for a part of it: another request.
    for (h, v) in [
        ("authorization", "Bearer other"),
        ("range", "bytes=0-1"),
        ("request-range", "bytes=0-1"),
        ("x-api-key", "other"),
    ] {
        let res = reqwest::Client::new()
            .post(&url)
            .header("Airlock-Token", &alice)
            .header("Airlock-Request", &id)
            .header("x-custom", "kept")
            .header(h, v)
            .body("rows=10")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403, "{h}");
        assert_eq!(code(&res.text().await.unwrap()), "action_mismatch", "{h}");
    }
    assert!(up.hits().is_empty());
    let (st, _, b) = send(
        reqwest::Method::POST,
        &url,
        Some(&alice),
        Some(&id),
        "rows=10",
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let hits = up.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].method.as_str(), hits[0].body.as_slice()),
        ("POST", &b"rows=10"[..])
    );
}

/// Request bodies held at once are capped per listener: while one 40 KB
/// body waits with its request for approval, a second that would pass the
/// 64 KiB budget is refused with 429, and taken once the first is answered
/// (one HTTP/2 connection's streams held gigabytes before; found by a
/// black-box pass).
async fn request_bodies_held_at_once_are_capped(db: Db) {
    let (s, up, p) = with_proxy_extra(
        &db,
        3,
        "max_body_bytes = 65536\nmax_buffered_body_bytes = 65536",
    )
    .await;
    let alice = s.key("alice", "user");
    let big = "r".repeat(40_000);
    let first = {
        let (url, alice, big) = (format!("{p}/upload/a"), alice.clone(), big.clone());
        tokio::spawn(
            async move { send(reqwest::Method::POST, &url, Some(&alice), None, &big).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (st, _, b) = send(
        reqwest::Method::POST,
        &format!("{p}/upload/b"),
        Some(&alice),
        None,
        &big,
    )
    .await;
    assert_eq!((st, code(&b).as_str()), (429, "rate_limited"), "{b}");
    let (st, _, _) = first.await.unwrap();
    assert_eq!(st, 202);
    let (st, _, b) = send(
        reqwest::Method::POST,
        &format!("{p}/upload/b"),
        Some(&alice),
        None,
        &big,
    )
    .await;
    assert_eq!(st, 202, "{b}");
    assert!(up.hits().is_empty());
    // A declared length past max_body_bytes is refused at once, before
    // any of the body is waited for.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(p.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /upload/c HTTP/1.1\r\nhost: x\r\nairlock-token: {alice}\r\ncontent-length: 100000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut status = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut status))
        .await
        .expect("answered before the body")
        .unwrap();
    assert_eq!(&status, b"HTTP/1.1 413");
}

/// An approval that arrives while the request is held wakes it: the held
/// request itself is forwarded, well before hold_seconds.
async fn approval_within_the_hold_forwards_the_held_request(db: Db) {
    let (s, up, p) = with_proxy(&db, 30).await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/exports/customers.csv");
    let started = Instant::now();
    let held = tokio::spawn(async move { get(&url, Some(&alice), None).await });
    let id = first_pending(&s, &bob).await;
    assert!(up.hits().is_empty());
    s.review(&bob, &id, "approve").await;
    let (st, _, body) = held.await.unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(up.hits().len(), 1);
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "completed", "{r}");
}

/// A client that gives up while held cancels nothing: the request stays
/// pending, and once approved the retry with its id is forwarded.
async fn client_gone_while_held_cancels_nothing(db: Db) {
    let (s, up, p) = with_proxy(&db, 30).await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/exports/customers.csv");
    let gone = reqwest::Client::new()
        .get(&url)
        .header("Airlock-Token", &alice)
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(gone.is_err());
    let id = first_pending(&s, &bob).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending", "{r}");
    s.review(&bob, &id, "approve").await;
    let (st, _, body) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(up.hits().len(), 1);
}

/// `airlock proxy --config FILE` alone against a running server, with an
/// enforcer key over HTTP: the same allow, deny, hold and resume; a user
/// key in `[proxy] token` is refused at start.
async fn standalone_proxy_against_a_running_server(db: Db) {
    let up = Upstream::start().await;
    let mut s = Server::start_with(&db, PROXY_POLICIES);
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let enforcer = s.key("gatekeeper", "enforcer");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nserver_url = {:?}\ntoken = {alice:?}\n{}",
            s.url,
            proxy_toml(port, &up, 1)
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enforcer"));

    std::fs::write(
        &file,
        format!(
            "[proxy]\nserver_url = {:?}\ntoken = {enforcer:?}\n{}",
            s.url,
            proxy_toml(port, &up, 1)
        ),
    )
    .unwrap();
    let mut child = Standalone(
        Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let p = line
        .trim()
        .strip_prefix("proxy files listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();

    let (st, _, body) = get(&format!("{p}/exports/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    let (st, _, _) = get(&format!("{p}/exports/secret.csv"), Some(&alice), None).await;
    assert_eq!(st, 403);
    let (st, _, _) = get(&format!("{p}/exports/public.csv"), Some("nope"), None).await;
    assert_eq!(st, 401);
    let url = format!("{p}/exports/customers.csv");
    let (st, h, body) = get(&url, Some(&alice), None).await;
    assert_eq!(st, 202, "{body}");
    let id = h["airlock-request"].to_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    let (st, _, body) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 200, "{body}");
    let (st, _, _) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 403);
    assert_eq!(up.hits().len(), 2);
    assert!(up
        .hits()
        .iter()
        .all(|h| h.headers.iter().all(|(k, _)| k != "airlock-token")));

    // What DLP finds in an allowed answer reaches the server's audit log
    // under the proxy's enforcer key; a user key cannot write such records.
    let (st, _, body) = get(&format!("{p}/blocked/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 403, "{body}");
    let admin = s.key("admin", "admin");
    let found = s.audit_of(&admin, "dlp_findings", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["details"]["disposition"], "withheld");
    assert_eq!(found[0]["details"]["counts"]["credit_card"], 1);
    let report = serde_json::json!({
        "principal": "bob", "proxy": "files", "disposition": "passed",
        "targets": [{"action": "download", "resource": {"type": "File", "id": "x"}}],
        "counts": {"email": 1},
    });
    let (st, body) = s.post(&alice, "/v1/audit/findings", report.clone()).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (st, body) = s
        .post(&enforcer, "/v1/audit/findings", report.clone())
        .await;
    assert_eq!(st, 200, "{body}");
    let seq = body["audit_seq"].as_i64().unwrap();
    assert!(seq > 0);
    // A report may name decisions in the log, not ones past its head.
    let mut named = report.clone();
    named["decisions"] = serde_json::json!([seq]);
    let (st, body) = s.post(&enforcer, "/v1/audit/findings", named).await;
    assert_eq!(st, 200, "{body}");
    let mut future = report;
    future["decisions"] = serde_json::json!([seq, seq + 1000]);
    let (st, body) = s.post(&enforcer, "/v1/audit/findings", future).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("decision {}", seq + 1000)));

    // Airlock gone: fail closed, 503, nothing forwarded.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let (st, _, body) = get(&format!("{p}/exports/public.csv"), Some(&alice), None).await;
    assert_eq!(
        (st, code(&body).as_str()),
        (503, "upstream_unavailable"),
        "{body}"
    );
    assert_eq!(up.hits().len(), 3);
}

pub(crate) struct Standalone(pub Child);

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gzip-encoded response on a masking route is decoded, scanned and sent
/// as identity with its Content-Length recomputed (works with any
/// detectors, including none).
async fn gzip_response_is_decoded_and_resized(db: Db) {
    let (s, _up, p) = with_proxy(&db, 1).await;
    let alice = s.key("alice", "user");
    let res = reqwest::Client::new()
        .get(format!("{p}/gz/public.csv"))
        .header("Airlock-Token", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers().get("content-encoding").is_none());
    let len = res
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let body = res.bytes().await.unwrap();
    if let Some(len) = len {
        assert_eq!(body.len(), len);
    }
    assert!(String::from_utf8_lossy(&body).starts_with("name,email,card\n"));
}

/// Mask streams: an 8 MiB body (plain or gzip) on a masking route goes
/// through whole although `max_scan_bytes` is 1 MiB; on a blocking route,
/// which must see it all before answering, the same body is withheld (502),
/// never passed unscanned.
async fn large_bodies_stream_through_mask_and_are_withheld_by_block(db: Db) {
    let (s, up, p) =
        with_proxy_extra(&db, 1, "max_scan_bytes = 1048576\nmax_body_bytes = 4096").await;
    let alice = s.key("alice", "user");
    let want = "name,email,card\n".len() + "bob,nobody,none\n".len() * (8 << 16);
    for path in ["big/public.big", "gzbig/public.big"] {
        let res = reqwest::Client::new()
            .get(format!("{p}/{path}"))
            .header("Airlock-Token", &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        assert!(res.headers().get("content-encoding").is_none());
        let body = res.bytes().await.unwrap();
        assert_eq!(body.len(), want, "{path}");
        assert!(body.ends_with(b"bob,nobody,none\n"));
    }
    let (st, _, body) = get(&format!("{p}/big/public.bigblock"), Some(&alice), None).await;
    assert_eq!(
        (st, code(&body).as_str()),
        (502, "upstream_unavailable"),
        "{body}"
    );
    assert!(body.contains("max_scan_bytes"), "{body}");
    // A denied large download is refused before the upstream is asked.
    let (st, _, _) = get(&format!("{p}/big/secret.big"), Some(&alice), None).await;
    assert_eq!(st, 403);
    // A request body over max_body_bytes: 413, not forwarded.
    let hits = up.hits().len();
    let big = "x".repeat(8192);
    let (st, _, body) = send(
        reqwest::Method::POST,
        &format!("{p}/upload/a"),
        Some(&alice),
        None,
        &big,
    )
    .await;
    assert_eq!(
        (st, code(&body).as_str()),
        (413, "payload_too_large"),
        "{body}"
    );
    assert_eq!(up.hits().len(), hits);
}

/// With `principal_header`, a trusted front proxy names the user: the
/// check is for that user (no key needed); without either → 401.
async fn principal_header_names_the_user(db: Db) {
    let (s, up, p) = with_proxy_extra(&db, 1, "principal_header = \"x-remote-user\"").await;
    let bob = s.key("bob", "user");
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{p}/exports/customers.csv"))
        .header("x-remote-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["request"]["principal"], "alice", "{v}");
    let id = v["request"]["id"].as_str().unwrap().to_owned();
    let res = client
        .get(format!("{p}/exports/public.csv"))
        .header("x-remote-user", "not a user!")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (st, _, _) = get(&format!("{p}/exports/public.csv"), None, None).await;
    assert_eq!(st, 401);
    // Another user naming alice's request is a mismatch.
    s.review(&bob, &id, "approve").await;
    let res = client
        .get(format!("{p}/exports/customers.csv"))
        .header("x-remote-user", "carol")
        .header("Airlock-Request", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let res = client
        .get(format!("{p}/exports/customers.csv"))
        .header("x-remote-user", "alice")
        .header("Airlock-Request", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(up.hits().len(), 1);
}

/// `response_action`: the response is decided on as its own action with
/// the finding counts in `context.dlp`; a response policy does not permit
/// is withheld (403) although the request itself was allowed.
async fn response_action_decides_on_the_response(db: Db) {
    let (s, up, p) = with_proxy(&db, 1).await;
    let alice = s.key("alice", "user");
    let (st, _, body) = get(&format!("{p}/checked/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = get(&format!("{p}/checked/open.csv"), Some(&alice), None).await;
    assert_eq!((st, code(&body).as_str()), (403, "forbidden"), "{body}");
    assert!(body.contains("withheld"), "{body}");
    assert!(!body.contains(EMAIL));
    assert_eq!(up.hits().len(), 2);
    let admin = s.key("admin", "admin");
    let (_, a) = s.get(&admin, "/v1/audit?limit=100000").await;
    assert!(a.to_string().contains("download.response"));
    assert!(!a.to_string().contains(EMAIL) && !a.to_string().contains(CARD));
}

/// What a black-box pass found, each closed: a `Range` cut a card number
/// into pieces DLP never saw whole; a finding in the response's headers
/// was left out of the decision on the response; a client's own
/// `Airlock-Principal` reached the service; a key revoked while its
/// request was held was still served what was approved.
#[tokio::test]
async fn scanned_answers_are_whole_and_the_service_hears_who_from_us() {
    let (s, up, p) = with_proxy(&Db::Sqlite, 20).await;
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    let http = reqwest::Client::new();
    let fetch = |path: String, headers: Vec<(&'static str, String)>| {
        let mut req = http.get(format!("{p}{path}"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let token = ("Airlock-Token", alice.clone());

    // Range is not forwarded where responses are scanned: the whole body
    // comes back, masked.
    let (st, body) = fetch(
        "/masked/open.csv".into(),
        vec![
            token.clone(),
            ("Range", "bytes=30-40".into()),
            ("Request-Range", "bytes=30-40".into()),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.starts_with("name,email,card") && !body.contains(CARD),
        "{body}"
    );
    let hit = up.hits().last().unwrap().clone();
    assert!(
        !hit.headers
            .iter()
            .any(|(k, _)| k == "range" || k == "if-range" || k == "request-range"),
        "{hit:?}"
    );
    // Where nothing is scanned it is, as any header.
    fetch(
        "/exports/open.csv".into(),
        vec![token.clone(), ("Range", "bytes=30-40".into())],
    )
    .await;
    assert!(up
        .hits()
        .last()
        .unwrap()
        .headers
        .iter()
        .any(|(k, _)| k == "range"));
    // A piece sent anyway cannot be scanned whole: withheld.
    for route in ["masked", "blocked"] {
        let (st, body) = fetch(format!("/{route}/open.csv?partial"), vec![token.clone()]).await;
        assert_eq!(st, 502, "{route}: {body}");
        assert!(body.contains("206"), "{body}");
    }

    // The decision on the response counts what its headers hold.
    let (st, body) = fetch("/checked/clean.csv?clean".into(), vec![token.clone()]).await;
    assert_eq!(st, 200, "nothing found: {body}");
    let (st, body) = fetch("/checked/clean.csv?clean&hdr".into(), vec![token.clone()]).await;
    assert_eq!(st, 202, "a card in a header: {body}");

    // The service hears who the end user is from the proxy alone.
    let (st, _) = fetch(
        "/exports/public.csv".into(),
        vec![token.clone(), ("Airlock-Principal", "admin".into())],
    )
    .await;
    assert_eq!(st, 200);
    let hits = up.hits().len();
    let (st, _) = fetch(
        "/exports/public.csv".into(),
        vec![token.clone(), ("Airlock_Principal", "admin".into())],
    )
    .await;
    assert_eq!(st, 400, "read as Airlock-Principal by CGI-style servers");
    assert_eq!(up.hits().len(), hits);
    let said: Vec<String> = up
        .hits()
        .last()
        .unwrap()
        .headers
        .iter()
        .filter(|(k, _)| k == "airlock-principal")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(said, ["alice"]);

    // A key revoked while its request waits is not served.
    let mallory = s.key("mallory", "user");
    let before = up.hits().len();
    let url = format!("{p}/exports/customers.csv");
    let key = mallory.clone();
    let held = tokio::spawn(async move { get(&url, Some(&key), None).await });
    let id = loop {
        let (_, l) = s.get(&bob, "/v1/requests?status=pending").await;
        let mine = l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["principal"] == "mallory");
        if let Some(r) = mine {
            break r["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.revoke_key(&mallory);
    let (st, _) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200);
    let (st, _, body) = held.await.unwrap();
    assert_eq!(
        (st, code(&body).as_str()),
        (401, "unauthenticated"),
        "{body}"
    );
    assert_eq!(up.hits().len(), before, "never forwarded");
}

/// A response policy that asks for approval: the approver's request
/// carries the finding counts and a preview of the first lines of the
/// masked body (opt-in: `response_preview_lines`); the client gets 202
/// naming it in `Airlock-Response-Request`. The approval is bound to that
/// response (its SHA-256 and counts): the same request sent again with
/// that header once approved gets it through, once; the next time asks
/// anew.
async fn response_approval_shows_a_masked_preview(db: Db) {
    let (s, up, p) = with_proxy_extra(&db, 1, "response_preview_lines = 5").await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/checked/reviewed.csv");
    let (st, h, body) = get(&url, Some(&alice), None).await;
    assert_eq!(st, 202, "{body}");
    assert!(!body.contains(EMAIL) && !body.contains(CARD), "{body}");
    let id = h["airlock-response-request"].to_str().unwrap().to_owned();
    assert!(h.contains_key("retry-after"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["request"]["id"].as_str(), v["withheld"].as_str()),
        (Some(id.as_str()), Some("response")),
        "{body}"
    );
    assert!(v["request"]["grant"].is_null());
    assert_eq!(first_pending(&s, &bob).await, id);
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["action"], "download.response", "{r}");
    assert!(r["context"]["dlp"].is_object(), "{r}");
    assert_eq!(r["params"]["dlp"], r["context"]["dlp"], "{r}");
    assert_eq!(r["params"]["body_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(r["context"]["preview"][0], "name,email,card", "{r}");
    assert!(r["context"]["preview"][1]
        .as_str()
        .unwrap()
        .starts_with("ann,"));

    let (st, _) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200);
    let again = |resume: Option<String>| {
        let (url, alice) = (url.clone(), alice.clone());
        async move {
            let mut req = reqwest::Client::new()
                .get(&url)
                .header("Airlock-Token", &alice);
            if let Some(id) = resume {
                req = req.header("Airlock-Response-Request", id);
            }
            let res = req.send().await.unwrap();
            let st = res.status().as_u16();
            let h = res.headers().clone();
            (st, h, res.text().await.unwrap())
        }
    };
    let (st, _, body) = again(Some(id.clone())).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(EMAIL), "report mode leaves the body as it is");
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "completed", "{r}");
    // Spent: naming it again is refused; without it, held anew.
    let (st, _, body) = again(Some(id.clone())).await;
    assert_eq!((st, code(&body).as_str()), (403, "grant_spent"), "{body}");
    let (st, h, _) = again(None).await;
    assert_eq!(st, 202);
    assert_ne!(h["airlock-response-request"].to_str().unwrap(), id);
    assert_eq!(up.hits().len(), 4);
}

/// A response held for approval and approved while held leaves, its grant
/// consumed and completed.
async fn response_approved_while_held_leaves(db: Db) {
    let (s2, up2, p2) = with_proxy(&db, 30).await;
    let (alice2, bob2) = (s2.key("alice", "user"), s2.key("bob", "user"));
    let url2 = format!("{p2}/checked/reviewed.csv");
    let held = tokio::spawn(async move { get(&url2, Some(&alice2), None).await });
    let id2 = first_pending(&s2, &bob2).await;
    s2.review(&bob2, &id2, "approve").await;
    let (st, _, body) = held.await.unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.starts_with("name,email,card"));
    assert_eq!(up2.hits().len(), 1);
    let (_, r) = s2.get(&bob2, &format!("/v1/requests/{id2}")).await;
    assert_eq!(r["status"], "completed", "{r}");
}

/// One user flooding the proxy is held to `checks_per_second_per_user`
/// (429 `rate_limited`, never forwarded); another user behind the same
/// proxy is not slowed by it.
async fn one_user_cannot_crowd_out_the_others(db: Db) {
    let (s, up, p) = with_proxy_extra(&db, 1, "checks_per_second_per_user = 2").await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let url = format!("{p}/exports/public.csv");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (st, _, body) = get(&url, Some(&alice), None).await;
        if st == 429 {
            assert_eq!(code(&body), "rate_limited", "{body}");
        }
        statuses.push(st);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(passed >= 2, "{statuses:?}");
    assert_eq!(up.hits().len(), passed);
    let (st, _, body) = get(&url, Some(&bob), None).await;
    assert_eq!(st, 200, "{body}");
}

/// Slow clients: a request header that never ends gets the connection
/// closed, a body that stops arriving gets 408, each after
/// `client_timeout_seconds`; neither reaches the upstream.
async fn slow_clients_time_out(db: Db) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (s, up, p) = with_proxy_extra(&db, 1, "client_timeout_seconds = 1").await;
    let alice = s.key("alice", "user");
    let addr = p.trim_start_matches("http://").to_owned();

    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /exports/public.csv HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a half-sent header kept the connection open");

    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /upload/a HTTP/1.1\r\nHost: x\r\nAirlock-Token: {alice}\r\nContent-Length: 100\r\n\r\nabc"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(up.hits().is_empty());
}

on_both_stores!(
    one_user_cannot_crowd_out_the_others,
    slow_clients_time_out,
    response_approval_shows_a_masked_preview,
    response_approved_while_held_leaves,
    principal_header_names_the_user,
    response_action_decides_on_the_response,
    allow_deny_no_route_no_identity,
    held_then_approved_is_forwarded_once,
    changed_request_is_action_mismatch,
    request_bodies_held_at_once_are_capped,
    approval_within_the_hold_forwards_the_held_request,
    client_gone_while_held_cancels_nothing,
    standalone_proxy_against_a_running_server,
    gzip_response_is_decoded_and_resized,
    large_bodies_stream_through_mask_and_are_withheld_by_block,
);

/// What an ordinary user key tries first at the door: a name spelt with
/// `%XX` that needs no encoding, to slip past a policy on the plain one or
/// miss its route, a `;` path parameter a servlet upstream would drop, a
/// `:` in a capture to pick the resource type, a method override, a second
/// Airlock-Token; and bodies whose label
/// says little: `application/octet-stream` is scanned like text, a UTF-16
/// body is withheld under mask (DLP cannot read it) and passes under
/// report.
#[tokio::test]
async fn door_tricks_are_refused_and_unlabelled_bodies_scanned() {
    let (s, up, p) = with_proxy(&Db::Sqlite, 1).await;
    let alice = s.key("alice", "user");
    for url in [
        "/exports/secre%74.csv",
        "/exports/%73ecret.csv",
        "/exports/public.csv;x",
        "/exp%6Frts/public.csv",
    ] {
        let (st, _, body) = get(&format!("{p}{url}"), Some(&alice), None).await;
        assert_eq!(
            (st, code(&body).as_str()),
            (400, "bad_request"),
            "{url}: {body}"
        );
    }
    // A `:` in the name stays in the id: the type is the route's.
    let (st, _, body) = get(&format!("{p}/exports/:File:public.csv"), Some(&alice), None).await;
    assert_eq!((st, code(&body).as_str()), (403, "forbidden"), "{body}");
    let (st, _, body) = get(
        &format!("{p}/exports/public.csv?_method=DELETE"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((st, code(&body).as_str()), (400, "bad_request"), "{body}");
    let res = reqwest::Client::new()
        .post(format!("{p}/upload/doc"))
        .header("Airlock-Token", &alice)
        .header("X-HTTP-Method-Override", "DELETE")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = reqwest::Client::new()
        .get(format!("{p}/exports/public.csv"))
        .header("Airlock-Token", &alice)
        .header("Airlock-Token", "another")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(up.hits().is_empty(), "{:?}", up.hits());

    let (st, _, body) = get(&format!("{p}/masked/public.csv?octet"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains(CARD) && !body.contains(EMAIL), "{body}");
    let (st, _, body) = get(&format!("{p}/masked/public.csv?utf16"), Some(&alice), None).await;
    assert_eq!(
        (st, code(&body).as_str()),
        (502, "upstream_unavailable"),
        "{body}"
    );
    let (st, _, body) = get(
        &format!("{p}/reported/public.csv?utf16"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // What report lets through unread is on record as such: a declared
    // charset, and a byte-order mark found as the body streamed.
    let (st, _, _) = get(&format!("{p}/reported/public.csv?bom"), Some(&alice), None).await;
    assert_eq!(st, 200);
    let admin = s.key("admin", "admin");
    // The masked `?octet` answer above, the declared UTF-16 mask withheld,
    // and these two.
    let found = s.audit_of(&admin, "dlp_findings", 4).await;
    let unscanned = found
        .iter()
        .filter(|r| r["details"]["disposition"] == "unscanned")
        .count();
    assert_eq!(unscanned, 2, "{found:?}");
    // And what mask withheld unread (the declared UTF-16 above) is on
    // record as withheld, nothing found.
    assert!(
        found
            .iter()
            .any(|r| r["details"]["disposition"] == "withheld"
                && r["details"]["counts"] == serde_json::json!({})),
        "{found:?}"
    );
    // UTF-16 with no charset, labelled text/csv or octet-stream: withheld
    // whether the body is masked as it streams (found unreadable before
    // any of it left, so the head is a 502 too, not a 200 that breaks off)
    // or decided whole (block).
    for url in [
        "/masked/public.csv?bom",
        "/blocked/public.csv?wide",
        "/blocked/public.csv?wide&octet",
    ] {
        let res = reqwest::Client::new()
            .get(format!("{p}{url}"))
            .header("Airlock-Token", &alice)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = res.status().as_u16();
        let body = res.bytes().await.unwrap();
        let wide_card: Vec<u8> = CARD.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(
            !body.windows(wide_card.len()).any(|w| w == wide_card),
            "{url}: {status} let the card out"
        );
        assert_eq!(status, 502, "{url}");
        assert_eq!(
            code(&String::from_utf8_lossy(&body)),
            "upstream_unavailable",
            "{url}"
        );
    }
    // Each of the three is on record as withheld with nothing found, the
    // streamed one too (its record is written once its body has ended).
    let found = s.audit_of(&admin, "dlp_findings", 7).await;
    let withheld_unread = found
        .iter()
        .filter(|r| {
            r["details"]["disposition"] == "withheld"
                && r["details"]["counts"] == serde_json::json!({})
        })
        .count();
    assert_eq!(withheld_unread, 4, "{found:?}");
    // Held, approved, forwarded once, and withheld unread as it streamed:
    // the grant is completed as a failure that says so, not as delivered.
    let bob = s.key("bob", "user");
    let url = format!("{p}/masked/customers.csv?bom");
    let (st, h, body) = get(&url, Some(&alice), None).await;
    assert_eq!(st, 202, "{body}");
    let id = h["airlock-request"].to_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    let res = reqwest::Client::new()
        .get(&url)
        .header("Airlock-Token", &alice)
        .header("Airlock-Request", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 502);
    let read = res.text().await.unwrap();
    assert!(!read.contains(CARD), "it left: {read}");
    let completed = s.audit_of(&admin, "grant_completed", 1).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    let d = &completed[0]["details"];
    assert_eq!(d["detail"]["dlp_withheld"], true, "{d}");
    assert_eq!(d["outcome"], "failure", "{d}");

    // The method the service runs must be the one decided, however the
    // request spells another: lower case, `_method` in the query as PHP
    // decodes it, or in a form, a multipart form or a JSON body.
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"get").unwrap(),
            format!("{p}/exports/public.csv"),
        )
        .header("Airlock-Token", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // A type the client can ask for and DLP knows no name of is text.
    let (st, _, body) = get(&format!("{p}/masked/public.csv?yaml"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains(CARD) && !body.contains(EMAIL), "{body}");
    let res = reqwest::Client::new()
        .get(format!("{p}/exports/public.csv"))
        .header("Airlock-Token", &alice)
        .header("X-Original-URL", "/exports/secret.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    for q in [
        "%5Fmethod=DELETE",
        ".method=DELETE",
        "a=1&_METHOD=PUT",
        "_method%00=DELETE",
        "]_method=DELETE",
    ] {
        let (st, _, body) = get(&format!("{p}/exports/public.csv?{q}"), Some(&alice), None).await;
        assert_eq!((st, code(&body).as_str()), (400, "bad_request"), "{q}");
    }
    for (ct, body) in [
        ("application/x-www-form-urlencoded", "a=1&%5Fmethod=DELETE"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        ),
        ("application/json", r#"{"a": 1, "_\u006dethod": "DELETE"}"#),
        // As PHP reads them: a name cut at NUL, leading spaces dropped, a
        // type cut at a comma, the last of two names, single quotes.
        ("application/x-www-form-urlencoded", "_method%00x=DELETE"),
        ("application/x-www-form-urlencoded", "+_method=DELETE"),
        ("application/x-www-form-urlencoded,text/plain", "_method=DELETE"),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"a\"; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        ),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--b--\r\n",
        ),
    ] {
        assert_eq!(upload(&p, &alice, ct, body).await, 400, "{ct}");
    }
    // A CGI-style name for an override header, two Content-Types, and a
    // compressed form are read as the upstream would read them.
    let gz_form = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
        e.write_all(b"a=1&_method=DELETE").unwrap();
        e.finish().unwrap()
    };
    // Found by black-box passes: the raw bytes of a compressed body (PHP
    // and Rack read them as the form, whatever Content-Encoding says), a
    // second Content-Encoding line, and JSON in UTF-7.
    let raw_after = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
        e.write_all(b"note=hi").unwrap();
        let mut b = e.finish().unwrap();
        b.extend_from_slice(b"&_method=DELETE");
        b
    };
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
        e.write_all(b"{").unwrap();
        e.write_all(&vec![b' '; 17 << 20]).unwrap();
        e.write_all(b"}").unwrap();
        e.finish().unwrap()
    };
    let gz_json = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
        e.write_all(br#"{"_method":"DELETE"}"#).unwrap();
        e.finish().unwrap()
    };
    for req in [
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("X_HTTP_Method_Override", "DELETE")
            .body("x"),
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "text/plain")
            .header("content-type", "application/json")
            .body(r#"{"_method": "DELETE"}"#),
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-encoding", "gzip")
            .body(gz_form),
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-encoding", "deflate")
            .body(raw_after),
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "application/json")
            .header("content-encoding", "identity")
            .header("content-encoding", "gzip")
            .body(gz_json),
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "application/json; charset=utf-7")
            .body(r#"{"+AF8-method":"DELETE"}"#),
        // A bomb: 17 MiB once decoded, past what is screened (64 MiB of
        // it cost a gigabyte; found by a black-box pass).
        reqwest::Client::new()
            .post(format!("{p}/upload/doc"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bomb),
    ] {
        let res = req.header("Airlock-Token", &alice).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 400);
    }
    assert!(up.hits().iter().all(|h| !h.path.contains("upload")));
    // Ordinary bodies of each kind are not refused: they are held for
    // approval as the policy says.
    for (ct, body) in [
        ("application/json", r#"{"rows": 10, "method": "fast"}"#),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\nx\r\n--b--\r\n",
        ),
        ("application/x-www-form-urlencoded", "method=fast&rows=10"),
    ] {
        assert_eq!(upload(&p, &alice, ct, body).await, 202, "{ct}");
    }
}

/// The status of a POST to the upload route with this type and body.
async fn upload(p: &str, key: &str, content_type: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{p}/upload/doc"))
        .header("Airlock-Token", key)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Response DLP with the real detectors (`email`, `credit_card`): mask
/// replaces the planted values (the card keeps its last 4), block answers
/// 403 naming counts only, report passes the body, and no audit record
/// holds a raw value.
#[tokio::test]
async fn response_dlp_masks_blocks_and_reports_with_real_detectors() {
    let (s, up, p) = with_proxy(&Db::Sqlite, 1).await;
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let admin = s.key("admin", "admin");

    let (st, _, body) = get(&format!("{p}/masked/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains(EMAIL) && !body.contains(CARD), "{body}");
    assert!(body.contains("1111"), "{body}");
    let (st, _, body) = get(&format!("{p}/gz/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 200);
    assert!(!body.contains(EMAIL) && !body.contains(CARD), "{body}");

    let (st, _, body) = get(&format!("{p}/blocked/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("credit_card") && body.contains("email"),
        "{body}"
    );
    assert!(!body.contains(EMAIL) && !body.contains(CARD));

    let (st, _, body) = get(&format!("{p}/reported/public.csv"), Some(&alice), None).await;
    assert_eq!(st, 200);
    assert!(body.contains(EMAIL));

    // Each of those allowed answers is on record: who, through which
    // proxy, what, the decision that let it through, counts by type and
    // what became of it.
    let found = s.audit_of(&admin, "dlp_findings", 4).await;
    let mut fates: Vec<&str> = found
        .iter()
        .map(|r| r["details"]["disposition"].as_str().unwrap())
        .collect();
    fates.sort();
    assert_eq!(
        fates,
        ["masked", "masked", "passed", "withheld"],
        "{found:?}"
    );
    for r in &found {
        let d = &r["details"];
        assert_eq!(r["actor"], "proxy.files", "{r}");
        assert_eq!(d["principal"], "alice", "{r}");
        assert_eq!(d["proxy"], "files", "{r}");
        assert_eq!(d["counts"]["credit_card"], 1, "{r}");
        assert_eq!(d["counts"]["email"], 1, "{r}");
        assert_eq!(d["total"], 2, "{r}");
        assert_eq!(d["targets"][0]["action"], "download", "{r}");
        assert_eq!(d["targets"][0]["resource"]["id"], "public", "{r}");
        let seq = d["decisions"][0].as_i64().unwrap();
        let (_, a) = s
            .get(&admin, &format!("/v1/audit?after={}&limit=1", seq - 1))
            .await;
        assert_eq!(a["records"][0]["kind"], "decision", "{a}");
    }

    // Held, approved, forwarded: the completion carries the counts.
    let url = format!("{p}/reported/customers.csv");
    let (st, h, _) = get(&url, Some(&alice), None).await;
    assert_eq!(st, 202);
    let id = h["airlock-request"].to_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    let (st, _, _) = get(&url, Some(&alice), Some(&id)).await;
    assert_eq!(st, 200);
    assert_eq!(up.hits().len(), 5);
    // The streamed body's counts complete the grant once it has gone
    // through: allow that a moment.
    let completed = s.audit_of(&admin, "grant_completed", 1).await;
    assert_eq!(
        completed[0]["details"]["detail"]["dlp"]["credit_card"], 1,
        "no counts in the completion: {completed:?}"
    );
    assert_eq!(
        s.audit_of(&admin, "dlp_findings", 0).await.len(),
        4,
        "a granted answer's counts go with its completion, not a findings record"
    );
    let (_, a) = s.get(&admin, "/v1/audit?limit=100000").await;
    let text = a.to_string();
    assert!(
        !text.contains(EMAIL) && !text.contains(CARD),
        "a raw finding in the audit log"
    );

    // The headers leave with the body: masked in place, or the answer
    // withheld, and counted.
    let (st, h, _) = get(&format!("{p}/masked/public.csv?hdr"), Some(&alice), None).await;
    assert_eq!(st, 200);
    let card = h["x-card"].to_str().unwrap();
    assert!(!card.contains(CARD) && card.ends_with("1111"), "{card}");
    let location = h["location"].to_str().unwrap();
    assert!(!location.contains("hunter2pass"), "{location}");
    // Nor in a header's name, nor in the status line's reason phrase.
    let addr = p.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!(
        "GET /masked/public.csv?hdr HTTP/1.1\r\nHost: x\r\nAirlock-Token: {alice}\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, ask.as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut head)
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains(CARD), "{head}");
    let (st, _, body) = get(&format!("{p}/blocked/public.csv?hdr"), Some(&alice), None).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("headers"), "{body}");
    let found = s.audit_of(&admin, "dlp_findings", 7).await;
    assert_eq!(
        found[4]["details"]["counts"]["credit_card"], 3,
        "the body's card, the header's and the header name's: {found:?}"
    );
    assert_eq!(found[4]["details"]["counts"]["url_password"], 1);
}
