//! Airlock's decision beside a bare Cedar `is_authorized` on the same
//! policies and entities: what the annotations and bookkeeping add.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::str::FromStr;

use airlock_core::{Action, GroupName, UserName};
use airlock_policy::{Directory, PolicyEngine, PolicySource};
use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

const POLICIES: &str = include_str!("../../../examples/quickstart/policies/quickstart.cedar");
const ENTITIES: &str = include_str!("../../../examples/quickstart/policies/entities.json");

fn directory() -> Directory {
    let u = |s: &str| UserName::parse(s).unwrap();
    let g = |s: &str| GroupName::parse(s).unwrap();
    Directory::new([
        (u("alice"), vec![g("engineering")]),
        (u("bob"), vec![g("security")]),
        (u("dave"), vec![g("data-owners")]),
    ])
}

fn bench(c: &mut Criterion) {
    let src = PolicySource {
        policies: vec![(PathBuf::from("quickstart.cedar"), POLICIES.to_owned())],
        schema: None,
        entities: Some(ENTITIES.to_owned()),
    };
    let engine = PolicyEngine::from_source(&src, &directory()).unwrap();
    let context = json!({"rows": 500, "local_hour": 10})
        .as_object()
        .unwrap()
        .clone();
    let allow: Action = serde_json::from_value(json!({
        "principal": "alice", "action": "export",
        "resource": {"type": "Table", "id": "prod.orders"},
        "params": {"sql": "select * from orders"},
    }))
    .unwrap();
    let pii: Action = serde_json::from_value(json!({
        "principal": "alice", "action": "export",
        "resource": {"type": "Table", "id": "prod.customers"},
    }))
    .unwrap();

    // Bare Cedar: the same policies and entities, ids as Airlock assigns.
    let set: PolicySet = engine.policy_set().clone();
    let entities: Entities = engine.entities().clone();
    let auth = Authorizer::new();
    let p = EntityUid::from_str(r#"User::"alice""#).unwrap();
    let a = EntityUid::from_str(r#"Action::"export""#).unwrap();
    let r = EntityUid::from_str(r#"Table::"prod.orders""#).unwrap();

    let mut g = c.benchmark_group("decide");
    g.bench_function("bare_cedar_is_authorized", |b| {
        b.iter(|| {
            let ctx =
                Context::from_json_value(serde_json::Value::Object(context.clone()), None).unwrap();
            let req = Request::new(p.clone(), a.clone(), r.clone(), ctx, None).unwrap();
            std::hint::black_box(auth.is_authorized(&req, &set, &entities))
        })
    });
    g.bench_function("airlock_allow", |b| {
        b.iter(|| std::hint::black_box(engine.decide(&allow, context.clone()).unwrap()))
    });
    // As the server decides it: with the caller's address as `source_ip`.
    let mut served = context.clone();
    served.insert(
        "source_ip".into(),
        json!({"__extn": {"fn": "ip", "arg": "10.1.2.3"}}),
    );
    g.bench_function("airlock_allow_with_source_ip", |b| {
        b.iter(|| std::hint::black_box(engine.decide(&allow, served.clone()).unwrap()))
    });
    g.bench_function("airlock_approval_required", |b| {
        b.iter(|| std::hint::black_box(engine.decide(&pii, context.clone()).unwrap()))
    });
    g.bench_function("fingerprint", |b| {
        b.iter(|| std::hint::black_box(allow.fingerprint()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
