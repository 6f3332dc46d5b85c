//! Which policies can apply to a request, worked out once at load: the
//! policies indexed by the action their scope names (`action ==
//! Action::"export"`) and the resource type it names (`resource is Table`,
//! `resource == Table::"x"`), so a decision evaluates only those.
//!
//! Leaving a policy out whose scope excludes the request changes nothing:
//! Cedar checks the scope before the condition, so such a policy is neither
//! satisfied nor able to fail; the decision, its reasons and its errors are
//! the same as over the whole set (a property test holds the two to it).

use std::collections::{BTreeSet, HashMap};

use cedar_policy::{ActionConstraint, Policy, PolicySet, PolicySetError, ResourceConstraint};

use crate::compiled::CompiledSet;

/// Beyond this many (action × resource type) subsets, index by action
/// only: the subsets share their policies, but each is a set of its own.
const MAX_SUBSETS: usize = 4096;

/// The subsets for one action (or for every action no policy names).
#[derive(Debug)]
struct ByType {
    types: HashMap<String, CompiledSet>,
    /// For resource types no policy names.
    other: CompiledSet,
}

/// The policy set split by what a request's scope can match.
#[derive(Debug)]
pub(crate) struct PolicyIndex {
    actions: HashMap<String, ByType>,
    /// For actions no policy names by equality.
    other: ByType,
}

/// The action a policy's scope names, if exactly one (`None`: any).
fn action_of(p: &Policy) -> Option<String> {
    match p.action_constraint() {
        ActionConstraint::Eq(uid) => Some(uid.id().unescaped().to_owned()),
        ActionConstraint::Any | ActionConstraint::In(_) => None,
    }
}

/// The resource type a policy's scope names, if any (`None`: any type).
fn type_of(p: &Policy) -> Option<String> {
    match p.resource_constraint() {
        ResourceConstraint::Eq(uid) => Some(uid.type_name().to_string()),
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => Some(t.to_string()),
        ResourceConstraint::Any | ResourceConstraint::In(_) => None,
    }
}

impl PolicyIndex {
    /// Splits `set`. Fails only if Cedar refuses a subset of a set it
    /// already took (its message).
    pub(crate) fn build(set: &PolicySet) -> Result<Self, String> {
        let scoped: Vec<(Option<String>, Option<String>, &Policy)> = set
            .policies()
            .map(|p| (action_of(p), type_of(p), p))
            .collect();
        let actions: BTreeSet<&String> = scoped.iter().filter_map(|s| s.0.as_ref()).collect();
        let mut types: BTreeSet<&String> = scoped.iter().filter_map(|s| s.1.as_ref()).collect();
        if (actions.len() + 1) * (types.len() + 1) > MAX_SUBSETS {
            types.clear();
        }
        let by_type = |action: Option<&String>| -> Result<ByType, String> {
            let subset = |ty: Option<&String>| {
                PolicySet::from_policies(
                    scoped
                        .iter()
                        .filter(|(a, t, _)| {
                            let action_fits = a.is_none() || a.as_ref() == action;
                            // Indexed by type only when types are kept.
                            let type_fits = t.is_none() || types.is_empty() || t.as_ref() == ty;
                            action_fits && type_fits
                        })
                        .map(|(_, _, p)| (*p).clone()),
                )
                .map(|set| CompiledSet::new(&set))
                .map_err(|e: PolicySetError| e.to_string())
            };
            Ok(ByType {
                types: types
                    .iter()
                    .map(|t| Ok(((*t).clone(), subset(Some(t))?)))
                    .collect::<Result<_, String>>()?,
                other: subset(None)?,
            })
        };
        Ok(Self {
            actions: actions
                .iter()
                .map(|a| Ok(((*a).clone(), by_type(Some(a))?)))
                .collect::<Result<_, String>>()?,
            other: by_type(None)?,
        })
    }

    /// The resource types policies name.
    pub(crate) fn type_names(&self) -> impl Iterator<Item = &str> {
        self.other.types.keys().map(String::as_str)
    }

    /// The policies that can apply to `action` on a resource of type
    /// `resource_type`.
    pub(crate) fn for_request(&self, action: &str, resource_type: &str) -> &CompiledSet {
        let by = self.actions.get(action).unwrap_or(&self.other);
        by.types.get(resource_type).unwrap_or(&by.other)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn ids(set: &CompiledSet) -> Vec<String> {
        let mut v: Vec<String> = set.ids().map(ToString::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn a_request_sees_only_the_policies_its_scope_can_match() {
        let set = PolicySet::from_str(
            r#"
            permit(principal, action == Action::"read", resource);
            permit(principal, action == Action::"export", resource is Table);
            permit(principal, action == Action::"export", resource == File::"a");
            forbid(principal, action, resource is Table);
            permit(principal, action in [Action::"read", Action::"export"], resource);
            "#,
        )
        .unwrap();
        let index = PolicyIndex::build(&set).unwrap();
        assert_eq!(
            ids(index.for_request("export", "Table")),
            ["policy1", "policy3", "policy4"]
        );
        assert_eq!(
            ids(index.for_request("export", "File")),
            ["policy2", "policy4"]
        );
        assert_eq!(ids(index.for_request("export", "Other")), ["policy4"]);
        assert_eq!(
            ids(index.for_request("read", "Table")),
            ["policy0", "policy3", "policy4"]
        );
        assert_eq!(
            ids(index.for_request("wipe", "Table")),
            ["policy3", "policy4"]
        );
        assert_eq!(ids(index.for_request("wipe", "Other")), ["policy4"]);
    }
}
