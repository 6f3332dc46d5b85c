//! Policy test cases (`airlock policy test FILE`): actions in, expected
//! decisions and thresholds out, with a readable diff for each failure.
//!
//! ```toml
//! policies = "policies"          # relative to this file; default: its folder
//! [[users]]
//! name = "alice"
//! groups = ["engineering"]
//!
//! [[cases]]
//! name = "personal data needs security and owners"
//! principal = "alice"
//! action = "export"
//! resource = { type = "Table", id = "prod.customers", attrs = { tags = ["pii"] } }
//! context = { local_hour = 10 }
//! expect = "approval_required"
//! thresholds = [{ groups = ["security"], quorum = 2 }, { groups = ["data-owners"], quorum = 1 }]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use airlock_core::action::Resource;
use airlock_core::{Action, ActionName, Decision, GroupName, UserName};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Directory, PolicyEngine};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The policy directory, relative to the test file.
    #[serde(default)]
    pub policies: Option<PathBuf>,
    /// Users and their groups, as in the config's `[[users]]`.
    #[serde(default)]
    pub users: Vec<CaseUser>,
    /// The cases.
    #[serde(default)]
    pub cases: Vec<Case>,
}

/// A user in a test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseUser {
    /// The user's name.
    pub name: UserName,
    /// The user's groups.
    #[serde(default)]
    pub groups: Vec<GroupName>,
}

/// One expected threshold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedThreshold {
    /// Approver groups.
    pub groups: Vec<GroupName>,
    /// Approvals needed.
    #[serde(default = "one")]
    pub quorum: u32,
}

fn one() -> u32 {
    1
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// Who.
    pub principal: UserName,
    /// The verb.
    pub action: ActionName,
    /// On what.
    pub resource: Resource,
    /// Bound params.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Context, given in full (nothing is computed in tests).
    #[serde(default)]
    pub context: Map<String, Value>,
    /// `allow`, `deny` or `approval_required`.
    pub expect: String,
    /// For `approval_required`: the thresholds, in any order.
    #[serde(default)]
    pub thresholds: Option<Vec<ExpectedThreshold>>,
    /// The determining policy ids, in any order.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

/// The result of running a file.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per case, and diff lines under failures.
    pub text: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

/// Why a test file could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// Reading the file.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// TOML or field errors.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// The policies did not load.
    #[error(transparent)]
    Load(#[from] crate::LoadError),
}

/// Runs the cases in `path`.
pub fn run_file(path: &Path) -> Result<Report, CaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| CaseError::Io(path.to_owned(), e))?;
    let file: CaseFile =
        toml::from_str(&text).map_err(|e| CaseError::Parse(path.to_owned(), e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let dir = match &file.policies {
        Some(p) => base.join(p),
        None => base.to_owned(),
    };
    let directory = Directory::new(
        file.users
            .iter()
            .map(|u| (u.name.clone(), u.groups.clone())),
    );
    let engine = PolicyEngine::load(&dir, &directory)?;
    Ok(run(&engine, &file.cases))
}

fn describe(thresholds: &[ExpectedThreshold]) -> String {
    let parts: Vec<String> = thresholds
        .iter()
        .map(|t| {
            let g: Vec<&str> = t.groups.iter().map(|g| g.as_str()).collect();
            format!("{} x{}", g.join("|"), t.quorum)
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn normalised(mut t: Vec<ExpectedThreshold>) -> Vec<ExpectedThreshold> {
    for x in &mut t {
        x.groups.sort();
    }
    t.sort_by(|a, b| (&a.groups, a.quorum).cmp(&(&b.groups, b.quorum)));
    t
}

/// Runs cases against a loaded engine.
pub fn run(engine: &PolicyEngine, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for case in cases {
        let action = Action {
            principal: case.principal.clone(),
            action: case.action.clone(),
            resource: case.resource.clone(),
            params: case.params.clone(),
            context: case.context.clone(),
        };
        let mut diffs = Vec::new();
        match engine.decide(&action, case.context.clone()) {
            Err(e) => diffs.push(format!("  error: {e}")),
            Ok(decision) => {
                if decision.outcome() != case.expect {
                    diffs.push(format!("  - expected: {}", case.expect));
                    diffs.push(format!("  + got:      {}", decision.outcome()));
                }
                if let Some(want) = &case.thresholds {
                    let got = match &decision {
                        Decision::ApprovalRequired { requirement, .. } => requirement
                            .thresholds
                            .iter()
                            .map(|t| ExpectedThreshold {
                                groups: t.groups.clone(),
                                quorum: t.quorum.get(),
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    let (want, got) = (normalised(want.clone()), normalised(got));
                    if want != got {
                        diffs.push(format!("  - thresholds: {}", describe(&want)));
                        diffs.push(format!("  + thresholds: {}", describe(&got)));
                    }
                }
                if let Some(want) = &case.policies {
                    let mut want = want.clone();
                    want.sort();
                    let mut got = decision.policies().to_vec();
                    got.sort();
                    if want != got {
                        diffs.push(format!("  - policies: [{}]", want.join(", ")));
                        diffs.push(format!("  + policies: [{}]", got.join(", ")));
                    }
                }
            }
        }
        if diffs.is_empty() {
            report.passed += 1;
            let _ = writeln!(report.text, "ok   {}", case.name);
        } else {
            report.failed += 1;
            let _ = writeln!(report.text, "FAIL {}", case.name);
            for d in diffs {
                let _ = writeln!(report.text, "{d}");
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} passed, {} failed",
        report.passed, report.failed
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cases_and_diffs_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "@approvers(\"security\")\n@quorum(\"2\")\npermit(principal, action == Action::\"export\", resource);",
        )
        .unwrap();
        let cases = r#"
[[users]]
name = "alice"
groups = ["engineering"]

[[cases]]
name = "export needs two"
principal = "alice"
action = "export"
resource = { type = "Table", id = "t" }
expect = "approval_required"
thresholds = [{ groups = ["security"], quorum = 2 }]

[[cases]]
name = "wrong on purpose"
principal = "alice"
action = "export"
resource = { type = "Table", id = "t" }
expect = "allow"
thresholds = [{ groups = ["security"], quorum = 1 }]
"#;
        let file = dir.path().join("cases.toml");
        std::fs::write(&file, cases).unwrap();
        let report = run_file(&file).unwrap();
        assert_eq!((report.passed, report.failed), (1, 1));
        assert!(
            report
                .text
                .contains("- expected: allow\n  + got:      approval_required"),
            "{}",
            report.text
        );
        assert!(
            report
                .text
                .contains("- thresholds: [security x1]\n  + thresholds: [security x2]"),
            "{}",
            report.text
        );
    }
}
