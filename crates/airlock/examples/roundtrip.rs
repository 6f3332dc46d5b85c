//! Measures the approval round trip: from sending the final approval to the
//! waiting client holding its grant. The waiter and the approver may talk
//! to different nodes. Run by `bench/roundtrip.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

#[tokio::main]
async fn main() {
    let (wait_url, approve_url) = (arg("--wait"), arg("--approve"));
    let (requester, approver) = (arg("--requester"), arg("--approver"));
    let rounds: usize = arg("--rounds").parse().unwrap();
    let http = reqwest::Client::new();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 20 {
        let action = json!({
            "action": "export",
            "resource": {"type": "Table", "id": "orders"},
            "params": {"sql": format!("select * from orders -- round {i}")},
        });
        let r: Value = http
            .post(format!("{wait_url}/v1/check"))
            .bearer_auth(&requester)
            .json(&action)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["request"]["id"]
            .as_str()
            .expect("approval required")
            .to_owned();
        let waiter = {
            let (http, url, key, id) = (
                http.clone(),
                wait_url.clone(),
                requester.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let r: Value = http
                    .get(format!("{url}/v1/requests/{id}?wait=30"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let held = Instant::now();
                assert!(r["grant"]["token"].is_string(), "{r}");
                held
            })
        };
        // Let the waiter's request reach the server and subscribe.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        let r = http
            .post(format!("{approve_url}/v1/requests/{id}/reviews"))
            .bearer_auth(&approver)
            .json(&json!({"verdict": "approve"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let held = waiter.await.unwrap();
        if i >= 20 {
            times.push(held.duration_since(sent));
        }
    }
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "round trips: {rounds}  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.90).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}
