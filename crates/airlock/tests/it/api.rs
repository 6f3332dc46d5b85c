//! The HTTP API's contract: authentication, error codes, size limits,
//! health and metrics.

use serde_json::{json, Value};

use crate::support::*;

on_both_stores!(http_errors_follow_the_contract);

async fn http_errors_follow_the_contract(db: Db) {
    let s = Server::start(&db);
    let (alice, enforcer) = (s.key("alice", "user"), s.key("proxy", "enforcer"));
    let read = json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    let (st, r) = s.post("", "/v1/check", read.clone()).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (st, _) = s.post("alk_nope", "/v1/check", read.clone()).await;
    assert_eq!(st, 401);
    let res = s
        .http
        .post(format!("{}/v1/check", s.url))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (st, _) = s.post(&alice, "/v1/check", read.clone()).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "typo": 1}),
        )
        .await;
    assert_eq!(st, 400);
    // A body that does not read says where, however it is read.
    let (st, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": 7}}),
        )
        .await;
    assert_eq!(st, 400);
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("resource.id"), "{r}");
    for (content_type, status) in [
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/problem+json", 200),
        // Loose labels (curl -d's default) are read as the JSON they hold.
        ("text/plain", 200),
        ("application/x-www-form-urlencoded", 200),
        ("multipart/form-data; boundary=x", 400),
    ] {
        let res = s
            .http
            .post(format!("{}/v1/check", s.url))
            .bearer_auth(&alice)
            .header("content-type", content_type)
            .body(read.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{content_type}");
    }
    let res = s
        .http
        .post(format!("{}/v1/check", s.url))
        .bearer_auth(&alice)
        .body(read.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "no Content-Type");
    // A method the endpoint does not take: 405, in the error shape (asked
    // before the 413 below, after which the server closes that connection).
    let (st, r) = s.get(&alice, "/v1/check").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{r}"
    );
    let big = json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "params": {"x": "a".repeat(70_000)}});
    // The server answers 413 and closes while the body may still be on its
    // way: on a loaded machine the client can see the reset first, so a
    // send that fails is sent again.
    let (st, r) = {
        let mut tries = 0;
        loop {
            let sent = reqwest::Client::new()
                .post(format!("{}/v1/check", s.url))
                .bearer_auth(&alice)
                .json(&big)
                .send()
                .await;
            match sent {
                Ok(res) => {
                    let st = res.status().as_u16();
                    break (st, res.json::<Value>().await.unwrap_or(Value::Null));
                }
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("sent again after {e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Declared larger than the limit and never sent: refused at once, not
    // held until the read times out (a hang fails the test).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = s.url.trim_start_matches("http://").to_owned();
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(
            format!(
                "POST /v1/check HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice}\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), c.read(&mut head))
            .await
            .expect("an answer, not a hang")
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    }
    let (st, _) = s
        .get(
            &alice,
            "/v1/requests/req_01a20e92-9a95-724f-af8f-8526172314ed",
        )
        .await;
    assert_eq!(st, 404);
    // Only enforcers speak for others.
    let (st, _) = s.post(&alice, "/v1/check", export("bob", "orders")).await;
    assert_eq!(st, 403);
    let (st, r) = s
        .post(&enforcer, "/v1/check", export("bob", "orders"))
        .await;
    assert_eq!((st, r["request"]["principal"].as_str()), (200, Some("bob")));
    let (st, _) = s.get(&alice, "/v1/audit").await;
    assert_eq!(st, 403);
    let (st, k) = s.get(&alice, "/v1/keys").await;
    assert_eq!(st, 200);
    assert!(k["keys"][0]["paserk"]
        .as_str()
        .unwrap()
        .starts_with("k4.public."));
    let h: Value = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let m = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("airlock_decisions_total{outcome=\"allow\"}"),
        "{m}"
    );
    assert!(m.contains("airlock_pending_requests 1"), "{m}");
    assert!(
        m.contains("airlock_decision_duration_seconds_bucket"),
        "{m}"
    );
}

/// A query value that does not parse is bad input like any other: the
/// contract's JSON error body, never axum's plain text.
#[tokio::test]
async fn a_query_value_that_does_not_parse_gets_the_error_body() {
    let s = Server::start(&Db::Sqlite);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    let export = json!({"action": "export", "resource": {"type": "Table", "id": "t"}});
    let (_, r) = s.post(&alice, "/v1/check", export).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    for (key, path) in [
        (&alice, format!("/v1/requests/{id}?wait=abc")),
        (&alice, "/v1/requests?limit=abc".to_owned()),
        (&admin, "/v1/audit?after=abc".to_owned()),
        (&admin, "/v1/audit?limit=-1".to_owned()),
        // Out of range, not just unparsable: nothing is read as 1 or 0.
        (&admin, "/v1/audit?limit=0".to_owned()),
        (&admin, "/v1/audit?after=-1".to_owned()),
        (&alice, "/v1/requests?status=all&limit=0".to_owned()),
        (&admin, "/v1/audit/proof/inclusion?seq=abc".to_owned()),
    ] {
        let res = s
            .http
            .get(format!("{}{path}", s.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{path}");
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
}

/// A key given twice in one object of params, context or resource
/// attributes is bad input: which of the two counts depends on who parses
/// the bytes, and the grant binds one of them.
#[tokio::test]
async fn a_key_given_twice_is_refused() {
    let s = Server::start(&Db::Sqlite);
    let alice = s.key("alice", "user");
    for body in [
        r#"{"action":"read","resource":{"type":"Table","id":"t"},"params":{"n":1,"n":2}}"#,
        r#"{"action":"read","resource":{"type":"Table","id":"t"},"context":{"x":{"a":1,"a":2}}}"#,
        r#"{"action":"read","resource":{"type":"Table","id":"t","attrs":{"o":[{"k":1,"k":1}]}}}"#,
    ] {
        let res = s
            .http
            .post(format!("{}/v1/check", s.url))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let r: Value = res.json().await.unwrap();
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("given twice"),
            "{r}"
        );
    }
}

/// Cancel refuses a body that says something, as every other endpoint
/// refuses unknown fields; cancel and revoke answer 404, as a read does,
/// to someone who may not see the request, so ids cannot be probed.
#[tokio::test]
async fn cancel_and_revoke_refuse_as_reads_do() {
    let s = Server::start(&Db::Sqlite);
    let (alice, mallory) = (s.key("alice", "user"), s.key("mallory", "user"));
    let bob = s.key("bob", "user");
    let export = json!({"action": "export", "resource": {"type": "Table", "id": "t"}});
    let (_, r) = s.post(&alice, "/v1/check", export).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let cancel = format!("/v1/requests/{id}/cancel");
    let (st, r) = s.post(&alice, &cancel, json!({"bogus": 1})).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{r}"
    );
    let (st, _) = s.get(&mallory, &format!("/v1/requests/{id}")).await;
    assert_eq!(st, 404);
    let (st, r) = s.post(&mallory, &cancel, json!({})).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{r}"
    );
    let revoke = format!("/v1/requests/{id}/revoke");
    let (st, r) = s.post(&mallory, &revoke, json!({})).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{r}"
    );
    // Bob may see it (he may review it), so his cancel is refused as his.
    let (st, r) = s.post(&bob, &cancel, json!({})).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{r}"
    );
    let (st, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("pending")));
    // JSON `null` is no body, as the API document's optional body allows.
    let (st, r) = s.post(&alice, &cancel, json!(null)).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("cancelled")), "{r}");
}

/// REQUEST shows a resource's attributes as the decision saw them: those
/// in `entities.json` for a resource listed there, not a caller's claim
/// that policy ignored (what an approver reading the API or CLI decides
/// on).
#[tokio::test]
async fn a_request_shows_the_attributes_the_decision_used() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/main.cedar"),
        r#"
@id("prod-config")
@approvers("security")
permit(principal, action == Action::"override", resource)
when { resource has env && resource.env == "production" };

@id("other-config")
permit(principal, action == Action::"override", resource)
unless { resource has env && resource.env == "production" };
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/entities.json"),
        r#"[{"uid": {"type": "Config", "id": "payments.yaml"}, "attrs": {"env": "production"}, "parents": []}]"#,
    )
    .unwrap();
    write_config(dir.path(), &Db::Sqlite, USERS, 1, &data);
    let s = Server::serve(dir, &Db::Sqlite, 1, &data);
    let alice = s.key("alice", "user");
    let claim = json!({"action": "override",
        "resource": {"type": "Config", "id": "payments.yaml", "attrs": {"env": "staging", "extra": 1}}});
    let (st, r) = s.post(&alice, "/v1/check", claim).await;
    assert_eq!(
        (st, r["decision"].as_str()),
        (200, Some("approval_required")),
        "{r}"
    );
    assert_eq!(
        r["request"]["resource"]["attrs"],
        json!({"env": "production"}),
        "{r}"
    );
    let id = r["request"]["id"].as_str().unwrap();
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["resource"]["attrs"], json!({"env": "production"}), "{r}");
    // A resource not listed there is decided on the caller's attributes.
    let other = json!({"action": "override",
        "resource": {"type": "Config", "id": "other.yaml", "attrs": {"env": "production"}}});
    let (_, r) = s.post(&alice, "/v1/check", other).await;
    assert_eq!(
        r["request"]["resource"]["attrs"],
        json!({"env": "production"}),
        "{r}"
    );
}

/// `/metrics` is Prometheus text (the contract) unless the scraper asks
/// for OpenMetrics, as Prometheus does.
#[tokio::test]
async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
    let s = Server::start(&Db::Sqlite);
    for (accept, want) in [
        (None, "text/plain; version=0.0.4"),
        (Some("*/*"), "text/plain; version=0.0.4"),
        (
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            "application/openmetrics-text",
        ),
    ] {
        let mut req = s.http.get(format!("{}/metrics", s.url));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let res = req.send().await.unwrap();
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(want), "{accept:?}: {ct}");
        let text = res.text().await.unwrap();
        assert!(text.contains("airlock_pending_requests 0"), "{text}");
        assert_eq!(
            text.contains("# EOF"),
            want.starts_with("application/"),
            "{text}"
        );
    }
}
