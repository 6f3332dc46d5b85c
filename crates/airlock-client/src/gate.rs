//! The questions an enforcement point asks Airlock, whoever answers them:
//! the HTTP [`crate::Client`], or the service in the same process.

use std::time::Duration;

use airlock_api::{
    CheckBody, CheckResponse, CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse,
    FindingsBody, FindingsResponse, KeyLiveBody, KeyLiveResponse, RequestView, ScramLoginBody,
    ScramLoginResponse, WhoamiResponse,
};
use airlock_core::{GrantId, RequestId};

use crate::ClientError;

/// Check, wait, consume, complete: the enforcement loop's calls, as the
/// caller's key (an enforcer's, or the user's for `airlock run`) may make
/// them. Every refusal is an error; nothing here ever answers "allow" by
/// default.
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// Decides an action (`POST /v1/check`).
    async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError>;

    /// One request; with `wait`, answers as soon as it leaves `pending` or
    /// when the wait is over (`GET /v1/requests/{id}?wait=`).
    async fn request(
        &self,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError>;

    /// Withdraws a pending request (`POST /v1/requests/{id}/cancel`).
    async fn cancel(&self, id: RequestId) -> Result<RequestView, ClientError>;

    /// Spends one use of a grant for exactly its action
    /// (`POST /v1/grants/consume`).
    async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError>;

    /// Reports how a consumed use went (`POST /v1/grants/{id}/complete`).
    async fn complete(
        &self,
        grant: GrantId,
        body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError>;

    /// Whose key `key` is (`GET /v1/whoami` called with that key): how a
    /// proxy learns which user an `Airlock-Token` names before checking
    /// on their behalf. A gate that cannot tell refuses, so nobody is
    /// taken for somebody.
    async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
        let _ = key;
        Err(ClientError::Config(
            "this gate cannot tell whose key this is".into(),
        ))
    }

    /// Checks a database client's SCRAM proof (`POST /v1/auth/scram`): how
    /// the PostgreSQL proxy logs a user in without holding verifiers. A
    /// gate that cannot tell refuses.
    async fn scram_login(&self, body: &ScramLoginBody) -> Result<ScramLoginResponse, ClientError> {
        let _ = body;
        Err(ClientError::Config(
            "this gate cannot check SCRAM proofs".into(),
        ))
    }

    /// Whether a user's key may still be used (`POST /v1/auth/key`). A
    /// gate that cannot tell refuses.
    async fn key_live(&self, body: &KeyLiveBody) -> Result<KeyLiveResponse, ClientError> {
        let _ = body;
        Err(ClientError::Config("this gate cannot check keys".into()))
    }

    /// Puts what DLP found in an answer no grant covers on the audit
    /// record (`POST /v1/audit/findings`). A gate that cannot refuses.
    async fn report_findings(&self, body: &FindingsBody) -> Result<FindingsResponse, ClientError> {
        let _ = body;
        Err(ClientError::Config(
            "this gate cannot record findings".into(),
        ))
    }
}

#[async_trait::async_trait]
impl<G: Gate + ?Sized> Gate for std::sync::Arc<G> {
    async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError> {
        (**self).check(body).await
    }
    async fn request(
        &self,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError> {
        (**self).request(id, wait).await
    }
    async fn cancel(&self, id: RequestId) -> Result<RequestView, ClientError> {
        (**self).cancel(id).await
    }
    async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
        (**self).consume(body).await
    }
    async fn complete(
        &self,
        grant: GrantId,
        body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError> {
        (**self).complete(grant, body).await
    }
    async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
        (**self).whoami(key).await
    }
    async fn scram_login(&self, body: &ScramLoginBody) -> Result<ScramLoginResponse, ClientError> {
        (**self).scram_login(body).await
    }
    async fn key_live(&self, body: &KeyLiveBody) -> Result<KeyLiveResponse, ClientError> {
        (**self).key_live(body).await
    }
    async fn report_findings(&self, body: &FindingsBody) -> Result<FindingsResponse, ClientError> {
        (**self).report_findings(body).await
    }
}
