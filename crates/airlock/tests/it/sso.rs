//! Single sign-on to the console with a real OpenID provider
//! (`oidc-provider`, in `crates/airlock/tests/oidc`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn console_single_sign_on_with_a_real_openid_provider() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, idp_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), CONSOLE_POLICIES).unwrap();
    std::fs::write(
        dir.path().join("airlock.toml"),
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
public_url = "{base}"

[storage]
url = "sqlite://data/airlock.db"

[policy]
dir = "policies"

[web.oidc]
issuer = "http://127.0.0.1:{idp_port}"
client_id = "airlock"
client_secret = "airlock-test-secret"
label = "Sign in with Example SSO"
groups_claim = "groups"

[[users]]
name = "bob"
groups = ["security"]
email = "Bob@Example.com"

[[users]]
name = "dave"
groups = []
email = "dave@example.com"

[[users]]
name = "alice"
groups = []

[[users]]
name = "unverified-carol"
groups = ["security"]
email = "unverified-carol@example.com"
"#
        ),
    )
    .unwrap();
    // The provider: the `oidc-provider` package, installed by ./test.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !folder.join("node_modules/oidc-provider").exists() {
        // First run on this checkout: install the pinned provider.
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&folder)
            .status()
            .expect("npm, to install the OpenID provider (Debian: nodejs npm)");
        assert!(ok.success(), "npm ci in {}", folder.display());
    }
    let script = folder.join("provider.mjs");
    let mut idp = Command::new("node")
        .arg(&script)
        .arg(idp_port.to_string())
        .arg(format!("{base}/login/oidc/callback"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node, for the OpenID provider");
    let mut ready = String::new();
    let mut out = BufReader::new(idp.stdout.take().unwrap());
    out.read_line(&mut ready).unwrap();
    // Keep draining: a closed pipe would kill the provider.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    assert!(
        ready.starts_with("ready"),
        "provider did not start ({ready:?}); run `npm ci` in crates/airlock/tests/oidc"
    );
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _idp = Kill(idp);
    let data = dir.path().join("data");
    let s = Server::serve(dir, &Db::Sqlite, 60, &data);
    assert_eq!(s.url, base);

    // At the provider: log in as "bob", consent, and land signed in.
    let sso = |b: fantoccini::Client, login: &'static str| {
        let base = base.clone();
        async move {
            b.goto(&format!("{base}/login")).await.unwrap();
            b.find(Locator::LinkText("Sign in with Example SSO"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            b.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("input[name=login]"))
                .await
                .unwrap()
                .send_keys(login)
                .await
                .unwrap();
            b.find(Locator::Css("input[name=password]"))
                .await
                .unwrap()
                .send_keys("anything")
                .await
                .unwrap();
            b.find(Locator::Css("button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The consent prompt, if the provider shows one.
            for _ in 0..20 {
                let url = b.current_url().await.unwrap();
                if url.as_str().starts_with(&base) {
                    break;
                }
                if let Ok(button) = b
                    .find(Locator::Css("button[type=submit], button[autofocus]"))
                    .await
                {
                    let _ = button.click().await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            b
        }
    };
    let b = sso(driver.browser(1280, 900).await, "bob").await;
    let who = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.signout .who"))
        .await
        .expect("signed in through the provider")
        .text()
        .await
        .unwrap();
    assert_eq!(who, "bob", "matched by email, case-insensitively");
    assert_eq!(b.current_url().await.unwrap().path(), "/inbox");
    b.close().await.unwrap();

    // Groups come from the provider's claim: dave has none in the config,
    // but the provider says security, so he may approve alice's export.
    let alice = s.key("alice", "user");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "orders"}}),
        )
        .await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert!(
        !r["thresholds"][0]["eligible"]
            .as_array()
            .unwrap()
            .contains(&json!("dave")),
        "{r}"
    );
    let d = sso(driver.browser(1280, 900).await, "dave").await;
    let mut listed = false;
    for _ in 0..40 {
        d.goto(&format!("{base}/requests/{id}")).await.unwrap();
        if d.find(Locator::Css("button.approve")).await.is_ok() {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "dave may review once his groups are synced");
    d.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    d.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("span.status.approved"))
        .await
        .unwrap();
    d.close().await.unwrap();

    // Someone the provider knows but Airlock does not is refused.
    let b = sso(driver.browser(1280, 900).await, "zed").await;
    let page = b.source().await.unwrap();
    assert!(
        page.contains("zed@example.com is not an Airlock user"),
        "{page}"
    );
    b.close().await.unwrap();
    // So is an email the provider has not verified.
    let b = sso(driver.browser(1280, 900).await, "unverified-carol").await;
    let page = b.source().await.unwrap();
    assert!(page.contains("not verified"), "{page}");
    b.close().await.unwrap();

    // A callback that does not belong to a flow started here is refused.
    let r = reqwest::get(format!(
        "{base}/login/oidc/callback?code=stolen&state=forged"
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let admin = s.key("bob", "admin");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    let records = audit["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["kind"] == "sign_in"
        && r["actor"] == "bob"
        && r["details"]["method"] == "oidc"));
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "sign_in_failed" && r["details"]["method"] == "oidc")
            .count()
            >= 3
    );
    assert!(records.iter().any(|r| r["kind"] == "groups_synced"
        && r["subject"] == "dave"
        && r["details"]["groups"] == json!(["data-owners", "security"])));
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "groups_synced" && r["subject"] == "bob"),
        "bob's groups did not change, so nothing was recorded"
    );
}
