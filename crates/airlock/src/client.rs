//! Commands that talk to a running server over the HTTP API: `check`,
//! `run`, and `requests`, which make the terminal an approval channel.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use airlock_core::display::{json_compact, visible};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::Output;

/// Exit code when the action is denied.
const EXIT_DENIED: u8 = 3;
/// Exit code when the request expired, was cancelled or revoked.
const EXIT_NOT_APPROVED: u8 = 4;
/// Exit code after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Where the server is and who we are.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Server URL.
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key.
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An action, as flags.
#[derive(Debug, Args, Clone)]
pub struct ActionArgs {
    /// The verb, e.g. export.
    #[arg(long)]
    pub action: String,
    /// TYPE:ID, e.g. Table:prod.customers or Db::Table:prod.customers
    /// (the first single colon separates; or give --type and --id).
    #[arg(long, required_unless_present_all = ["kind", "id"], conflicts_with_all = ["kind", "id"])]
    pub resource: Option<String>,
    /// The resource type alone, e.g. Db::Table (with --id).
    #[arg(long = "type", value_name = "TYPE", requires = "id")]
    pub kind: Option<String>,
    /// The resource id alone, taken as it is (with --type).
    #[arg(long, value_name = "ID", requires = "kind")]
    pub id: Option<String>,
    /// A resource attribute K=V (V read as JSON when it parses, else text).
    #[arg(long = "attr", value_name = "K=V")]
    pub attrs: Vec<String>,
    /// A bound parameter K=V (text). Changing any changes the action.
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// A context fact K=V (V read as JSON when it parses, else text).
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// Why, for the approvers.
    #[arg(long)]
    pub reason: Option<String>,
    /// Act for another principal (enforcer keys only).
    #[arg(long)]
    pub principal: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Output,
}

/// `airlock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub action: ActionArgs,
    /// The command to run once approved.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `airlock outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Notifications by state (default: failed).
    List {
        /// pending, delivered or failed.
        #[arg(long, default_value = "failed")]
        status: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// Puts a failed notification back in line.
    Retry {
        /// The message id (msg_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
}

/// `airlock outbox list|retry`.
pub async fn outbox(cmd: OutboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OutboxCommand::List { status, conn, out } => {
            let res = Client::new(&conn)?
                .get(&format!("/v1/outbox?status={status}"))
                .await?;
            if out.json {
                println!("{}", json_compact(&res));
                return Ok(ExitCode::SUCCESS);
            }
            let list = res["messages"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no {status} notifications");
            }
            for m in list {
                println!(
                    "{}  {}  {}  {} attempt(s){}",
                    text(&m["id"]),
                    text(&m["event"]),
                    text(&m["target"]),
                    m["attempts"],
                    m["last_error"]
                        .as_str()
                        .map(|e| format!("  last error: {}", visible(e)))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Retry { id, conn, out } => {
            let res = Client::new(&conn)?
                .post(&format!("/v1/outbox/{id}/retry"), &json!({}))
                .await?;
            if out.json {
                println!("{}", json_compact(&res));
            } else {
                println!("{} will be sent again", visible(&id));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `airlock requests …`
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Requests you may see (default: pending), newest first, following
    /// the server's pages up to --max.
    List {
        /// pending, approved, denied, …, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Most requests to show; when more remain, the command to see
        /// them is printed.
        #[arg(long, default_value_t = 500)]
        max: u32,
        /// Start after this cursor (as printed by an earlier list).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// One request in full.
    Show {
        /// Request id.
        id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// Withdraw your own pending request.
    Cancel {
        /// Request id.
        id: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
    /// Kill an approved request's grant.
    Revoke {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        out: Output,
    },
}

/// An error answer from the server.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiFailure {
    status: u16,
    code: String,
    message: String,
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    fn new(conn: &Conn) -> anyhow::Result<Self> {
        let token = conn
            .token
            .clone()
            .ok_or_else(|| anyhow!("no API key: pass --token or set AIRLOCK_TOKEN"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            url: conn.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach Airlock at {}", self.url))?;
        let status = res.status().as_u16();
        let value: Value = res.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            let e = &value["error"];
            // Error messages can quote what a requester wrote.
            return Err(ApiFailure {
                status,
                code: visible(e["code"].as_str().unwrap_or("unknown")).into_owned(),
                message: visible(e["message"].as_str().unwrap_or("request failed")).into_owned(),
            }
            .into());
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None, Duration::from_secs(30))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            path,
            Some(body),
            Duration::from_secs(30),
        )
        .await
    }
}

/// A string field of an answer, inert on a terminal: whatever a requester
/// or reviewer wrote can hold escape sequences, carriage returns or
/// bidirectional overrides meant to make the approver misread it.
fn text(v: &Value) -> String {
    visible(v.as_str().unwrap_or("")).into_owned()
}

fn kv(s: &str) -> anyhow::Result<(String, &str)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{s:?} is not K=V"))?;
    if k.is_empty() {
        bail!("{s:?} has an empty key");
    }
    Ok((k.to_owned(), v))
}

fn json_or_text(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
}

/// Builds the action object shared by check and consume; both must build
/// the same one or the fingerprints differ.
fn action_json(a: &ActionArgs, command: Option<&[String]>) -> anyhow::Result<Value> {
    let (kind, id) = match (&a.resource, &a.kind, &a.id) {
        (Some(r), _, _) => {
            airlock_core::action::parse_type_id(r).map_err(|e| anyhow!("--resource: {e}"))?
        }
        (None, Some(k), Some(i)) => (
            airlock_core::action::ResourceType::parse(k).map_err(|e| anyhow!("--type: {e}"))?,
            airlock_core::action::ResourceId::parse(i).map_err(|e| anyhow!("--id: {e}"))?,
        ),
        _ => bail!("give --resource TYPE:ID, or --type and --id"),
    };
    let (kind, id) = (kind.as_str().to_owned(), id.as_str().to_owned());
    let mut attrs = Map::new();
    for s in &a.attrs {
        let (k, v) = kv(s)?;
        attrs.insert(k, json_or_text(v));
    }
    let mut params = BTreeMap::new();
    for s in &a.params {
        let (k, v) = kv(s)?;
        params.insert(k, Value::String(v.to_owned()));
    }
    if let Some(cmd) = command {
        // The exact command line binds the grant: approval for one command
        // cannot run another.
        params.insert("command".to_owned(), json!(cmd));
    }
    let mut context = Map::new();
    for s in &a.context {
        let (k, v) = kv(s)?;
        context.insert(k, json_or_text(v));
    }
    let mut v = json!({
        "action": a.action,
        "resource": {"type": kind, "id": id, "attrs": attrs},
        "params": params,
        "context": context,
    });
    if let Some(p) = &a.principal {
        v["principal"] = json!(p);
    }
    Ok(v)
}

pub async fn check(a: ActionArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.conn)?;
    let mut body = action_json(&a, None)?;
    if let Some(r) = &a.reason {
        body["reason"] = json!(r);
    }
    let res = client.post("/v1/check", &body).await?;
    if a.out.json {
        println!("{}", json_compact(&res));
    } else {
        match res["decision"].as_str() {
            Some("allow") => println!("allow ({})", policies(&res)),
            Some("deny") => println!("deny: {}", text(&res["message"])),
            _ => {
                println!("approval required: request {}", text(&res["request"]["id"]));
                println!("  {}", progress(&res["request"]));
            }
        }
    }
    Ok(match res["decision"].as_str() {
        Some("allow") => ExitCode::SUCCESS,
        Some("deny") => ExitCode::from(EXIT_DENIED),
        _ => ExitCode::from(EXIT_NOT_APPROVED),
    })
}

fn policies(v: &Value) -> String {
    v["policies"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .map(visible)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// "security 1/2 (bob, carol) · data-owners 0/1 (dave)"
fn progress(req: &Value) -> String {
    let parts: Vec<String> = req["thresholds"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let groups: Vec<_> = t["groups"]
                        .as_array()
                        .map(|g| g.iter().filter_map(Value::as_str).map(visible).collect())
                        .unwrap_or_default();
                    let who: Vec<_> = t["eligible"]
                        .as_array()
                        .map(|g| g.iter().filter_map(Value::as_str).map(visible).collect())
                        .unwrap_or_default();
                    format!(
                        "{} {}/{} ({})",
                        groups.join("|"),
                        t["approvals"].as_u64().unwrap_or(0),
                        t["quorum"].as_u64().unwrap_or(1),
                        if who.is_empty() {
                            "no eligible approver".to_owned()
                        } else {
                            who.join(", ")
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    parts.join(" · ")
}

fn time_left(req: &Value) -> String {
    let Some(exp) = req["expires_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    else {
        return String::new();
    };
    let secs = (exp.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .num_seconds()
        .max(0);
    format!("{}m{:02}s left", secs / 60, secs % 60)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let a = &args.action;
    let client = Client::new(&a.conn)?;
    let action = action_json(a, Some(&args.command))?;
    let mut body = action.clone();
    if let Some(r) = &a.reason {
        body["reason"] = json!(r);
    }
    let res = client.post("/v1/check", &body).await?;
    match res["decision"].as_str() {
        Some("allow") => {
            eprintln!("airlock: allowed by {}", policies(&res));
            return run_command(&args.command, None, &client).await;
        }
        Some("deny") => {
            eprintln!("airlock: denied: {}", text(&res["message"]));
            return Ok(ExitCode::from(EXIT_DENIED));
        }
        _ => {}
    }
    let mut req = res["request"].clone();
    let id = req["id"]
        .as_str()
        .ok_or_else(|| anyhow!("server sent no request id"))?
        .to_owned();
    let id = visible(&id).into_owned();
    eprintln!("airlock: approval required for request {id}");
    eprintln!("airlock: {}", text(&req["url"]));
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Set while the server refuses our waits (all of this user's are open
    // elsewhere): poll slowly without waiting until one frees.
    let mut crowded = false;
    loop {
        if req["status"] != "pending" {
            break;
        }
        let line = format!("waiting: {} · {}", progress(&req), time_left(&req));
        let shown = format!("waiting: {}", progress(&req));
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if shown != last_line {
            eprintln!("airlock: {line}");
        }
        last_line = shown;
        let (path, pause) = if crowded {
            (format!("/v1/requests/{id}"), Duration::from_secs(5))
        } else {
            (format!("/v1/requests/{id}?wait=25"), Duration::ZERO)
        };
        let poll = async {
            tokio::time::sleep(pause).await;
            client
                .call(reqwest::Method::GET, &path, None, Duration::from_secs(40))
                .await
        };
        tokio::pin!(poll);
        let next = loop {
            tokio::select! {
                r = &mut poll => break Some(r),
                _ = tick.tick(), if tty => {
                    eprint!("\r\x1b[2Kwaiting: {} · {}", progress(&req), time_left(&req));
                    let _ = std::io::stderr().flush();
                }
                _ = tokio::signal::ctrl_c() => break None,
            }
        };
        match next {
            Some(Err(e))
                if e.downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.code == "too_many_waits") =>
            {
                crowded = true;
            }
            Some(r) => {
                req = r?;
                crowded = false;
            }
            None => {
                if tty {
                    eprintln!();
                }
                match client
                    .post(&format!("/v1/requests/{id}/cancel"), &json!({}))
                    .await
                {
                    Ok(_) => eprintln!("airlock: interrupted; request {id} cancelled"),
                    Err(e) => {
                        eprintln!("airlock: interrupted; could not cancel request {id}: {e:#}")
                    }
                }
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
        }
    }
    if tty {
        eprintln!();
    }
    let status = text(&req["status"]);
    if status != "approved" {
        let why = req["reviews"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["verdict"] == "deny"))
            .map(|r| {
                format!(
                    " by {}: {}",
                    visible(r["reviewer"].as_str().unwrap_or("?")),
                    visible(r["reason"].as_str().unwrap_or("no reason given"))
                )
            })
            .unwrap_or_default();
        eprintln!("airlock: request {id} was {status}{why}; not running the command");
        return Ok(ExitCode::from(if status == "denied" {
            EXIT_DENIED
        } else {
            EXIT_NOT_APPROVED
        }));
    }
    let token = req["grant"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("approved, but no grant token was shown to this key"))?;
    let mut consume_action = action.clone();
    consume_action["principal"] = req["principal"].clone();
    let consumed = client
        .post(
            "/v1/grants/consume",
            &json!({"token": token, "action": consume_action}),
        )
        .await;
    let consumed = match consumed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("airlock: the grant was refused: {e:#}; not running the command");
            return Ok(ExitCode::from(EXIT_NOT_APPROVED));
        }
    };
    let gid = text(&consumed["grant_id"]);
    eprintln!("airlock: approved; grant {gid} consumed; running the command");
    run_command(&args.command, Some(&gid), &client).await
}

async fn run_command(
    command: &[String],
    grant: Option<&str>,
    client: &Client,
) -> anyhow::Result<ExitCode> {
    let (prog, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let status = tokio::process::Command::new(prog).args(rest).status().await;
    let (code, detail) = match &status {
        Ok(s) => (s.code().unwrap_or(128), json!({"exit_code": s.code()})),
        Err(e) => (127, json!({"error": e.to_string()})),
    };
    if let Some(gid) = grant {
        let outcome = if code == 0 { "success" } else { "failure" };
        if let Err(e) = client
            .post(
                &format!("/v1/grants/{gid}/complete"),
                &json!({"outcome": outcome, "detail": detail}),
            )
            .await
        {
            eprintln!("airlock: could not report the outcome: {e:#}");
        }
    }
    if let Err(e) = status {
        eprintln!("airlock: cannot run {prog}: {e}");
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// One request for a person to read: every field a requester or reviewer
/// could have written is shown inert.
fn print_request(req: &Value) {
    println!("{}  {}", text(&req["id"]), text(&req["status"]));
    println!(
        "  {} wants to {}",
        text(&req["principal"]),
        text(&req["action"]),
    );
    // Type and id apart: `Db::Table` with id `x` and `Db` with id
    // `:Table:x` must not read alike.
    println!("  resource type: {}", text(&req["resource"]["type"]));
    println!("  resource id:   {}", text(&req["resource"]["id"]));
    if let Some(p) = req["params"].as_object().filter(|p| !p.is_empty()) {
        println!("  params: {}", json_compact(&Value::Object(p.clone())));
    }
    // Every description the action was decided on (a later check with
    // other facts may have raised what it needs).
    for d in req["decisions"].as_array().into_iter().flatten() {
        println!(
            "  decided {} by {} on context {}",
            text(&d["at"]),
            text(&d["by"]),
            json_compact(&d["context"])
        );
    }
    if let Some(r) = req["reason"].as_str() {
        println!("  reason: {}", visible(r));
    }
    println!("  approvals: {}", progress(req));
    if req["status"] == "pending" {
        println!(
            "  expires: {} ({})",
            text(&req["expires_at"]),
            time_left(req)
        );
    }
    for r in req["reviews"].as_array().into_iter().flatten() {
        println!(
            "  {} {} via {}{}",
            text(&r["reviewer"]),
            text(&r["verdict"]),
            text(&r["channel"]),
            r["reason"]
                .as_str()
                .map(|s| format!(": {}", visible(s)))
                .unwrap_or_default()
        );
    }
}

/// The server's pages of requests, followed until `max` are in hand or
/// none are left: `{"requests": [...], "next": CURSOR-or-null}`.
async fn list_pages(
    c: &Client,
    status: &str,
    max: u32,
    mut after: Option<String>,
) -> anyhow::Result<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let want = max.saturating_sub(all.len() as u32).clamp(1, 1000);
        let mut path = format!("/v1/requests?status={status}&limit={want}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = c.get(&path).await?;
        all.extend(page["requests"].as_array().cloned().unwrap_or_default());
        after = page["next"].as_str().map(str::to_owned);
        if after.is_none() || all.len() as u32 >= max {
            break;
        }
    }
    Ok(json!({"requests": all, "next": after}))
}

pub async fn requests(cmd: RequestsCommand) -> anyhow::Result<ExitCode> {
    let (conn, out, res) = match &cmd {
        RequestsCommand::List {
            status,
            max,
            after,
            conn,
            out,
        } => {
            let c = Client::new(conn)?;
            (
                conn,
                out,
                list_pages(&c, status, *max, after.clone()).await?,
            )
        }
        RequestsCommand::Show { id, conn, out } => {
            let c = Client::new(conn)?;
            (conn, out, c.get(&format!("/v1/requests/{id}")).await?)
        }
        RequestsCommand::Approve {
            id,
            reason,
            conn,
            out,
        }
        | RequestsCommand::Deny {
            id,
            reason,
            conn,
            out,
        } => {
            let verdict = if matches!(cmd, RequestsCommand::Approve { .. }) {
                "approve"
            } else {
                "deny"
            };
            let c = Client::new(conn)?;
            let body = json!({"verdict": verdict, "reason": reason, "channel": "cli"});
            (
                conn,
                out,
                c.post(&format!("/v1/requests/{id}/reviews"), &body).await?,
            )
        }
        RequestsCommand::Cancel { id, conn, out } => {
            let c = Client::new(conn)?;
            (
                conn,
                out,
                c.post(&format!("/v1/requests/{id}/cancel"), &json!({}))
                    .await?,
            )
        }
        RequestsCommand::Revoke {
            id,
            reason,
            conn,
            out,
        } => {
            let c = Client::new(conn)?;
            (
                conn,
                out,
                c.post(
                    &format!("/v1/requests/{id}/revoke"),
                    &json!({"reason": reason}),
                )
                .await?,
            )
        }
    };
    let _ = conn;
    if out.json {
        println!("{}", json_compact(&res));
    } else if let Some(list) = res["requests"].as_array() {
        if list.is_empty() {
            println!("no requests");
        }
        for r in list {
            print_request(r);
        }
        if let (Some(next), RequestsCommand::List { status, .. }) = (res["next"].as_str(), &cmd) {
            println!("more: airlock requests list --status {status} --after {next}");
        }
    } else {
        print_request(&res);
    }
    Ok(ExitCode::SUCCESS)
}
