//! Notifications: webhooks through the durable outbox, and email through
//! a real SMTP server.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

on_both_stores!(webhooks_are_signed_and_follow_the_loop);

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver that verifies Standard Webhooks signatures with the
/// reference library, records every delivery (duplicates too), and can
/// stall its first answer.
struct Receiver {
    url: String,
    deliveries: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    bad: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    fn start(stall_first: Duration) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let deliveries: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
        let bad: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (d, b) = (deliveries.clone(), bad.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/hooks",
                    axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                        let (d, b, first) = (d.clone(), b.clone(), first.clone());
                        async move {
                            let hook = standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap();
                            if hook.verify(&body, &headers).is_err() {
                                b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return StatusCode::UNAUTHORIZED;
                            }
                            let id = headers["webhook-id"].to_str().unwrap().to_owned();
                            d.lock()
                                .unwrap()
                                .push((id, serde_json::from_slice(&body).unwrap()));
                            if first.swap(false, std::sync::atomic::Ordering::SeqCst)
                                && !stall_first.is_zero()
                            {
                                tokio::time::sleep(stall_first).await;
                            }
                            StatusCode::NO_CONTENT
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver {
            url,
            deliveries,
            bad,
        }
    }

    /// Waits until `n` distinct messages arrived; returns them by type.
    async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        for _ in 0..600 {
            let unique = self.unique();
            if unique.len() >= n {
                return unique;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "only {} of {n} webhooks arrived: {:?}",
            self.unique().len(),
            self.unique()
        );
    }

    /// Deliveries with duplicates (same `webhook-id`) dropped, as the spec
    /// tells receivers to.
    fn unique(&self) -> Vec<(String, Value)> {
        let mut seen = std::collections::HashSet::new();
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .cloned()
            .collect()
    }
}

fn webhook_config(url: &str, extra: &str) -> String {
    format!(
        "[notify]\n{extra}\n[[notify.webhooks]]\nurl = \"{url}\"\nsecret = \"{WEBHOOK_SECRET}\"\n"
    )
}

async fn webhooks_are_signed_and_follow_the_loop(db: Db) {
    let receiver = Receiver::start(Duration::ZERO);
    let s = Server::start_extra(&db, POLICIES, &webhook_config(&receiver.url, ""));
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (id, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let gid = r["grant_id"].as_str().unwrap().to_owned();
    let (st, r) = s
        .post(
            &alice,
            &format!("/v1/grants/{gid}/complete"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let got = receiver.wait_for(5).await;
    let types: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "request.created",
            "request.reviewed",
            "request.decided",
            "grant.consumed",
            "grant.completed"
        ]
    );
    for (_, v) in &got {
        assert_eq!(v["data"]["request"], id.as_str(), "{v}");
    }
    assert_eq!(got[2].1["data"]["status"], "approved");
    assert_eq!(got[2].1["data"]["by"], "carol");
    assert_eq!(got[4].1["data"]["outcome"], "success");
    assert_eq!(
        receiver.bad.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every signature verified"
    );
    // The outbox says so too.
    let admin = s.key("admin", "admin");
    let (_, out) = s.get(&admin, "/v1/outbox?status=delivered").await;
    assert_eq!(out["messages"].as_array().unwrap().len(), 5, "{out}");
}

#[tokio::test]
async fn webhooks_survive_a_restart_mid_delivery_once_per_message() {
    // The receiver takes 3 s over the first message; the node is killed
    // meanwhile, so that message's delivery never completes there.
    let receiver = Receiver::start(Duration::from_secs(3));
    let mut s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &webhook_config(&receiver.url, "delivery_timeout_seconds = 1"),
    );
    let alice = s.key("alice", "user");
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "a")).await;
    let first = r["request"]["id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        if !receiver.deliveries.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.restart(); // SIGKILL mid-delivery, then start again
                 // More happens after the restart.
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "b")).await;
    let second = r["request"]["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(2).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["data"]["request"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&second.as_str()),
        "{got:?}"
    );
    assert_eq!(got.len(), 2, "one message per event, whatever was re-sent");
    // The first message was re-sent after the restart with the same id, so
    // the receiver could drop the copy.
    for _ in 0..600 {
        if receiver.deliveries.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = receiver.deliveries.lock().unwrap().clone();
    let first_id = &all[0].0;
    assert!(
        all.iter().filter(|(id, _)| id == first_id).count() >= 2,
        "the interrupted delivery was retried: {all:?}"
    );
    let admin = s.key("admin", "admin");
    let (_, out) = s.get(&admin, "/v1/outbox?status=pending").await;
    assert!(out["messages"].as_array().unwrap().is_empty(), "{out}");
}

#[tokio::test]
async fn failed_webhooks_are_visible_and_can_be_retried() {
    // Nothing listens on this port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", l.local_addr().unwrap())
    };
    let extra = format!(
        "{}\n[web]\nauditor_groups = [\"security\"]\n",
        webhook_config(&dead, "max_attempts = 2")
    );
    let s = Server::start_extra(&Db::Sqlite, POLICIES, &extra);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    s.post(&alice, "/v1/check", export("alice", "a")).await;
    let wait_failed = || async {
        for _ in 0..100 {
            let (_, out) = s.get(&admin, "/v1/outbox?status=failed").await;
            if !out["messages"].as_array().unwrap().is_empty() {
                return out["messages"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no failed notification");
    };
    let failed = wait_failed().await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(failed["last_error"].is_string(), "{failed}");
    let id = failed["id"].as_str().unwrap().to_owned();
    let metrics = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("airlock_notification_attempts_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    // The CLI shows it.
    let out = Command::new(BIN)
        .args(["outbox", "list", "--url", &s.url, "--token", &admin])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&id) && text.contains("request.created"),
        "{text}"
    );
    // The console shows it to auditors, with a retry button (a signed-in POST).
    set_password(&s, "bob", "bob's long password");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let page = http
        .get(format!("{}/notifications", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&id) && page.contains("Retry"), "{page}");
    let r = http
        .post(format!("{}/notifications/{id}/retry", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    // It is tried again (and fails again), then the API retries it too.
    let again = wait_failed().await;
    assert_eq!(again["id"], id.as_str());
    let (st, r) = s
        .post(&admin, &format!("/v1/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("pending")), "{r}");
    let (st, _) = s
        .post(&alice, &format!("/v1/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!(st, 403, "admins only");
    // One rule for the API and the console: an auditor's own key may read
    // and retry too; and every retry, from either, is on record.
    let bob = s.key("bob", "user");
    let (st, _) = s.get(&bob, "/v1/outbox?status=failed").await;
    assert_eq!(st, 200);
    let (st, _) = s.get(&alice, "/v1/audit").await;
    assert_eq!(st, 403);
    let (st, a) = s.get(&bob, "/v1/audit?limit=100000").await;
    assert_eq!(st, 200);
    let retried: Vec<&Value> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "notification_retried" && r["subject"] == id.as_str())
        .collect();
    assert_eq!(
        retried.len(),
        2,
        "console and API retries recorded: {retried:?}"
    );
}

#[tokio::test]
async fn email_asks_approvers_with_a_link_and_tells_the_requester() {
    let smtp = Smtp::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!("[notify.email]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"Airlock <airlock@example.com>\"\n", smtp.port),
    );
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    // The eligible approvers with an address (bob, carol; admin has none).
    let asks = smtp
        .wait_for(2, |m| m.contains("Subject: Approval needed"))
        .await;
    let to: Vec<bool> = ["To: bob@example.com", "To: carol@example.com"]
        .iter()
        .map(|t| asks.iter().any(|m| m.contains(t)))
        .collect();
    assert_eq!(to, [true, true], "{asks:?}");
    assert!(
        !asks.iter().any(|m| m.contains("To: alice@example.com")),
        "not the requester"
    );
    let link = format!("{}/requests/{id}", s.url);
    let mail = &asks[0];
    assert!(mail.contains(&link), "{mail}");
    assert!(
        mail.contains("select * from orders"),
        "the exact action: {mail}"
    );
    assert!(mail.contains("Message-ID: <msg_"), "{mail}");
    // A mail scanner following the link changes nothing: it lands on the
    // sign-in page, and approving is a signed-in POST.
    let follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = follow.get(&link).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending");
    assert!(r["reviews"].as_array().unwrap().is_empty());
    // The requester hears the outcome.
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let told = smtp
        .wait_for(1, |m| m.contains("To: alice@example.com"))
        .await;
    assert!(told[0].contains("was approved by carol"), "{}", told[0]);
}

/// A break-glass use is mailed as one, as every other channel says it:
/// granted at once, to be reviewed after the fact (found by a black-box
/// pass: it read as an ordinary "Approval needed").
#[tokio::test]
async fn email_says_a_break_glass_use_is_one() {
    let smtp = Smtp::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!("[notify.email]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"Airlock <airlock@example.com>\"\n\n[breakglass]\ngroups = [\"engineering\"]\n", smtp.port),
    );
    let alice = s.key("alice", "user");
    let mut action = export("alice", "orders");
    action["reason"] = json!("incident 42");
    let (st, r) = s.post(&alice, "/v1/breakglass", action).await;
    assert_eq!(st, 200, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let alerts = smtp
        .wait_for(2, |m| m.contains("Subject: BREAK-GLASS"))
        .await;
    let mail = &alerts[0];
    assert!(
        mail.contains("granted at once") && mail.contains("after the fact"),
        "{mail}"
    );
    assert!(mail.contains("incident 42"), "{mail}");
    assert!(mail.contains(&format!("{}/requests/{id}", s.url)), "{mail}");
    assert!(!mail.contains("Approval needed"), "{mail}");
}

#[tokio::test]
async fn a_webhook_added_by_reload_delivers_without_a_restart() {
    let receiver = Receiver::start(Duration::ZERO);
    let s = Server::start(&Db::Sqlite);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    s.set_users(&format!("{USERS}\n{}", webhook_config(&receiver.url, "")));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].1["type"], "request.created");
    assert_eq!(got[0].1["data"]["request"], id.as_str());
}
