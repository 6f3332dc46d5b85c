//! The limits a policy sets on the facts it reads (`context.rows > 10000`),
//! found in its conditions, so an approver is shown "2,000,000 rows; limit
//! 10,000" rather than raw JSON.

use cedar_policy::Policy;
use serde_json::Value;

/// One comparison of a context fact with a number in a policy's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextLimit {
    /// The fact's path under `context` (`rows`, `dlp.card`).
    pub fact: String,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`, with the fact on the left.
    pub op: &'static str,
    /// The number it is compared with.
    pub limit: i64,
}

impl ContextLimit {
    /// Whether `value` is on the side of the limit the policy tests for.
    pub fn crossed_by(&self, value: i64) -> bool {
        match self.op {
            ">" => value > self.limit,
            ">=" => value >= self.limit,
            "<" => value < self.limit,
            "<=" => value <= self.limit,
            "==" => value == self.limit,
            _ => value != self.limit,
        }
    }
}

/// Every `context.PATH OP number` (or `number OP context.PATH`, turned
/// round) in `policy`'s `when` and `unless` conditions.
pub fn context_limits(policy: &Policy) -> Vec<ContextLimit> {
    let mut out = Vec::new();
    if let Ok(est) = policy.to_json() {
        for cond in est["conditions"].as_array().into_iter().flatten() {
            walk(&cond["body"], &mut out);
        }
    }
    out
}

fn walk(e: &Value, out: &mut Vec<ContextLimit>) {
    let Value::Object(map) = e else { return };
    for (op, args) in map {
        let flipped = match op.as_str() {
            ">" => Some(("<", ">")),
            ">=" => Some(("<=", ">=")),
            "<" => Some((">", "<")),
            "<=" => Some((">=", "<=")),
            "==" => Some(("==", "==")),
            "!=" => Some(("!=", "!=")),
            _ => None,
        };
        if let Some((turned, same)) = flipped {
            let (l, r) = (&args["left"], &args["right"]);
            match (context_path(l), number(r), context_path(r), number(l)) {
                (Some(fact), Some(limit), _, _) => out.push(ContextLimit {
                    fact,
                    op: same,
                    limit,
                }),
                (_, _, Some(fact), Some(limit)) => out.push(ContextLimit {
                    fact,
                    op: turned,
                    limit,
                }),
                _ => {}
            }
        }
        // Deeper: `&&`, `||`, `!`, `if`, calls.
        match args {
            Value::Object(_) => {
                for v in args.as_object().into_iter().flat_map(|m| m.values()) {
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
}

/// `context.a.b` as `a.b`.
fn context_path(e: &Value) -> Option<String> {
    let dot = e.get(".")?;
    let attr = dot["attr"].as_str()?;
    if dot["left"]["Var"] == "context" {
        return Some(attr.to_owned());
    }
    context_path(&dot["left"]).map(|p| format!("{p}.{attr}"))
}

fn number(e: &Value) -> Option<i64> {
    e.get("Value")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(src: &str) -> Vec<ContextLimit> {
        let p: Policy = src.parse().unwrap();
        context_limits(&p)
    }

    #[test]
    fn limits_are_found_in_conditions() {
        let found = limits(
            r#"permit(principal, action, resource) when {
                context has rows && context.rows > 10000 && (10 <= context.dlp.card || !(context.bytes == 5))
            } unless { context.hour < 7 };"#,
        );
        let got: Vec<_> = found
            .iter()
            .map(|l| format!("{} {} {}", l.fact, l.op, l.limit))
            .collect();
        assert_eq!(
            got,
            ["rows > 10000", "dlp.card >= 10", "bytes == 5", "hour < 7"]
        );
        assert!(found[0].crossed_by(2_000_000) && !found[0].crossed_by(10_000));
        assert!(found[1].crossed_by(10) && !found[1].crossed_by(9));
        assert!(limits("permit(principal, action, resource);").is_empty());
        assert!(limits(
            r#"permit(principal, action, resource) when { resource.size > 3 && context.x == "y" };"#
        )
        .is_empty());
    }
}
