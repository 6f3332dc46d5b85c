//! The `[[proxies.http]]` and `[proxy]` settings: what a listener forwards
//! where, which request is which action, and what is done to responses.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[proxy]`: how a proxy running alone (`airlock proxy`) reaches Airlock.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyClientConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server_url: String,
    /// An `enforcer` API key.
    pub token: String,
}

impl std::fmt::Debug for ProxyClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a credential: never in logs.
        f.debug_struct("ProxyClientConfig")
            .field("server_url", &self.server_url)
            .finish()
    }
}

/// `[[proxies.http]]`: one listener in front of one upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProxyConfig {
    /// A name for logs and the audit log (letters, digits, `_ - .`).
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The service behind it: `http://host:port` (plain HTTP; a path, if
    /// any, is ignored).
    pub upstream: String,
    /// How long a request needing approval is held open before answering
    /// 202. Default 20.
    #[serde(default = "default_hold")]
    pub hold_seconds: u64,
    /// A header set by a trusted front proxy that names the end user. Only
    /// set it when every request reaches this listener through that front
    /// proxy, which must remove the header from what clients send.
    #[serde(default)]
    pub principal_header: Option<String>,
    /// `Retry-After` on a 202. Default 5.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u64,
    /// The largest request body accepted (it is read whole to bind its
    /// SHA-256). Default 16 MiB; larger → 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Bytes of request bodies this listener holds at once, over all its
    /// requests (being read, or waiting with their request for approval):
    /// without a cap, one HTTP/2 connection's many streams could hold
    /// gigabytes. Default 256 MiB; more → 429 `rate_limited`.
    #[serde(default = "default_body_budget")]
    pub max_buffered_body_bytes: u64,
    /// The largest response body read whole to scan (routes with `block`
    /// or `response_action`), before and after decoding; a larger one is
    /// refused (502), never passed unscanned. `report` and `mask` stream
    /// and are not capped. Default 64 MiB.
    #[serde(default = "default_max_scan")]
    pub max_scan_bytes: u64,
    /// With `response_action`: how many first lines of the masked body go
    /// into that decision's `context.preview`, so approvers see what would
    /// leave. Masked, but whatever the detectors miss is then in the
    /// request, its audit records and its notifications: opt in. Default 0
    /// (none).
    #[serde(default = "default_preview_lines")]
    pub response_preview_lines: usize,
    /// How long a client may take to send its request headers, and then its
    /// body; slower → the connection is closed (headers) or 408 (body).
    /// Default 30.
    #[serde(default = "default_client_timeout")]
    pub client_timeout_seconds: u64,
    /// How long the upstream may take to answer. Default 60.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_seconds: u64,
    /// Checks one end user may cause per second (burst the same); more →
    /// 429 `rate_limited`, so one user flooding this listener cannot crowd
    /// out the others behind it (the server limits this listener's own key
    /// as a whole). 0: no per-user limit. Default 100.
    #[serde(default = "default_per_user")]
    pub checks_per_second_per_user: u32,
    /// Connections served at once; more wait in the listen queue.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Extra detectors (`[proxies.http.dlp]`: `patterns`, `dictionaries`),
    /// as in `airlock_dlp::Config`.
    #[serde(default)]
    pub dlp: airlock_dlp::Config,
    /// `[[proxies.http.routes]]`, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_hold() -> u64 {
    20
}
fn default_retry_after() -> u64 {
    5
}
fn default_body_budget() -> u64 {
    256 << 20
}

fn default_max_body() -> u64 {
    16 << 20
}
fn default_max_scan() -> u64 {
    64 << 20
}
fn default_preview_lines() -> usize {
    0
}
fn default_client_timeout() -> u64 {
    30
}
fn default_upstream_timeout() -> u64 {
    60
}

/// `[[proxies.authz]]`: one listener answering a front proxy's question
/// "may this request pass?" — Envoy's `ext_authz` HTTP service under
/// `/envoy/`, nginx's `auth_request` at `/nginx`. The front forwards; this
/// decides, holds, and consumes the grant of an approved request when it
/// says yes. It trusts what the front states (the client's address, the
/// original method and URI, a `principal_header`): listen where only the
/// front can reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// A name for logs and the audit log (letters, digits, `_ - .`).
    pub name: String,
    /// Address to listen on (loopback, or a network only the front reaches).
    pub listen: SocketAddr,
    /// How long a request needing approval is held before answering
    /// "held". Keep it below the front's timeout for this call. Default 20.
    #[serde(default = "default_hold")]
    pub hold_seconds: u64,
    /// `Retry-After` on a held answer. Default 5.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u64,
    /// A header set by the front that names the end user (e.g. after its
    /// own sign-in); the front must remove it from what clients send.
    #[serde(default)]
    pub principal_header: Option<String>,
    /// The largest request body Envoy may send along (`with_request_body`
    /// must allow at least this much). Default 1 MiB; larger → 413.
    #[serde(default = "default_authz_body")]
    pub max_body_bytes: u64,
    /// As `[[proxies.http]]`'s: bytes of bodies held at once, over all
    /// requests. Default 256 MiB; more → 429 `rate_limited`.
    #[serde(default = "default_body_budget")]
    pub max_buffered_body_bytes: u64,
    /// How long the front may take to send its question. Default 30.
    #[serde(default = "default_client_timeout")]
    pub client_timeout_seconds: u64,
    /// Checks one end user may cause per second (burst the same); more →
    /// 429 `rate_limited`, so one user flooding this listener cannot crowd
    /// out the others behind it (the server limits this listener's own key
    /// as a whole). 0: no per-user limit. Default 100.
    #[serde(default = "default_per_user")]
    pub checks_per_second_per_user: u32,
    /// Connections served at once; more wait in the listen queue.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `[[proxies.authz.routes]]`, as for `[[proxies.http]]`; responses are
    /// not seen here, so `response_dlp` must stay `off`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_per_user() -> u32 {
    100
}
fn default_max_connections() -> usize {
    1024
}

fn default_authz_body() -> u64 {
    1 << 20
}

/// `[[proxies.http.routes]]`: which requests are which action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `GET`, `POST`, … or `*` for any.
    pub method: String,
    /// A path template: `/exports/{name}.csv`; a capture matches one or
    /// more characters within one segment.
    pub path: String,
    /// The action checked.
    pub action: String,
    /// `TYPE:ID`, captures substituted: `File:{name}`.
    pub resource: String,
    /// What is done to the response body. Default `off`.
    #[serde(default)]
    pub response_dlp: ResponseDlp,
    /// When set, the response's finding counts are decided on as this
    /// action (same principal and resource, `context.dlp` the counts), so
    /// policy can refuse or hold a response by what it contains.
    #[serde(default)]
    pub response_action: Option<String>,
    /// Forward matching requests without asking Airlock at all. Weakens
    /// the proxy to a plain reverse proxy for these paths.
    #[serde(default)]
    pub danger_forward_unchecked: bool,
    /// For `[[proxies.authz]]` behind nginx, which never shows the body to
    /// an `auth_request`: let a request with a body be decided without it
    /// (its `params.body_sha256` is then `"unseen"`), so an approval covers
    /// any body. Without it such requests are refused.
    #[serde(default)]
    pub danger_body_unseen: bool,
    /// Request headers bound to an approval besides the ones always bound
    /// (`Authorization`, `Cookie`, `X-Api-Key`, `X-Auth-Token`,
    /// `Content-Type`, `Content-Encoding`, `Range`): the headers this
    /// service reads to decide what a request does, such as
    /// `["x-tenant-id"]`. An approved request sent again with one of them
    /// changed, added or dropped is another action (403
    /// `action_mismatch`). Hashed into `params.headers_sha256`, and their
    /// values shown to approvers in `params.headers` (so list no
    /// credential here: the fixed ones are hashed only). Behind Envoy, list
    /// them in `allowed_headers` too: a header Airlock is not shown is not
    /// bound.
    #[serde(default)]
    pub bind_headers: Vec<String>,
}

/// `response_dlp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseDlp {
    /// Not scanned.
    #[default]
    Off,
    /// Scanned; counts recorded, body unchanged.
    Report,
    /// Scanned; each finding replaced in place.
    Mask,
    /// Scanned; any finding → 403 instead of the body.
    Block,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of `airlock proxy`'s file, as far as this crate's part.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StandaloneConfig {
        #[allow(dead_code)]
        proxy: ProxyClientConfig,
        proxies: Proxies,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Proxies {
        http: Vec<HttpProxyConfig>,
    }

    const FILE: &str = r#"
[proxy]
server_url = "http://127.0.0.1:8080"
token = "ak_secret"

[[proxies.http]]
name = "files"
listen = "127.0.0.1:8181"
upstream = "http://127.0.0.1:9000"

[[proxies.http.routes]]
method = "GET"
path = "/exports/{name}.csv"
action = "download"
resource = "File:{name}"
response_dlp = "mask"
"#;

    /// The contract's example loads with its defaults; the key never shows
    /// in Debug output.
    #[test]
    fn the_contract_example_loads() {
        let cfg: StandaloneConfig = toml::from_str(FILE).unwrap();
        let p = &cfg.proxies.http[0];
        assert_eq!(p.hold_seconds, 20);
        assert_eq!(p.principal_header, None);
        assert_eq!(p.response_preview_lines, 0);
        assert_eq!(p.routes[0].response_dlp, ResponseDlp::Mask);
        assert!(!p.routes[0].danger_forward_unchecked);
        assert!(!format!("{cfg:?}").contains("ak_secret"));
    }

    /// A misspelt key anywhere is a load error, not a silently open door.
    #[test]
    fn unknown_keys_are_refused() {
        for (from, to) in [
            ("hold_seconds", "hold_secs"),
            (
                "response_dlp = \"mask\"",
                "response_dlp = \"mask\"\ndlp = \"mask\"",
            ),
            ("response_dlp = \"mask\"", "response_dlp = \"maybe\""),
            ("token =", "tokn ="),
        ] {
            let text = FILE.replacen(from, to, 1).replace(
                "upstream = ",
                if from == "hold_seconds" {
                    "hold_secs = 3\nupstream = "
                } else {
                    "upstream = "
                },
            );
            assert!(
                toml::from_str::<StandaloneConfig>(&text).is_err(),
                "{from} → {to}"
            );
        }
    }
}
