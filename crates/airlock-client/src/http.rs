//! HTTP API v1 over the network, typed: every body sent and received is an
//! `airlock_api` type, and every error answer becomes [`ClientError::Api`].

use std::time::Duration;

use airlock_api::{
    CheckBody, CheckResponse, CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse,
    ErrorBody, ErrorCode, FindingsBody, FindingsResponse, KeyLiveBody, KeyLiveResponse, ReasonBody,
    RequestList, RequestView, ReviewBody, ScramLoginBody, ScramLoginResponse, WhoamiResponse,
};
use airlock_core::{GrantId, RequestId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{ClientError, Gate};

/// How long a plain call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What a waiting call may take beyond its wait.
const WAIT_SLACK: Duration = Duration::from_secs(15);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one Airlock server, as one API key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a credential: never in logs.
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

impl Client {
    /// A client of the server at `url` (`http://host:port`), calling with
    /// the API key `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.call_as(&self.token, method, path, body, timeout).await
    }

    async fn call_as<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = res.status().as_u16();
        let bytes = res
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        if status >= 400 {
            // An error body that is not API v1 (a front proxy's page) still
            // ends as a refusal, never as success.
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (ErrorCode::Unknown, "request failed".to_owned()),
            };
            return Err(ClientError::Api {
                status,
                code,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.url.clone(),
            detail: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, path, None::<&()>, CALL_TIMEOUT)
            .await
    }

    async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body), CALL_TIMEOUT)
            .await
    }

    /// `GET path`, untyped: for the admin endpoints outside the enforcement
    /// loop (outbox).
    pub async fn get_value(&self, path: &str) -> Result<Value, ClientError> {
        self.get(path).await
    }

    /// `POST path` with `body`, untyped.
    pub async fn post_value(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.post(path, body).await
    }

    /// `GET /v1/whoami` as the key `key` (not this client's own): whose it
    /// is.
    pub async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
        self.call_as(
            key,
            reqwest::Method::GET,
            "/v1/whoami",
            None::<&()>,
            CALL_TIMEOUT,
        )
        .await
    }

    /// `POST /v1/check`.
    pub async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError> {
        self.post("/v1/check", body).await
    }

    /// `POST /v1/breakglass`: an immediate grant, reviewed after the fact.
    pub async fn breakglass(&self, body: &CheckBody) -> Result<RequestView, ClientError> {
        self.post("/v1/breakglass", body).await
    }

    /// `GET /v1/requests/{id}`, waiting up to `wait` for a decision. `id` is
    /// taken as given (an unknown one is the server's 404).
    pub async fn get_request(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError> {
        match wait {
            None => self.get(&format!("/v1/requests/{id}")).await,
            Some(w) => {
                let path = format!("/v1/requests/{id}?wait={}", w.as_secs());
                self.call(reqwest::Method::GET, &path, None::<&()>, w + WAIT_SLACK)
                    .await
            }
        }
    }

    /// `GET /v1/requests?status=&limit=&after=`: one page.
    pub async fn list_requests(
        &self,
        status: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<RequestList, ClientError> {
        let mut path = format!("/v1/requests?status={status}&limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.get(&path).await
    }

    /// `POST /v1/requests/{id}/reviews`.
    pub async fn review(&self, id: &str, body: &ReviewBody) -> Result<RequestView, ClientError> {
        self.post(&format!("/v1/requests/{id}/reviews"), body).await
    }

    /// `POST /v1/requests/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<RequestView, ClientError> {
        self.post(&format!("/v1/requests/{id}/cancel"), &serde_json::json!({}))
            .await
    }

    /// `POST /v1/requests/{id}/revoke`.
    pub async fn revoke(&self, id: &str, body: &ReasonBody) -> Result<RequestView, ClientError> {
        self.post(&format!("/v1/requests/{id}/revoke"), body).await
    }

    /// `POST /v1/grants/consume`.
    pub async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
        self.post("/v1/grants/consume", body).await
    }

    /// `POST /v1/grants/{id}/complete`.
    pub async fn complete(
        &self,
        grant: &GrantId,
        body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError> {
        self.post(&format!("/v1/grants/{grant}/complete"), body)
            .await
    }
}

#[async_trait::async_trait]
impl Gate for Client {
    async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError> {
        Client::check(self, body).await
    }

    async fn request(
        &self,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError> {
        self.get_request(&id.to_string(), wait).await
    }

    async fn cancel(&self, id: RequestId) -> Result<RequestView, ClientError> {
        Client::cancel(self, &id.to_string()).await
    }

    async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
        Client::consume(self, body).await
    }

    async fn complete(
        &self,
        grant: GrantId,
        body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError> {
        Client::complete(self, &grant, body).await
    }

    async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
        Client::whoami(self, key).await
    }

    async fn scram_login(&self, body: &ScramLoginBody) -> Result<ScramLoginResponse, ClientError> {
        self.post("/v1/auth/scram", body).await
    }

    async fn key_live(&self, body: &KeyLiveBody) -> Result<KeyLiveResponse, ClientError> {
        self.post("/v1/auth/key", body).await
    }

    async fn report_findings(&self, body: &FindingsBody) -> Result<FindingsResponse, ClientError> {
        self.post("/v1/audit/findings", body).await
    }
}
