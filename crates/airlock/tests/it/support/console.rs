//! The web console's helpers: its policies, passwords set through the
//! CLI, signing in over HTTP or in headless Chromium driven by
//! chromedriver.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::*;

pub(crate) const CONSOLE_POLICIES: &str = r#"
@id("reads")
permit(principal, action == Action::"read", resource);

@id("exports-need-security")
@approvers("security")
permit(principal, action == Action::"export", resource);
"#;

/// Sets a user's console password through the CLI, as an operator would.
pub(crate) fn set_password(s: &Server, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["users", "set-password", "--config"])
        .arg(s.config())
        .args(["--user", user])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// chromedriver on a free port, killed at the end of the test; `None` when
/// `AIRLOCK_TEST_BROWSER=skip`.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(crate) fn start() -> Option<Driver> {
        if std::env::var("AIRLOCK_TEST_BROWSER").as_deref() == Ok("skip") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e}; install chromium and chromium-driver, or set AIRLOCK_TEST_BROWSER=skip")
            });
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    pub(crate) async fn browser(&self, width: u32, height: u32) -> fantoccini::Client {
        self.connect(json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        }))
        .await
    }

    /// A phone: a 390 × 844 CSS-pixel viewport at 3× (a window cannot be
    /// made narrower than 500 px, so the device is emulated).
    pub(crate) async fn phone(&self) -> fantoccini::Client {
        self.connect(json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            "mobileEmulation": {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3.0}},
        }))
        .await
    }

    /// A desktop window whose system asks for dark pages.
    pub(crate) async fn dark(&self) -> fantoccini::Client {
        self.connect(json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--blink-settings=preferredColorScheme=0"],
        }))
        .await
    }

    async fn connect(&self, chrome: serde_json::Value) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), chrome);
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

pub(crate) async fn sign_in(b: &fantoccini::Client, base: &str, user: &str, password: &str) {
    use fantoccini::Locator;
    b.goto(&format!("{base}/login")).await.unwrap();
    b.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.find(Locator::Css("form.card button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.signout"))
        .await
        .unwrap_or_else(|e| panic!("{user} did not get signed in: {e}"));
}

/// Signs in over plain HTTP, as a script would: returns the session cookie
/// and the session's CSRF token (from a page's hidden field).
pub(crate) async fn http_sign_in(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> (String, String) {
    let set_cookie = |res: &reqwest::Response, name: &str| {
        res.headers().get_all("set-cookie").iter().find_map(|v| {
            let v = v.to_str().ok()?.strip_prefix(name)?.strip_prefix('=')?;
            Some(v.split(';').next().unwrap_or("").to_owned())
        })
    };
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login_csrf = set_cookie(&form, "airlock_login_csrf").unwrap();
    let signed = http
        .post(format!("{base}/login"))
        .header("cookie", format!("airlock_login_csrf={login_csrf}"))
        .form(&[
            ("csrf", login_csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 303, "{user} signs in");
    let cookie = set_cookie(&signed, "airlock_session").unwrap();
    let page = http
        .get(format!("{base}/inbox"))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (cookie, csrf)
}
