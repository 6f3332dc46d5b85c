//! The policy simulator: decides an action exactly as `POST /v1/check`
//! would (same engine, same computed context) but creates nothing and
//! writes nothing.

use airlock_core::{Action, Decision};
use serde_json::{json, Map, Value};

use super::pages::SimulateForm;
use crate::service::threshold_view;
use crate::Airlock;

/// The break-glass form as a check's body (the caller's own action).
pub(crate) fn breakglass_body(
    form: &super::pages::BreakglassForm,
) -> Result<airlock_api::CheckBody, String> {
    let (kind, id) =
        airlock_core::action::parse_type_id(form.resource.trim()).map_err(|e| e.to_string())?;
    serde_json::from_value(json!({
        "action": form.action.trim(),
        "resource": {"type": kind.as_str(), "id": id.as_str()},
        "params": object("params", &form.params)?,
        "reason": form.reason,
    }))
    .map_err(|e| format!("not a valid action: {e}"))
}

fn object(field: &str, text: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    // By the API's rules: break-glass grants from this form at once.
    airlock_core::action::exact::map_from_str(text).map_err(|e| format!("{field}: {e}"))
}

impl Airlock {
    /// The decision for the form's action, as the simulator shows it.
    pub(crate) async fn simulate(&self, form: &SimulateForm) -> Result<Value, String> {
        let (kind, id) =
            airlock_core::action::parse_type_id(form.resource.trim()).map_err(|e| e.to_string())?;
        let (kind, id) = (kind.as_str(), id.as_str());
        let action: Action = serde_json::from_value(json!({
            "principal": form.principal.trim(),
            "action": form.action.trim(),
            "resource": {"type": kind, "id": id},
            "params": object("params", &form.params)?,
            "context": object("context", &form.context)?,
        }))
        .map_err(|e| format!("not a valid action: {e}"))?;
        let loaded = self.loaded.load_full();
        let context = self
            .context_for(&action, &loaded.engine, None)
            .await
            .map_err(|e| e.to_string())?;
        let decision = loaded
            .engine
            .decide(&action, context)
            .map_err(|e| e.to_string())?;
        Ok(match decision {
            Decision::Allow { policies } => json!({"decision": "allow", "policies": policies}),
            Decision::Deny { policies, message } => {
                json!({"decision": "deny", "policies": policies, "message": message})
            }
            Decision::ApprovalRequired {
                policies,
                requirement,
            } => {
                let thresholds: Vec<airlock_api::ThresholdView> = requirement
                    .thresholds
                    .iter()
                    .map(|t| threshold_view(&loaded.directory, t, 0, &action.principal))
                    .collect();
                json!({
                    "decision": "approval_required",
                    "policies": policies,
                    "thresholds": thresholds,
                    "request_ttl": requirement.request_ttl.to_string(),
                    "grant_ttl": requirement.grant_ttl.to_string(),
                    "max_uses": requirement.max_uses.get(),
                })
            }
        })
    }
}
