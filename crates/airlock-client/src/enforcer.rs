//! The enforcement loop over any [`Gate`]: check the action, wait for the
//! decision, consume the grant for exactly that action, perform it, and
//! report how it went. Fails closed: any error, refusal or undecided wait
//! ends in "do not perform".

use std::time::Duration;

use airlock_api::{
    CheckBody, CheckResponse, CompleteBody, ConsumeBody, ConsumeResponse, ErrorCode, Outcome,
    RequestView,
};
use airlock_core::{Action, GrantId, RequestStatus};
use serde_json::{Map, Value};

use crate::{ClientError, Gate};

/// How long one wait for a decision asks the server to hold the call.
const WAIT_STEP: Duration = Duration::from_secs(25);
/// While the server refuses waits (`too_many_waits`: all of this user's are
/// open elsewhere), how long between plain polls.
const CROWDED_PAUSE: Duration = Duration::from_secs(5);

/// Runs the enforcement loop through a [`Gate`].
#[derive(Debug, Clone)]
pub struct Enforcer<G> {
    gate: G,
}

/// How [`Enforcer::enter`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Allowed outright: perform it (no grant to report on).
    Allowed {
        /// Determining policies.
        policies: Vec<String>,
    },
    /// Denied by policy: do not perform it.
    Denied {
        /// Determining policies.
        policies: Vec<String>,
        /// Why.
        message: String,
    },
    /// Approved, and one use of the grant consumed: perform it once, then
    /// [`Enforcer::complete`].
    Granted {
        /// The request as decided.
        request: Box<RequestView>,
        /// The use consumed.
        grant: ConsumeResponse,
    },
    /// Still pending when the hold ran out: do not perform it (yet).
    Held {
        /// The request, as last seen.
        request: Box<RequestView>,
    },
    /// Denied, expired, cancelled or revoked by people or time: do not
    /// perform it.
    NotApproved {
        /// The request as decided.
        request: Box<RequestView>,
    },
}

impl<G: Gate> Enforcer<G> {
    /// An enforcer asking through `gate`.
    pub fn new(gate: G) -> Self {
        Self { gate }
    }

    /// The gate it asks through.
    pub fn gate(&self) -> &G {
        &self.gate
    }

    /// Step 1: decide the action.
    pub async fn check(&self, body: &CheckBody) -> Result<CheckResponse, ClientError> {
        self.gate.check(body).await
    }

    /// Step 2: wait for `request` to be decided, one [`Waiter::poll`] at a
    /// time (so a caller can show progress and stop at any point).
    pub fn waiter(&self, request: RequestView) -> Waiter<'_, G> {
        Waiter {
            gate: &self.gate,
            current: request,
            crowded: false,
        }
    }

    /// Step 3: spend one use of the approved `request`'s grant for the
    /// action `body` describes, as its principal. The grant binds the exact
    /// action: `body` must be what was checked.
    pub async fn consume(
        &self,
        request: &RequestView,
        body: &CheckBody,
    ) -> Result<ConsumeResponse, ClientError> {
        let token = request
            .grant
            .as_ref()
            .and_then(|g| g.token.clone())
            .ok_or(ClientError::NoToken)?;
        let action = Action {
            principal: request.principal.clone(),
            action: body.action.clone(),
            resource: body.resource.clone(),
            params: body.params.clone(),
            context: body.context.clone(),
        };
        self.gate.consume(&ConsumeBody { token, action }).await
    }

    /// Step 4: report how the consumed use went.
    pub async fn complete(
        &self,
        grant: GrantId,
        outcome: Outcome,
        detail: Map<String, Value>,
    ) -> Result<(), ClientError> {
        self.gate
            .complete(grant, &CompleteBody { outcome, detail })
            .await
            .map(|_| ())
    }

    /// Withdraws a request nobody needs any more (the user gave up).
    pub async fn cancel(&self, request: &RequestView) -> Result<RequestView, ClientError> {
        self.gate.cancel(request.id).await
    }

    /// Waits up to `hold` for `request` to be decided, woken by the
    /// decision (the gate's wait). Dropping this future cancels nothing:
    /// the request stays as it is.
    pub async fn wait(&self, request: RequestView, hold: Duration) -> Result<Waited, ClientError> {
        let mut waiter = self.waiter(request);
        let decided = tokio::time::timeout(hold, async {
            while !waiter.decided() {
                waiter.poll().await?;
            }
            Ok::<_, ClientError>(())
        })
        .await;
        match decided {
            Err(_held) => Ok(Waited::Held(waiter.into_current())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(Waited::Decided(waiter.into_current())),
        }
    }

    /// Steps 1 to 3 at once, for an enforcement point that holds its caller
    /// at most `hold`: the [`Entry`] says whether to perform the action.
    pub async fn enter(&self, body: &CheckBody, hold: Duration) -> Result<Entry, ClientError> {
        let request = match self.check(body).await? {
            CheckResponse::Allow { policies, .. } => return Ok(Entry::Allowed { policies }),
            CheckResponse::Deny {
                policies, message, ..
            } => return Ok(Entry::Denied { policies, message }),
            CheckResponse::ApprovalRequired { request, .. } => *request,
        };
        let request = match self.wait(request, hold).await? {
            Waited::Held(request) => {
                return Ok(Entry::Held {
                    request: Box::new(request),
                })
            }
            Waited::Decided(request) => request,
        };
        if request.status != RequestStatus::Approved {
            return Ok(Entry::NotApproved {
                request: Box::new(request),
            });
        }
        let grant = self.consume(&request, body).await?;
        Ok(Entry::Granted {
            request: Box::new(request),
            grant,
        })
    }
}

/// A request after [`Enforcer::wait`].
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// Decided (any way) within the hold.
    Decided(RequestView),
    /// Still pending when the hold ran out, as last seen.
    Held(RequestView),
}

/// Waits for one request's decision, a poll at a time.
#[derive(Debug)]
pub struct Waiter<'a, G> {
    gate: &'a G,
    current: RequestView,
    /// Set while the server refuses our waits: poll slowly without waiting
    /// until one frees.
    crowded: bool,
}

impl<G: Gate> Waiter<'_, G> {
    /// The request as last seen.
    pub fn current(&self) -> &RequestView {
        &self.current
    }

    /// The request as last seen, taken.
    pub fn into_current(self) -> RequestView {
        self.current
    }

    /// Whether it left `pending`.
    pub fn decided(&self) -> bool {
        self.current.status != RequestStatus::Pending
    }

    /// One round: asks the server to answer when the request is decided
    /// (or after a while); if it refuses because this user has too many
    /// waits open, pauses and reads the request without waiting instead,
    /// until a wait is accepted again. Dropping the future mid-way is safe.
    pub async fn poll(&mut self) -> Result<(), ClientError> {
        let id = self.current.id;
        let next = if self.crowded {
            tokio::time::sleep(CROWDED_PAUSE).await;
            self.gate.request(id, None).await
        } else {
            self.gate.request(id, Some(WAIT_STEP)).await
        };
        match next {
            Err(e) if e.code() == Some(ErrorCode::TooManyWaits) => {
                self.crowded = true;
                Ok(())
            }
            Err(e) => Err(e),
            Ok(r) => {
                self.current = r;
                self.crowded = false;
                Ok(())
            }
        }
    }
}
