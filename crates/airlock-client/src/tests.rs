//! The enforcement side's own rules: what it may depend on, and the loop
//! over a gate that answers as the server would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use airlock_api::{
    CheckBody, CheckResponse, CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse,
    ErrorCode, RequestView,
};
use airlock_core::{GrantId, RequestId, RequestStatus};
use serde_json::{json, Value};

use crate::{ClientError, Enforcer, Entry, Gate};

/// Crates an enforcement point must never link: they hold, or reach, the
/// signing keys, the database credentials, the sessions or the secrets of
/// notification channels.
const FORBIDDEN: [&str; 7] = [
    "airlock-store",
    "airlock-server",
    "airlock-auth",
    "airlock-notify",
    "airlock-keys",
    "rusqlite",
    "postgres",
];

/// Whether a workspace crate runs at enforcement points.
fn enforcement_side(name: &str) -> bool {
    matches!(name, "airlock-api" | "airlock-client" | "airlock-dlp")
        || name.starts_with("airlock-proxy")
}

/// Every path from an enforcement-side workspace crate to a forbidden crate
/// over normal and build dependencies (dev-dependencies do not ship), as
/// `a -> b -> c`; and the enforcement-side crates found.
fn violations(metadata: &Value) -> (Vec<String>, Vec<String>) {
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(id) = node["id"].as_str() else {
            continue;
        };
        let shipped = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].as_str() != Some("dev"))
            })
            .filter_map(|d| d["pkg"].as_str());
        deps.entry(id).or_default().extend(shipped);
    }
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for root in metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(root) = root.as_str() else { continue };
        let root_name = name_of.get(root).copied().unwrap_or(root);
        if !enforcement_side(root_name) {
            continue;
        }
        found.push(root_name.to_owned());
        // Breadth first, remembering how each crate was reached.
        let mut via: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([root]);
        while let Some(id) = queue.pop_front() {
            let name = name_of.get(id).copied().unwrap_or(id);
            if FORBIDDEN.contains(&name) {
                let mut path = vec![name];
                let mut at = id;
                while let Some(prev) = via.get(at) {
                    path.push(name_of.get(prev).copied().unwrap_or(prev));
                    at = prev;
                }
                path.reverse();
                bad.push(path.join(" -> "));
                continue;
            }
            for next in deps.get(id).into_iter().flatten() {
                if *next != root && !via.contains_key(next) {
                    via.insert(next, id);
                    queue.push_back(next);
                }
            }
        }
    }
    found.sort();
    (bad, found)
}

/// The rule of THREATS.md, checked on the real dependency graph: no
/// enforcement-side crate reaches the store, the server, the keys, auth or
/// notification code, or a database driver.
#[test]
fn enforcement_side_depends_on_no_store_server_or_keys() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (bad, found) = violations(&metadata);
    assert!(
        found.contains(&"airlock-api".to_owned())
            && found.contains(&"airlock-client".to_owned())
            && found.contains(&"airlock-proxy-http".to_owned())
            && found.contains(&"airlock-proxy-pg".to_owned()),
        "the rule checked nothing: enforcement-side crates found: {found:?}"
    );
    assert!(
        bad.is_empty(),
        "enforcement-side crates must hold no signing key and no database credentials, \
         but these dependency paths reach forbidden crates:\n  {}",
        bad.join("\n  ")
    );
}

/// The rule's own check finds a forbidden crate however deep, names the
/// path, and ignores dev-dependencies.
#[test]
fn the_rule_names_the_path() {
    let node = |id: &str, deps: &[(&str, &str)]| {
        json!({"id": id, "deps": deps.iter().map(|(p, k)| json!({
            "pkg": p,
            "dep_kinds": [{"kind": if k.is_empty() { Value::Null } else { json!(k) }}],
        })).collect::<Vec<_>>()})
    };
    let metadata = json!({
        "packages": [
            {"id": "p", "name": "airlock-proxy-http"}, {"id": "c", "name": "airlock-client"},
            {"id": "m", "name": "middle"}, {"id": "s", "name": "airlock-store"},
            {"id": "k", "name": "airlock-keys"},
        ],
        "workspace_members": ["p", "c", "s"],
        "resolve": {"nodes": [
            node("p", &[("c", ""), ("m", "")]),
            node("c", &[("k", "dev")]),
            node("m", &[("s", "build")]),
            node("s", &[]),
            node("k", &[]),
        ]},
    });
    let (bad, found) = violations(&metadata);
    assert_eq!(found, ["airlock-client", "airlock-proxy-http"]);
    assert_eq!(bad, ["airlock-proxy-http -> middle -> airlock-store"]);
}

/// A gate that answers from a script, recording what it was asked.
#[derive(Default)]
struct Scripted {
    check: Mutex<Option<CheckResponse>>,
    polls: Mutex<VecDeque<Result<RequestView, ClientError>>>,
    consumed: Mutex<Vec<ConsumeBody>>,
    waits: Mutex<Vec<Option<Duration>>>,
}

#[async_trait::async_trait]
impl Gate for Scripted {
    async fn check(&self, _body: &CheckBody) -> Result<CheckResponse, ClientError> {
        self.check
            .lock()
            .unwrap()
            .take()
            .ok_or(ClientError::Config("checked twice".into()))
    }
    async fn request(
        &self,
        _id: RequestId,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError> {
        self.waits.lock().unwrap().push(wait);
        self.polls
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(ClientError::Config("polled too often".into())))
    }
    async fn cancel(&self, _id: RequestId) -> Result<RequestView, ClientError> {
        Err(ClientError::Config("not scripted".into()))
    }
    async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
        self.consumed.lock().unwrap().push(body.clone());
        Ok(ConsumeResponse {
            grant_id: GrantId::new(),
            uses_left: 0,
        })
    }
    async fn complete(
        &self,
        grant: GrantId,
        _body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError> {
        Ok(CompleteResponse {
            grant_id: grant,
            completed: true,
        })
    }
}

fn body() -> CheckBody {
    serde_json::from_value(json!({
        "principal": "bob", "action": "export",
        "resource": {"type": "Table", "id": "t"}, "params": {"n": 1},
    }))
    .unwrap()
}

fn view(status: RequestStatus, token: Option<&str>) -> RequestView {
    let mut v = json!({
        "id": "req_0190a3c4-0000-7000-8000-000000000001", "status": status, "principal": "alice",
        "action": "export", "resource": {"type": "Table", "id": "t"}, "params": {"n": 1},
        "context": {}, "reason": null, "fingerprint": "00".repeat(32), "policies": [],
        "thresholds": [], "reviews": [], "created_at": "2025-01-01T00:00:00.000Z",
        "expires_at": "2025-01-01T01:00:00.000Z", "url": "http://x/requests/req_1",
    });
    if let Some(t) = token {
        v["grant"] = json!({
            "grant_id": "grt_0190a3c4-0000-7000-8000-000000000002",
            "expires_at": "2025-01-01T00:10:00.000Z", "max_uses": 1, "uses": 0,
            "revoked": false, "outcome": null, "token": t,
        });
    }
    serde_json::from_value(v).unwrap()
}

/// Pending, then approved: the enforcer waits (as long as the server
/// will hold a call), then consumes the grant for the checked action as
/// the request's principal.
#[tokio::test]
async fn enter_waits_then_consumes_for_exactly_the_checked_action() {
    let gate = Scripted::default();
    *gate.check.lock().unwrap() = Some(CheckResponse::ApprovalRequired {
        policies: vec![],
        request: Box::new(view(RequestStatus::Pending, None)),
    });
    gate.polls.lock().unwrap().extend([
        Ok(view(RequestStatus::Pending, None)),
        Ok(view(RequestStatus::Approved, Some("tok"))),
    ]);
    let enforcer = Enforcer::new(gate);
    let entry = enforcer
        .enter(&body(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(entry, Entry::Granted { .. }), "{entry:?}");
    let gate = enforcer.gate();
    assert_eq!(
        *gate.waits.lock().unwrap(),
        [Some(Duration::from_secs(25)); 2]
    );
    let consumed = gate.consumed.lock().unwrap();
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].token, "tok");
    assert_eq!(consumed[0].action.principal.as_str(), "alice");
    assert_eq!(
        consumed[0].action.params,
        BTreeMap::from([("n".to_owned(), json!(1))])
    );
}

/// Fail closed: denied by a reviewer, no token shown, or an error while
/// waiting never ends in a consumed grant.
#[tokio::test]
async fn enter_fails_closed() {
    let denied = Scripted::default();
    *denied.check.lock().unwrap() = Some(CheckResponse::ApprovalRequired {
        policies: vec![],
        request: Box::new(view(RequestStatus::Denied, None)),
    });
    let e = Enforcer::new(denied);
    let entry = e.enter(&body(), Duration::from_secs(1)).await.unwrap();
    assert!(matches!(entry, Entry::NotApproved { .. }), "{entry:?}");
    assert!(e.gate().consumed.lock().unwrap().is_empty());

    let tokenless = Scripted::default();
    *tokenless.check.lock().unwrap() = Some(CheckResponse::ApprovalRequired {
        policies: vec![],
        request: Box::new(view(RequestStatus::Approved, None)),
    });
    let e = Enforcer::new(tokenless);
    let err = e.enter(&body(), Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::NoToken), "{err:?}");

    let failing = Scripted::default();
    *failing.check.lock().unwrap() = Some(CheckResponse::ApprovalRequired {
        policies: vec![],
        request: Box::new(view(RequestStatus::Pending, None)),
    });
    failing
        .polls
        .lock()
        .unwrap()
        .push_back(Err(ClientError::Api {
            status: 503,
            code: ErrorCode::StorageUnavailable,
            message: "down".into(),
        }));
    let e = Enforcer::new(failing);
    let err = e.enter(&body(), Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StorageUnavailable));
    assert!(e.gate().consumed.lock().unwrap().is_empty());
}

/// Error answers become typed refusals; one that is not API v1 (a front
/// proxy's page) is still a refusal, never a success.
#[tokio::test]
async fn http_errors_are_typed_refusals() {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/v1/grants/consume",
            axum::routing::post(|| async {
                (
                    StatusCode::FORBIDDEN,
                    axum::Json(
                        json!({"error": {"code": "grant_spent", "message": "spent\u{1b}[2J"}}),
                    ),
                )
            }),
        )
        .route(
            "/v1/check",
            axum::routing::post(|| async { (StatusCode::BAD_GATEWAY, "<html>oops</html>") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = crate::Client::new(&format!("http://{addr}/"), "k").unwrap();
    let consume = ConsumeBody {
        token: "t".into(),
        action: serde_json::from_value(json!({
            "principal": "a", "action": "x", "resource": {"type": "T", "id": "i"},
        }))
        .unwrap(),
    };
    let err = client.consume(&consume).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GrantSpent));
    // Shown inert: the escape cannot clear the terminal.
    assert_eq!(err.to_string(), "spent\\u{1b}[2J (grant_spent, HTTP 403)");
    let err = client.check(&body()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unknown));
    assert_eq!(err.to_string(), "request failed (unknown, HTTP 502)");
}
