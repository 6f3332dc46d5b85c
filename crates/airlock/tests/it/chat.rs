//! Chat: Slack (a local server speaking the Web API, and signed
//! interactions) and Discord (a local REST stand-in, and interactions
//! signed with a real Ed25519 key pair).

use serde_json::{json, Value};

use crate::support::*;

/// Sends an interaction as Slack does: form-encoded `payload`, signed.
async fn slack_interaction(url: &str, payload: Value, skew: i64, secret: &str) -> u16 {
    use hmac::Mac;
    let body = format!("payload={}", url_encode(&payload.to_string()));
    let ts = (chrono_now() + skew).to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    reqwest::Client::new()
        .post(format!("{url}/integrations/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn button(user: &str, action: &str, id: &str, respond: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "trigger.1",
        "response_url": respond,
        "actions": [{"action_id": action, "value": id, "block_id": "review"}],
    })
}

#[tokio::test]
async fn slack_asks_in_the_routed_channel_and_takes_decisions_by_the_same_rules() {
    let slack = FakeSlack::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!(
            "[notify.slack]\napi_url = \"{}/api\"\nbot_token = \"xoxb-test\"\nsigning_secret = \"{SLACK_SECRET}\"\nchannel = \"C0APPROVALS\"\nroutes = {{ security = \"C0SEC\" }}\n",
            slack.base
        ),
    );
    let alice = s.key("alice", "user");
    let respond = format!("{}/respond", slack.base);
    let (_, r) = s.post(&alice, "/v1/check", json!({"action": "export", "resource": {"type": "Table", "id": "orders"}, "params": {"sql": "select 1"}, "reason": "report"})).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    // The message, in the channel routed for security, with the details.
    let posted = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "C0SEC")
        .await;
    let blocks = posted["blocks"].to_string();
    for shown in [
        "<@U0ALICE>",
        "export",
        "Table:orders",
        "report",
        "select 1",
        "security 0/2",
        "<@U0BOB>",
        "Approve",
        "Deny",
    ] {
        assert!(
            blocks.contains(shown),
            "the message shows {shown}: {blocks}"
        );
    }
    assert!(blocks.contains(&format!("\"value\":\"{id}\"")));

    // Bad and stale signatures are refused before anything is read.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            0,
            "wrong-secret"
        )
        .await,
        401
    );
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            -600,
            SLACK_SECRET
        )
        .await,
        401
    );
    // Unsigned: refused in the API's error shape, as every endpoint's.
    let r = reqwest::Client::new()
        .post(format!("{}/integrations/slack/interactions", s.url))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    // A click on the console link of a step-up request (Slack reports it,
    // with no value) is acknowledged, not refused.
    let link = json!({"type": "block_actions", "user": {"id": "U0BOB"},
        "actions": [{"action_id": "open_console", "block_id": "review"}]});
    assert_eq!(slack_interaction(&s.url, link, 0, SLACK_SECRET).await, 200);
    // The requester and a non-approver are refused, told privately.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0ALICE", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let told = slack
        .wait("respond", |v| {
            v["text"].as_str().unwrap_or("").contains("own request")
        })
        .await;
    assert_eq!(told["response_type"], "ephemeral");
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0MALLORY", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    slack
        .wait("respond", |v| {
            v["text"]
                .as_str()
                .unwrap_or("")
                .contains("not in an approver group")
        })
        .await;
    // bob approves: one of two; the message is updated.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["reviews"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["reviews"][0]["channel"], "slack");
    slack
        .wait("api/chat.update", |v| {
            v["blocks"].to_string().contains("security 1/2")
        })
        .await;
    // carol denies: Slack asks her why, then the request is denied with it.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0CAROL", "deny", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let modal = slack.wait("api/views.open", |_| true).await;
    assert_eq!(modal["view"]["private_metadata"], id.as_str());
    assert_eq!(modal["trigger_id"], "trigger.1");
    let submission = json!({
        "type": "view_submission",
        "user": {"id": "U0CAROL"},
        "view": {"callback_id": "deny", "private_metadata": id,
                 "state": {"values": {"reason": {"reason": {"value": "too broad"}}}}},
    });
    assert_eq!(
        slack_interaction(&s.url, submission, 0, SLACK_SECRET).await,
        200
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["reviews"][1]["reason"], "too broad");
    slack
        .wait("api/chat.update", |v| {
            v["blocks"].to_string().contains("Request denied")
        })
        .await;
    // The requester hears it in a direct message.
    let dm = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "U0ALICE")
        .await;
    assert!(dm["text"].as_str().unwrap().contains("was denied"), "{dm}");
}

/// Sends an interaction as Discord does: JSON, Ed25519-signed over
/// timestamp and body.
async fn discord_interaction(
    url: &str,
    key: &ed25519_dalek::SigningKey,
    body: &Value,
) -> (u16, Value) {
    use ed25519_dalek::Signer;
    let body = body.to_string();
    let ts = chrono_now().to_string();
    let sig = hex::encode(key.sign(format!("{ts}{body}").as_bytes()).to_bytes());
    let r = reqwest::Client::new()
        .post(format!("{url}/integrations/discord/interactions"))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts)
        .header("x-signature-ed25519", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn click(iid: &str, user: &str, custom_id: &str) -> Value {
    json!({"id": iid, "type": 3, "member": {"user": {"id": user}}, "data": {"custom_id": custom_id}})
}

#[tokio::test]
async fn discord_interactions_are_verified_deduplicated_and_follow_the_rules() {
    let discord = FakeDiscord::start();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = hex::encode(key.verifying_key().to_bytes());
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!(
            "[notify.discord]\napi_url = \"{}\"\nbot_token = \"bot-test\"\napplication_public_key = \"{public}\"\nchannel_id = \"C1\"\nroutes = {{ security = \"CSEC\" }}\n",
            discord.base
        ),
    );
    let alice = s.key("alice", "user");
    // PING is answered with PONG; a wrong key's signature with 401.
    let (st, r) = discord_interaction(&s.url, &key, &json!({"id": "i0", "type": 1})).await;
    assert_eq!((st, r["type"].as_u64()), (200, Some(1)));
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let (st, r) = discord_interaction(&s.url, &other, &json!({"id": "i00", "type": 1})).await;
    // In the API's error shape, as every endpoint's.
    assert_eq!((st, &r["error"]["code"]), (401, &json!("unauthenticated")));

    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let posted = discord
        .wait("POST", "channels/CSEC/messages", |_| true)
        .await;
    assert!(
        posted["content"]
            .as_str()
            .unwrap()
            .contains("<@D0ALICE> wants to **export**"),
        "{posted}"
    );
    assert_eq!(
        posted["components"][0]["components"][0]["custom_id"],
        format!("approve:{id}")
    );

    // bob approves; Discord's retry of the same interaction is not a second review.
    let (st, r) = discord_interaction(
        &s.url,
        &key,
        &click("i1", "D0BOB", &format!("approve:{id}")),
    )
    .await;
    assert_eq!((st, r["type"].as_u64()), (200, Some(6)), "{r}");
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i1", "D0BOB", &format!("approve:{id}")),
    )
    .await;
    assert_eq!(r["data"]["content"], "Already handled.");
    let (_, req) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(req["reviews"].as_array().unwrap().len(), 1);
    // The requester and a non-approver are refused, privately.
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i2", "D0ALICE", &format!("approve:{id}")),
    )
    .await;
    assert_eq!(r["data"]["flags"], 64);
    assert!(
        r["data"]["content"]
            .as_str()
            .unwrap()
            .contains("own request"),
        "{r}"
    );
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i3", "D0MALLORY", &format!("approve:{id}")),
    )
    .await;
    assert!(
        r["data"]["content"]
            .as_str()
            .unwrap()
            .contains("not in an approver group"),
        "{r}"
    );
    // carol denies: a dialog asks why, its submission denies.
    let (_, modal) =
        discord_interaction(&s.url, &key, &click("i4", "D0CAROL", &format!("deny:{id}"))).await;
    assert_eq!(modal["type"], 9, "{modal}");
    let submit = json!({"id": "i5", "type": 5, "member": {"user": {"id": "D0CAROL"}},
        "data": {"custom_id": format!("deny:{id}"), "components": [{"type": 1, "components": [{"type": 4, "custom_id": "reason", "value": "not this quarter"}]}]}});
    let (_, r) = discord_interaction(&s.url, &key, &submit).await;
    assert_eq!(r["data"]["content"], "Denied.");
    let (_, req) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "denied");
    assert_eq!(req["reviews"][1]["reason"], "not this quarter");
    assert_eq!(req["reviews"][1]["channel"], "discord");
    discord
        .wait("PATCH", "channels/CSEC/messages/m1", |v| {
            v["content"]
                .as_str()
                .unwrap_or("")
                .contains("Request denied")
        })
        .await;
    discord
        .wait("POST", "users/@me/channels", |v| {
            v["recipient_id"] == "D0ALICE"
        })
        .await;
    discord
        .wait("POST", "channels/dm-D0ALICE/messages", |v| {
            v["content"].as_str().unwrap_or("").contains("was denied")
        })
        .await;
}

/// An Approve click on a request that needs a step-up (a message posted
/// before the requirement was raised, or a stale button) is refused with
/// the request's console page as a link Discord can open: the refusal's
/// own copy of it is escaped with the rest of the text (found in review:
/// it could not be clicked).
#[tokio::test]
async fn a_discord_step_up_refusal_links_the_console() {
    const STEP_UP: &str = r#"
@id("exports-need-a-code")
@approvers("security")
@step_up("totp")
permit(principal, action == Action::"export", resource);
"#;
    let discord = FakeDiscord::start();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = hex::encode(key.verifying_key().to_bytes());
    let s = Server::start_extra(
        &Db::Sqlite,
        STEP_UP,
        &format!(
            "[notify.discord]\napi_url = \"{}\"\nbot_token = \"bot-test\"\napplication_public_key = \"{public}\"\nchannel_id = \"C1\"\nroutes = {{ security = \"CSEC\" }}\n",
            discord.base
        ),
    );
    let alice = s.key("alice", "user");
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i1", "D0BOB", &format!("approve:{id}")),
    )
    .await;
    let text = r["data"]["content"].as_str().unwrap();
    assert!(text.contains("Not done"), "{r}");
    assert!(
        text.contains(&format!("<{}/requests/{id}>", s.url)),
        "{text}"
    );
    let (_, req) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "pending");
}
