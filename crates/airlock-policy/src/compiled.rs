//! Policies made ready to evaluate once, at load: each policy's condition
//! expression built a single time, then evaluated per request by Cedar's
//! own evaluator, with Cedar's rule for combining the results.
//!
//! Why not `Authorizer::is_authorized`: for every request and every policy it
//! rebuilds the policy's condition (scope and clauses joined into a new
//! expression tree, then dropped), clones ids and annotations into a partial
//! response, and turns that into a response. On the quickstart set that
//! bookkeeping was most of a decision's time. The evaluation itself is
//! Cedar's (`cedar_policy_core::evaluator::Evaluator`, the one the
//! authorizer runs), so an expression means here what it means there; only
//! the combining is ours, and it is Cedar's rule, a few lines long:
//!
//! - a policy whose evaluation fails is not satisfied, and its error is
//!   reported (so Airlock denies: it refuses any decision with errors);
//! - any satisfied `forbid` denies, and the satisfied forbids are the
//!   reasons;
//! - otherwise any satisfied `permit` allows, and the satisfied permits are
//!   the reasons;
//! - otherwise deny, with no reasons.
//!
//! A property test in `engine.rs` holds decisions, reasons and error texts
//! to `Authorizer::is_authorized` over the whole set.

use cedar_policy::{Entities, PolicyId, PolicySet, Request};
use cedar_policy_core::ast::{self, Effect, Literal, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

/// One policy with its condition built.
#[derive(Debug)]
struct Ready {
    id: PolicyId,
    effect: Effect,
    /// Scope and clauses as one expression (`ast::Policy::condition`).
    condition: ast::Expr,
    /// The policy's slot values (a template-linked policy's condition
    /// refers to them).
    env: ast::SlotEnv,
}

/// A policy set whose conditions are built.
#[derive(Debug)]
pub(crate) struct CompiledSet {
    policies: Vec<Ready>,
}

/// What a set decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) allow: bool,
    /// The policies that determined the decision (unsorted).
    pub(crate) reasons: Vec<PolicyId>,
    /// One text per policy whose evaluation failed, as Cedar words it.
    pub(crate) errors: Vec<String>,
}

impl CompiledSet {
    pub(crate) fn new(set: &PolicySet) -> Self {
        Self {
            policies: set
                .policies()
                .map(|p| {
                    let policy: &ast::Policy = p.as_ref();
                    Ready {
                        id: p.id().clone(),
                        effect: policy.effect(),
                        condition: policy.condition(),
                        env: policy.env().clone(),
                    }
                })
                .collect(),
        }
    }

    /// The policies' ids.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> impl Iterator<Item = &PolicyId> {
        self.policies.iter().map(|p| &p.id)
    }

    /// Decides `request` over these policies and `entities`.
    pub(crate) fn authorize(&self, request: &Request, entities: &Entities) -> Verdict {
        let ast_request: &ast::Request = request.as_ref();
        let eval = Evaluator::new(
            ast_request.clone(),
            entities.as_ref(),
            Extensions::all_available(),
        );
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for p in &self.policies {
            match eval.interpret(&p.condition, &p.env) {
                Ok(v) => match v.value_kind() {
                    ValueKind::Lit(Literal::Bool(true)) => match p.effect {
                        Effect::Permit => permits.push(p.id.clone()),
                        Effect::Forbid => forbids.push(p.id.clone()),
                    },
                    ValueKind::Lit(Literal::Bool(false)) => {}
                    // A condition joins booleans with `&&`, so this cannot
                    // happen; were it to, the policy counts as failed.
                    _ => errors.push(format!(
                        "error while evaluating policy `{}`: its condition is not a boolean",
                        p.id
                    )),
                },
                Err(e) => errors.push(format!("error while evaluating policy `{}`: {e}", p.id)),
            }
        }
        if forbids.is_empty() {
            Verdict {
                allow: !permits.is_empty(),
                reasons: permits,
                errors,
            }
        } else {
            Verdict {
                allow: false,
                reasons: forbids,
                errors,
            }
        }
    }
}

impl Verdict {
    /// Cedar's response, in the same terms (the property test's reference).
    #[cfg(test)]
    pub(crate) fn of(response: &cedar_policy::Response) -> Self {
        Self {
            allow: response.decision() == cedar_policy::Decision::Allow,
            reasons: response.diagnostics().reason().cloned().collect(),
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        }
    }
}
