//! Commands that talk to a running server over the HTTP API: `check`,
//! `run`, and `requests`, which make the terminal an approval channel.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use airlock_client::api::{
    CheckBody, CheckResponse, Outcome, ReasonBody, RequestList, RequestView, ReviewBody,
    ReviewChannel,
};
use airlock_client::{Client, ClientError, Enforcer};
use airlock_core::action::Resource;
use airlock_core::display::{json_compact, mixed_scripts_shown, visible};
use airlock_core::{ActionName, RequestStatus, UserName, Verdict};
use anyhow::{anyhow, bail};
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
            let res = connect(&conn)?
                .get_value(&format!("/v1/outbox?status={status}"))
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
            let res = connect(&conn)?
                .post_value(&format!("/v1/outbox/{id}/retry"), &json!({}))
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
    /// Approve a request. When its policy asks `@step_up("totp")`, the
    /// current code from your authenticator is asked for (or give it with
    /// `--totp`).
    Approve {
        /// Request id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// A current TOTP code, for an approval that needs step-up.
        #[arg(long)]
        totp: Option<String>,
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

/// The typed API client for `conn`.
fn connect(conn: &Conn) -> anyhow::Result<Client> {
    let token = conn
        .token
        .as_deref()
        .ok_or_else(|| anyhow!("no API key: pass --token or set AIRLOCK_TOKEN"))?;
    Ok(Client::new(&conn.url, token)?)
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

/// Builds the check body, whose action `run` consumes again; check and
/// consume must describe the same action or the fingerprints differ.
fn check_body(a: &ActionArgs, command: Option<&[String]>) -> anyhow::Result<CheckBody> {
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
    // A key given twice is refused, not settled by the last one: the
    // action asked about must be the one the user wrote.
    let twice = |flag: &str, k: &str| anyhow!("--{flag} {k} is given more than once");
    let mut attrs = Map::new();
    for s in &a.attrs {
        let (k, v) = kv(s)?;
        if attrs.insert(k.clone(), json_or_text(v)).is_some() {
            bail!(twice("attr", &k));
        }
    }
    let mut params = BTreeMap::new();
    for s in &a.params {
        let (k, v) = kv(s)?;
        if params
            .insert(k.clone(), Value::String(v.to_owned()))
            .is_some()
        {
            bail!(twice("param", &k));
        }
    }
    if let Some(cmd) = command {
        // The exact command line binds the grant: approval for one command
        // cannot run another.
        if params.insert("command".to_owned(), json!(cmd)).is_some() {
            bail!("--param command is the command line itself under `airlock run`");
        }
    }
    let mut context = Map::new();
    for s in &a.context {
        let (k, v) = kv(s)?;
        // Said, not refused: an enforcer may pass its end user's address,
        // and the server is where a user key's claim is dropped.
        if airlock_server::service::COMPUTED_CONTEXT.contains(&k.as_str()) {
            eprintln!("note: context {k} is computed by Airlock; a user key's value is dropped");
        }
        if context.insert(k.clone(), json_or_text(v)).is_some() {
            bail!(twice("context", &k));
        }
    }
    let principal = match &a.principal {
        Some(p) => Some(UserName::parse(p).map_err(|e| anyhow!("--principal: {e}"))?),
        None => None,
    };
    Ok(CheckBody {
        principal,
        action: ActionName::parse(&a.action).map_err(|e| anyhow!("--action: {e}"))?,
        resource: Resource { kind, id, attrs },
        params,
        context,
        reason: a.reason.clone(),
    })
}

/// The JSON of an answer, for `--json`.
fn to_json(v: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(json_compact(&serde_json::to_value(v)?))
}

/// `airlock breakglass`: prints the request and, on the last line, the
/// grant token (the action's holder presents it to consume).
pub async fn breakglass(a: ActionArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.conn)?;
    let body = check_body(&a, None)?;
    let req = client.breakglass(&body).await?;
    if a.out.json {
        println!("{}", to_json(&req)?);
    } else {
        print_request(&req);
        eprintln!(
            "break-glass: granted at once; every channel was alerted and two others must review it"
        );
        if let Some(token) = req.grant.as_ref().and_then(|g| g.token.as_deref()) {
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn check(a: ActionArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.conn)?;
    let body = check_body(&a, None)?;
    let res = client.check(&body).await?;
    if a.out.json {
        println!("{}", to_json(&res)?);
    } else {
        match &res {
            CheckResponse::Allow { policies: p, .. } => println!("allow ({})", policies(p)),
            CheckResponse::Deny { message, .. } => println!("deny: {}", visible(message)),
            CheckResponse::ApprovalRequired { request, .. } => {
                println!("approval required: request {}", request.id);
                println!("  {}", progress(request));
            }
        }
    }
    Ok(match res {
        CheckResponse::Allow { .. } => ExitCode::SUCCESS,
        CheckResponse::Deny { .. } => ExitCode::from(EXIT_DENIED),
        CheckResponse::ApprovalRequired { .. } => ExitCode::from(EXIT_NOT_APPROVED),
    })
}

fn policies(p: &[String]) -> String {
    p.iter().map(|p| visible(p)).collect::<Vec<_>>().join(", ")
}

/// "security 1/2 (bob, carol) · data-owners 0/1 (dave)"
fn progress(req: &RequestView) -> String {
    let parts: Vec<String> = req
        .thresholds
        .iter()
        .map(|t| {
            let groups: Vec<_> = t.groups.iter().map(|g| visible(g.as_str())).collect();
            let who: Vec<_> = t.eligible.iter().map(|u| visible(u.as_str())).collect();
            format!(
                "{} {}/{} ({})",
                groups.join("|"),
                t.approvals,
                t.quorum,
                if who.is_empty() {
                    "no eligible approver".to_owned()
                } else {
                    who.join(", ")
                }
            )
        })
        .collect();
    parts.join(" · ")
}

fn time_left(req: &RequestView) -> String {
    let secs = (req.expires_at - chrono::Utc::now()).num_seconds().max(0);
    format!("{}m{:02}s left", secs / 60, secs % 60)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let a = &args.action;
    let enforcer = Enforcer::new(connect(&a.conn)?);
    let body = check_body(a, Some(&args.command))?;
    let req = match enforcer.check(&body).await? {
        CheckResponse::Allow { policies: p, .. } => {
            eprintln!("airlock: allowed by {}", policies(&p));
            return run_command(&args.command, None, &enforcer).await;
        }
        CheckResponse::Deny { message, .. } => {
            eprintln!("airlock: denied: {}", visible(&message));
            return Ok(ExitCode::from(EXIT_DENIED));
        }
        CheckResponse::ApprovalRequired { request, .. } => *request,
    };
    let id = req.id;
    eprintln!("airlock: approval required for request {id}");
    eprintln!("airlock: {}", visible(&req.url));
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut waiter = enforcer.waiter(req);
    loop {
        if waiter.decided() {
            break;
        }
        let req = waiter.current().clone();
        let line = format!("waiting: {} · {}", progress(&req), time_left(&req));
        let shown = format!("waiting: {}", progress(&req));
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if shown != last_line {
            eprintln!("airlock: {line}");
        }
        last_line = shown;
        let poll = waiter.poll();
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
            Some(r) => r?,
            None => {
                if tty {
                    eprintln!();
                }
                match enforcer.cancel(&req).await {
                    Ok(_) => eprintln!("airlock: interrupted; request {id} cancelled"),
                    Err(e) => eprintln!(
                        "airlock: interrupted; could not cancel request {id}: {:#}",
                        anyhow::Error::from(e)
                    ),
                }
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
        }
    }
    if tty {
        eprintln!();
    }
    let req = waiter.into_current();
    let status = req.status;
    if status != RequestStatus::Approved {
        let why = req
            .denial()
            .map(|r| {
                format!(
                    " by {}: {}",
                    visible(r.reviewer.as_str()),
                    visible(r.reason.as_deref().unwrap_or("no reason given"))
                )
            })
            .unwrap_or_default();
        eprintln!("airlock: request {id} was {status}{why}; not running the command");
        return Ok(ExitCode::from(if status == RequestStatus::Denied {
            EXIT_DENIED
        } else {
            EXIT_NOT_APPROVED
        }));
    }
    let consumed = match enforcer.consume(&req, &body).await {
        Ok(c) => c,
        Err(e @ ClientError::NoToken) => return Err(e.into()),
        Err(e) => {
            eprintln!(
                "airlock: the grant was refused: {:#}; not running the command",
                anyhow::Error::from(e)
            );
            return Ok(ExitCode::from(EXIT_NOT_APPROVED));
        }
    };
    let gid = consumed.grant_id;
    eprintln!("airlock: approved; grant {gid} consumed; running the command");
    run_command(&args.command, Some(gid), &enforcer).await
}

async fn run_command(
    command: &[String],
    grant: Option<airlock_core::GrantId>,
    enforcer: &Enforcer<Client>,
) -> anyhow::Result<ExitCode> {
    let (prog, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let status = tokio::process::Command::new(prog).args(rest).status().await;
    let mut detail = Map::new();
    let code = match &status {
        Ok(s) => {
            detail.insert("exit_code".into(), json!(s.code()));
            match s.code() {
                Some(code) => code,
                // Killed by a signal: the shell's 128 + N, and said, since
                // the command itself printed nothing.
                None => {
                    #[cfg(unix)]
                    let signal = std::os::unix::process::ExitStatusExt::signal(s);
                    #[cfg(not(unix))]
                    let signal: Option<i32> = None;
                    detail.insert("signal".into(), json!(signal));
                    eprintln!(
                        "airlock: {prog} was killed by signal {}",
                        signal.map_or_else(|| "?".to_owned(), |n| n.to_string())
                    );
                    128 + signal.unwrap_or(0)
                }
            }
        }
        Err(e) => {
            detail.insert("error".into(), json!(e.to_string()));
            127
        }
    };
    if let Some(gid) = grant {
        let outcome = if code == 0 {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        if let Err(e) = enforcer.complete(gid, outcome, detail).await {
            eprintln!(
                "airlock: could not report the outcome: {:#}",
                anyhow::Error::from(e)
            );
        }
    }
    if let Err(e) = status {
        eprintln!("airlock: cannot run {prog}: {e}");
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// One request for a person to read: every field a requester or reviewer
/// could have written is shown inert.
fn print_request(req: &RequestView) {
    println!("{}  {}", req.id, req.status);
    println!(
        "  {} wants to {}",
        visible(req.principal.as_str()),
        visible(req.action.as_str()),
    );
    // Type and id apart: `Db::Table` with id `x` and `Db` with id
    // `:Table:x` must not read alike.
    println!("  resource type: {}", visible(req.resource.kind.as_str()));
    // A look-alike letter of another script in a Latin word, escaped.
    println!(
        "  resource id:   {}",
        visible(&mixed_scripts_shown(req.resource.id.as_str()))
    );
    if !req.params.is_empty() {
        let p: Map<String, Value> = req
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        println!("  params: {}", json_compact(&Value::Object(p)));
    }
    // Every description the action was decided on (a later check with
    // other facts may have raised what it needs).
    for d in req.decisions.iter().flatten() {
        println!(
            "  decided {} by {} on context {}",
            visible(&d.at),
            visible(&d.by),
            json_compact(&d.context)
        );
    }
    if let Some(r) = &req.reason {
        println!("  reason: {}", visible(r));
    }
    if req.breakglass {
        println!(
            "  BREAK-GLASS: granted at once without approvals; reviews after the fact: {} of 2{}",
            req.reviews.len().min(2),
            if req.review_required {
                " (review required)"
            } else {
                ""
            }
        );
    }
    println!("  approvals: {}", progress(req));
    if req.status == RequestStatus::Pending {
        for t in req.thresholds.iter().filter(|t| !t.can_be_met()) {
            let groups: Vec<_> = t.groups.iter().map(|g| visible(g.as_str())).collect();
            println!(
                "  WARNING: nobody can approve this: {} needs {} approval(s) but has {} member(s) who may give one; an admin must add approvers or change the policy",
                groups.join(" or "),
                t.quorum,
                t.eligible.len()
            );
        }
        if req.max_uses > 0 {
            println!(
                "  on approval: {} gets {} use(s), valid {}",
                visible(req.principal.as_str()),
                req.max_uses,
                visible(&req.grant_ttl)
            );
        }
        println!(
            "  expires: {} ({})",
            airlock_client::api::time::fmt(req.expires_at),
            time_left(req)
        );
    }
    for r in &req.reviews {
        println!(
            "  {} {} via {}{}",
            visible(r.reviewer.as_str()),
            r.verdict.as_str(),
            visible(&r.channel),
            r.reason
                .as_deref()
                .map(|s| format!(": {}", visible(s)))
                .unwrap_or_default()
        );
    }
}

/// Asks for the current TOTP code on standard error, reading one line
/// from standard input.
fn prompt_totp() -> anyhow::Result<String> {
    use std::io::Write;
    eprint!("this approval needs step-up: the current code from your authenticator: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// The server's pages of requests, followed until `max` are in hand or
/// none are left.
async fn list_pages(
    c: &Client,
    status: &str,
    max: u32,
    mut after: Option<String>,
) -> anyhow::Result<RequestList> {
    let mut all: Vec<RequestView> = Vec::new();
    loop {
        let want = max.saturating_sub(all.len() as u32).clamp(1, 1000);
        let page = c.list_requests(status, want, after.as_deref()).await?;
        all.extend(page.requests);
        after = page.next;
        if after.is_none() || all.len() as u32 >= max {
            break;
        }
    }
    Ok(RequestList {
        requests: all,
        next: after,
    })
}

/// What a `requests` command answers: a page, or one request.
enum Shown {
    List(RequestList),
    One(Box<RequestView>),
}

pub async fn requests(cmd: RequestsCommand) -> anyhow::Result<ExitCode> {
    let (out, res) = match &cmd {
        RequestsCommand::List {
            status,
            max,
            after,
            conn,
            out,
        } => {
            let c = connect(conn)?;
            (
                out,
                Shown::List(list_pages(&c, status, *max, after.clone()).await?),
            )
        }
        RequestsCommand::Show { id, conn, out } => {
            let c = connect(conn)?;
            (out, Shown::One(Box::new(c.get_request(id, None).await?)))
        }
        RequestsCommand::Approve {
            id,
            reason,
            totp,
            conn,
            out,
        } => {
            let c = connect(conn)?;
            let mut totp = totp.clone();
            if totp.is_none() {
                // Read only to learn whether a code is asked: a request the
                // reviewer may not see is still sent for review, so that the
                // answer says why (`not_eligible`, `self_review`), not "no
                // such request".
                let step_up = match c.get_request(id, None).await {
                    Ok(r) => r.step_up,
                    Err(ClientError::Api { status: 404, .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                if step_up.as_deref() == Some("totp") {
                    totp = Some(prompt_totp()?);
                }
            }
            let body = ReviewBody {
                verdict: Verdict::Approve,
                reason: reason.clone(),
                channel: Some(ReviewChannel::Cli),
                totp,
            };
            (out, Shown::One(Box::new(c.review(id, &body).await?)))
        }
        RequestsCommand::Deny {
            id,
            reason,
            conn,
            out,
        } => {
            let c = connect(conn)?;
            let body = ReviewBody {
                verdict: Verdict::Deny,
                reason: reason.clone(),
                channel: Some(ReviewChannel::Cli),
                totp: None,
            };
            (out, Shown::One(Box::new(c.review(id, &body).await?)))
        }
        RequestsCommand::Cancel { id, conn, out } => {
            let c = connect(conn)?;
            (out, Shown::One(Box::new(c.cancel(id).await?)))
        }
        RequestsCommand::Revoke {
            id,
            reason,
            conn,
            out,
        } => {
            let c = connect(conn)?;
            let body = ReasonBody {
                reason: reason.clone(),
            };
            (out, Shown::One(Box::new(c.revoke(id, &body).await?)))
        }
    };
    match res {
        Shown::List(page) if out.json => println!("{}", to_json(&page)?),
        Shown::One(req) if out.json => println!("{}", to_json(&req)?),
        Shown::List(page) => {
            if page.requests.is_empty() {
                println!("no requests");
            }
            for r in &page.requests {
                print_request(r);
            }
            if let (Some(next), RequestsCommand::List { status, .. }) = (&page.next, &cmd) {
                println!("more: airlock requests list --status {status} --after {next}");
            }
        }
        Shown::One(req) => print_request(&req),
    }
    Ok(ExitCode::SUCCESS)
}
