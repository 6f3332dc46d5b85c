//! The enforcement loop's [`Gate`] answered by the service in this
//! process: proxies running inside `airlock serve` check, wait, consume and
//! complete with no network hop, under the same rules as over HTTP (the
//! same service calls, the same caps, the same audit records).

use std::sync::Arc;
use std::time::Duration;

use airlock_api::{
    CheckBody, CheckResponse, CompleteBody, CompleteResponse, ConsumeBody, ConsumeResponse,
    RequestView, ScramLoginBody, ScramLoginResponse, WhoamiResponse,
};
use airlock_client::{ClientError, Gate};
use airlock_core::{GrantId, RequestId};

use super::{Airlock, Caller};
use crate::ApiError;

/// The service as a [`Gate`], acting as `caller` (an enforcer identity of
/// an in-process proxy, recorded in the audit log by its `key_id`).
#[derive(Debug, Clone)]
pub struct LocalGate {
    airlock: Arc<Airlock>,
    caller: Caller,
}

impl LocalGate {
    /// A gate into `airlock` for `caller`.
    pub fn new(airlock: Arc<Airlock>, caller: Caller) -> Self {
        Self { airlock, caller }
    }
}

/// A refusal as a client sees it, with the code and status HTTP would
/// have sent.
fn refused(e: ApiError) -> ClientError {
    let status = e.status();
    if status >= 500 {
        tracing::error!(code = %e.code(), error = %e, "in-process call failed");
    }
    ClientError::Api {
        status,
        code: e.code(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Gate for LocalGate {
    async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError> {
        // No peer address: an enforcer passes its end user's as
        // `context.source_ip`.
        let out = self
            .airlock
            .check(&self.caller, body.clone(), None)
            .await
            .map_err(refused)?;
        Ok(self.airlock.check_answer(out, &self.caller))
    }

    async fn request(
        &self,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<RequestView, ClientError> {
        // The same cap as `?wait=` over HTTP.
        let max = Duration::from_secs(self.airlock.config.load().server.max_wait_seconds);
        let req = self
            .airlock
            .get_request(&self.caller, id, wait.map(|w| w.min(max)))
            .await
            .map_err(refused)?;
        Ok(self.airlock.request_view_with_token(&req, &self.caller))
    }

    async fn cancel(&self, id: RequestId) -> Result<RequestView, ClientError> {
        let req = self
            .airlock
            .cancel(&self.caller, id)
            .await
            .map_err(refused)?;
        Ok(self.airlock.request_view_with_token(&req, &self.caller))
    }

    async fn consume(&self, body: &ConsumeBody) -> Result<ConsumeResponse, ClientError> {
        let (grant_id, uses_left) = self
            .airlock
            .consume(&self.caller, body.clone(), None)
            .await
            .map_err(refused)?;
        Ok(ConsumeResponse {
            grant_id,
            uses_left,
        })
    }

    async fn complete(
        &self,
        grant: GrantId,
        body: &CompleteBody,
    ) -> Result<CompleteResponse, ClientError> {
        self.airlock
            .complete(&self.caller, grant, body.clone())
            .await
            .map_err(refused)?;
        Ok(CompleteResponse {
            grant_id: grant,
            completed: true,
        })
    }

    async fn scram_login(&self, body: &ScramLoginBody) -> Result<ScramLoginResponse, ClientError> {
        self.airlock
            .scram_login(&self.caller, body.clone())
            .await
            .map_err(refused)
    }

    async fn key_live(
        &self,
        body: &airlock_api::KeyLiveBody,
    ) -> Result<airlock_api::KeyLiveResponse, ClientError> {
        self.airlock
            .key_live(&self.caller, body.clone())
            .await
            .map_err(refused)
    }

    async fn report_findings(
        &self,
        body: &airlock_api::FindingsBody,
    ) -> Result<airlock_api::FindingsResponse, ClientError> {
        self.airlock
            .report_findings(&self.caller, body.clone())
            .await
            .map_err(refused)
    }

    async fn whoami(&self, key: &str) -> Result<WhoamiResponse, ClientError> {
        let caller = self.airlock.authenticate(key).await.map_err(refused)?;
        Ok(WhoamiResponse {
            user: caller.user,
            role: caller.role.as_str().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use airlock_client::{Enforcer, Entry};
    use airlock_core::{RequestStatus, UserName, Verdict};
    use airlock_store::Role;
    use serde_json::json;

    use super::*;

    fn caller(user: &str, role: Role) -> Caller {
        Caller {
            user: UserName::parse(user).unwrap(),
            role,
            key_id: format!("test-{user}"),
        }
    }

    fn export(table: &str, rows: u64) -> CheckBody {
        serde_json::from_value(json!({
            "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": table}, "context": {"rows": rows},
        }))
        .unwrap()
    }

    /// An enforcer over the in-process gate runs the whole loop against
    /// the service: allow and deny at once; approval required waits, is
    /// woken by a review made meanwhile, consumes the grant once, and
    /// reports the outcome, leaving the request completed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enforcer_runs_the_loop_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::quickstart::prepare(&dir.path().join(".airlock")).unwrap();
        let config = crate::Config::load(&cfg).unwrap();
        let (airlock, _bg) = Airlock::start(config).await.unwrap();
        let gate = LocalGate::new(airlock.clone(), caller("proxy", Role::Enforcer));
        let enforcer = Enforcer::new(gate);
        let hold = Duration::from_secs(30);

        let allowed = enforcer.enter(&export("prod.orders", 5), hold).await;
        assert!(matches!(allowed, Ok(Entry::Allowed { .. })), "{allowed:?}");
        let denied = enforcer.enter(&export("prod.credentials", 5), hold).await;
        assert!(matches!(denied, Ok(Entry::Denied { .. })), "{denied:?}");

        // dave (data-owners) approves whatever appears in his list.
        let reviewer = {
            let airlock = airlock.clone();
            tokio::spawn(async move {
                let dave = caller("dave", Role::User);
                loop {
                    let page = airlock
                        .list_requests(&dave, vec![RequestStatus::Pending], 10, None)
                        .await
                        .unwrap();
                    if let Some(r) = page.requests.first() {
                        airlock
                            .review(
                                &dave,
                                r.id,
                                Verdict::Approve,
                                None,
                                "api",
                                Default::default(),
                            )
                            .await
                            .unwrap();
                        return r.id;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let body = export("prod.orders", 50_000);
        let entry = enforcer.enter(&body, hold).await.unwrap();
        let id = reviewer.await.unwrap();
        let Entry::Granted { request, grant } = entry else {
            panic!("expected a consumed grant, got {entry:?}");
        };
        assert_eq!(request.id, id);
        assert_eq!(grant.uses_left, 0);
        enforcer
            .complete(
                grant.grant_id,
                airlock_api::Outcome::Success,
                Default::default(),
            )
            .await
            .unwrap();
        let after = enforcer.gate().request(id, None).await.unwrap();
        assert_eq!(after.status, RequestStatus::Completed);

        // Spent: a second consume of the same grant is refused, typed.
        let again = enforcer.consume(&request, &body).await.unwrap_err();
        assert_eq!(again.code(), Some(airlock_api::ErrorCode::GrantSpent));
    }
}
