//! Stand-ins for the services notifications go to: a real SMTP server
//! (aiosmtpd), and local servers speaking Slack's and Discord's APIs.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// aiosmtpd writing what it receives into a Maildir; killed at the end.
pub(crate) struct Smtp {
    child: Child,
    pub(crate) port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    pub(crate) fn start() -> Smtp {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp {
            child,
            port,
            maildir,
        }
    }

    /// Every message delivered so far, as text.
    pub(crate) fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }

    pub(crate) async fn wait_for(&self, n: usize, what: impl Fn(&str) -> bool) -> Vec<String> {
        for _ in 0..200 {
            let got: Vec<String> = self.messages().into_iter().filter(|m| what(m)).collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} messages, have {:?}", self.messages());
    }
}

/// A stand-in for Slack's Web API (chat.postMessage, chat.update,
/// views.open) and for interaction `response_url`s; records every call.
pub(crate) struct FakeSlack {
    pub(crate) base: String,
    calls: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl FakeSlack {
    pub(crate) fn start() -> FakeSlack {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/{*path}",
                    axum::routing::post(
                        move |axum::extract::Path(path): axum::extract::Path<String>,
                              headers: axum::http::HeaderMap,
                              body: axum::body::Bytes| {
                            let c = c.clone();
                            async move {
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                if path.starts_with("api/") {
                                    assert_eq!(
                                        headers["authorization"], "Bearer xoxb-test",
                                        "the bot token"
                                    );
                                }
                                let mut calls = c.lock().unwrap();
                                calls.push((path.clone(), v.clone()));
                                let ts = format!("1700000000.{:06}", calls.len());
                                axum::Json(json!({"ok": true, "channel": v["channel"], "ts": ts}))
                            }
                        },
                    ),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeSlack { base, calls }
    }

    pub(crate) fn calls(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(crate) async fn wait(&self, path: &str, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(v) = self.calls(path).into_iter().find(|v| what(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no {path} call as expected; calls: {:?}",
            self.calls.lock().unwrap()
        );
    }
}

pub(crate) const SLACK_SECRET: &str = "test-signing-secret";

pub(crate) struct FakeDiscord {
    pub(crate) base: String,
    calls: Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
}

impl FakeDiscord {
    pub(crate) fn start() -> FakeDiscord {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<std::sync::Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/{*path}",
                    axum::routing::any(
                        move |method: axum::http::Method, axum::extract::Path(path): axum::extract::Path<String>, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                            let c = c.clone();
                            async move {
                                assert_eq!(headers["authorization"], "Bot bot-test", "the bot token");
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let mut calls = c.lock().unwrap();
                                calls.push((method.to_string(), path.clone(), v.clone()));
                                let n = calls.len();
                                if path == "users/@me/channels" {
                                    return axum::Json(json!({"id": format!("dm-{}", v["recipient_id"].as_str().unwrap_or(""))}));
                                }
                                let channel = path.split('/').nth(1).unwrap_or("").to_owned();
                                axum::Json(json!({"id": format!("m{n}"), "channel_id": channel}))
                            }
                        },
                    ),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeDiscord { base, calls }
    }

    pub(crate) async fn wait(
        &self,
        method: &str,
        path: &str,
        what: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..200 {
            let found = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .find(|(m, p, v)| m == method && p == path && what(v))
                .map(|(_, _, v)| v.clone());
            if let Some(v) = found {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no {method} {path} as expected: {:?}",
            self.calls.lock().unwrap()
        );
    }
}
